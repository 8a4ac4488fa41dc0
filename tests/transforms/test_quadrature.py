"""Quadrature rules on [0, 1]: exactness on polynomials, accuracy on exp, dtype handling."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unflow_zoo.transforms.quadrature import QUADRATURE_RULES, Quadrature, quadrature_rule


RULES = list(QUADRATURE_RULES)


def _poly_integral(coeffs: torch.Tensor) -> float:
    """Exact integral over [0, 1] of sum_p coeffs[p] t^p."""
    return float(sum(c / (p + 1) for p, c in enumerate(coeffs.tolist())))


def _apply(nodes: torch.Tensor, weights: torch.Tensor, coeffs: torch.Tensor) -> float:
    powers = nodes.unsqueeze(-1) ** torch.arange(len(coeffs), dtype=torch.float64)
    return float(weights @ (powers @ coeffs))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [2, 3, 8, 33])
def test_rule_is_a_probability_on_the_unit_interval(rule: str, n: int) -> None:
    nodes, weights = quadrature_rule(rule, n)
    assert nodes.shape == weights.shape == (n,)
    assert nodes.dtype == weights.dtype == torch.float64
    assert float(nodes.min()) >= 0.0 and float(nodes.max()) <= 1.0
    assert bool((nodes[1:] > nodes[:-1]).all()), "nodes must increase"
    assert bool((weights > 0).all()), "positive weights keep the integral of a positive function positive"
    assert abs(float(weights.sum()) - 1.0) < 1e-14


@pytest.mark.parametrize("n", [2, 5, 8, 17])
def test_clenshaw_curtis_is_exact_up_to_degree_n_minus_1(n: int) -> None:
    nodes, weights = quadrature_rule("clenshaw-curtis", n)
    assert nodes[0] == 0.0 and nodes[-1] == 1.0  # both end points
    for p in range(n):
        assert abs(float(weights @ nodes**p) - 1 / (p + 1)) < 1e-13, p
    if n <= 8:  # and not beyond (for large n the error of the next degrees is below rounding)
        assert abs(float(weights @ nodes ** (n + 1)) - 1 / (n + 2)) > 1e-8


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_gauss_legendre_is_exact_up_to_degree_2n_minus_1(n: int) -> None:
    nodes, weights = quadrature_rule("gauss-legendre", n)
    for p in range(2 * n):
        assert abs(float(weights @ nodes**p) - 1 / (p + 1)) < 1e-13, p
    if n <= 5:
        assert abs(float(weights @ nodes ** (2 * n)) - 1 / (2 * n + 1)) > 1e-8


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=10),
    coeffs=st.lists(st.floats(min_value=-10, max_value=10), min_size=1, max_size=20),
)
def test_gauss_legendre_integrates_random_polynomials(n: int, coeffs: list[float]) -> None:
    c = torch.tensor(coeffs[: 2 * n], dtype=torch.float64)  # degree <= 2n - 1
    nodes, weights = quadrature_rule("gauss-legendre", n)
    assert abs(_apply(nodes, weights, c) - _poly_integral(c)) < 1e-12 * (1 + float(c.abs().sum()))


@pytest.mark.parametrize("n", [4, 16, 64])
def test_right_riemann_sum_has_its_first_order_error(n: int) -> None:
    nodes, weights = quadrature_rule("riemann", n)
    assert torch.allclose(nodes, torch.arange(1, n + 1, dtype=torch.float64) / n)
    # sum_{k=1}^n (k/n)/n = (n + 1) / (2n): the error on t is exactly 1/(2n)
    assert abs(float(weights @ nodes) - 0.5 - 1 / (2 * n)) < 1e-15


@pytest.mark.parametrize(("rule", "n", "tol"), [("gauss-legendre", 12, 1e-12), ("clenshaw-curtis", 20, 1e-12)])
def test_integrate_exp_on_segments(rule: str, n: int, tol: float) -> None:
    q = Quadrature(rule, n).double()
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(13, 1)
    x0 = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64)  # broadcast lower limits
    approx = q.integrate(torch.exp, x, x0)
    exact = torch.exp(x) - torch.exp(x0)
    assert approx.shape == (13, 3)
    assert float((approx - exact).abs().max()) < tol


def test_riemann_error_on_exp_shrinks_like_one_over_k() -> None:
    x = torch.tensor([2.0], dtype=torch.float64)
    exact = math.exp(2.0) - 1.0
    for k in (100, 200, 400):
        err = float(Quadrature("riemann", k).double().integrate(torch.exp, x)) - exact
        # the right sum of an increasing function overshoots by ~ (b - a) (f(b) - f(a)) / (2K)
        predicted = 2.0 * exact / (2 * k)
        assert err > 0
        assert abs(err - predicted) / predicted < 0.05


def test_buffers_follow_dtype_at_full_precision() -> None:
    q = Quadrature("gauss-legendre", 16)
    assert q.nodes.dtype == torch.get_default_dtype()
    q64 = q.to(torch.float64)
    ref_nodes, ref_weights = quadrature_rule("gauss-legendre", 16)
    # recomputed from float64, not float32 values upcast (those would be off by ~1e-8)
    assert q64.nodes.dtype == torch.float64
    assert float((q64.nodes - ref_nodes).abs().max()) == 0.0
    assert float((q64.weights - ref_weights).abs().max()) == 0.0
    # not part of the state dict: a function of (rule, n_nodes)
    assert "nodes" not in q.state_dict()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown quadrature rule"):
        quadrature_rule("simpson", 8)
    with pytest.raises(ValueError, match="at least 2 nodes"):
        quadrature_rule("clenshaw-curtis", 1)
    with pytest.raises(ValueError, match="at least 1 node"):
        Quadrature("gauss-legendre", 0)
