r"""Batched root finding for elementwise increasing maps, and the residual check of every numerical inverse.

**The residual check.** Every numerical inverse of the package (the bisections here, the
Newton solver :func:`~unflow_zoo.transforms.integral.solve_monotone`, FFJORD's backward
ODE solve when asked to) verifies after solving that the point it returns maps back
onto its target, :math:`|f(x) - y| \le \tau(y)` with

.. math:: \tau(y) = \sqrt{\varepsilon}\,(1 + |y|),

:math:`\varepsilon` the machine epsilon of the dtype the solver works in
(:func:`residual_tolerance`): ``3.5e-4 (1 + |y|)`` in float32 (also under
bfloat16/float16 autocast: the transforms solve in float32), ``1.5e-8 (1 + |y|)`` in
float64. The square root leaves room for the map's own rounding and its condition
number (a point found to one ulp of :math:`x` is off in :math:`y` by
:math:`f'(x)\,\mathrm{ulp}(x)`), while a real failure (a solver stopped early, a
target far outside the range a flow was trained on, where float32 cannot resolve
:math:`x` finely enough) is off by many orders of magnitude more. A point that fails
raises :class:`~unflow_zoo.errors.InverseError` naming how many points failed, the
worst residual, its target and the likely fix (:func:`raise_inverse_error`), instead
of returning a wrong point. The tolerance is on :math:`y`: where the inverse problem is
ill-conditioned, :math:`f'(x)\,|x| / (1 + |y|) \gtrsim 1/\sqrt{\varepsilon}` (about 3000
in float32: e.g. unstandardised data of magnitude 1e4 with unit slope), even the float
nearest the preimage misses it, and the inverse raises: standardise the data, or use float64.

The solvers bound the residual from their own last evaluations (no extra pass). A
solver's evaluation of the map can round differently from :meth:`forward` (other batch
shapes, other kernels) by a few ulps of the map's largest terms, which far outside the
training range can exceed the tolerance, so the transforms close that gap where it can
open: the bisection inverses check again on the forward pass they run anyway for the
log-determinant (:func:`check_round_trip`); UMNN-MAF refuses a target whose offset is
so large that :meth:`forward` cannot resolve it; the seed paper's layer re-checks rows
far from the origin with :meth:`forward` (:func:`far_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from unflow_zoo.errors import InputOutsideDomain, InverseError

__all__ = [
    "check_finite_target",
    "check_round_trip",
    "far_rows",
    "raise_inverse_error",
    "residual_tolerance",
    "resolution_fix",
    "solve_increasing",
]

# How far the bracket of a bisection may be grown, in doublings (float64 overflows after ~1030).
_MAX_DOUBLINGS = 2048


def _solver_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a transform's solver works in for inputs of ``dtype``: at least float32."""
    return dtype if dtype == torch.float64 else torch.float32


