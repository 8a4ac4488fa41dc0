"""Batched root finding for elementwise increasing maps, shared by the bisection inverses."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unflow_zoo.core.transform import InputOutsideDomain

__all__ = ["solve_increasing"]


@torch.no_grad()
def solve_increasing(
    f: Callable[[Tensor], Tensor],
    y: Tensor,
    *,
    bracket: tuple[Tensor, Tensor] | None = None,
    max_iters: int = 400,
    error: str = "could not bracket the inverse",
) -> Tensor:
    """Solve ``f(x) = y`` elementwise for an increasing ``f``, by bisection.

    Without a ``bracket`` each end starts at -1 / 1 and moves out by doubling steps
    until it contains the root (a target inside the open image is bracketed after
    finitely many steps); a target outside raises :class:`InputOutsideDomain` with
    ``error``. Bisection then runs until every interval is one ulp wide (at most
    ``max_iters`` steps): machine precision in the dtype of ``y``.

    Runs with autocast disabled: under mixed precision ``f`` would otherwise be
    evaluated in bfloat16/float16, whose rounding (~1e-3 relative) is far coarser than
    the one-ulp intervals the bisection aims for, and the comparisons ``f(mid) > y``
    would flip at random near the root.
    """
    with torch.autocast(device_type=y.device.type, enabled=False):
        return _solve(f, y, bracket, max_iters, error)


def _solve(
    f: Callable[[Tensor], Tensor],
    y: Tensor,
    bracket: tuple[Tensor, Tensor] | None,
    max_iters: int,
    error: str,
) -> Tensor:
    if bracket is None:
        lo, hi = -torch.ones_like(y), torch.ones_like(y)
        for end, sign in ((lo, -1.0), (hi, 1.0)):
            step = torch.ones_like(y)
            for _ in range(2048):  # float64 overflows after ~1030 doublings
                out = (f(end) > y) if sign < 0 else (f(end) < y)
                if not out.any():
                    break
                end.copy_(torch.where(out, end + sign * step, end))
                step = torch.where(out, step * 2.0, step)
                if not torch.isfinite(end).all():
                    break  # never evaluate at inf: 0 * inf in masked products gives NaN
            if out.any() or not torch.isfinite(end).all():
                raise InputOutsideDomain(error)
    else:
        lo, hi = bracket
    for _ in range(max_iters):
        mid = 0.5 * (lo + hi)
        if not ((mid > lo) & (mid < hi)).any():
            break  # no interval can be split further at this precision
        above = f(mid) > y
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    return 0.5 * (lo + hi)
