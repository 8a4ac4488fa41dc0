"""Numerical inverses check their residual (issue 15): round trips at normal values, far-out targets
that invert or raise InverseError, forced solver failures, and a fuzz over every transform with
random batch sizes (also 0) and edge values (0, tiny, huge, NaN, inf)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from unflow_zoo.core.transform import Transform
from unflow_zoo.errors import InputOutsideDomain, InverseError, UnflowZooError
from unflow_zoo.models.registry import create_model
from unflow_zoo.testing import randomize_parameters_
from unflow_zoo.transforms import (
    ActNorm,
    Affine,
    AffineCoupling,
    ConstrainedMonotone,
    DSFAutoregressive,
    GatedAffineCoupling,
    GlowAffineCoupling,
    InvertibleConv1x1,
    LeakyReLU,
    LULinear,
    MaskedAffineAutoregressive,
    MultiScaleGlow,
    ODENet,
    ODETransform,
    PaperUnconstrainedTransform,
    RQSAutoregressive,
    RQSCoupling,
    SelfNormConv,
    SelfNormLinear,
    SmoothLeakyReLU,
    SplitPrior,
    Squeeze,
    UnconstrainedMonotoneTransform,
    alternating_mask,
)
from unflow_zoo.transforms.bisection import residual_tolerance, solve_increasing
from unflow_zoo.transforms.integral import solve_monotone

UMNN_SMALL = {"hidden": (8, 8), "embedding": 4, "conditioner_hidden": (8,), "n_nodes": 16}


def _seeded(make: Callable[[], Transform], std: float = 0.3, seed: int = 0) -> Transform:
    torch.manual_seed(seed)
    return randomize_parameters_(make(), std, seed).eval()


# ----- the numerical inverses ------------------------------------------------------------------------

# name -> (builder, features, image is all of R)
NUMERICAL: dict[str, tuple[Callable[[], Transform], int, bool]] = {
    "umnn-1d": (lambda: _seeded(lambda: UnconstrainedMonotoneTransform(1, **UMNN_SMALL)), 1, True),
    "umnn-2d": (lambda: _seeded(lambda: UnconstrainedMonotoneTransform(2, **UMNN_SMALL)), 2, True),
    "umnn-paper": (
        lambda: _seeded(lambda: UnconstrainedMonotoneTransform(2, "paper", width=16, **UMNN_SMALL)),
        2,
        True,
    ),
    "paper": (lambda: _seeded(lambda: PaperUnconstrainedTransform(2, 16, min_slope=1e-3)), 2, True),
    "constrained": (lambda: _seeded(lambda: ConstrainedMonotone(2, width=8), 0.5), 2, True),
    "constrained-deep": (lambda: _seeded(lambda: ConstrainedMonotone(2, width=6, depth=2), 0.5), 2, True),
    "constrained-bounded": (
        lambda: _seeded(lambda: ConstrainedMonotone(2, width=8, linear_term=0.0, std_a=1.0), 0.5),
        2,
        False,
    ),
    "dsf": (lambda: _seeded(lambda: DSFAutoregressive(2, hidden=(8,), units=4)), 2, False),
    "ode": (
        lambda: _seeded(lambda: ODETransform(ODENet((2,), [8], "tanh"), 2, check_inverse=True), 0.5),
        2,
        True,
    ),
}


@functools.cache
def numerical(name: str) -> Transform:
    return NUMERICAL[name][0]()


def _residual_ok(t: Transform, x: Tensor, y: Tensor, factor: float = 2.0) -> None:
    """forward(x) == y to ``factor`` times the documented residual tolerance (the slack covers the
    forward pass rounding a few ulps differently from the solver's own evaluation)."""
    with torch.no_grad():
        fx = t(x)[0].detach()
    y = y.detach()
    tol = residual_tolerance(y)
    if isinstance(t, ODETransform):
        tol = tol + 100 * (t.atol + t.rtol * y.abs())
    worst = float(((fx - y).abs() / tol).max()) if y.numel() else 0.0
    assert worst <= factor, f"forward(inverse(y)) misses y by {worst:.3g} tolerances"


@pytest.mark.parametrize("name", list(NUMERICAL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_at_normal_values(name: str, dtype: torch.dtype) -> None:
    t = numerical(name).to(dtype)
    try:
        d = NUMERICAL[name][1]
        x = torch.randn(32, d, dtype=dtype)
        with torch.no_grad():
            y, ladj = t(x)
            x_rec, ladj_inv = t.inverse(y)
        atol = 1e-3 if dtype == torch.float32 else 1e-6
        if name == "ode":
            atol = 1e-3  # solved to the default atol = rtol = 1e-5, in either dtype
        torch.testing.assert_close(x_rec, x, atol=atol, rtol=0)
        torch.testing.assert_close(ladj_inv, -ladj, atol=100 * atol, rtol=0)
        _residual_ok(t, x_rec, y)
    finally:
        t.float()


# ----- far-out targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, (_, _, onto) in NUMERICAL.items() if onto])
def test_far_out_targets_invert_or_raise(name: str) -> None:
    """y = +-1e6 on maps onto R: either the inverse maps back to the stated tolerance, or InverseError."""
    t = numerical(name)
    d = NUMERICAL[name][1]
    y = torch.tensor([[1e6] * d, [-1e6] * d, [0.5] * d, [1e6] + [0.0] * (d - 1)])
    try:
        with torch.no_grad():
            x, _ = t.inverse(y)
    except InverseError as err:
        assert "residual" in str(err) and "float64" in str(err)
        return
    assert torch.isfinite(x).all()
    _residual_ok(t, x, y)


@pytest.mark.parametrize("name", ["umnn-1d", "paper", "constrained", "constrained-deep"])
def test_far_out_targets_invert_exactly_in_one_dimension_or_with_a_bracket(name: str) -> None:
    """Where float32 can resolve the preimage the inverse is right, not just raised: 1-D UMNN (no
    conditioning on a huge earlier coordinate), the paper's layer, and the constrained maps (exact bracket)."""
    t = numerical(name)
    d = NUMERICAL[name][1]
    y = torch.tensor([[1e6] * d, [-1e6] * d]) if d == 1 else torch.tensor([[1e6, 0.0], [-1e6, 0.0]])
    x, _ = t.inverse(y)
    _residual_ok(t, x, y)


SMALL_MODEL = {"hidden": [16, 16], "embedding": 4, "conditioner_hidden": [16, 16], "n_nodes": 24, "n_layers": 2}


def test_unconstrained_model_far_out_1d_inverts() -> None:
    torch.manual_seed(0)
    model = create_model("unconstrained", event_shape=(1,), **SMALL_MODEL)
    flow = model.flow.transform
    y = torch.tensor([[1e6], [-1e6]])
    with torch.no_grad():
        x, _ = flow.inverse(y)
        fx, _ = flow(x)
    assert float(((fx - y).abs() / residual_tolerance(y)).max()) <= 2.0


def test_unconstrained_model_far_out_2d_raises_instead_of_a_wrong_point() -> None:
    """Issue 15: y = (1e6, 0) through a 2-D UMNN-MAF. Before the residual check the inverse returned a
    point whose forward missed y_2 = 0 by ~4e4 (x_1 ~ 5e8 conditions coordinate 2 far outside the
    training range, where float32 cannot resolve x_2): now it raises InverseError (or is right)."""
    torch.manual_seed(0)
    model = create_model("unconstrained", event_shape=(2,), **SMALL_MODEL)
    flow = model.flow.transform
    y = torch.tensor([[1e6, 0.0], [1e6, 1e6]])
    with pytest.raises(InverseError) as info, torch.no_grad():
        flow.inverse(y)
    msg = str(info.value)
    assert "(coordinate 1).inverse: " in msg and "of 2 value(s)" in msg and "residual" in msg
    assert "far outside the range the flow was trained on" in msg and "float64" in msg
    # in the training range the same flow inverts (and its check passes)
    with torch.no_grad():
        y_in, _ = flow(torch.randn(64, 2))
        x, _ = flow.inverse(y_in)
        fx, _ = flow(x)
    assert float(((fx - y_in).abs() / residual_tolerance(y_in)).max()) <= 2.0


def test_bisection_grows_a_bracket_that_is_too_narrow() -> None:
    """A given bracket that misses the target (e.g. a bound rounded at a huge y) is grown geometrically."""

    def f(x: Tensor) -> Tensor:
        return 1e-3 * x + torch.tanh(x)

    y = torch.tensor([1e6, -1e6, 0.25], dtype=torch.float64)
    x = solve_increasing(f, y, bracket=(-torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)))
    assert float(((f(x) - y).abs() / residual_tolerance(y)).max()) <= 1.0
    x = solve_increasing(f, y)  # no bracket: grown from [-1, 1]
    assert float(((f(x) - y).abs() / residual_tolerance(y)).max()) <= 1.0
    with pytest.raises(InputOutsideDomain, match="could not bracket"):
        solve_increasing(torch.tanh, torch.tensor([2.0]))  # a bounded map: no preimage


@pytest.mark.parametrize("name", ["dsf", "constrained-bounded"])
def test_bounded_images_raise_input_outside_domain(name: str) -> None:
    t = numerical(name)
    with pytest.raises(InputOutsideDomain, match="outside the image"):
        t.inverse(torch.tensor([[1e6, 0.0]]))


# ----- forced failures -----------------------------------------------------------------------------------


def _forced(name: str) -> Transform:
    if name == "umnn":
        return _seeded(lambda: UnconstrainedMonotoneTransform(2, **UMNN_SMALL, max_iter=1))
    if name == "umnn-1d":
        return _seeded(lambda: UnconstrainedMonotoneTransform(1, **UMNN_SMALL, max_iter=3))
    if name == "paper":
        return _seeded(lambda: PaperUnconstrainedTransform(2, 16, min_slope=1e-3, max_iter=1))
    if name == "constrained":
        return _seeded(lambda: ConstrainedMonotone(2, width=8, max_bisection_iters=1), 0.5)
    if name == "constrained-bounded":
        return _seeded(lambda: ConstrainedMonotone(2, width=8, linear_term=0.0, std_a=1.0, max_bisection_iters=2), 0.5)
    if name == "dsf":
        return _seeded(lambda: DSFAutoregressive(2, hidden=(8,), units=4, max_bisection_iters=1))
    raise KeyError(name)


@pytest.mark.parametrize("name", ["umnn", "umnn-1d", "paper", "constrained", "constrained-bounded", "dsf"])
def test_a_solver_forced_to_fail_raises_inverse_error(name: str) -> None:
    t = _forced(name)
    x = 0.5 * torch.randn(16, t.features)
    with torch.no_grad():
        y, _ = t(x)
    with pytest.raises(InverseError, match=r"residual \|f\(x\) - y\| is") as info:
        t.inverse(y)
    msg = str(info.value)
    assert " of 16 value(s)" in msg and "y = " in msg and "tolerance" in msg
    assert "max_iter" in msg or "iteration cap" in msg


def test_solve_monotone_forced_to_fail() -> None:
    target = torch.tensor([0.3, 5.0, -2.0])

    def value_and_slope(x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        return x + 0.5 * torch.sin(x), 1 + 0.5 * torch.cos(x)

    x = solve_monotone(value_and_slope, target, torch.zeros(3), onto=True)
    assert float(((value_and_slope(x, None)[0] - target).abs() / residual_tolerance(target)).max()) <= 1.0
    with pytest.raises(InverseError, match="raise max_iter"):
        solve_monotone(value_and_slope, target, torch.zeros(3), max_iter=1, onto=True)
    with pytest.raises(InputOutsideDomain, match="outside the image"):
        solve_monotone(value_and_slope, target, torch.zeros(3), max_iter=1)  # cannot tell: maybe outside


def test_solve_increasing_forced_to_fail() -> None:
    y = torch.tensor([0.3, 100.0])
    with pytest.raises(InverseError, match=r"max_iters=1 .*raise the iteration cap"):
        solve_increasing(lambda x: x**3 + x, y, max_iters=1)
    x = solve_increasing(lambda x: x**3 + x, y)
    assert torch.allclose(x**3 + x, y, rtol=1e-6)


class _Linear(nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.rate * z


def test_ode_check_inverse_catches_a_bad_backward_solve() -> None:
    """A one-step Euler solve of dz/dt = 3z does not invert itself; check_inverse says so."""
    t = ODETransform(_Linear(3.0), 2, end_time=1.0, train_solver="euler", train_step_size=1.0, check_inverse=True)
    t.train()
    y = torch.randn(5, 2)
    with pytest.raises(InverseError, match=r"ODETransform.inverse: \d+ of 10 value"):
        t.inverse(y)
    t.check_inverse = False
    x, _ = t.inverse(y)  # opt-in: without the check the (wrong) point comes back
    assert x.shape == y.shape
    t.eval()
    t.check_inverse = True
    x, _ = t.inverse(y)  # the adaptive evaluation solver is accurate
    _residual_ok(t, x, y)


def test_ode_check_inverse_is_not_counted_in_the_nfe() -> None:
    t = numerical("ode")
    y = torch.randn(4, 2)
    t.inverse(y)
    nfe = t.nfe_forward
    t.check_inverse = False
    try:
        t.inverse(y)
        assert t.nfe_forward == nfe  # the check's forward solve leaves the inverse's diagnostics alone
    finally:
        t.check_inverse = True


# ----- non-finite targets, empty batches, mixed precision ---------------------------------------------------


@pytest.mark.parametrize("name", list(NUMERICAL))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_targets_raise_input_outside_domain(name: str, value: float) -> None:
    t = numerical(name)
    y = torch.zeros(3, NUMERICAL[name][1])
    y[1, -1] = value
    with pytest.raises(InputOutsideDomain):
        t.inverse(y)


def test_residual_tolerance_is_that_of_the_solver_dtype() -> None:
    y = torch.tensor([0.0, 1e6])
    eps32, eps64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps
    torch.testing.assert_close(residual_tolerance(y), math.sqrt(eps32) * (1 + y.abs()))
    torch.testing.assert_close(residual_tolerance(y.double()), math.sqrt(eps64) * (1 + y.double().abs()))
    # bfloat16 / float16 values are solved in float32: the float32 tolerance, not bf16's 0.09
    torch.testing.assert_close(residual_tolerance(y.bfloat16()).float(), residual_tolerance(y), rtol=1e-2, atol=0)


@pytest.mark.parametrize("name", ["umnn-2d", "paper", "constrained", "dsf", "ode"])
def test_inverse_under_bfloat16_autocast_meets_the_float32_tolerance(name: str) -> None:
    t = numerical(name)
    x = torch.randn(16, NUMERICAL[name][1])
    with torch.no_grad():
        y, _ = t(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_rec, _ = t.inverse(y)
    assert x_rec.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fx, _ = t(x_rec)  # the map the inverse solved: its conditioners also ran in bfloat16
    tol = residual_tolerance(y) + (100 * (t.atol + t.rtol * y.abs()) if name == "ode" else 0)
    assert float(((fx - y).abs() / tol).max()) <= 2.0


# ----- the fuzz ----------------------------------------------------------------------------------------------

# name -> (builder, input shape of forward, input shape of inverse, context shape or None)
FUZZ: dict[str, tuple[Callable[[], Transform], tuple[int, ...], tuple[int, ...], tuple[int, ...] | None]] = {
    "affine": (lambda: Affine(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5])), (2,), (2,), None),
    "coupling": (lambda: _seeded(lambda: AffineCoupling(alternating_mask(2, 0), hidden=(8,))), (2,), (2,), None),
    "maf": (lambda: _seeded(lambda: MaskedAffineAutoregressive(2, hidden=(8,))), (2,), (2,), None),
    "lu": (lambda: _seeded(lambda: LULinear(3, "random")), (3,), (3,), None),
    "gated": (lambda: _seeded(lambda: GatedAffineCoupling(alternating_mask(2, 0), hidden=(8,))), (2,), (2,), None),
    "rqs-coupling": (
        lambda: _seeded(lambda: RQSCoupling(alternating_mask(2, 0), hidden=(8,), bins=4)),
        (2,),
        (2,),
        None,
    ),
    "rqs-ar": (lambda: _seeded(lambda: RQSAutoregressive(2, hidden=(8,), bins=4)), (2,), (2,), None),
    "selfnorm-linear": (lambda: _seeded(lambda: SelfNormLinear(2)), (2,), (2,), None),
    "selfnorm-conv": (lambda: _seeded(lambda: SelfNormConv(2, 3), 0.2), (2, 3, 3), (2, 3, 3), None),
    "smooth-leaky-relu": (lambda: SmoothLeakyReLU(0.3), (2,), (2,), None),
    "leaky-relu": (lambda: LeakyReLU(0.3), (2,), (2,), None),
    "actnorm": (lambda: _seeded(lambda: ActNorm(2)), (2, 2, 2), (2, 2, 2), None),
    "conv1x1": (lambda: _seeded(lambda: InvertibleConv1x1(2, seed=0)), (2, 2, 2), (2, 2, 2), None),
    "squeeze": (lambda: Squeeze(), (1, 2, 2), (4, 1, 1), None),
    "glow-coupling": (lambda: _seeded(lambda: GlowAffineCoupling(2, 4)), (2, 2, 2), (2, 2, 2), None),
    "split-prior": (lambda: _seeded(lambda: SplitPrior(1, 1)), (1, 2, 2), (1, 2, 2), (1, 2, 2)),
    "multiscale-glow": (
        lambda: _seeded(lambda: MultiScaleGlow((1, 2, 2), levels=1, steps_per_level=1, hidden_channels=4), 0.1),
        (1, 2, 2),
        (1, 2, 2),
        None,
    ),
    **{name: (lambda name=name: numerical(name), (d,), (d,), None) for name, (_, d, _) in NUMERICAL.items()},
}


@functools.cache
def fuzz_transform(name: str) -> Transform:
    return FUZZ[name][0]().eval()


EDGE = [0.0, -0.0, 1e-30, -1e-30, 1e-8, 1.0, -1.0, 3.0, -3.0, 1e3, -1e3, 1e6, -1e6, math.nan, math.inf, -math.inf]
HUGE = [1e30, -1e30, 3e38, -3e38, 1e-45]


def _values(extra: list[float]) -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(EDGE + extra), st.floats(-5.0, 5.0, width=32))


@st.composite
def fuzz_case(draw: st.DrawFn, extra: list[float]) -> tuple[str, str, Tensor, Tensor | None]:
    name = draw(st.sampled_from(sorted(FUZZ)))
    direction = draw(st.sampled_from(["forward", "inverse"]))
    _, fwd_shape, inv_shape, ctx_shape = FUZZ[name]
    shape = fwd_shape if direction == "forward" else inv_shape
    batch = draw(st.integers(0, 4))
    n = batch * math.prod(shape)
    values = draw(st.lists(_values(extra), min_size=n, max_size=n))
    x = torch.tensor(values, dtype=torch.float32).reshape(batch, *shape)
    ctx = torch.randn(batch, *ctx_shape) if ctx_shape is not None else None
    return name, direction, x, ctx


def _check_case(name: str, direction: str, x: Tensor, ctx: Tensor | None) -> None:
    """The fuzz property: a transform maps the batch (right shapes; a numerical inverse to its tolerance)
    or raises an UnflowZooError; never a raw exception, never a silently wrong inverse."""
    t = fuzz_transform(name)
    batch = x.shape[0]
    try:
        with torch.no_grad():
            out, ladj = t(x, ctx) if direction == "forward" else t.inverse(x, ctx)
    except UnflowZooError:
        return
    assert ladj.shape == (batch,)
    assert out.shape[0] == batch and out.numel() == x.numel()
    if direction != "inverse" or batch == 0:
        return
    finite = torch.isfinite(x.reshape(batch, -1)).all(1) & torch.isfinite(out.reshape(batch, -1)).all(1)
    if not bool(finite.any()):
        return
    with torch.no_grad():
        fx, _ = t(out, ctx)
    y, fx = x.reshape(batch, -1)[finite], fx.reshape(batch, -1)[finite]
    ok = torch.isfinite(fx)
    tol = residual_tolerance(y)
    if name in NUMERICAL:
        if isinstance(t, ODETransform):
            tol = tol + 100 * (t.atol + t.rtol * y.abs())
        if isinstance(t, UnconstrainedMonotoneTransform) and t.offset:
            # the documented widening: where forward() itself rounds Q + beta by more than the
            # tolerance (the offset beta of a point far out), twice that rounding is accepted
            with torch.no_grad():
                _, beta = t._conditioning(out, ctx)
            beta = beta.reshape(batch, -1)[finite]
            rounding = 4 * torch.finfo(y.dtype).eps * ((y - beta).abs() + beta.abs())
            tol = torch.maximum(tol, 2 * rounding)
        # a numerical inverse that returned must map back: this is what the residual check promises
        assert bool(ok.all()), f"{name}: forward of the returned inverse is not finite"
        worst = float(((fx - y).abs() / tol).max())
        assert worst <= 2.0, f"{name}: a silently wrong inverse, off by {worst:.3g} tolerances"
    else:
        # closed-form inverses: exact up to the rounding of the map (relative to the size of the whole
        # event: a linear map mixes the coordinates), wherever nothing overflowed
        scale = 1 + y.abs().amax(dim=1, keepdim=True)
        small = ok & (scale <= 1e6)
        err = ((fx - y).abs() / (1e-3 * scale))[small]
        assert err.numel() == 0 or float(err.max()) <= 1.0, f"{name}: round trip off by {float(err.max()):.3g}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=fuzz_case(extra=[]))
def test_fuzz_transforms_map_or_raise_an_unflow_zoo_error(case) -> None:
    _check_case(*case)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=fuzz_case(extra=HUGE))
def test_fuzz_transforms_long(case) -> None:
    _check_case(*case)


@pytest.mark.parametrize("name", sorted(FUZZ))
def test_empty_batch_returns_empty_outputs(name: str) -> None:
    t = fuzz_transform(name)
    _, fwd_shape, inv_shape, ctx_shape = FUZZ[name]
    ctx = torch.zeros(0, *ctx_shape) if ctx_shape is not None else None
    with torch.no_grad():
        y, ladj = t(torch.zeros(0, *fwd_shape), ctx)
        x, ladj_inv = t.inverse(torch.zeros(0, *inv_shape), ctx)
    assert y.shape[0] == 0 and ladj.shape == (0,) and x.shape[0] == 0 and ladj_inv.shape == (0,)
    assert y.numel() == 0 and x.numel() == 0


def test_actnorm_does_not_initialise_on_an_empty_batch() -> None:
    t = ActNorm(2).train()
    t(torch.zeros(0, 2))
    assert not bool(t.initialized) and torch.isfinite(t.bias).all() and torch.isfinite(t.log_scale).all()
