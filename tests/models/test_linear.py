"""The linear flow family: its ML optimum is the Gaussian fit (Liao & He 2021)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from unflow_zoo.core.transform import Compose, Permutation
from unflow_zoo.data.module import DensityDataModule
from unflow_zoo.metrics import gaussian_nll
from unflow_zoo.models.linear import LinearFlow
from unflow_zoo.models.registry import create_model, get_model_class
from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.affine import ConditionalAffine
from unflow_zoo.transforms.linear import LULinear


def _correlated_mixture(n: int = 4000, d: int = 5, seed: int = 0) -> torch.Tensor:
    """A 3-component Gaussian mixture (clearly non-Gaussian) pushed through a random matrix."""
    g = torch.Generator().manual_seed(seed)
    comp = torch.randint(0, 3, (n,), generator=g)
    centers = 1.5 * torch.randn(3, d, generator=g)
    x = centers[comp] + 0.5 * torch.randn(n, d, generator=g)
    mixing = torch.eye(d) + 0.5 * torch.randn(d, d, generator=g)
    return x @ mixing.T + 1.0


def _full_batch(x: torch.Tensor) -> DataLoader:
    """One batch of all of ``x`` per epoch, indexed in one go (no per-row collation)."""
    sampler = BatchSampler(SequentialSampler(range(len(x))), batch_size=len(x), drop_last=False)
    return DataLoader(TensorDataset(x), sampler=sampler, batch_size=None)


def test_registered_and_builds_a_stack():
    assert get_model_class("linear") is LinearFlow
    m = create_model("linear", event_shape=(3,), n_layers=2)
    assert isinstance(m, LinearFlow) and m.hparams.n_layers == 2
    t = m.flow.transform
    assert isinstance(t, Compose) and [type(s) for s in t] == [LULinear, Permutation, LULinear]
    assert len(create_model("linear", event_shape=(3,)).flow.transform) == 1


def test_starts_at_the_standard_normal():
    m = LinearFlow(event_shape=(4,))
    x = torch.randn(10, 4)
    expected = -0.5 * x.square().sum(1) - 2 * math.log(2 * math.pi)
    torch.testing.assert_close(m.log_prob(x), expected)


def test_stack_honours_the_contract():
    m = LinearFlow(event_shape=(5,), n_layers=3)
    randomize_parameters_(m, std=0.3, seed=1)
    check_transform(m.flow.transform, torch.randn(32, 5))


def test_rejects_image_shaped_events():
    with pytest.raises(ValueError, match=r"works on vectors.*\(1, 8, 8\)"):
        LinearFlow(event_shape=(1, 8, 8))


@pytest.mark.parametrize("n_layers", [1, 2])
def test_trained_linear_flow_reaches_the_gaussian_nll(trainer_factory, n_layers):
    x = _correlated_mixture()
    target = gaussian_nll(x)
    torch.manual_seed(0)
    m = LinearFlow(event_shape=(5,), n_layers=n_layers, lr=3e-2)
    before = -m.log_prob(x).mean().item()
    trainer_factory(max_steps=300, max_epochs=-1, limit_val_batches=0).fit(m, _full_batch(x))
    with torch.no_grad():
        nll = -m.double().log_prob(x.double()).mean().item()
    gap = nll - target
    assert before - target > 1.0  # the data are far from the initial standard normal
    # the ML Gaussian is the optimum of every affine flow: nothing below it, and training gets there
    print(f"n_layers={n_layers}: NLL {nll:.6f}, gaussian_nll {target:.6f}, gap {gap:.2e}")
    assert -1e-6 < gap < 1e-3, gap


def test_fitted_flow_is_the_gaussian_baseline_on_moons(trainer_factory):
    dm = DensityDataModule("moons", n_samples=2000, eval_batch_size=400, seed=0)
    dm.setup()
    torch.manual_seed(0)
    m = LinearFlow(event_shape=(2,), lr=3e-2)
    trainer_factory(max_steps=300, max_epochs=-1, limit_val_batches=0).fit(m, _full_batch(dm.train_data))
    result = trainer_factory().test(m, datamodule=dm, verbose=False)[0]
    # trained to the ML Gaussian of the training split, it is the baseline on the test split too
    assert abs(result["test_nll"] - result["test_gaussian_nll"]) < 2e-3, result


# ----- conditional: the LU stack, then a ConditionalAffine layer -------------------------------------


def test_conditional_affine_starts_as_the_identity_and_passes_the_kit():
    t = ConditionalAffine(3, 2, hidden=[8])
    x, c = torch.randn(10, 3), torch.randn(10, 2)
    y, ladj = t(x, c)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(10))
    randomize_parameters_(t, 0.3, 0)
    check_transform(t, x, c, check_grid=False)
    assert not torch.allclose(t(x, c)[0], t(x, c.flip(0))[0])
    check_transform(randomize_parameters_(ConditionalAffine(2, 2, hidden=[]), 0.3, 1), x[:, :2], c)  # and the grid
    with pytest.raises(ValueError, match="context_features >= 1"):
        ConditionalAffine(3, 0)


def test_conditional_linear_flow_is_a_gaussian_whose_mean_follows_the_context():
    """x = A c + noise: with an affine context map (context_hidden=[]) the ML model is that regression."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(2000, 2, generator=g)
    a = torch.tensor([[1.0, -0.5], [0.3, 2.0]])
    x = c @ a.T + 0.2 * torch.randn(2000, 2, generator=g)
    m = create_model("linear", event_shape=(2,), context_features=2, context_hidden=[])
    assert [type(t).__name__ for t in m.flow.transform] == ["LULinear", "ConditionalAffine"]
    with torch.no_grad():
        before = -m.log_prob(x, c).mean().item()
    opt = torch.optim.Adam(m.parameters(), lr=5e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = -m.log_prob(x, c).mean()
        loss.backward()
        opt.step()
    # the true conditional entropy: 2 * 0.5 * log(2 pi e 0.2^2)
    assert before - 1.0 > loss.item() == pytest.approx(math.log(2 * math.pi * math.e * 0.04), abs=0.1)
