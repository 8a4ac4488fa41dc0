"""Constrained monotone maps (seed paper's constrained flow, B-NAF blocks)."""

from __future__ import annotations

import math

import pytest
import torch

from unflow_zoo.core import Flow, InputOutsideDomain, StandardNormal
from unflow_zoo.testing import check_normalization, check_transform, randomize_parameters_
from unflow_zoo.transforms.monotone import (
    INITS,
    POSITIVITY,
    ConstrainedMonotone,
    ConstrainedMonotone1d,
    log_sech2,
)


def _spread(t: ConstrainedMonotone, seed: int) -> ConstrainedMonotone:
    """Move away from the tiny initial output weights so the tanh part shapes the density."""
    randomize_parameters_(t, std=0.3, seed=seed)
    with torch.no_grad():
        t.a_diag.copy_(t._init_positive(tuple(t.a_diag.shape), 2.0 / (t.c * t.width)))
    return t


# ----- the contract kit ---------------------------------------------------------------


@pytest.mark.parametrize("positivity", POSITIVITY)
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("depth", [1, 2])
def test_kit_1d_with_grid_normalisation(positivity, init, depth):
    seed = 10 * POSITIVITY.index(positivity) + 2 * INITS.index(init) + depth  # a different draw per case
    torch.manual_seed(seed)
    t = ConstrainedMonotone(1, width=24, depth=depth, positivity=positivity, init=init)
    check_transform(t, 3 * torch.randn(32, 1), max_jacobian_points=4)
    # and after moving the parameters, where the network part carries most of the mass
    report = check_transform(_spread(t, seed), 3 * torch.randn(32, 1), max_jacobian_points=4)
    assert report.normalization is not None and abs(report.normalization - 1) < 0.01


def test_kit_1d_paper_width():
    t = ConstrainedMonotone1d(width=100)
    assert t.c == pytest.approx(0.1)
    check_transform(t, 2 * torch.randn(64, 1))
    check_transform(_spread(t, 3), 2 * torch.randn(64, 1))


@pytest.mark.parametrize("positivity", POSITIVITY)
@pytest.mark.parametrize("init", INITS)
def test_kit_2d_with_grid_normalisation(positivity, init):
    torch.manual_seed(7)
    depth = 2 if positivity in ("clamp", "exp") else 1  # both depths, half the grid cost
    t = ConstrainedMonotone(2, width=6, depth=depth, positivity=positivity, init=init, linear_term=0.1)
    report = check_transform(_spread(t, 7), torch.randn(16, 2), max_jacobian_points=4, grid_points=401)
    assert report.normalization is not None


def test_kit_2d_default_linear_term_normalises():
    torch.manual_seed(0)
    t = ConstrainedMonotone(2, width=8)  # linear_term=0.01 default
    report = check_transform(t, torch.randn(16, 2), max_jacobian_points=4, grid_points=401)
    assert abs(report.normalization - 1) < 0.01


@pytest.mark.parametrize("positivity", POSITIVITY)
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("depth", [1, 2])
def test_kit_5d(positivity, init, depth):
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        t = ConstrainedMonotone(5, width=8, depth=depth, positivity=positivity, init=init)
        check_transform(t, torch.randn(32, 5), max_jacobian_points=4)
        check_transform(_spread(t, seed), 2 * torch.randn(32, 5), max_jacobian_points=4)


# ----- structure and math -------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 3])
def test_block_autoregressive_structure(depth):
    torch.manual_seed(0)
    t = _spread(ConstrainedMonotone(4, width=5, depth=depth), 0).double()
    x = torch.randn(4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: t(v[None])[0][0], x)
    assert torch.all(jac.triu(1) == 0), "y_i must not depend on x_{>i}"
    assert torch.all(jac.diagonal() > 0), "y_i must increase in x_i"
    assert torch.any(jac.tril(-1).abs() > 1e-6), "the free lower blocks should couple coordinates"
    # log-derivatives in log space match the diagonal of the autograd Jacobian
    torch.testing.assert_close(t.log_derivatives(x[None])[0], jac.diagonal().log(), rtol=1e-12, atol=1e-12)


def test_not_autoregressive_is_elementwise():
    t = _spread(ConstrainedMonotone(3, width=5, autoregressive=False), 0).double()
    jac = torch.autograd.functional.jacobian(lambda v: t(v[None])[0][0], torch.randn(3, dtype=torch.float64))
    assert torch.all(jac - torch.diag(jac.diagonal()) == 0)


