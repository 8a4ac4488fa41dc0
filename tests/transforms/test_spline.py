"""Rational-quadratic splines: the function on its own (knots, tails, precision, monotonicity)
and the two layers built on it through the conformance kit."""

import pytest
import torch

from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.spline import (
    RQSAutoregressive,
    RQSCoupling,
    rational_quadratic_spline,
    spline_knots,
    spline_params_per_feature,
)

B = 3.0
K = 6


def _params(n, seed, scale=2.0, dtype=torch.float64):
    """Strongly non-uniform spline parameters, one spline per element of a batch of n."""
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(n, K, generator=g, dtype=dtype)
    h = scale * torch.randn(n, K, generator=g, dtype=dtype)
    d = scale * torch.randn(n, K - 1, generator=g, dtype=dtype)
    return w, h, d


def _spline(x, params, inverse=False):
    return rational_quadratic_spline(x, *params, inverse=inverse, tail_bound=B)


def _autograd_logdet(x, params):
    x = x.clone().requires_grad_(True)
    y, _ = _spline(x, params)
    (grad,) = torch.autograd.grad(y.sum(), x)  # elementwise map: the Jacobian is diagonal
    return grad.abs().log()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_and_logdet_match_autograd(seed):
    n = 4000
    params = _params(n, seed)
    x = torch.empty(n, dtype=torch.float64).uniform_(-1.3 * B, 1.3 * B, generator=torch.Generator().manual_seed(seed))
    y, ladj = _spline(x, params)
    x_rec, ladj_inv = _spline(y, params, inverse=True)
    # the inverse error is the output rounding times 1/g', which these parameters make large
    assert (x_rec - x).abs().max() < 1e-9
    assert (ladj + ladj_inv).abs().max() < 1e-9
    torch.testing.assert_close(ladj, _autograd_logdet(x, params), atol=1e-10, rtol=1e-10)


def test_monotone_and_onto_the_interval():
    params = tuple(p[:1].expand(20001, -1) for p in _params(1, 3))
    x = torch.linspace(-B, B, 20001, dtype=torch.float64)
    y, ladj = _spline(x, params)
    assert (y.diff() > 0).all()
    assert torch.isfinite(ladj).all()
    assert y[0] == -B and y[-1] == B


def test_inputs_exactly_on_knots_round_trip():
    n = 64
    params = _params(n, 4)
    xk, _ = spline_knots(params[0], B)
    yk, _ = spline_knots(params[1], B)
    # every knot, including the ends -B and B, for every one of the n splines
    x = xk.T.contiguous()  # (K+1, n): row j is knot j of each spline
    y_expected = yk.T
    p = tuple(q.unsqueeze(0).expand(K + 1, *q.shape) for q in params)
    y, ladj = _spline(x, p)
    torch.testing.assert_close(y, y_expected, atol=1e-12, rtol=0)
    assert torch.isfinite(ladj).all()
    x_rec, ladj_inv = _spline(y_expected.contiguous(), p, inverse=True)
    torch.testing.assert_close(x_rec, x, atol=1e-11, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj, _autograd_logdet(x, p), atol=1e-10, rtol=1e-10)
    # slope 1 at both ends: the tails join smoothly
    torch.testing.assert_close(ladj[0], torch.zeros(n, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj[-1], torch.zeros(n, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tail_bound_and_beyond(dtype):
    params = _params(6, 5, dtype=dtype)
    x = torch.tensor([-B, B, -B - 1e-3, B + 1e-3, -50.0, 50.0], dtype=dtype)
    y, ladj = _spline(x, params)
    assert torch.equal(y, x)  # +-B are fixed points, beyond them the identity
    assert torch.isfinite(ladj).all() and ladj.abs().max() < 1e-5
    assert torch.equal(ladj[2:], torch.zeros(4, dtype=dtype))
    x_rec, ladj_inv = _spline(x, params, inverse=True)
    assert torch.equal(x_rec, x)
    assert torch.equal(ladj_inv[2:], torch.zeros(4, dtype=dtype))
    torch.testing.assert_close(ladj, _autograd_logdet(x, params), atol=1e-5, rtol=0)
    # the outward slope is 1 on both sides of the tail bound
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_spline(xg, params)[0].sum(), xg)
    torch.testing.assert_close(grad, torch.ones_like(grad), atol=1e-4, rtol=0)


def test_float32_is_accurate():
    """float32 loses only a few ulps: where the spline is steep or flat the errors in x or y
    are the output rounding times the slope (or its inverse), nothing worse."""
    n = 20000
    params = _params(n, 6, scale=1.0, dtype=torch.float32)
    x = torch.empty(n).uniform_(-B, B, generator=torch.Generator().manual_seed(6))
    y, ladj = _spline(x, params)
    x_rec, ladj_inv = _spline(y, params, inverse=True)
    assert y.dtype == ladj.dtype == x_rec.dtype == torch.float32
    slope = ladj.double().exp()
    assert ((x_rec - x).abs() * slope).max() < 1e-5  # backward error of the inverse, in y units
    assert (_spline(x_rec, params)[0] - y).abs().max() < 1e-5  # residual
    # the inverse log-det is the forward one at the recovered point (which differs from x
    # by the conditioning of the flattest bins)
    assert (ladj_inv + _spline(x_rec, params)[1]).abs().max() < 1e-4
    assert (ladj + ladj_inv).abs().max() < 1e-2
    y64, ladj64 = _spline(x.double(), tuple(p.double() for p in params))
    assert ((y.double() - y64).abs() / (1 + slope)).max() < 1e-5
    assert (ladj.double() - ladj64).abs().max() < 1e-3


def test_zero_parameters_are_the_identity():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    zeros = (torch.zeros(101, K, dtype=torch.float64),) * 2 + (torch.zeros(101, K - 1, dtype=torch.float64),)
    y, ladj = _spline(x, zeros)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(x), atol=1e-12, rtol=0)


def test_bad_parameter_shapes_are_rejected():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="K-1 derivatives"):
        rational_quadratic_spline(x, torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="tail_bound"):
        rational_quadratic_spline(x, torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 3), tail_bound=0.0)
    assert spline_params_per_feature(8) == 23


