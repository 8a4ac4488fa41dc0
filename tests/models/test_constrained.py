"""The constrained flow family (seed paper's CNF) as a Lightning module."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.core import InputOutsideDomain, Permutation
from unflow_zoo.models.constrained import ConstrainedFlow
from unflow_zoo.models.registry import create_model, get_model_class
from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.monotone import ConstrainedMonotone


def _mixture(n: int = 2000, seed: int = 0) -> torch.Tensor:
    """0.5 N(-2.5, 1) + 0.5 N(2.5, 1), standardised like the paper's runs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=gen) + 2.5 * torch.where(torch.rand(n, 1, generator=gen) < 0.5, -1.0, 1.0)
    return (x - x.mean()) / x.std()


def test_registered_with_paper_defaults():
    assert get_model_class("constrained") is ConstrainedFlow
    model = create_model("constrained", event_shape=(1,))
    assert isinstance(model, ConstrainedFlow) and model.registry_name == "constrained"
    hp = model.hparams
    assert (hp.width, hp.depth, hp.positivity, hp.init, hp.std_a, hp.eps, hp.n_layers) == (
        100, 1, "clamp", "standard-normal", 0.005, 1e-6, 1,
    )
    (block,) = model.blocks
    assert block.c == pytest.approx(0.1)  # c = 1/sqrt(m) for the standard-normal init


def test_stack_passes_the_kit_and_alternates_order():
    model = ConstrainedFlow(event_shape=(3,), width=6, depth=2, n_layers=3, positivity="softplus")
    layers = list(model.flow.transform)
    assert [type(t) for t in layers] == [ConstrainedMonotone, Permutation] * 2 + [ConstrainedMonotone]
    randomize_parameters_(model.flow, std=0.3, seed=0)
    check_transform(model.flow.transform, torch.randn(16, 3), max_jacobian_points=4)


def test_stack_2d_normalises():
    model = ConstrainedFlow(event_shape=(2,), width=6, n_layers=2, linear_term=0.1)
    randomize_parameters_(model.flow, std=0.3, seed=1)
    report = check_transform(model.flow.transform, torch.randn(8, 2), max_jacobian_points=2, grid_points=401)
    assert abs(report.normalization - 1) < 0.01


def test_projection_after_every_sgd_step(trainer_factory):
    """Large SGD steps push positive weights below eps; FlowModule's optimizer_step projects them back."""
    torch.manual_seed(0)
    eps = 1e-3
    model = ConstrainedFlow(event_shape=(2,), width=8, eps=eps, optimizer="sgd", lr=5.0)
    w0 = [p.detach().clone() for p in model.parameter_groups()["W"]]
    data = TensorDataset(torch.randn(96, 2) * 2)
    trainer_factory(max_steps=3).fit(model, DataLoader(data, batch_size=32))
    positive = [p for b in model.blocks for p in (*b.w_diag, b.a_diag)]
    assert all(torch.all(p >= eps) for p in positive)
    assert any(torch.any(p == eps) for p in positive), "the projection never became active"
    (block,) = model.blocks
    effective = [block._positive(block.w_diag[0]), block._positive(block.a_diag)]
    assert all(torch.all(p >= eps) for p in effective)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameter_groups()["W"], w0)), "nothing trained"


def test_train_layers_freezes_the_output_weights(trainer_factory):
    model = ConstrainedFlow(event_shape=(1,), width=16, train_layers=["W", "b"], optimizer="sgd", lr=0.1)
    groups = model.parameter_groups()
    before = {g: [p.detach().clone() for p in ps] for g, ps in groups.items()}
    trainer_factory(max_steps=5).fit(model, DataLoader(TensorDataset(_mixture(160)), batch_size=32))
    assert all(torch.equal(p, q) for p, q in zip(groups["a"], before["a"]))
    assert not all(torch.equal(p, q) for p, q in zip(groups["W"], before["W"]))


def test_learns_a_two_gaussian_mixture(trainer_factory):
    torch.manual_seed(0)
    x = _mixture(2000)
    model = ConstrainedFlow(event_shape=(1,), width=50, lr=0.05)
    with torch.no_grad():
        nll0 = -model.log_prob(x).mean().item()
    trainer_factory(max_epochs=20).fit(model, DataLoader(TensorDataset(x), batch_size=200, shuffle=True))
    with torch.no_grad():
        nll = -model.log_prob(x).mean().item()
    # entropy of the standardised mixture: ~ log 2 + 0.5 log(2 pi e) - log(std 2.69) = 1.12 nats
    assert nll0 > 3.5
    assert nll < 1.3, f"NLL {nll:.3f} after training (started at {nll0:.3f})"
    # and it is bimodal: more density at the modes (+-0.93 standardised) than between them
    logp = model.log_prob(torch.tensor([[-0.93], [0.0], [0.93]])).detach()
    assert logp[0] > logp[1] + 0.5 and logp[2] > logp[1] + 0.5
    # samples come back through the bisection inverse and match the data's quantiles; the
    # linear term only leaks the base mass beyond the network's range into far tails
    s = model.sample(4000)
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    assert torch.isfinite(s).all()
    assert (torch.quantile(s[:, 0], q) - torch.quantile(x[:, 0], q)).abs().max() < 0.3
    assert (s.abs() > 5).float().mean() < 0.01


def test_paper_exact_model_cannot_sample_outside_its_image():
    model = ConstrainedFlow(event_shape=(1,), width=10, linear_term=0.0)
    lp = model.log_prob(torch.linspace(-3, 3, 7)[:, None])
    assert torch.isfinite(lp).all()
    with pytest.raises(InputOutsideDomain, match="linear_term > 0"):
        model.sample(100)  # at init the image is about (-0.04, 0.04)


def test_rejects_non_vector_events():
    with pytest.raises(ValueError, match=r"event_shape \(D,\)"):
        ConstrainedFlow(event_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="n_layers"):
        ConstrainedFlow(event_shape=(2,), n_layers=0)


def test_hparams_round_trip_through_a_checkpoint(tmp_path, trainer_factory):
    model = ConstrainedFlow(event_shape=(2,), width=4, positivity="square", init="sqrt-m", linear_term=0.02)
    trainer = trainer_factory(max_steps=1)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=8))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = ConstrainedFlow.load_from_checkpoint(path, weights_only=True)
    x = torch.randn(5, 2)
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x))
    assert loaded.blocks[0].positivity == "square" and loaded.blocks[0].c == 1.0
    assert math.isclose(loaded.hparams.linear_term, 0.02)