def test_paper_formula_1d():
    """f(x) = sum_r a_r c tanh(w_r x + b_r) + alpha x, f' from the closed form."""
    t = _spread(ConstrainedMonotone1d(width=7, linear_term=0.03), 1).double()
    a, w = (g[0].reshape(-1) for g in (t.parameter_groups(True)["a"], t.parameter_groups(True)["W"]))
    b = t.b[0].reshape(-1)
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)[:, None]
    z = w * x + b
    f = (a * t.c * torch.tanh(z)).sum(-1) + 0.03 * x[:, 0]
    df = t.c * (a * w * (1 - torch.tanh(z) ** 2)).sum(-1) + 0.03
    y, ladj = t(x)
    torch.testing.assert_close(y[:, 0], f)
    torch.testing.assert_close(ladj, df.log())


def test_log_sech2_is_exact_and_finite():
    z = torch.linspace(-30, 30, 601, dtype=torch.float64)
    torch.testing.assert_close(log_sech2(z), -2 * torch.log(torch.cosh(z)))
    big = torch.tensor([-1e4, 1e4], dtype=torch.float32)
    assert torch.isfinite(log_sech2(big)).all()


@pytest.mark.parametrize("x0", [50.0, -50.0])
def test_log_derivative_finite_where_naive_underflows(x0):
    """At |x| = 50 every tanh unit saturates: 1 - tanh^2 underflows to 0 in float32 (and in
    float64), so log f' from autograd is -inf, while the log-space value is exact."""
    t = ConstrainedMonotone1d(width=16, linear_term=0.0)
    with torch.no_grad():
        t.w_diag[0].copy_(torch.linspace(2, 4, 16).reshape(16, 1))  # |z| in [100, 200]
        t.b[0].zero_()
    x = torch.tensor([[x0]], requires_grad=True)
    y, ladj = t(x)
    (naive,) = torch.autograd.grad(y.sum(), x)
    assert naive.item() == 0.0  # so the naive log f'(x) is -inf
    assert torch.isfinite(ladj).all()
    # reference: f' = c sum a w / cosh^2(w x + b) in float64, where cosh^2 still fits (~1e173)
    a = t.a_diag.detach().double().reshape(-1)
    w = t.w_diag[0].detach().double().reshape(-1)
    ref = math.log(t.c * float((a * w / torch.cosh(w * x0) ** 2).sum()))
    assert ref < -190  # far below float32's smallest positive number, ~exp(-103)
    assert ladj.item() == pytest.approx(ref, rel=1e-5)


def test_deep_log_derivative_finite_in_far_tails():
    torch.manual_seed(0)
    t = ConstrainedMonotone(3, width=32, depth=3, linear_term=0.0)
    x = torch.tensor([[50.0, -50.0, 80.0], [-300.0, 300.0, 1e4]])
    _, ladj = t(x)
    assert torch.isfinite(ladj).all()
    ref = t.double()(x.double())[1]
    torch.testing.assert_close(ladj.double(), ref, rtol=1e-4, atol=1e-2)


# ----- inverse --------------------------------------------------------------------------


