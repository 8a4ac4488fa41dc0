"""Conditional sources: exact densities that integrate to one and match their samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unflow_zoo.data.conditional import (
    conditional_source_names,
    get_conditional_source,
)
from unflow_zoo.errors import ConfigError, DataError

NAMES = conditional_source_names()


def _contexts(name: str) -> torch.Tensor:
    """A few contexts per source, fixed."""
    if name == "8gaussians-by-label":
        return torch.eye(4, dtype=torch.float64)
    if name == "gaussian-by-context":
        return torch.tensor([[-0.9], [-0.3], [0.0], [0.7], [1.0]], dtype=torch.float64)
    return torch.tensor([[0.0, 0.0], [0.5, -0.2], [-0.8, 0.9], [1.0, 1.0]], dtype=torch.float64)


def _box(name: str, c: torch.Tensor) -> tuple[list[float], list[float]]:
    """A box that holds all but a negligible part of p(x | c)."""
    if name == "8gaussians-by-label":
        return [-4.5, -4.5], [4.5, 4.5]
    if name == "gaussian-by-context":
        m1, m2 = 2 * np.sin(np.pi * float(c[0])), 2 * float(c[0]) ** 2 - 1
        return [m1 - 5, m2 - 5], [m1 + 5, m2 + 5]
    t1, t2 = float(c[0]), float(c[1])
    cx, cy = 0.25 - abs(t1 + t2) / np.sqrt(2), (t2 - t1) / np.sqrt(2)
    return [cx - 1e-3, cy - 0.16], [cx + 0.16, cy + 0.16]


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one_for_each_context(name: str) -> None:
    source = get_conditional_source(name)
    for c in _contexts(name):
        lo, hi = _box(name, c)
        n = 1500
        g0 = torch.linspace(lo[0], hi[0], n, dtype=torch.float64)
        g1 = torch.linspace(lo[1], hi[1], n, dtype=torch.float64)
        grid = torch.cartesian_prod(g0, g1)
        p = source.log_prob(grid, c.expand(len(grid), -1)).exp().reshape(n, n)
        mass = torch.trapezoid(torch.trapezoid(p, g1, dim=1), g0).item()
        assert mass == pytest.approx(1.0, abs=2e-3), (name, c.tolist(), mass)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_of_own_samples_is_finite_and_matches_a_monte_carlo_entropy(name: str) -> None:
    source = get_conditional_source(name)
    x, c = source.sample(20000, np.random.default_rng(1))
    lp = source.log_prob(torch.from_numpy(x), torch.from_numpy(c))
    assert lp.shape == (20000,) and torch.isfinite(lp).all()
    # a density of the wrong normalisation or shape would make the cross-entropy of a sharper
    # or broader Gaussian fit beat the truth; compare with per-context-independent Gaussian fit
    mu, sd = x.mean(0), x.std(0)
    gauss = (-0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)).sum(1)
    assert lp.mean().item() > gauss.mean()


def test_labels_are_one_hot_and_marginal_is_8gaussians() -> None:
    from unflow_zoo.data.synthetic import EightGaussians

    source = get_conditional_source("8gaussians-by-label")
    x, c = source.sample(5000, np.random.default_rng(2))
    assert set(np.unique(c)) == {0.0, 1.0} and (c.sum(1) == 1).all()
    xt, ct = torch.from_numpy(x), torch.eye(4, dtype=torch.float64)
    # p(x) = sum_k p(k) p(x | k) is the 8gaussians density
    marginal = torch.logsumexp(
        torch.stack([source.log_prob(xt, ct[k].expand(len(xt), -1)) for k in range(4)]), 0
    ) - np.log(4)
    torch.testing.assert_close(marginal, EightGaussians().log_prob(xt))


def test_two_moons_matches_the_sbi_simulator_formula() -> None:
    source = get_conditional_source("two-moons-sbi")
    x, theta = source.sample(3000, np.random.default_rng(3))
    # undo the shift: the points lie on a half circle of radius ~0.1 around (0.25, 0)
    u = x[:, 0] - 0.25 + np.abs(theta.sum(1)) / np.sqrt(2)
    v = x[:, 1] - (theta[:, 1] - theta[:, 0]) / np.sqrt(2)
    r = np.hypot(u, v)
    assert (u > 0).all()
    assert abs(r.mean() - 0.1) < 1e-3 and abs(r.std() - 0.01) < 1e-3
    # outside the half plane the density is zero
    far = torch.tensor([[-5.0, 0.0]], dtype=torch.float64)
    assert source.log_prob(far, torch.zeros(1, 2, dtype=torch.float64)).item() == -np.inf


def test_errors() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        get_conditional_source("nope")
    source = get_conditional_source("gaussian-by-context")
    with pytest.raises(DataError, match="contexts of shape"):
        source.log_prob(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="positive int"):
        source.sample(0, np.random.default_rng(0))
