"""The `unconstrained` family: registry, construction, base/lower-limit handling, training."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.models.registry import create_model, get_model_class
from unflow_zoo.models.unconstrained import UnconstrainedFlow
from unflow_zoo.testing import check_transform
from unflow_zoo.transforms.integral import UnconstrainedMonotoneTransform
from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform


SMALL = dict(hidden=[16, 16], embedding=4, conditioner_hidden=[16, 16], n_nodes=24)


def two_gaussians(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (n, 1), generator=g) * 2 - 1
    return 2.5 * sign + torch.randn(n, 1, generator=g)


def mixture_entropy() -> float:
    """Entropy of 0.5 N(-2.5, 1) + 0.5 N(2.5, 1), by quadrature on a fine grid."""
    x = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    p = 0.5 * (torch.exp(-0.5 * (x - 2.5) ** 2) + torch.exp(-0.5 * (x + 2.5) ** 2)) / math.sqrt(2 * math.pi)
    return float(-torch.trapezoid(p * torch.log(p), x))


def test_registered_with_its_hyperparameters() -> None:
    assert get_model_class("unconstrained") is UnconstrainedFlow
    model = create_model("unconstrained", event_shape=(3,), n_layers=2, integrand="paper", width=32, lr=3e-3)
    assert isinstance(model, UnconstrainedFlow)
    hp = model.hparams
    assert hp.integrand == "paper" and hp.width == 32 and hp.n_layers == 2 and hp.lr == 3e-3
    assert hp.quadrature == "clenshaw-curtis" and hp.phi == "elu" and hp.lower_limit is None
    assert len(model.transforms) == 2
    assert all(isinstance(t, UnconstrainedMonotoneTransform) for t in model.transforms)
    assert all(t.integrand.width == 32 for t in model.transforms)


def test_parameter_groups_for_the_study_callback() -> None:
    model = UnconstrainedFlow(event_shape=(2,), integrand="paper", width=32, n_layers=3, **SMALL)
    groups = model.parameter_groups()
    assert set(groups) == {"W", "b", "a"}
    assert [tuple(w.shape) for w in groups["W"]] == [(32, SMALL["embedding"] + 1)] * 3
    assert all(w.requires_grad for w in groups["W"] + groups["b"])
    assert not any(a.requires_grad for a in groups["a"])  # the paper's fixed top layer
    params = {id(p) for p in model.parameters()}
    assert all(id(w) in params for w in groups["W"] + groups["b"])
    mlp = UnconstrainedFlow(event_shape=(2,), n_layers=2, **SMALL).parameter_groups()
    assert len(mlp["W"]) == 2 * 2 and all(a.requires_grad for a in mlp["a"])


@pytest.mark.parametrize("d", [1, 2, 4])
def test_stack_honours_the_transform_contract(d: int) -> None:
    torch.manual_seed(d)
    model = UnconstrainedFlow(event_shape=(d,), n_layers=2, permutation="random", **SMALL)
    check_transform(model.flow.transform, torch.randn(32, d), grid_points=4001 if d == 1 else 151)
    samples = model.sample(64)
    assert samples.shape == (64, d) and torch.isfinite(samples).all()


def test_exponential_base_with_lower_limit() -> None:
    torch.manual_seed(0)
    data = two_gaussians(256, seed=1)
    x_min = float(data.min())
    # the paper's integrand is piecewise linear in t: 64 nodes keep the quadrature error ~1e-3
    model = UnconstrainedFlow(
        event_shape=(1,), base="exponential", lower_limit=x_min, n_layers=2, integrand="paper", width=64,
        **{**SMALL, "n_nodes": 64},
    )
    assert all(not t.offset for t in model.transforms)  # beta = 0: the image stays non-negative
    assert float(model.transforms[0].lower) == x_min and float(model.transforms[1].lower) == 0.0
    with torch.no_grad():
        logp = model.log_prob(data)
        assert torch.isfinite(logp).all()
        assert bool((model.flow.transform_to_noise(data) >= 0).all())
        assert float(model.log_prob(torch.tensor([[x_min - 0.1]]))) == -math.inf
        samples = model.sample(200)
    assert bool((samples >= x_min - 1e-6).all())
    # the density lives on [x_min, inf) and integrates to 1; at initialisation the random
    # top layer can make g decay to min_slope on the right, leaving a long, thin tail
    far = torch.logspace(math.log10(60.0), 6, 4001, dtype=torch.float64)[1:]
    grid = x_min + torch.cat([torch.linspace(0, 60, 30001, dtype=torch.float64), far]).unsqueeze(1)
    model64 = model.to(torch.float64)
    with torch.no_grad():
        total = float(torch.trapezoid(model64.log_prob(grid).exp(), grid[:, 0]))
    assert total == pytest.approx(1.0, abs=5e-3)


def test_rejects_image_shaped_events() -> None:
    with pytest.raises(ValueError, match="event_shape"):
        UnconstrainedFlow(event_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="n_layers"):
        UnconstrainedFlow(event_shape=(2,), n_layers=0)


def test_training_fits_a_two_gaussian_mixture() -> None:
    torch.manual_seed(0)
    train = two_gaussians(2048, seed=0)
    test = two_gaussians(4096, seed=1)
    model = UnconstrainedFlow(event_shape=(1,), n_layers=1, lr=1e-2, **SMALL)
    with torch.no_grad():
        before = float(-model.log_prob(test).mean())
    loader = DataLoader(TensorDataset(train), batch_size=256, shuffle=True)
    trainer = L.Trainer(
        max_steps=240,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    with torch.no_grad():
        after = float(-model.log_prob(test).mean())
    entropy = mixture_entropy()  # ~2.11 nats: the best any model can do
    assert before > entropy + 1.5, before  # a unimodal start cannot fit two modes
    assert after < entropy + 0.05, (before, after, entropy)
    # bimodal like the truth: p(+-2.5) ~ 0.20, p(0) ~ 0.018
    with torch.no_grad():
        p = model.log_prob(torch.tensor([[-2.5], [0.0], [2.5]])).exp()
    assert float(p[1]) < 0.2 * min(float(p[0]), float(p[2]))
    assert 0.15 < float(p[0]) < 0.25 and 0.15 < float(p[2]) < 0.25


# ----- layout="paper": the seed paper's per-coordinate networks -----------------------------------


def test_paper_layout_trains_with_sgd_from_the_data_minimum() -> None:
    torch.manual_seed(0)
    model = create_model(
        "unconstrained", event_shape=(2,), layout="paper", integrand="paper", width=32, n_layers=1,
        base="exponential", min_slope=0.0, quadrature="riemann", n_nodes=50, lower_limit=[-1.0, -1.0],
        optimizer="sgd", lr=0.005,
    )
    (t,) = model.transforms
    assert isinstance(t, PaperUnconstrainedTransform) and t.lower.tolist() == [-1.0, -1.0]
    assert set(model.parameter_groups()) == {"W", "b", "a"}
    data = torch.rand(64, 2) * 2 - 1  # on [x0, x0 + 2]
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    w0 = t.W.detach().clone()
    losses = []
    for _ in range(5):
        loss = -model.log_prob(data).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(t.W.detach(), w0)
    with torch.no_grad():
        assert float(model.log_prob(torch.tensor([[-1.5, 0.0]]))) == -math.inf  # below x0: outside the support


def test_paper_layout_options() -> None:
    model = UnconstrainedFlow(event_shape=(3,), layout="paper", integrand="paper", width=8, n_layers=2,
                              base="exponential", lower_limit=-2.0)
    first, second = model.transforms
    assert first.lower.tolist() == [-2.0] * 3 and second.lower.tolist() == [0.0] * 3
    assert model.hparams.layout == "paper"
    with pytest.raises(ValueError, match="integrand='paper'"):
        UnconstrainedFlow(event_shape=(2,), layout="paper")
    with pytest.raises(ValueError, match="needs layout='paper'"):
        UnconstrainedFlow(event_shape=(2,), lower_limit=[0.0, 1.0], **SMALL)
    with pytest.raises(ValueError, match="one per coordinate"):
        UnconstrainedFlow(event_shape=(2,), layout="paper", integrand="paper", lower_limit=[0.0, 1.0, 2.0])
