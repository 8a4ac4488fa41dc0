"""Deep sigmoidal flows: the elementwise map (monotone, log-det vs autograd, bounded image)
and the autoregressive layer through the conformance kit."""

import math

import pytest
import torch

from unflow_zoo.core.transform import InputOutsideDomain
from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.sigmoidal import DSFAutoregressive, dsf_params_per_feature, sigmoidal_flow

INV_ATOL = 1e-6  # the documented float64 bisection accuracy


def _params(n, depth, units, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, depth, 3, units, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logdet_matches_autograd(depth, seed):
    p = _params(500, depth, 7, seed)
    x = 4 * torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x.requires_grad_(True)
    y, ladj = sigmoidal_flow(x, p)
    (grad,) = torch.autograd.grad(y.sum(), x)  # elementwise map: diagonal Jacobian
    assert (grad > 0).all()
    torch.testing.assert_close(ladj, grad.log(), atol=1e-9, rtol=1e-9)


def test_monotone_bounded_and_finite_far_out():
    delta = 1e-6
    p = _params(1, 2, 5, 3).expand(20001, -1, -1, -1)
    x = torch.linspace(-50, 50, 20001, dtype=torch.float64)
    y, ladj = sigmoidal_flow(x, p, delta)
    assert (y.diff() > 0).all() and torch.isfinite(ladj).all()
    big = torch.tensor([-1e30, 1e30], dtype=torch.float64)
    yb, lb = sigmoidal_flow(big, p[:2], delta)
    assert torch.isfinite(yb).all() and torch.isfinite(lb).all()
    bound = math.log((2 - delta) / delta)  # the documented image (-L, L) of one layer
    assert yb.abs().max() <= bound + 1e-9


def test_zero_parameters_are_near_the_identity():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    y, ladj = sigmoidal_flow(x, torch.zeros(101, 1, 3, 4, dtype=torch.float64))
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_passes_the_kit(dim, seed):
    torch.manual_seed(seed)
    t = DSFAutoregressive(dim, hidden=[12], units=6, depth=2, order=list(range(dim))[::-1])
    randomize_parameters_(t, 0.3, seed)
    report = check_transform(
        t, 2 * torch.randn(12, dim), inverse_atol=INV_ATOL, grid_bounds=[(-9.0, 9.0)] * dim if dim <= 2 else None,
        grid_points=(4001 if dim == 1 else 161),
    )
    if dim <= 2:
        assert abs(report.normalization - 1) < 0.01
    assert report.inverse_error < INV_ATOL


def test_autoregressive_structure():
    t = DSFAutoregressive(4, hidden=[16], units=4, order=[2, 0, 3, 1]).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: t(v.unsqueeze(0))[0][0], x[0])
    pos = torch.empty(4, dtype=torch.long)
    pos[torch.tensor([2, 0, 3, 1])] = torch.arange(4)
    later = pos[None, :] > pos[:, None]  # output i cannot depend on inputs later in the order
    assert (jac[later] == 0).all() and (jac.diagonal() > 0).all()


def test_inverse_outside_the_image_raises():
    t = DSFAutoregressive(2, hidden=[8], units=3).double()
    with pytest.raises(InputOutsideDomain, match="outside the image"):
        t.inverse(torch.tensor([[0.0, 40.0]], dtype=torch.float64))


def test_bad_arguments():
    assert dsf_params_per_feature(16, 2) == 96
    with pytest.raises(ValueError, match="units >= 1"):
        DSFAutoregressive(2, units=0)
    with pytest.raises(ValueError, match="delta"):
        DSFAutoregressive(2, delta=0.0)
    with pytest.raises(ValueError, match="permutation"):
        DSFAutoregressive(3, order=[0, 0, 1])
    with pytest.raises(ValueError, match="features"):
        DSFAutoregressive(3)(torch.randn(4, 2))