def _layers(dim):
    yield RQSAutoregressive(dim, [16, 16], bins=K, tail_bound=B)
    if dim > 1:
        yield RQSCoupling(torch.arange(dim) % 2 == 0, [16, 16], bins=K, tail_bound=B)


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layers_pass_the_kit(dim, seed):
    for layer in _layers(dim):
        randomize_parameters_(layer, 0.3, seed)
        torch.manual_seed(seed)
        # some points beyond the tail bound, in the identity tails
        report = check_transform(
            layer, 1.5 * torch.randn(16, dim), inverse_atol=1e-8, grid_bounds=[(-8.0, 8.0)] * dim, grid_points=401
        )
        if dim <= 2:
            assert abs(report.normalization - 1) < 0.01, type(layer).__name__


def test_layers_start_as_the_identity():
    x = 2 * torch.randn(32, 3)
    for layer in _layers(3):
        y, ladj = layer(x)
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
        torch.testing.assert_close(ladj, torch.zeros(32), atol=1e-5, rtol=0)


def test_layers_with_context():
    ctx = torch.randn(16, 3)
    for layer in (
        RQSAutoregressive(4, [16], bins=4, context_features=3),
        RQSCoupling([True, False, True, False], [16], bins=4, context_features=3),
    ):
        randomize_parameters_(layer, 0.3, 0)
        check_transform(layer, torch.randn(16, 4), ctx)
        # the context changes the map
        assert not torch.allclose(layer(torch.ones(2, 4), ctx[:2])[0][0], layer(torch.ones(2, 4), ctx[:2])[0][1])


def test_autoregressive_respects_its_order():
    layer = randomize_parameters_(RQSAutoregressive(3, [16, 16], bins=4, order=[2, 0, 1]), 0.3, 0)
    check_transform(layer, torch.randn(8, 3))
    x = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda v: layer.double()(v)[0], x).reshape(3, 3)
    # output i depends only on inputs before it in the order 2 -> 0 -> 1
    assert jac[2, 0] == 0 and jac[2, 1] == 0 and jac[0, 1] == 0


def test_coupling_needs_two_features():
    with pytest.raises(ValueError, match="D >= 2"):
        RQSCoupling([True], [8])
    with pytest.raises(ValueError, match="some but not all"):
        RQSCoupling([True, True], [8])
