"""Unconstrained monotone transforms: contract, Leibniz backward, inverse, lower limit, speed-critical structure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unflow_zoo.core.distributions import StandardExponential
from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import InputOutsideDomain
from unflow_zoo.nn.integrand import INTEGRAND_ACTIVATIONS, Integrand, MLPIntegrand, PaperIntegrand
from unflow_zoo.nn.made import MADE
from unflow_zoo.testing import check_normalization, check_transform
from unflow_zoo.transforms.integral import (
    NeuralIntegral,
    UnconstrainedMonotoneTransform,
    log_positive,
    neural_integral,
    positive,
)
from unflow_zoo.transforms.quadrature import Quadrature


F64 = torch.float64
SMALL = dict(hidden=(16, 16), embedding=4, conditioner_hidden=(16, 16))


def small(features: int, **kw) -> UnconstrainedMonotoneTransform:
    args = {**SMALL, **kw}
    return UnconstrainedMonotoneTransform(features, **args)


def plain_forward(t: UnconstrainedMonotoneTransform, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same transform with plain autograd through the quadrature (the reference for the backward)."""
    c, beta = t._conditioning(x, None)
    ts = t.integrand.path_tensors()
    pts = t.quadrature.points(x, t.lower)
    g = positive(t.integrand.evaluate(c, pts, ts), t.phi, t.min_slope)
    y = (x - t.lower) * (g @ t.quadrature.weights)
    if beta is not None:
        y = y + beta
    n_x = t.integrand.evaluate(c, x.unsqueeze(-1), ts).squeeze(-1)
    return y, log_positive(n_x, t.phi, t.min_slope).sum(-1)


# ----- the Transform contract (check_transform) ------------------------------------------------


