"""LU-decomposed invertible linear map."""

from __future__ import annotations

import pytest
import torch

from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.linear import LULinear


def _perturbed(features: int, seed: int, permutation: str = "random") -> LULinear:
    t = LULinear(features, permutation=permutation, seed=seed)
    return randomize_parameters_(t, std=0.5, seed=seed)


def test_starts_at_identity():
    t = LULinear(4)
    x = torch.randn(7, 4)
    y, ladj = t(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    assert ladj.shape == (7,) and torch.all(ladj == 0)
    # a random permutation starts at y = P x
    t = LULinear(4, permutation="random", seed=3)
    y, _ = t(x)
    torch.testing.assert_close(y, x[:, t.perm], rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kit_2d_with_grid_normalisation(seed):
    t = _perturbed(2, seed)
    report = check_transform(t, torch.randn(32, 2) * 2, grid_points=401, grid_tol=0.01)
    assert report.normalization is not None and abs(report.normalization - 1) < 0.01
    assert report.inverse_error < 1e-10


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("permutation", ["identity", "random"])
def test_kit_5d(seed, permutation):
    t = _perturbed(5, seed, permutation)
    report = check_transform(t, torch.randn(64, 5) * 1.5)
    assert report.normalization is None and report.jacobian_logdet_error < 1e-8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_matrix_and_its_inverse(seed):
    t = _perturbed(5, seed).double()
    W = t.weight()
    x = torch.randn(16, 5, dtype=torch.float64)
    y, ladj = t(x)
    torch.testing.assert_close(y, x @ W.T + t.bias)
    torch.testing.assert_close(ladj, torch.linalg.slogdet(W).logabsdet.expand(16))
    # the two triangular solves agree with the dense inverse
    x_rec, ladj_inv = t.inverse(y)
    torch.testing.assert_close(x_rec, (y - t.bias) @ torch.linalg.inv(W).T)
    torch.testing.assert_close(x_rec, x)
    torch.testing.assert_close(ladj_inv, -ladj)
    # W = P L U with the documented factor structure
    L, U = t.lower_factor(), t.upper_factor()
    torch.testing.assert_close(torch.diagonal(L), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(L, L.tril())
    torch.testing.assert_close(U, U.triu())
    torch.testing.assert_close(torch.diagonal(U), torch.exp(t.log_diag))
    P = torch.eye(5, dtype=torch.float64)[t.perm]
    torch.testing.assert_close(W, P @ L @ U)


def test_only_triangles_get_gradients():
    t = _perturbed(4, 0)
    y, ladj = t(torch.randn(8, 4))
    (y.square().sum() + ladj.sum()).backward()
    assert torch.all(t.lower.grad.triu() == 0) and t.lower.grad.tril(-1).abs().sum() > 0
    assert torch.all(t.upper.grad.tril() == 0) and t.upper.grad.triu(1).abs().sum() > 0


def test_explicit_permutation_and_errors():
    t = LULinear(3, permutation=[2, 0, 1])
    x = torch.randn(5, 3)
    torch.testing.assert_close(t(x)[0], x[:, [2, 0, 1]])
    with pytest.raises(ValueError, match="each of 0..2 once"):
        LULinear(3, permutation=[0, 0, 1])
    with pytest.raises(ValueError, match="unknown permutation 'shuffle'"):
        LULinear(3, permutation="shuffle")
    with pytest.raises(ValueError, match="positive int"):
        LULinear(0)
    with pytest.raises(ValueError, match=r"expects a batch of shape \(B, 3\).*got \(5, 2\)"):
        t(torch.randn(5, 2))