def residual_tolerance(y: Tensor, rtol: float | None = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""The residual :math:`|f(x) - y|` a numerical inverse accepts, elementwise: ``rtol * (1 + |y|)``.

    ``rtol`` defaults to :math:`\sqrt{\varepsilon}` of ``dtype`` (default: the dtype the
    solvers use for ``y``, float32 for anything narrower, so bfloat16 inputs and autocast
    get the float32 tolerance): ``3.45e-4`` in float32, ``1.49e-8`` in float64. See the
    module docstring for why.
    """
    if rtol is None:
        rtol = math.sqrt(torch.finfo(dtype or _solver_dtype(y.dtype)).eps)
    return rtol * (1.0 + y.detach().abs())


def check_finite_target(y: Tensor, owner: str) -> None:
    """Raise :class:`~unflow_zoo.errors.InputOutsideDomain` if ``y`` holds NaN or inf.

    A map of :math:`\\mathbb R` has no preimage for a non-finite value; a solver would
    otherwise iterate to its cap on it and say something less clear.
    """
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        k = tuple(int(i) for i in bad.nonzero()[0])
        raise InputOutsideDomain(
            f"{owner}.inverse got {int(bad.sum())} non-finite value(s), e.g. {float(y[k])} at index {list(k)}: "
            "a numerical inverse needs finite targets (a NaN or inf here usually comes from an overflow "
            "in an earlier layer, or from the data)"
        )


def raise_inverse_error(
    residual: Tensor,
    target: Tensor,
    tol: Tensor,
    *,
    owner: str,
    fix: str,
    what: str = "inverse",
    measure: str = "residual |f(x) - y|",
) -> None:
    """Raise :class:`~unflow_zoo.errors.InverseError` for the points where ``residual > tol`` (or is NaN).

    The message says how many of the points failed, the worst residual, its target and
    tolerance, and ``fix``: what to try (``measure`` names what ``residual`` holds).
    ``residual``, ``target`` and ``tol`` are broadcast together; nothing is raised when
    every residual passes.
    """
    residual, target, tol = torch.broadcast_tensors(residual, target, tol)
    failed = ~(residual <= tol)  # NaN fails
    if not bool(failed.any()):
        return
    excess = torch.where(failed, torch.nan_to_num(residual / tol, nan=math.inf), torch.zeros_like(residual))
    k = int(excess.reshape(-1).argmax())
    worst_res, worst_y, worst_tol = (float(v.reshape(-1)[k]) for v in (residual, target, tol))
    dtype = str(target.dtype).removeprefix("torch.")
    raise InverseError(
        f"{owner}.{what}: {int(failed.sum())} of {failed.numel()} value(s) did not invert to the tolerance: "
        f"the worst {measure} is {worst_res:.4g} for y = {worst_y:.6g} (tolerance {worst_tol:.3g}, "
        f"{dtype}). {fix}"
    )


def resolution_fix(dtype: torch.dtype) -> str:
    """What to try when an inverse fails although its solver converged as far as ``dtype`` allows."""
    what = (
        "The point probably lies far outside the range the flow was trained on, where the map is too steep or "
        "its terms too large for this dtype to resolve x finely enough; check the input"
    )
    if dtype == torch.float64:
        return what + " (float64 is already the widest dtype)."
    return what + ", or run the flow in float64 (model.double())."


def check_round_trip(y_back: Tensor, y: Tensor, *, owner: str, rtol: float | None = None) -> None:
    """Raise :class:`~unflow_zoo.errors.InverseError` where ``forward(inverse(y))`` (``y_back``) misses ``y``.

    The definitive check of a numerical inverse: ``y_back`` comes from the transform's own
    forward pass (which the inverses run anyway, for the log-determinant), so it sees the
    map exactly as :meth:`forward` evaluates it, rounding included, where a solver's
    internal evaluation can differ by a few ulps of the map's largest terms.
    """
    y_back, y = y_back.detach(), y.detach()
    raise_inverse_error((y_back - y).abs(), y, residual_tolerance(y, rtol), owner=owner, fix=resolution_fix(y.dtype))


#: Magnitude beyond which a row counts as far out (see :func:`far_rows`).
FAR = 64.0


def far_rows(*tensors: Tensor) -> Tensor:
    """Rows ``(B,)`` in which any of ``tensors`` (each ``(B, ...)``: targets, solutions, offsets,
    conditionings) exceeds :data:`FAR` (64) in magnitude, or is not finite.

    The solvers' residual is computed from their own evaluation of the map, which rounds
    differently from :meth:`forward` (other batch shapes, other kernels) by a few ulps of
    the map's largest terms. Near the training range (standardised data: every term well
    below 64) that is far below the tolerance; beyond it, where terms can cancel, a
    transform can check the rows this returns once more with :meth:`forward` itself, at a
    cost proportional to their number.
    """
    far = torch.zeros(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        big = ~(t.detach().abs() <= FAR)
        far |= big.flatten(1).any(dim=1) if big.ndim > 1 else big
    return far


@torch.no_grad()
def solve_increasing(
    f: Callable[[Tensor], Tensor],
    y: Tensor,
    *,
    bracket: tuple[Tensor, Tensor] | None = None,
    max_iters: int = 400,
    error: str = "could not bracket the inverse",
    owner: str = "transform",
    rtol: float | None = None,
    check: bool = True,
) -> Tensor:
    """Solve ``f(x) = y`` elementwise for an increasing ``f``, by bisection, and check the residual.

    Without a ``bracket`` each end starts at -1 / 1 and moves out by doubling steps
    until it contains the root (a target inside the open image is bracketed after
    finitely many steps); a target outside raises :class:`InputOutsideDomain` with
    ``error``. Bisection then runs until every interval is one ulp wide (at most
    ``max_iters`` steps): machine precision in the dtype of ``y``. A given ``bracket``
    costs no evaluation up front; if a root ends up at one of its ends, those ends are
    evaluated, and where the bracket missed the target (e.g. a bound rounded at a huge
    ``y``) it is grown geometrically in the same way and the solve is rerun.

    The value returned is, per element, whichever end of its final interval maps
    closer to ``y`` (both were evaluated, so the residual is known exactly at no extra
    cost); with ``check`` (default) a residual above :func:`residual_tolerance`
    (``rtol``) raises :class:`~unflow_zoo.errors.InverseError`, and a non-finite ``y``
    raises :class:`InputOutsideDomain`. ``owner`` names the transform in the messages.

    Runs with autocast disabled: under mixed precision ``f`` would otherwise be
    evaluated in bfloat16/float16, whose rounding (~1e-3 relative) is far coarser than
    the one-ulp intervals the bisection aims for, and the comparisons ``f(mid) > y``
    would flip at random near the root.
    """
    if check:
        check_finite_target(y, owner)
    with torch.autocast(device_type=y.device.type, enabled=False):
        x, residual, unfinished = _solve(f, y, bracket, max_iters, error)
    if check:
        fix = (
            f"The bisection stopped after max_iters={max_iters} steps, before its intervals were one ulp wide: "
            "raise the iteration cap (max_bisection_iters)."
            if unfinished
            else resolution_fix(y.dtype)
        )
        raise_inverse_error(residual, y, residual_tolerance(y, rtol), owner=owner, fix=fix)
    return x


def _grow(
    f: Callable[[Tensor], Tensor],
    y: Tensor,
    end: Tensor,
    f_end: Tensor,
    sign: float,
    error: str,
) -> tuple[Tensor, Tensor]:
    """Move ``end`` out (``sign`` -1: down, +1: up) by doubling steps until ``f(end)`` lies on the far side of ``y``."""
    step = torch.maximum(torch.ones_like(end), end.abs())
    for _ in range(_MAX_DOUBLINGS):
        out = (f_end > y) if sign < 0 else (f_end < y)
        if not bool(out.any()):
            return end, f_end
        end = torch.where(out, end + sign * step, end)
        step = torch.where(out, step * 2.0, step)
        if not bool(torch.isfinite(end).all()):
            break  # never evaluate at inf: 0 * inf in masked products gives NaN
        f_end = torch.where(out, f(end), f_end)
    raise InputOutsideDomain(error)


def _solve(
    f: Callable[[Tensor], Tensor],
    y: Tensor,
    bracket: tuple[Tensor, Tensor] | None,
    max_iters: int,
    error: str,
) -> tuple[Tensor, Tensor, bool]:
    """Bisection; returns ``x``, its residual ``|f(x) - y|`` and whether the iteration cap cut it short."""
    if bracket is None:
        lo, hi = -torch.ones_like(y), torch.ones_like(y)
        lo, f_lo = _grow(f, y, lo, f(lo), -1.0, error)
        hi, f_hi = _grow(f, y, hi, f(hi), 1.0, error)
    else:
        # a given bracket is trusted until the end (its ends are evaluated only if the root sits there)
        lo, hi = (b.to(y.dtype).expand_as(y).clone() for b in bracket)
        f_lo, f_hi = torch.full_like(y, -math.inf), torch.full_like(y, math.inf)
    unfinished = False
    for it in range(max_iters + 1):
        mid = 0.5 * lo + 0.5 * hi  # never overflows, unlike 0.5 * (lo + hi)
        if not bool(((mid > lo) & (mid < hi)).any()):
            break  # no interval can be split further at this precision
        if it == max_iters:
            unfinished = True
            break
        f_mid = f(mid)
        above = f_mid > y
        hi, f_hi = torch.where(above, mid, hi), torch.where(above, f_mid, f_hi)
        lo, f_lo = torch.where(above, lo, mid), torch.where(above, f_lo, f_mid)
    if bracket is not None and not bool((torch.isfinite(f_lo) & torch.isfinite(f_hi)).all()):
        # the root sits at an end of the given bracket: evaluate the ends, and if the bracket missed
        # the target (a bound rounded at a huge y), grow it geometrically and solve again
        f_lo = torch.where(torch.isfinite(f_lo), f_lo, f(lo))
        f_hi = torch.where(torch.isfinite(f_hi), f_hi, f(hi))
        if bool(((f_lo > y) | (f_hi < y)).any()):
            lo, f_lo = _grow(f, y, lo, f_lo, -1.0, error)
            hi, f_hi = _grow(f, y, hi, f_hi, 1.0, error)
            return _solve(f, y, (lo, hi), max_iters, error)
    r_lo, r_hi = (f_lo - y).abs(), (f_hi - y).abs()
    take_hi = (r_hi < r_lo) | r_lo.isnan()
    return torch.where(take_hi, hi, lo), torch.where(take_hi, r_hi, r_lo), unfinished
