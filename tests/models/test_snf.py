"""snf: the flow through the kit (vectors and images), training, mixed precision, fast sampling."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.core.transform import Compose
from unflow_zoo.models.registry import create_model, list_models
from unflow_zoo.models.snf import SelfNormalizingFlow
from unflow_zoo.testing import check_normalization, check_transform, randomize_parameters_
from unflow_zoo.transforms.glow import Squeeze
from unflow_zoo.transforms.selfnorm import LeakyReLU, SelfNormConv, SelfNormLinear, SmoothLeakyReLU

GRID = [(-7.0, 7.0)] * 2


def _count(m, cls):
    return sum(isinstance(t, cls) for t in m.flow.modules())


def test_registered_and_built_as_documented():
    assert "snf" in list_models()
    m = create_model("snf", event_shape=(5,), n_layers=3)
    assert isinstance(m, SelfNormalizingFlow)
    assert m.hparams.recon_weight == 1.0 and m.hparams.act_alpha == 0.3
    assert _count(m, SelfNormLinear) == 3 and _count(m, SmoothLeakyReLU) == 2  # no activation after the last
    m = create_model("snf", event_shape=(1, 8, 8), n_layers=6, n_blocks=3, act="leaky_relu")
    assert _count(m, SelfNormConv) == 6 and _count(m, LeakyReLU) == 5 and _count(m, Squeeze) == 4  # 2 + 2 undone
    assert [t.channels for t in m.selfnorm_layers()] == [1, 1, 4, 4, 16, 16]


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("act", ["smooth_leaky_relu", "leaky_relu"])
def test_vector_flow_passes_the_kit_in_eval_mode(dim, act):
    m = create_model("snf", event_shape=(dim,), n_layers=3, act=act, act_alpha=0.5)
    randomize_parameters_(m, 0.2, dim)
    # grid bounds from samples: leaky activations stretch the negative tails by 1/alpha per layer
    report = check_transform(m.flow.transform, 2 * torch.randn(16, dim), grid_points=301)
    if dim == 2:
        assert abs(report.normalization - 1) < 0.01


def test_image_flow_passes_the_kit_in_eval_mode():
    m = create_model("snf", event_shape=(1, 4, 4), n_layers=4, n_blocks=2)
    randomize_parameters_(m, 0.1, 0)
    check_transform(m.flow.transform, torch.randn(8, 1, 4, 4))
    m = create_model("snf", event_shape=(2, 4, 4), n_layers=2, n_blocks=1, kernel_size=1, act="leaky_relu")
    randomize_parameters_(m, 0.3, 1)
    check_transform(m.flow.transform, torch.randn(4, 2, 4, 4))


def test_training_mode_log_prob_equals_eval_mode():
    """With train_logdet='exact' the training NLL is the true one, only its gradient is approximate."""
    m = randomize_parameters_(create_model("snf", event_shape=(3,), n_layers=2), 0.3, 0)
    x = torch.randn(10, 3)
    m.train()
    train_lp = m.log_prob(x)
    m.eval()
    torch.testing.assert_close(train_lp, m.log_prob(x))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="n_layers >= 1"):
        create_model("snf", n_layers=0)
    with pytest.raises(ValueError, match="unknown snf act"):
        create_model("snf", act="relu")
    with pytest.raises(ValueError, match="divisible by 4"):
        create_model("snf", event_shape=(1, 6, 6), n_layers=3, n_blocks=3)
    with pytest.raises(ValueError, match="n_layers divisible by n_blocks"):
        create_model("snf", event_shape=(1, 4, 4), n_layers=3, n_blocks=2)
    with pytest.raises(ValueError, match="vectors"):
        create_model("snf", event_shape=(4, 4))


def test_regularization_is_the_summed_reconstruction_loss():
    m = randomize_parameters_(create_model("snf", event_shape=(3,), n_layers=2, recon_weight=0.5), 0.3, 0)
    x = torch.randn(20, 3)
    m.train()
    m.log_prob(x)
    h, expected = x, 0.0
    for t in m.flow.transform:
        if isinstance(t, SelfNormLinear):
            expected = expected + 0.5 * (h - h @ t.weight.T @ t.inverse_weight.T).pow(2).sum(1).mean()
        h = t(h)[0]
    torch.testing.assert_close(m.regularization(), expected)
    assert m.regularization() == 0.0  # consumed once per forward pass


def _fast_sampling_gap(m: SelfNormalizingFlow) -> float:
    """Median distance between samples through the learned inverses and exact ones, same noise."""
    torch.manual_seed(1)
    exact = m.sample(200)
    torch.manual_seed(1)
    fast = m.sample(200, approximate=True)
    assert fast.shape == exact.shape and torch.isfinite(fast).all()
    return float((fast - exact).norm(dim=1).median())


def test_training_lowers_loss_learns_inverses_and_stays_normalised(trainer_factory, two_moons):
    x = two_moons(1000, 0)
    m = create_model("snf", event_shape=(2,), n_layers=3, lr=1e-2)
    with torch.no_grad():  # R away from W^-1 at the start
        for layer in m.selfnorm_layers():
            layer.inverse_weight.add_(0.3 * torch.randn(2, 2))
    defect_before = sum(float(t.inverse_defect()) for t in m.selfnorm_layers())
    m.eval()
    before = -m.log_prob(x).mean().item()
    gap_before = _fast_sampling_gap(m)
    m.train()  # Lightning keeps the modes it finds
    trainer_factory(max_epochs=6).fit(m, DataLoader(TensorDataset(x), batch_size=100, shuffle=True))
    m.eval()
    after = -m.log_prob(x).mean().item()
    defect_after = sum(float(t.inverse_defect()) for t in m.selfnorm_layers())
    assert after < before - 0.3, (before, after)
    assert defect_after < 0.5 * defect_before, (defect_before, defect_after)
    assert abs(check_normalization(m.flow.double(), points=401) - 1) < 0.01  # bounds from samples
    m.float()
    # fast sampling through the R's moved towards the exact inverse of the same noise
    assert _fast_sampling_gap(m) < 0.5 * gap_before


def test_image_flow_trains(trainer_factory):
    torch.manual_seed(0)
    x = torch.randn(256, 1, 4, 4)
    x = x + 0.7 * torch.roll(x, 1, dims=2) + 1.0
    m = create_model("snf", event_shape=(1, 4, 4), n_layers=4, n_blocks=2, lr=5e-3)
    m.eval()
    before = -m.log_prob(x).mean().item()
    m.train()  # Lightning keeps the modes it finds
    trainer_factory(max_epochs=3).fit(m, DataLoader(TensorDataset(x), batch_size=64, shuffle=True))
    m.eval()
    after = -m.log_prob(x).mean().item()
    assert after < before - 1.0, (before, after)
    s = m.sample(8, approximate=True)
    assert s.shape == (8, 1, 4, 4) and torch.isfinite(s).all()


def test_exact_gradient_baseline_and_skip_mode_train(trainer_factory, two_moons):
    x = two_moons(1000, 1)
    for kwargs in ({"exact_gradient": True}, {"train_logdet": "skip"}):
        m = create_model("snf", event_shape=(2,), n_layers=2, lr=5e-3, **kwargs)
        m.eval()
        before = -m.log_prob(x).mean().item()
        m.train()
        trainer_factory(max_epochs=2).fit(m, DataLoader(TensorDataset(x), batch_size=100, shuffle=True))
        m.eval()
        assert -m.log_prob(x).mean().item() < before - 0.2, kwargs


def test_manual_steps_decrease_the_loss():
    torch.manual_seed(0)
    x = torch.randn(256, 4) @ torch.tensor([[2.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0.5, 0], [0, 0, 1, 1]]).T
    m = create_model("snf", event_shape=(4,), n_layers=2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    m.train()
    for _ in range(30):
        loss = -m.log_prob(x).mean() + m.regularization()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("shape,kwargs", [((3,), {}), ((1, 4, 4), {"n_layers": 2, "n_blocks": 2})])
def test_bf16_mixed_gives_a_finite_loss(shape, kwargs, trainer_factory):
    torch.manual_seed(0)
    x = torch.randn(64, *shape)
    m = create_model("snf", event_shape=shape, lr=1e-3, **kwargs)
    trainer = trainer_factory(max_steps=3, precision="bf16-mixed")
    trainer.fit(m, DataLoader(TensorDataset(x), batch_size=32))
    loss = trainer.callback_metrics["train_nll"]
    assert torch.isfinite(loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.train()
        lp = m.log_prob(x)
        total = -lp.mean() + m.regularization()
    assert lp.dtype == torch.float32 and torch.isfinite(total)
    assert isinstance(m.flow.transform, Compose)


@pytest.mark.parametrize("shape", [(2,), (1, 4, 4)])
def test_conditional_fast_sampling_matches_the_exact_inverse_when_R_is_exact(shape):
    """With a context the learned-inverse sampler shifts by the same V c and returns (n, B, *event)."""
    torch.manual_seed(0)
    hp = {"n_layers": 2} if len(shape) == 1 else {"n_layers": 2, "n_blocks": 2}
    m = create_model("snf", event_shape=shape, context_features=3, context_embedding=[8, 4], **hp).eval()
    randomize_parameters_(m, 0.1, 0)
    with torch.no_grad():
        for layer in m.selfnorm_layers():
            if isinstance(layer, SelfNormLinear):
                layer.inverse_weight.copy_(torch.linalg.inv(layer.weight))
    c = torch.randn(3, 3)
    torch.manual_seed(1)
    exact = m.sample(5, c)
    torch.manual_seed(1)
    fast = m.sample(5, c, approximate=True)
    assert fast.shape == exact.shape == (5, 3, *shape)
    if len(shape) == 1:  # R = W^-1 exactly: the two samplers agree
        torch.testing.assert_close(fast, exact, atol=1e-4, rtol=1e-4)
    assert m.sample(4, c[0], approximate=True).shape == (4, *shape)
    assert m.sample(0, c, approximate=True).shape == (0, 3, *shape)