def test_inverse_far_in_the_tails_float64():
    torch.manual_seed(0)
    t = _spread(ConstrainedMonotone(2, width=16), 0).double()  # linear_term=0.01
    x = torch.tensor([[-1e4, 3.0], [-100.0, -1e5], [0.5, 10.0], [100.0, -7.0], [1e4, 1e4]], dtype=torch.float64)
    y, ladj = t(x)
    x_rec, ladj_inv = t.inverse(y)
    torch.testing.assert_close(x_rec, x, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(ladj_inv, -ladj)
    # extreme base draws have preimages too, and forward maps them back
    z = torch.tensor([[-40.0, 40.0], [9.0, -9.0]], dtype=torch.float64)
    torch.testing.assert_close(t(t.inverse(z)[0])[0], z, rtol=1e-12, atol=1e-10)


def test_inverse_float32():
    torch.manual_seed(1)
    t = _spread(ConstrainedMonotone(3, width=16, depth=2, positivity="softplus"), 1)
    x = 3 * torch.randn(256, 3)
    x_rec, _ = t.inverse(t(x)[0])
    torch.testing.assert_close(x_rec, x, rtol=1e-4, atol=1e-4)


def test_paper_exact_map_is_bounded_and_subnormalised():
    """linear_term=0: the image is (inf, sup), exp(log_prob) integrates to P_Z(image) < 1,
    points inside invert (also next to the edge), points outside raise InputOutsideDomain."""
    torch.manual_seed(0)
    t = _spread(ConstrainedMonotone1d(width=12, linear_term=0.0), 0).double()
    inf, sup = (v.item() for v in t.image_bounds(torch.zeros(1, 1, dtype=torch.float64), 0))
    # saturation value: c * (sum_r a_r * -1 or +1)
    a = t.parameter_groups(effective=True)["a"][0].sum().item()
    assert sup == pytest.approx(t.c * a) and inf == pytest.approx(-t.c * a)
    mass = 0.5 * (math.erf(sup / math.sqrt(2)) - math.erf(inf / math.sqrt(2)))
    assert mass < 0.99
    total = check_normalization(
        Flow(t, StandardNormal(1).double()), bounds=[(-60.0, 60.0)], points=200001, tol=1.0
    )
    assert total == pytest.approx(mass, abs=2e-3)
    y = torch.tensor([[inf + 1e-9], [0.3 * inf], [0.0], [0.7 * sup], [sup - 1e-9]], dtype=torch.float64)
    x, _ = t.inverse(y)
    torch.testing.assert_close(t(x)[0], y, rtol=0, atol=1e-10)
    with pytest.raises(InputOutsideDomain, match="outside the image"):
        t.inverse(torch.tensor([[0.0], [sup + 0.1]], dtype=torch.float64))


def test_paper_exact_2d_bounds_depend_on_the_past():
    torch.manual_seed(0)
    t = _spread(ConstrainedMonotone(2, width=6, depth=2, linear_term=0.0), 0).double()
    x = torch.randn(64, 2, dtype=torch.float64)
    y, _ = t(x)
    lo, hi = t.image_bounds(x, 1)
    assert torch.all(lo < y[:, 1]) and torch.all(y[:, 1] < hi)
    assert lo.std() > 0  # the box for y_2 moves with x_1
    x_rec, _ = t.inverse(y)
    torch.testing.assert_close(x_rec, x, rtol=1e-9, atol=1e-9)


# ----- parametrisation, initialisation, projection ------------------------------------


@pytest.mark.parametrize("init", INITS)
def test_initial_effective_weights_follow_the_stated_law(init):
    m = 4000
    ref = None
    for positivity in POSITIVITY:
        torch.manual_seed(0)
        t = ConstrainedMonotone1d(width=m, positivity=positivity, init=init, std_a=0.005)
        g = {k: torch.cat([v.detach().reshape(-1) for v in vs]) for k, vs in t.parameter_groups(True).items()}
        if ref is None:
            ref = g
            std = 1.0 if init == "standard-normal" else 1.0 / math.sqrt(m)
            half_normal_mean = math.sqrt(2 / math.pi)
            assert g["W"].mean().item() == pytest.approx(half_normal_mean * std, rel=0.05)
            assert g["b"].std().item() == pytest.approx(std, rel=0.05)
            assert g["a"].mean().item() == pytest.approx(half_normal_mean * 0.005, rel=0.05)
            assert t.c == pytest.approx(1 / math.sqrt(m) if init == "standard-normal" else 1.0)
        else:
            # every reparametrisation starts from the same effective weights as the clamp mode
            for k in ref:
                torch.testing.assert_close(g[k], ref[k], rtol=1e-4, atol=2e-6)
        assert g["W"].min() >= t.eps and g["a"].min() >= t.eps


def test_project_clamps_only_in_clamp_mode():
    torch.manual_seed(0)
    t = ConstrainedMonotone(3, width=4, eps=1e-4)
    with torch.no_grad():
        for p in [*t.w_diag, t.a_diag]:
            p.sub_(10.0)  # what a large SGD step can do
        t.w_lower[0].add_(1.0)  # including the masked (unused) entries
    x = torch.randn(8, 3)
    y_before = t(x)[0]  # the forward already reads clamp_min(eps)
    t.project_()
    for p in [*t.w_diag, t.a_diag]:
        assert p.min().item() == pytest.approx(1e-4) and torch.all(p >= 1e-4)
    assert torch.all(t.w_lower[0][t._mask(0) == 0] == 0)
    torch.testing.assert_close(t(x)[0], y_before)

    s = ConstrainedMonotone(3, width=4, positivity="exp")
    with torch.no_grad():
        s.a_diag.sub_(100.0)
    before = {k: v.clone() for k, v in s.state_dict().items()}
    s.project_()
    # raw parameters are unconstrained under a reparametrisation: nothing to project
    assert all(torch.equal(v, before[k]) for k, v in s.state_dict().items())
    assert s.a_diag.min() < -90 and torch.all(s.parameter_groups(True)["a"][0] >= s.eps)


def test_parameter_groups_cover_every_parameter_once():
    t = ConstrainedMonotone(3, width=4, depth=2)
    groups = t.parameter_groups()
    assert set(groups) == {"W", "b", "a"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in t.parameters()}
    assert len(groups["W"]) == 4 and len(groups["b"]) == 2 and len(groups["a"]) == 2


def test_train_layers_sets_requires_grad():
    t = ConstrainedMonotone(2, width=4, train_layers=["w", "b"])
    groups = t.parameter_groups()
    assert all(p.requires_grad for p in groups["W"] + groups["b"])
    assert not any(p.requires_grad for p in groups["a"])
    assert t.train_layers == ("W", "b")
    with pytest.raises(ValueError, match="unknown parameter groups"):
        ConstrainedMonotone(2, train_layers=["W", "c"])


def test_clear_errors():
    with pytest.raises(ValueError, match="positivity"):
        ConstrainedMonotone(1, positivity="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init"):
        ConstrainedMonotone(1, init="xavier")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps must be > 0"):
        ConstrainedMonotone(1, eps=0.0)
    with pytest.raises(ValueError, match="linear_term"):
        ConstrainedMonotone(1, linear_term=-1.0)
    t = ConstrainedMonotone(2, width=3)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        t(torch.randn(4, 3))
    with pytest.raises(ValueError, match="unconditional"):
        t(torch.randn(4, 2), torch.randn(4, 1))


# ----- context (conditional maps) -------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
def test_conditional_map_starts_as_the_unconditional_one(depth):
    """``b(c) = b + V c`` with ``V = 0``: the same draws, and the log-space path gives the fused path's numbers."""
    torch.manual_seed(3)
    plain = ConstrainedMonotone(3, width=6, depth=depth)
    torch.manual_seed(3)
    cond = ConstrainedMonotone(3, width=6, depth=depth, context_features=2)
    state = cond.state_dict()
    assert torch.equal(state.pop("context_weight"), torch.zeros(3, 6, 2))
    assert state.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in state.items())
    _spread(plain, 0).double()
    cond.load_state_dict({**plain.state_dict(), "context_weight": torch.zeros(3, 6, 2)})
    cond.double()
    x = torch.randn(16, 3, dtype=torch.float64)
    y, ladj = plain(x)
    y_c, ladj_c = cond(x, torch.randn(16, 2, dtype=torch.float64))
    torch.testing.assert_close(y_c, y)
    torch.testing.assert_close(ladj_c, ladj)


@pytest.mark.parametrize("depth", [1, 2])
def test_conditional_map_passes_the_kit_and_is_increasing_for_every_context(depth):
    torch.manual_seed(4)
    t = _spread(ConstrainedMonotone(2, width=6, depth=depth, context_features=3), 1)
    randomize_parameters_(t, std=0.5, seed=5)  # moves V (the context weights) away from zero
    t.project_()
    x, c = torch.randn(12, 2), torch.randn(12, 3)
    check_transform(t, x, c, check_grid=False)
    assert not torch.allclose(t(x, c)[0], t(x, c.flip(0))[0])
    grid = torch.linspace(-4, 4, 200).unsqueeze(1)
    for row in torch.randn(4, 3):
        ys = t(torch.cat([grid, torch.zeros_like(grid)], 1), row.expand(200, 3))[0][:, 0]
        assert (ys.diff() > 0).all()
    assert t.parameter_groups()["b"][-1] is t.context_weight


def test_conditional_map_refuses_a_missing_context():
    t = ConstrainedMonotone(2, width=3, context_features=2)
    with pytest.raises(ValueError, match=r"p\(x \| c\)"):
        t(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        t.inverse(torch.randn(4, 2), torch.randn(4, 3))