@pytest.mark.parametrize(("rule", "n_nodes", "tol"), [
    ("clenshaw-curtis", 48, 2e-3),
    ("gauss-legendre", 48, 2e-3),
    # first order: the density (exact g) and the map (the quadrature) differ by O(1/K)
    ("riemann", 150, 1e-2),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_contract_1d_with_grid_normalisation(rule: str, n_nodes: int, tol: float, seed: int) -> None:
    torch.manual_seed(seed)
    t = small(1, act="tanh", quadrature=rule, n_nodes=n_nodes)
    report = check_transform(t, torch.randn(64, 1) * 2, grid_points=4001, grid_tol=tol)
    assert report.inverse_error < 1e-6
    assert report.normalization is not None and abs(report.normalization - 1) < tol


@pytest.mark.parametrize(("rule", "n_nodes", "integrand", "seed"), [
    ("clenshaw-curtis", 32, "mlp", 0),
    ("gauss-legendre", 32, "mlp", 1),
    ("riemann", 128, "mlp", 2),
    ("clenshaw-curtis", 32, "paper", 3),
])
def test_contract_2d_with_grid_normalisation(rule: str, n_nodes: int, integrand: str, seed: int) -> None:
    torch.manual_seed(seed)
    t = small(2, integrand=integrand, act="tanh", width=32, quadrature=rule, n_nodes=n_nodes)
    report = check_transform(t, torch.randn(32, 2), grid_points=161, grid_tol=0.01)
    assert report.normalization is not None


@pytest.mark.parametrize(("rule", "n_nodes"), [("clenshaw-curtis", 16), ("gauss-legendre", 16), ("riemann", 64)])
@pytest.mark.parametrize("seed", [0, 1])
def test_contract_5d(rule: str, n_nodes: int, seed: int) -> None:
    torch.manual_seed(seed)
    # the inverse solves the same quadrature the forward computes, so it is exact to the
    # solver tolerance however few nodes there are; relu makes the integrand least smooth
    t = small(5, act="relu" if seed else "elu", quadrature=rule, n_nodes=n_nodes, order=[3, 0, 4, 1, 2])
    check_transform(t, torch.randn(32, 5) * 1.5)


def test_contract_softplus_and_exp_phi_and_paper_integrand_1d() -> None:
    for phi in ("softplus", "exp"):
        torch.manual_seed(3)
        t = small(1, integrand="paper", width=64, phi=phi, n_nodes=48)
        check_transform(t, torch.randn(32, 1), grid_points=4001)


# ----- the custom backward (Leibniz rule) -----------------------------------------------------


@pytest.mark.parametrize("integrand", ["mlp", "paper"])
def test_backward_matches_plain_autograd_through_the_quadrature(integrand: str) -> None:
    torch.manual_seed(0)
    t = small(3, integrand=integrand, width=32, act="tanh", train_top=True, n_nodes=128).to(F64)
    x = torch.randn(16, 3, dtype=F64, requires_grad=True)
    w = torch.randn(16, 3, dtype=F64)
    params = [p for p in t.parameters()]

    y, ladj = t(x)
    grads = torch.autograd.grad((y * w).sum() + ladj.sum(), [x, *params])
    y_ref, ladj_ref = plain_forward(t, x)
    grads_ref = torch.autograd.grad((y_ref * w).sum() + ladj_ref.sum(), [x, *params])

    assert torch.allclose(y, y_ref, atol=1e-13) and torch.allclose(ladj, ladj_ref, atol=1e-13)
    for (name, _), g, g_ref in zip(t.named_parameters(), grads[1:], grads_ref[1:]):
        # the parameter gradients of the quadrature are identical, not approximately equal
        assert torch.allclose(g, g_ref, atol=1e-12, rtol=1e-10), name
    # x: the Leibniz rule gives g(x), autograd the derivative of the quadrature; they agree to
    # the quadrature error, which for a smooth (tanh) MLP and 128 nodes is below 1e-6
    tol = 1e-6 if integrand == "mlp" else 5e-2  # the paper net is piecewise linear in t
    assert float((grads[0] - grads_ref[0]).abs().max()) < tol


def _gradcheck_inputs(integrand: Integrand, n: int, x0_grad: bool) -> tuple:
    torch.manual_seed(1)
    x = torch.randn(n, dtype=F64, requires_grad=True)
    x0 = torch.tensor(-0.3, dtype=F64, requires_grad=x0_grad)
    c = torch.randn(n, integrand.hidden_size, dtype=F64, requires_grad=True)
    tensors = [p.detach().clone().requires_grad_(True) for p in integrand.path_tensors()]
    return x, x0, c, tensors


@pytest.mark.parametrize("phi", ["elu", "softplus", "exp"])
def test_gradcheck_every_input(phi: str) -> None:
    torch.manual_seed(0)
    net = MLPIntegrand(3, hidden=(8, 8), act="tanh").to(F64)
    q = Quadrature("clenshaw-curtis", 40).to(F64)
    x, x0, c, tensors = _gradcheck_inputs(net, 5, x0_grad=True)

    def f(x, x0, c, *ts):
        return NeuralIntegral.apply(x, x0, c, q.nodes, q.weights, net, phi, 1e-3, 64, *ts)

    # chunk=64 splits the 5 integrals into blocks of one: the blocked backward is exercised
    assert torch.autograd.gradcheck(f, (x, x0, c, *tensors), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_gradcheck_paper_integrand() -> None:
    torch.manual_seed(0)
    net = PaperIntegrand(2, width=16, train_top=True).to(F64)
    q = Quadrature("gauss-legendre", 12).to(F64)
    x, x0, c, tensors = _gradcheck_inputs(net, 4, x0_grad=False)
    x = x.detach()  # a ReLU net is piecewise linear in t: check c and the weights, exact for the quadrature

    def f(c, *ts):
        return NeuralIntegral.apply(x, x0, c, q.nodes, q.weights, net, "elu", 0.0, 4096, *ts)

    assert torch.autograd.gradcheck(f, (c, *tensors), eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("act", INTEGRAND_ACTIVATIONS)
def test_hand_written_vjp_matches_autograd(act: str) -> None:
    torch.manual_seed(0)
    nets = [MLPIntegrand(3, hidden=(8, 6), act=act), PaperIntegrand(3, width=8, train_top=True)]
    for net in nets:
        net = net.to(F64)
        c = torch.randn(4, net.hidden_size, dtype=F64)
        t = torch.randn(4, 5, dtype=F64)
        tensors = net.path_tensors()
        weight = torch.randn(4, 5, dtype=F64)
        need = [True] * len(tensors)
        got = net.vjp(c, t, tensors, lambda n: weight * n.cos(), True, need)
        ref = Integrand.vjp(net, c, t, tensors, lambda n: weight * n.cos(), True, need)
        assert torch.allclose(got[0], ref[0], atol=1e-14)
        assert torch.allclose(got[1], ref[1], atol=1e-12)
        for a, b in zip(got[2], ref[2]):
            assert torch.allclose(a, b, atol=1e-12)


def test_memory_does_not_grow_with_the_number_of_nodes() -> None:
    torch.manual_seed(0)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    def saved_numbers(n_nodes: int) -> int:
        saved.clear()
        t = small(4, n_nodes=n_nodes)
        x = torch.randn(64, 4, requires_grad=True)
        c = t._conditioning(x, None)[0]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            NeuralIntegral.apply(
                x, t.lower, c, t.quadrature.nodes, t.quadrature.weights,
                t.integrand, "elu", 0.0, 4096, *t.integrand.path_tensors(),
            )
        assert saved, "the hooks saw nothing"
        return sum(saved) - 2 * n_nodes  # the rule itself: nodes and weights

    assert saved_numbers(8) == saved_numbers(256)


def test_works_under_functional_jacobian_and_no_grad() -> None:
    t = small(3).to(F64)
    x = torch.randn(3, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda v: t(v.reshape(1, 3))[0].reshape(-1), x)
    # autoregressive in the identity order: lower triangular, diagonal = g(x_i) > 0
    assert torch.allclose(jac.triu(1), torch.zeros(3, 3, dtype=F64))
    assert torch.allclose(jac.diagonal(), t.derivative(x.reshape(1, 3))[0], atol=1e-14)
    with torch.no_grad():
        y, ladj = t(x.reshape(1, 3))
    assert y.requires_grad is False and torch.isfinite(ladj).all()


# ----- the integrand networks ------------------------------------------------------------------


def test_split_first_layer_is_the_plain_mlp_on_h_and_t() -> None:
    torch.manual_seed(0)
    net = MLPIntegrand(4, hidden=(8, 8), act="elu")
    h = torch.randn(6, 4)
    t = torch.randn(6, 5)
    plain = nn.Sequential(net.layers[0], nn.ELU(), net.layers[1], nn.ELU(), net.layers[2])
    ref = plain(torch.cat([h.unsqueeze(1).expand(6, 5, 4), t.unsqueeze(-1)], dim=-1)).squeeze(-1)
    assert torch.allclose(net(t, h), ref, atol=1e-6)


def test_paper_integrand_initialisation_and_groups() -> None:
    torch.manual_seed(0)
    m = 4096
    net = PaperIntegrand(2, width=m, std_a=0.25)
    # official code, "gaussian-sqrt(m)": W, b ~ N(0, 1/m), top layer a ~ N(0, 0.25^2) fixed
    assert abs(float(net.W.detach().std()) * math.sqrt(m) - 1) < 0.05
    assert abs(float(net.b.detach().std()) * math.sqrt(m) - 1) < 0.05
    assert abs(float(net.a.std()) - 0.25) < 0.02
    assert "a" in dict(net.named_buffers()) and "a" not in dict(net.named_parameters())
    groups = net.parameter_groups()
    assert set(groups) == {"W", "b", "a"} and groups["W"][0] is net.W
    ntk = PaperIntegrand(2, width=m, init="gaussian-std", train_top=True)
    assert abs(float(ntk.W.detach().std()) - 1) < 0.05 and ntk.scale == pytest.approx(1 / math.sqrt(m))
    assert isinstance(ntk.a, nn.Parameter)
    # the top layer is fixed: training leaves it where it started
    t = UnconstrainedMonotoneTransform(1, integrand="paper", width=32, embedding=0)
    a0 = t.integrand.a.clone()
    opt = torch.optim.SGD(t.parameters(), lr=0.1)
    loss = -t(torch.randn(64, 1))[1].mean()
    loss.backward()
    opt.step()
    assert torch.equal(t.integrand.a, a0)
    assert t.integrand.W.grad is not None and float(t.integrand.W.grad.abs().sum()) > 0


def test_parameter_groups_of_the_mlp() -> None:
    t = small(2)
    groups = t.parameter_groups()
    layers = t.integrand.layers
    assert [g.shape for g in groups["W"]] == [layers[0].weight.shape, layers[1].weight.shape]
    assert groups["b"][0] is layers[0].bias and groups["a"][0] is layers[2].weight


# ----- the inverse -------------------------------------------------------------------------------


@pytest.mark.parametrize("features", [1, 3])
def test_inverse_far_in_the_tails(features: int) -> None:
    torch.manual_seed(0)
    t = small(features, act="tanh").to(F64)
    y = torch.linspace(-1e3, 1e3, 41, dtype=F64).unsqueeze(1).repeat(1, features)
    y[:, -1] = y[:, -1].flip(0)
    x, ladj_inv = t.inverse(y)
    assert torch.isfinite(x).all() and torch.isfinite(ladj_inv).all()
    y_back, ladj = t(x)
    slope = t.derivative(x)
    # |x - x*| <= 1e-6 means |y(x) - y| <= g(x) * 1e-6 (plus rounding of y ~ 1e3)
    assert bool(((y_back - y).abs() <= slope * 1e-6 + 1e-12 * y.abs()).all())
    assert torch.allclose(ladj, -ladj_inv, atol=1e-10)
    # and the other way round from far-out data
    x_far = torch.linspace(-200, 200, 9, dtype=F64).unsqueeze(1).repeat(1, features)
    assert float((t.inverse(t(x_far)[0])[0] - x_far).abs().max()) < 1e-6


def test_inverse_in_float32_meets_the_tolerance_for_moderate_values() -> None:
    torch.manual_seed(0)
    t = small(2)
    x = torch.randn(256, 2)
    with torch.no_grad():
        x_rec, _ = t.inverse(t(x)[0])
    # documented: 1e-6 in x, or a few float32 ulps of x
    assert float(((x_rec - x).abs() - 4 * torch.finfo(torch.float32).eps * x.abs()).max()) <= 1e-6


def test_inverse_runs_made_once_per_coordinate() -> None:
    t = small(5)
    calls = []
    t.conditioner.register_forward_hook(lambda *args: calls.append(1))
    t.inverse(torch.randn(128, 5))
    assert len(calls) == 5


def test_image_bounded_without_min_slope_raises() -> None:
    # Gauss-Legendre: no node at x0 (Clenshaw-Curtis' end-point node would keep the
    # quadrature itself growing like w_0 g(x0) x even where the true integral is bounded)
    t = UnconstrainedMonotoneTransform(
        1, integrand="paper", width=4, embedding=0, min_slope=0.0, max_iter=80, quadrature="gauss-legendre"
    )
    with torch.no_grad():
        # N(t) = -sum relu(t + 1): g = exp(N) decays, so the image is bounded above
        t.integrand.W.fill_(1.0)
        t.integrand.b.fill_(1.0)
        t.integrand.a.fill_(-1.0)
    with torch.no_grad():
        y_max = t(torch.tensor([[50.0]]))[0]
    assert float(y_max) < 5
    with pytest.raises(InputOutsideDomain, match="outside the image"):
        t.inverse(torch.tensor([[100.0]]))
    # with the default floor on the slope the same network is onto
    t.min_slope = 1e-3
    x, _ = t.inverse(torch.tensor([[100.0]]))
    with torch.no_grad():
        assert abs(float(t(x)[0]) - 100.0) < 1e-3


# ----- lower limit and the exponential base ------------------------------------------------------


def test_lower_limit_and_exponential_base_1d() -> None:
    torch.manual_seed(0)
    x0 = -1.5
    t = small(1, act="tanh", lower_limit=x0, offset=False, n_nodes=48)
    flow = Flow(t, StandardExponential(1))
    above = x0 + torch.rand(200, 1) * 5
    below = x0 - torch.rand(20, 1) - 1e-3
    with torch.no_grad():
        assert bool((t(above)[0] >= 0).all())
        assert torch.isfinite(flow.log_prob(above)).all()
        assert bool((flow.log_prob(below) == -math.inf).all())
        samples = flow.sample(500)
    assert bool((samples >= x0).all())
    # the density lives on [x0, inf) and integrates to 1 there
    flow64 = flow.to(F64)
    total = check_normalization(flow64, bounds=[(x0, x0 + 40.0)], points=40001, tol=2e-3)
    assert total == pytest.approx(1.0, abs=2e-3)
    # check_transform with the same base, grid bounds from samples (density 0 below x0)
    check_transform(t, above[:32], base=StandardExponential(1), grid_points=20001, grid_tol=5e-3)


def test_errors() -> None:
    with pytest.raises(ValueError, match="expects a batch of shape"):
        small(2)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="unknown phi"):
        small(2, phi="relu")
    with pytest.raises(ValueError, match="unknown integrand"):
        small(2, integrand="deep")
    with pytest.raises(ValueError, match="activation"):
        small(2, act="swish")
    with pytest.raises(ValueError, match="permutation"):
        small(3, order=[0, 0, 1])
    assert isinstance(small(1).conditioner, nn.Module) and not isinstance(small(1).conditioner, MADE)
    assert isinstance(small(2).conditioner, MADE)


def test_neural_integral_helper_integrates_a_known_function() -> None:
    # an integrand whose N is constant in t: the integral is (x - x0) * phi(N) exactly
    net = MLPIntegrand(1, hidden=(4,), act="tanh").to(F64)
    with torch.no_grad():
        net.layers[0].weight[:, 1] = 0.0  # no dependence on t
    q = Quadrature("riemann", 3).to(F64)
    x = torch.tensor([2.0, -1.0], dtype=F64)
    c = net.condition(torch.zeros(2, 1, dtype=F64))
    got = neural_integral(x, c, net, q, x0=0.5)
    n_const = net(torch.zeros(2, 1, dtype=F64), torch.zeros(2, 1, dtype=F64)).squeeze(-1)
    assert torch.allclose(got, (x - 0.5) * positive(n_const), atol=1e-14)


def test_blocking_does_not_change_results() -> None:
    torch.manual_seed(0)
    t = small(3).to(F64)
    x = torch.randn(50, 3, dtype=F64, requires_grad=True)
    results = []
    for chunk in (0, 7, 100, 4096):  # one block, one integral per block, a few, the default
        t.chunk = chunk
        y, ladj = t(x)
        grads = torch.autograd.grad((y.sin()).sum() + ladj.sum(), [x, *t.parameters()])
        results.append((y.detach(), grads))
    for y, grads in results[1:]:
        assert torch.allclose(y, results[0][0], atol=1e-14)
        for g, g0 in zip(grads, results[0][1]):
            assert torch.allclose(g, g0, atol=1e-12)
