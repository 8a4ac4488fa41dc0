r"""Unconstrained monotone transforms: integrate a positive network along each coordinate.

.. math::

    y_i = f_i(x_i; h_i) = \int_{x_0}^{x_i} g(t; h_i)\,dt + \beta_i, \qquad
    g(t; h) = \phi(N(t; h)) + \epsilon, \qquad
    \log\left|\det \frac{\partial y}{\partial x}\right| = \sum_i \log g(x_i; h_i),

with :math:`\phi` strictly positive (ELU + 1 by default), so each :math:`f_i` is
strictly increasing whatever the network :math:`N` (its weights are
*unconstrained*). For ``D > 1``, :math:`(h_i, \beta_i)` come from a MADE
conditioner on :math:`x_{<i}` (UMNN-MAF), so the Jacobian is triangular and the
log-determinant needs no quadrature at all: only :math:`N` at :math:`x_i`.

The integral is a fixed-node quadrature (:mod:`~unflow_zoo.transforms.quadrature`)
computed in :class:`NeuralIntegral`, a custom autograd function: the forward
pass evaluates the ``B * D * K`` integrand points under ``no_grad`` as batched
matmul chains (no loop over nodes or coordinates; blocks of whole integrals of
about ``chunk`` points, sized to stay in cache) and stores nothing per node; the
backward pass applies the Leibniz rule (``dF/dx = g(x)``, ``dF/dx0 = -g(x0)``)
and re-evaluates the integrand at the nodes, with a hand-written vector-Jacobian
product, to get the parameter gradients, so memory does not grow with ``K``
(UMNN's ``ParallelNeuralIntegral``).

Speed (CPU, one thread, D = 8, batch 512, 3 layers, integrand and MADE [64, 64],
32 Gauss-Legendre nodes): a training step takes ~0.22 s with the leaky-ReLU
integrand (~0.29 s with ELU), against ~0.64 s when all points go through one
network call (``chunk=0``: the (points, 64) activations then miss the cache on
every elementwise pass) and ~1.25 s for ``zuko.flows.UNAF``; sampling 512 points
takes ~0.35 s against ~70 s.

Note that the transform *is* the quadrature :math:`Q(x)`, whose derivative differs
from :math:`g(x)` by the quadrature error: the log-determinant (and the autograd
Jacobian, through the Leibniz rule) use :math:`g(x)`, the exact derivative of the
integral that :math:`Q` approximates. The density therefore integrates to 1 up to
the quadrature error (use enough nodes), while the inverse solves :math:`Q(x) = y`
with the same quadrature, so ``inverse(forward(x)) == x`` to the solver tolerance.

References:
    | Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019,
      arXiv:1908.05164 (code: github.com/AWehenkel/UMNN).
    | Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
      Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (code:
      github.com/kulinshah98/overparam-NFs, folder UNF/).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from unflow_zoo.core.transform import InputOutsideDomain, Transform, check_context, check_features
from unflow_zoo.nn.integrand import Integrand, PaperInit, PaperIntegrand, make_integrand
from unflow_zoo.nn.made import MADE, check_order
from unflow_zoo.nn.stacked_integrand import StackedMLPIntegrand
from unflow_zoo.transforms.autoregressive import autoregressive_inverse
from unflow_zoo.transforms.bisection import (
    check_finite_target,
    raise_inverse_error,
    residual_tolerance,
    resolution_fix,
)
from unflow_zoo.transforms.positive import PHI_NAMES, PhiName, d_positive, log_positive, positive
from unflow_zoo.transforms.quadrature import Quadrature, QuadratureRule
from unflow_zoo.transforms.relu_integral import relu_net_integral_and_value

__all__ = [
    "PER_FEATURE_HIDDEN",
    "PHI_NAMES",
    "SHARED_HIDDEN",
    "NeuralIntegral",
    "UnconstrainedMonotoneTransform",
    "d_positive",
    "log_positive",
    "neural_integral",
    "positive",
    "solve_monotone",
]

# Hidden widths of the MLP integrand when none are given: UMNN's [64, 64] for the shared integrand; wider
# with one integrand per feature, where [64, 64] (zuko's UNAF sizes) trails zuko after 100 Adam steps at
# D = 43 and [96, 96] is ahead for every seed tried, still ~2.5x faster per step (docs/benchmarks.md).
SHARED_HIDDEN: tuple[int, ...] = (64, 64)
PER_FEATURE_HIDDEN: tuple[int, ...] = (96, 96)

# Integrand points per block: (points, 64) float32 activations of 2 MiB, about one L2.
DEFAULT_CHUNK = 8192
# The same for one integrand per feature, where a block holds whole integrals of every feature: a
# larger block (measured at D = 43, batch 512: 16384 points up to 10% faster than 8192 with hidden
# [64, 64], the same with [80, 80]; 32768 is 45% slower at [80, 80], past the cache and the workspace).
STACKED_CHUNK = 16384

# How much of 1 + |y| the rounding of UMNN's own sum Q + beta may take before its inverse is refused:
# an untrained or barely trained flow's samples in the base's tails reach a few percent (measured:
# 3% at z = 7 after 30 Adam steps), which only blurs those samples; the far-out points a solver
# gets wrong (an offset of 1e11 cancelling the integral) are off by orders of magnitude more.
_CANCELLATION_LIMIT = 0.1


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    grad = grad.sum(dim=tuple(range(lead))) if lead > 0 else grad
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    return grad.sum(dim=dims, keepdim=True) if dims else grad


class NeuralIntegral(torch.autograd.Function):
    r""":math:`F(x) = \int_{x_0}^{x} \phi(N(t; c)) + \epsilon\,dt` by quadrature, with a Leibniz-rule backward.

    ``apply(x, x0, c, nodes, weights, integrand, phi, eps, chunk, *tensors)``:
    ``x`` of any shape ``S``, ``x0`` broadcastable to it, ``c`` of shape ``(*S, H)``
    (see :meth:`~unflow_zoo.nn.integrand.Integrand.condition`), a rule ``nodes``,
    ``weights`` on [0, 1], and ``tensors`` = ``integrand.path_tensors()``. A stack-first
    integrand (``integrand.stack_first``: one network per feature, zuko's UNAF layout) takes
    ``x`` of shape ``(S, n)`` and ``c`` of shape ``(S, n, H)``, row ``s`` integrated with
    network ``s``; its blocks hold whole integrals of all ``S`` features, so that every
    block is one batched matmul per layer.

    Forward: ``integrand.evaluate`` on all ``numel(x) * K`` points (and on ``x``
    itself, for the backward's Leibniz term) under ``no_grad``, in blocks of about
    ``chunk`` points (whole integrals per block; ``chunk <= 0``: one block), so that
    the ``(points, hidden)`` activations stay in cache: on CPU the elementwise
    passes, not the matmuls, would otherwise dominate (2.6x slower training in one
    block at D = 8, batch 512). Only the inputs and :math:`g(x)` are saved.
    Backward (first order only):

    .. math::

        \frac{\partial F}{\partial x} = g(x), \quad
        \frac{\partial F}{\partial x_0} = -g(x_0), \quad
        \frac{\partial F}{\partial \theta} = (x - x_0) \sum_k w_k \frac{\partial g(t_k)}{\partial \theta}

    for :math:`\theta` in ``c`` and ``tensors``, by re-evaluating the integrand at
    the nodes block by block with :meth:`~unflow_zoo.nn.integrand.Integrand.vjp`
    (hand-written for the package's integrands, autograd otherwise), so memory does
    not grow with ``K``. The parameter gradients equal plain autograd
    through the quadrature; the :math:`x` gradient is that of the exact integral
    (UMNN's choice), which is what makes the autograd Jacobian agree with the
    log-determinant :math:`\sum_i \log g(x_i)`.

    References:
        Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019.
    """

    _N_FIXED = 9  # inputs before *tensors

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        x0: Tensor,
        c: Tensor,
        nodes: Tensor,
        weights: Tensor,
        integrand: Integrand,
        phi: str,
        eps: float,
        chunk: int,
        *tensors: Tensor,
    ) -> Tensor:
        k = nodes.shape[0]
        # g(x) for the Leibniz term of the backward: one more point per integral now,
        # saved as (n,) numbers, instead of another network call later.
        with_x = bool(ctx.needs_input_grad[0])
        with torch.no_grad():
            xf, x0f, cf = _rows(x, x0, c, integrand)
            per_row = math.prod(xf.shape[:-1])  # S integrals per row of a stack-first integrand, else 1
            out = torch.empty_like(xf)
            g_x = torch.empty_like(xf) if with_x else None
            for sl in _blocks(xf.shape[-1], chunk, per_row * (k + 1)):
                xs, x0s = xf[..., sl], x0f[..., sl]
                d = xs - x0s
                pts = torch.addcmul(x0s.unsqueeze(-1), d.unsqueeze(-1), nodes)
                if with_x:
                    pts = torch.cat([pts, xs.unsqueeze(-1)], dim=-1)
                g = positive(integrand.evaluate(cf[..., sl, :], pts, tensors), phi, eps)
                out[..., sl] = d * (g[..., :k] @ weights)
                if g_x is not None:
                    g_x[..., sl] = g[..., k]
        ctx.save_for_backward(x, x0, c, nodes, weights, g_x, *tensors)
        ctx.integrand, ctx.phi, ctx.eps, ctx.chunk = integrand, phi, eps, chunk
        return out.reshape(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, x0, c, nodes, weights, g_x, *tensors = ctx.saved_tensors
        integrand, phi, eps = ctx.integrand, ctx.phi, ctx.eps
        need = ctx.needs_input_grad
        need_x, need_x0, need_c = need[0], need[1], need[2]
        need_t = [bool(n) for n in need[NeuralIntegral._N_FIXED :]]
        k = nodes.shape[0]
        xf, x0f, cf = _rows(x, x0, c, integrand)
        per_row = math.prod(xf.shape[:-1])
        gf = grad.reshape(xf.shape)
        grad_x = (g_x * gf).reshape(x.shape) if need_x else None
        grad_x0 = torch.empty_like(xf) if need_x0 else None
        grad_c = torch.empty_like(cf) if need_c else None
        grad_t: list[Tensor | None] = [torch.zeros_like(t) if nt else None for t, nt in zip(tensors, need_t)]
        if need_c or any(need_t):
            for sl in _blocks(xf.shape[-1], ctx.chunk, per_row * (k + int(need_x0))):
                xs, x0s, gs = xf[..., sl], x0f[..., sl], gf[..., sl]
                d = xs - x0s
                pts = torch.addcmul(x0s.unsqueeze(-1), d.unsqueeze(-1), nodes)
                if need_x0:
                    pts = torch.cat([pts, x0s.unsqueeze(-1)], dim=-1)
                scale = (gs * d).unsqueeze(-1) * weights
                held: list[Tensor] = []

                def cotangent(n_out: Tensor, scale: Tensor = scale, held: list[Tensor] = held) -> Tensor:
                    # d/dN of sum_k scale_k * phi(N_k): only the K nodes, not the x0 column
                    g = positive(n_out, phi, eps)
                    held.append(g)
                    v = d_positive(n_out[..., :k], phi, eps, g[..., :k]) * scale
                    return torch.cat([v, v.new_zeros(*v.shape[:-1], 1)], dim=-1) if need_x0 else v

                _, dc, dts = integrand.vjp(cf[..., sl, :], pts, tensors, cotangent, need_c, need_t)
                if grad_c is not None:
                    grad_c[..., sl, :] = dc
                for acc, dt in zip(grad_t, dts):
                    if acc is not None:
                        acc.add_(dt)
                if grad_x0 is not None:
                    grad_x0[..., sl] = -held[0][..., k] * gs
        elif need_x0:
            with torch.no_grad():
                g0 = positive(integrand.evaluate(cf, x0f.unsqueeze(-1), tensors), phi, eps)
            grad_x0 = -g0[..., 0] * gf
        return (
            grad_x,
            _sum_to(grad_x0.reshape(x.shape), x0.shape) if grad_x0 is not None else None,
            grad_c.reshape(c.shape) if grad_c is not None else None,
            None,
            None,
            None,
            None,
            None,
            None,
            *grad_t,
        )


@torch.compiler.disable
def _integrate(*args: Any) -> Tensor:
    """``NeuralIntegral.apply(*args)``, which torch.compile leaves to eager mode: its blocked no-grad
    loops and hand-written backward (workspace buffers written in place) are what make it fast,
    and they do not trace. The graph breaks here, and the conditioner around it still compiles."""
    return NeuralIntegral.apply(*args)  # type: ignore[no-any-return]


def _rows(x: Tensor, x0: Tensor, c: Tensor, integrand: Integrand) -> tuple[Tensor, Tensor, Tensor]:
    """The integrals as rows along the last axis: ``x``, ``x0`` ``(n,)`` and ``c`` ``(n, H)``; for a
    stack-first integrand (one network per feature) ``(S, n)`` and ``(S, n, H)``, as given."""
    if integrand.stack_first:
        return x, x0.expand(x.shape), c
    return _flat(x, x0, c)


def _flat(x: Tensor, x0: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` and ``x0`` as (n,), ``c`` as (n, H)."""
    return x.reshape(-1), x0.expand(x.shape).reshape(-1), c.reshape(-1, c.shape[-1])


def _blocks(n: int, chunk: int, k: int) -> list[slice]:
    """Slices of ``range(n)`` of about ``chunk`` integrand points each (``k`` per row; ``chunk <= 0``: one slice)."""
    rows = max(1, chunk // max(k, 1)) if chunk > 0 else max(n, 1)
    return [slice(s, min(s + rows, n)) for s in range(0, n, rows)]


def neural_integral(
    x: Tensor,
    c: Tensor,
    integrand: Integrand,
    quadrature: Quadrature,
    x0: Tensor | float = 0.0,
    phi: str = "elu",
    eps: float = 0.0,
    chunk: int = DEFAULT_CHUNK,
) -> Tensor:
    r""":math:`\int_{x_0}^{x} \phi(N(t; c)) + \epsilon\,dt` elementwise over ``x`` (see :class:`NeuralIntegral`)."""
    x0_t = torch.as_tensor(x0, dtype=x.dtype, device=x.device)
    # Full precision (see UnconstrainedMonotoneTransform): the hand-written backward runs
    # outside autocast and needs the dtypes the forward saw.
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _integrate(  # type: ignore[no-any-return]
            x,
            x0_t,
            c.to(x.dtype),
            quadrature.nodes,
            quadrature.weights,
            integrand,
            phi,
            float(eps),
            int(chunk),
            *integrand.path_tensors(),
        )


def solve_monotone(
    value_and_slope: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    target: Tensor,
    start: Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 200,
    owner: str = "transform",
    scale: Tensor | None = None,
    rtol: float | None = None,
    onto: bool = False,
    check: bool = True,
    floor: Tensor | None = None,
) -> Tensor:
    r"""Solve :math:`Q(x) = \text{target}` elementwise for an increasing :math:`Q` (rtsafe, vectorised), checked.

    ``value_and_slope(x, idx)`` returns :math:`Q(x)` and a slope :math:`g(x) > 0` for
    the 1-D points ``x`` of the still active elements ``idx`` (indices into
    ``target``), so that per-element data (a conditioning, a lower limit) can be
    gathered with ``idx``. Starting from ``start``, while an element has a bound on
    one side only it steps towards the root by the larger of the Newton step and a
    reach that doubles every time; once bracketed, it takes Newton steps that stay
    inside the bracket and shrink fast enough, and bisects otherwise.

    An element is done when its Newton step (or, once bracketed, its step or bracket)
    is below ``tol`` (or a few ulps of :math:`x`) *and* its residual passes:
    :math:`|Q(x) - \text{target}|` at most
    :func:`~unflow_zoo.transforms.bisection.residual_tolerance` of ``scale`` (default
    ``target``), with ``rtol`` defaulting to :math:`\sqrt{\varepsilon}` of the dtype of
    ``target``. The residual at the returned Newton iterate is estimated from the last
    evaluation, :math:`|f| + g\,|\Delta x|` (first order; no extra evaluation), and
    must pass with a margin of 8, since :math:`g` can differ from :math:`Q'` (a coarse
    quadrature far from :math:`x_0`) and the caller's forward pass rounds differently.
    An element whose next point rounds onto an end of its bracket (the bracket is down
    to an ulp or two, or the step no longer moves :math:`x`) cannot improve: it returns
    the end of its bracket that maps closest to the target (an evaluated point, so its
    residual is exact).

    Errors, instead of a wrong point (with ``check``, the default):

    - a non-finite target: :class:`~unflow_zoo.errors.InputOutsideDomain`;
    - an element still unbracketed after ``max_iter`` iterations: outside the image,
      :class:`~unflow_zoo.errors.InputOutsideDomain`, unless ``onto`` (the caller knows
      :math:`Q` maps onto :math:`\mathbb R`), then :class:`~unflow_zoo.errors.InverseError`
      (the iteration budget ran out);
    - a residual above the tolerance, at the iteration cap or where the working
      precision cannot resolve :math:`x` (a target far outside the range the flow was
      trained on, in float32): :class:`~unflow_zoo.errors.InverseError`, naming the
      number of failed points, the worst residual, its target and the fix.

    ``floor`` (elementwise) raises the tolerance where the caller knows its map cannot be
    evaluated more accurately (the rounding of its own terms).

    Runs in the dtype of ``target``; callers disable autocast.

    References:
        Press et al., "Numerical Recipes", 3rd ed., 2007, Section 9.4 (``rtsafe``).
    """
    if check:
        check_finite_target(target, owner)
    n = target.shape[0]
    tiny = torch.finfo(target.dtype).eps
    ftol = residual_tolerance(target if scale is None else scale, rtol, dtype=target.dtype)
    if floor is not None:
        ftol = torch.maximum(ftol, floor.to(ftol.dtype))
    if not check:
        ftol = torch.full_like(target, math.inf)
    half_tol = 0.5 * tol
    inf = math.inf
    # One (n, 11) state, so that each iteration gathers and scatters the active rows once:
    # x, bracket ends, residuals at the ends (evaluated points), the last two steps, the reach
    # of a one-sided step, the residual of the point returned, its tolerance, the target.
    col = [start.to(target.dtype), -inf, inf, inf, inf, inf, inf, 1e-2, inf, ftol, target]
    state = torch.stack([torch.as_tensor(c, dtype=target.dtype, device=target.device).expand(n) for c in col], 1)
    active = torch.ones(n, dtype=torch.bool, device=target.device)
    idx = torch.arange(n, device=target.device)
    for _ in range(max_iter):
        xa, lo_i, hi_i, r_lo_i, r_hi_i, dx_i, dx_old_i, r, _, ftol_i, target_i = state[idx].unbind(1)
        val, slope = value_and_slope(xa, idx)
        f = val - target_i
        below, above = f <= 0, f >= 0
        lo_a = torch.where(below, xa, lo_i)
        hi_a = torch.where(above, xa, hi_i)
        r_lo_a = torch.where(below, -f, r_lo_i)
        r_hi_a = torch.where(above, f, r_hi_i)
        newton = xa - f / slope
        newton_step = (newton - xa).abs()
        bracketed = torch.isfinite(lo_a) & torch.isfinite(hi_a)
        # rtsafe: bisect when Newton leaves the bracket or does not halve the step before last
        bad = ~((newton > lo_a) & (newton < hi_a)) | ((2 * f).abs() > (dx_old_i * slope).abs())
        inside = torch.where(bad, 0.5 * (lo_a + hi_a), newton)
        # one-sided: g > 0, so the Newton step points at the root; go at least `reach`
        step = torch.fmax(newton_step, r)
        step = torch.where(torch.isfinite(step), step, r)
        outside = torch.where(f < 0, xa + step, xa - step)
        x_new = torch.where(bracketed, inside, outside)
        dx_a = x_new - xa
        width = hi_a - lo_a
        tol_a = half_tol + 4 * tiny * x_new.abs()
        # A Newton step below the tolerance finishes an element at once, bracketed or not (a point
        # landed on the root in its first steps need not wait for a bracket, then bisect back to it)
        zero = f == 0
        tiny_step = zero | ((newton_step <= tol_a) & torch.isfinite(newton))
        x_done = torch.where(zero, xa, torch.where(tiny_step, newton, x_new))
        converged = tiny_step | (bracketed & ((dx_a.abs() <= tol_a) | (width <= tol_a)))
        # first-order estimate of the residual at the point returned, with a margin of 8: the slope g can
        # differ from the derivative of Q (a coarse quadrature far from x0), and forward() rounds differently
        estimate = f.abs() + (slope * (x_done - xa)).abs()
        ok = converged & (8 * estimate <= ftol_i) & torch.isfinite(x_done)
        # x cannot move any more at this precision (the next point rounds onto an end of the bracket, one of
        # which is xa): keep the better end, an evaluated point
        frozen = bracketed & ~ok & ((x_new == lo_a) | (x_new == hi_a))
        x_a = torch.where(ok, x_done, x_new)
        if bool(frozen.any()):
            take_hi = r_hi_a < r_lo_a
            x_a = torch.where(frozen, torch.where(take_hi, hi_a, lo_a), x_a)
            estimate = torch.where(frozen, torch.where(take_hi, r_hi_a, r_lo_a), estimate)
        reach = torch.where(bracketed, r, 2 * step)
        state[idx] = torch.stack([x_a, lo_a, hi_a, r_lo_a, r_hi_a, dx_a, dx_i, reach, estimate, ftol_i, target_i], 1)
        done = ok | frozen
        if bool(done.all()):
            active[idx] = False
            break
        active[idx[done]] = False
        idx = idx[~done]
    x, lo, hi, r_lo, r_hi, residual = (state[:, k] for k in (0, 1, 2, 3, 4, 8))
    if bool(active.any()):
        unbracketed = active & ~(torch.isfinite(lo) & torch.isfinite(hi))
        if bool(unbracketed.any()) and not onto:
            raise InputOutsideDomain(
                f"{int(unbracketed.sum())} value(s) such as {float(target[unbracketed][0]):.4g} lie outside the "
                f"image of {owner} (no bracket after {max_iter} iterations); with "
                "min_slope=0 the image can be bounded, set min_slope > 0 to make it all of R "
                "(or, if the value is in the image, raise max_iter)"
            )
        # out of iterations: return the evaluated point that maps closest (its residual is exact)
        take_hi = r_hi < r_lo
        x = torch.where(active, torch.where(take_hi, hi, lo), x)
        residual = torch.where(active, torch.fmin(r_lo, r_hi), residual)
    if check:
        fails = ~(residual <= ftol)
        fix = resolution_fix(target.dtype)
        if bool((fails & active).any()):
            fix = (
                f"The solver ran out of iterations (max_iter={max_iter}) before it converged: raise max_iter. "
                + resolution_fix(target.dtype)
            )
        raise_inverse_error(residual, target if scale is None else scale, ftol, owner=owner, fix=fix)
    return x


class _ConstantConditioner(nn.Module):
    """A learned ``(h, beta)`` shared by the whole batch: the 1-D flow's conditioner."""

    def __init__(self, features: int, n_params: int) -> None:
        super().__init__()
        self.features, self.n_params = features, n_params
        self.params = nn.Parameter(torch.zeros(features, n_params))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.params.expand(x.shape[0], -1, -1)


class UnconstrainedMonotoneTransform(Transform):
    r"""Unconstrained monotone (UMNN-MAF) transform, data -> noise:

    .. math::

        y_i = \beta_i(x_{<i}) + \int_{x_0}^{x_i} \phi\big(N(t; h_i(x_{<i}))\big) + \epsilon \; dt,
        \qquad \log|\det J| = \sum_i \log\big(\phi(N(x_i; h_i)) + \epsilon\big).

    - :math:`N` is the integrand network (``integrand``: ``"mlp"``, UMNN's deeper
      MLP, or ``"paper"``, the seed paper's one-hidden-layer net of width ``width``
      with a fixed random top layer; or any :class:`~unflow_zoo.nn.integrand.Integrand`),
      shared by the coordinates; with ``integrand_per_feature=True`` every coordinate has
      its own MLP, :math:`N_i` (zuko's UNAF layout), integrated by :class:`NeuralIntegral` (stack first).
    - :math:`(h_i, \beta_i)` come from a MADE over :math:`x` in the order ``order``
      and the ``context`` (fed to every hidden layer); in 1-D without context they are
      a learned constant, in 1-D with a context a MADE whose hidden units see the
      context alone. A conditional transform needs ``embedding >= 1`` or ``offset``.
    - :math:`\phi` is ``elu`` (ELU + 1), ``softplus`` or ``exp``; :math:`\epsilon` =
      ``min_slope`` bounds the slope below so that :math:`f_i` maps onto all of
      :math:`\mathbb R` (every noise value has a preimage even where :math:`\phi(N)`
      decays); ``min_slope=0`` is the papers' exact parametrisation.
    - :math:`x_0` = ``lower_limit``; ``offset=False`` fixes :math:`\beta = 0`, so that
      :math:`y_i \ge 0 \iff x_i \ge x_0`: with an exponential base, data below
      :math:`x_0` then gets log-density :math:`-\infty` (the seed paper's UNF uses
      :math:`x_0` = the data minimum).
    - The integral is a ``K = n_nodes`` point ``quadrature`` rule
      (``clenshaw-curtis``, ``gauss-legendre``, ``riemann``) in :class:`NeuralIntegral`.

    The inverse is numerical: per coordinate, in MADE order (``D`` passes, one
    MADE evaluation each, all batch elements at once), a vectorised safeguarded
    Newton method with bisection fallback on a bracket that grows by doubling until
    it contains the root. It solves :math:`Q(x) = y` for the same quadrature
    :math:`Q` as the forward pass, to an absolute tolerance ``inverse_tol`` in
    :math:`x` (default ``1e-6``; below float32 resolution, i.e. :math:`|x| \gtrsim 8`,
    it stops at a few ulps of :math:`x`) and to a residual :math:`|f_i(x) - y_i|` of at
    most :func:`~unflow_zoo.transforms.bisection.residual_tolerance` of :math:`y_i`,
    :math:`\sqrt{\varepsilon}(1 + |y_i|)` (3.5e-4 relative in float32, 1.5e-8 in
    float64; estimated from the solver's last Newton evaluation of :math:`Q + \beta`, so
    no extra pass is needed). :meth:`forward` rounds :math:`Q + \beta` a few ulps of its
    terms differently from the solver (other batch shapes, other kernels): a point where
    that rounding alone, :math:`4\varepsilon(|Q| + |\beta|)`, exceeds half the tolerance
    (an offset :math:`|\beta| \gtrsim 700\,(1 + |y_i|)` in float32) cannot be certified
    and raises before solving. A point that fails raises
    :class:`~unflow_zoo.errors.InverseError` instead of being returned: the iteration
    cap ``max_iter`` ran out, or the target lies so far outside the range the flow was
    trained on that the working precision cannot resolve :math:`x` (e.g.
    :math:`y = (10^6, 0)` through a 2-D UMNN-MAF: the second coordinate is then
    conditioned on :math:`|x_1| \sim 10^8`, where its slope and offset are huge). It
    raises :class:`InputOutsideDomain` for a NaN or inf, and for a value outside the
    image (only possible with ``min_slope=0``). The inverse runs without autograd: train
    by maximum likelihood through :meth:`forward`.

    Mixed precision: only the MADE conditioner follows autocast (bfloat16/float16
    matmuls); its output is cast to the input's dtype, and the integrand, the
    quadrature sum, the log-determinant and the Newton inverse run with autocast
    disabled, in float32. :class:`NeuralIntegral`'s hand-written backward runs
    outside autocast, so it must see the dtypes its forward saw; and a bfloat16
    integrand would put ~1e-3 relative noise into every node of the quadrature.

    Args:
        features: ``D``.
        integrand: ``"mlp"``, ``"paper"`` or an ``Integrand`` module (its ``embedding``
            then sets the size of :math:`h`).
        width: ``m``, the hidden width of the paper integrand.
        hidden: hidden widths of the MLP integrand (``None``: ``SHARED_HIDDEN`` = ``(64, 64)``, or
            ``PER_FEATURE_HIDDEN`` = ``(96, 96)`` with ``integrand_per_feature``).
        act: hidden activation of the MLP integrand.
        embedding: size :math:`e` of :math:`h_i`.
        conditioner_hidden: hidden widths of the MADE.
        context_features: size of an optional context vector.
        order: autoregressive order (a permutation of ``range(D)``; default identity).
        quadrature: quadrature rule.
        n_nodes: ``K``, integrand evaluations per integral.
        phi: positive function :math:`\phi`.
        lower_limit: :math:`x_0`.
        offset: learn :math:`\beta_i` (``False``: :math:`\beta = 0`).
        min_slope: :math:`\epsilon \ge 0`.
        std_a: see :class:`~unflow_zoo.nn.integrand.PaperIntegrand`.
        init: see :class:`~unflow_zoo.nn.integrand.PaperIntegrand`.
        train_top: see :class:`~unflow_zoo.nn.integrand.PaperIntegrand`.
        inverse_tol: absolute tolerance of the inverse in :math:`x`.
        max_iter: iteration cap of the inverse solver (bracketing + Newton).
        chunk: integrand points per block in :class:`NeuralIntegral` (a speed knob:
            blocks whose activations fit in cache; ``0``: one block; no effect on the result;
            ``None``: ``DEFAULT_CHUNK``, or ``STACKED_CHUNK`` with one integrand per feature).
        integrand_per_feature: one MLP integrand per feature, :math:`N_i(t; h_i)` (zuko's UNAF
            layout, :class:`~unflow_zoo.nn.stacked_integrand.StackedMLPIntegrand`: ``D`` times
            the integrand's parameters, evaluated as batched matmuls over ``(D, out, in)``
            weights, one kernel per layer for all features) instead of one network shared by the
            features; needs ``integrand="mlp"``. The default ``False`` is UMNN's shared integrand.

    References:
        | Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019, arXiv:1908.05164.
        | Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
          Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
        | Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
    """

    analytic_inverse = False  # a bisection/Newton solve, run without autograd: no rsample

    lower: Tensor
    order: Tensor

    def __init__(
        self,
        features: int,
        integrand: Literal["mlp", "paper"] | Integrand = "mlp",
        *,
        width: int = 256,
        hidden: Sequence[int] | None = None,
        act: str = "leaky_relu",
        embedding: int = 16,
        conditioner_hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        order: Sequence[int] | None = None,
        quadrature: QuadratureRule = "clenshaw-curtis",
        n_nodes: int = 32,
        phi: PhiName = "elu",
        lower_limit: float = 0.0,
        offset: bool = True,
        min_slope: float = 1e-3,
        std_a: float = 0.25,
        init: PaperInit = "gaussian-sqrt-m",
        train_top: bool = False,
        inverse_tol: float = 1e-6,
        max_iter: int = 200,
        chunk: int | None = None,
        integrand_per_feature: bool = False,
    ) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        if phi not in PHI_NAMES:
            raise ValueError(f"unknown phi {phi!r}; choose one of {PHI_NAMES}")
        if min_slope < 0:
            raise ValueError(f"min_slope must be >= 0, got {min_slope}")
        self.features, self.context_features = features, context_features
        if hidden is None:
            hidden = PER_FEATURE_HIDDEN if integrand_per_feature else SHARED_HIDDEN
        if isinstance(integrand, StackedMLPIntegrand) and integrand.stack != features:
            raise ValueError(
                f"a StackedMLPIntegrand of stack={integrand.stack} has one network per feature, but features={features}"
            )
        if isinstance(integrand, Integrand):
            self.integrand = integrand
        elif integrand_per_feature:
            if integrand != "mlp":
                raise ValueError(
                    f"integrand_per_feature=True stacks one MLP integrand per feature; it needs integrand='mlp', "
                    f"got {integrand!r}"
                )
            self.integrand = StackedMLPIntegrand(features, embedding, hidden=hidden, act=act)
        else:
            self.integrand = make_integrand(
                integrand, embedding, width=width, hidden=hidden, act=act, std_a=std_a, init=init, train_top=train_top
            )
        self.embedding = self.integrand.embedding
        # one integrand per feature (zuko's layout): stack-first tensors, NeuralIntegral integrates all of them at once
        self.stacked = isinstance(self.integrand, StackedMLPIntegrand)
        if chunk is None:
            chunk = STACKED_CHUNK if self.stacked else DEFAULT_CHUNK
        self.quadrature = Quadrature(quadrature, n_nodes)
        # the paper's one-layer ReLU integrand has an exact O(m) quadrature (relu_integral.py),
        # which bins units by node and needs ascending nodes; decided once, not per call
        q = self.quadrature
        self._relu_quadrature = isinstance(self.integrand, PaperIntegrand) and bool((q.nodes[1:] >= q.nodes[:-1]).all())
        self.phi, self.min_slope, self.offset = phi, float(min_slope), bool(offset)
        self.inverse_tol, self.max_iter, self.chunk = float(inverse_tol), int(max_iter), int(chunk)
        self.register_buffer("lower", torch.tensor(float(lower_limit)))
        order_t = check_order(order, features)
        self.register_buffer("order", order_t)
        self.n_params = self.embedding + int(self.offset)
        self.conditioner: nn.Module | None
        if self.n_params == 0 and context_features:
            raise ValueError(
                f"{type(self).__name__} with context_features={context_features} feeds the context to the MADE that "
                "computes the embedding h and the offset beta, but embedding=0 and offset=False leave it nothing to "
                "compute: pass embedding >= 1 (or offset=True)"
            )
        if self.n_params == 0:
            self.conditioner = None
        elif features == 1 and context_features == 0:
            # 1-D: a MADE would see no inputs; a learned (h, beta) is the same function, cheaper.
            self.conditioner = _ConstantConditioner(features, self.n_params)
        else:
            self.conditioner = MADE(
                features,
                self.n_params,
                hidden=conditioner_hidden,
                context_features=context_features,
                order=order_t.tolist(),
            )

    # ----- pieces ---------------------------------------------------------------------
    def _check(self, x: Tensor, context: Tensor | None) -> None:
        check_features(x, self.features, type(self).__name__)
        check_context(context, x.shape[0], self.context_features, type(self).__name__)

    def _conditioning(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``c`` (B, D, H) for the integrand (per-feature integrands: (D, B, H), stack first) and
        ``beta`` (B, D) or None, from MADE(x)."""
        b, d = x.shape
        if self.conditioner is None:
            p = x.new_zeros(b, d, 0)
        else:
            p = self.conditioner(x, context).to(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = p[..., : self.embedding]
            c = self.integrand.condition(h.transpose(0, 1) if self.stacked else h)
        beta = p[..., self.embedding] if self.offset else None
        return c, beta

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        """The integrand's ``{"W": hidden weights, "b": biases, "a": top layer}``."""
        return self.integrand.parameter_groups()

    def derivative(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r""":math:`g(x_i; h_i) = \partial y_i / \partial x_i`, shape ``(B, D)``."""
        c, _ = self._conditioning(x, context)
        with torch.autocast(device_type=x.device.type, enabled=False):
            n = self._value_at(c, x, self.integrand.path_tensors())
            return positive(n, self.phi, self.min_slope)

    def _value_at(self, c: Tensor, x: Tensor, tensors: Sequence[Tensor]) -> Tensor:
        """``N(x_i; h_i)`` for ``x`` (B, D) and ``c`` from :meth:`_conditioning`: shape (B, D)."""
        if self.stacked:
            return self.integrand.evaluate(c, x.t().unsqueeze(-1), tensors).squeeze(-1).t()
        return self.integrand.evaluate(c, x.unsqueeze(-1), tensors).squeeze(-1)

    # ----- the contract -----------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        c, beta = self._conditioning(x, context)
        tensors = self.integrand.path_tensors()
        q = self.quadrature
        if self._relu_quadrature:
            return self._forward_relu(x, c, beta)
        if self.stacked:
            return self._forward_stacked(x, c, beta, tensors)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = _integrate(
                x, self.lower, c, q.nodes, q.weights, self.integrand, self.phi, self.min_slope, self.chunk, *tensors
            )
            if beta is not None:
                y = y + beta
            n_x = self.integrand.evaluate(c, x.unsqueeze(-1), tensors).squeeze(-1)
            return y, log_positive(n_x, self.phi, self.min_slope).sum(dim=-1)

    def _forward_stacked(
        self, x: Tensor, c: Tensor, beta: Tensor | None, tensors: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """One integrand per feature: the (D, B) transpose of ``x`` through :class:`NeuralIntegral` (stack first)."""
        q = self.quadrature
        with torch.autocast(device_type=x.device.type, enabled=False):
            xt = x.t()
            y = _integrate(
                xt, self.lower, c, q.nodes, q.weights, self.integrand, self.phi, self.min_slope, self.chunk, *tensors
            ).t()
            if beta is not None:
                y = y + beta
            n_x = self.integrand.evaluate(c, xt.unsqueeze(-1), tensors).squeeze(-1)  # (D, B)
            return y, log_positive(n_x, self.phi, self.min_slope).sum(dim=0)

    def _forward_relu(self, x: Tensor, c: Tensor, beta: Tensor | None) -> tuple[Tensor, Tensor]:
        """The paper integrand (one ReLU layer) through the exact O(m) quadrature of
        :mod:`~unflow_zoo.transforms.relu_integral`: the same sum as :class:`NeuralIntegral`."""
        integrand = self.integrand
        assert isinstance(integrand, PaperIntegrand)
        d, m = self.features, integrand.width
        q = self.quadrature
        with torch.autocast(device_type=x.device.type, enabled=False):
            w_t, a = integrand.path_tensors()
            a = a * integrand.scale if integrand.scale != 1.0 else a
            if self.conditioner is None and self.embedding == 0:
                cg = integrand.b.view(1, 1, m).expand(d, 1, m)  # one constant pre-activation for every point
            else:
                cg = c.transpose(0, 1).contiguous()  # (D, B, m): one group per coordinate
            y, n_x = relu_net_integral_and_value(
                x.t().contiguous(), self.lower.view(1, 1).expand(d, 1), cg, w_t.unsqueeze(0).expand(d, m),
                a.unsqueeze(0).expand(d, m), q.nodes, q.weights, self.phi, self.min_slope, q.rule == "riemann",
            )  # fmt: skip
            y = y.t()
            if beta is not None:
                y = y + beta
            return y, log_positive(n_x, self.phi, self.min_slope).sum(dim=0)

    # Eager under torch.compile: the safeguarded Newton iteration's control flow (which rows are
    # done, when to bisect, when to raise) is data-dependent and would split the graph at every step.
    @torch.compiler.disable
    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, context)
        check_finite_target(y, type(self).__name__)
        with torch.no_grad():
            tensors = self.integrand.path_tensors()
            if self.stacked:
                return self._inverse_stacked(y, context, tensors)
            if isinstance(self.conditioner, MADE):
                cs: list[Tensor] = [y.new_empty(0)] * self.features

                def solve(x: Tensor, i: int) -> Tensor:
                    # one MADE pass per coordinate; Newton iterations reuse its output
                    c, beta = self._conditioning(x, context)
                    cs[i] = c[:, i]
                    return self._solve(c[:, i], y[:, i], beta[:, i] if beta is not None else None, tensors, i)

                x = autoregressive_inverse(y, self.order.tolist(), solve)
                c_all = torch.stack(cs, dim=1)
            else:
                # Constant conditioner: every coordinate is independent, solve them all at once.
                c_all, beta = self._conditioning(y, context)
                flat_c, flat_beta = c_all.reshape(-1, c_all.shape[-1]), beta.reshape(-1) if beta is not None else None
                x = self._solve(flat_c, y.reshape(-1), flat_beta, tensors, None).reshape(y.shape)
            with torch.autocast(device_type=y.device.type, enabled=False):
                n_x = self.integrand.evaluate(c_all, x.unsqueeze(-1), tensors).squeeze(-1)
                ladj = -log_positive(n_x, self.phi, self.min_slope).sum(dim=-1)
        return x, ladj

    def _inverse_stacked(self, y: Tensor, context: Tensor | None, tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """The inverse with one integrand per feature: coordinate ``i`` solved with network ``i`` alone."""
        select = StackedMLPIntegrand.select
        if isinstance(self.conditioner, MADE):
            cs: list[Tensor] = [y.new_empty(0)] * self.features

            def solve(x: Tensor, i: int) -> Tensor:
                c, beta = self._conditioning(x, context)  # c: (D, B, H)
                cs[i] = c[i]
                return self._solve(c[i], y[:, i], beta[:, i] if beta is not None else None, select(tensors, i), i)

            x = autoregressive_inverse(y, self.order.tolist(), solve)
            c_all = torch.stack(cs, dim=0)
        else:
            # no inputs to the conditioner: every coordinate is independent of the others
            c_all, beta = self._conditioning(y, context)
            cols = [
                self._solve(c_all[i], y[:, i], beta[:, i] if beta is not None else None, select(tensors, i), i)
                for i in range(self.features)
            ]
            x = torch.stack(cols, dim=1)
        with torch.autocast(device_type=y.device.type, enabled=False):
            ladj = -log_positive(self._value_at(c_all, x, tensors), self.phi, self.min_slope).sum(dim=-1)
        return x, ladj

    # ----- the numerical inverse ----------------------------------------------------------
    def _value_and_slope(self, x: Tensor, c: Tensor, tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``Q(x)`` and ``g(x)`` for 1-D ``x``, ``c`` of shape (n, H): one call on K + 1 points."""
        q = self.quadrature
        x0 = self.lower
        if self._relu_quadrature:
            # the same O(m) quadrature as forward, so that inverse(forward(x)) == x to the tolerance
            w_t, a = tensors
            a = a * self.integrand.scale if self.integrand.scale != 1.0 else a
            val, n_x = relu_net_integral_and_value(
                x.unsqueeze(0), x0.view(1, 1), c.unsqueeze(0), w_t.unsqueeze(0), a.unsqueeze(0), q.nodes, q.weights,
                self.phi, self.min_slope, q.rule == "riemann",
            )  # fmt: skip
            return val.squeeze(0), positive(n_x.squeeze(0), self.phi, self.min_slope)
        d = x - x0
        pts = torch.cat([torch.addcmul(x0, d.unsqueeze(-1), q.nodes), x.unsqueeze(-1)], dim=-1)
        if self.stacked:  # one network of the stack (``tensors`` selected by the caller)
            g = positive(self.integrand.evaluate(c[None], pts[None], tensors)[0], self.phi, self.min_slope)
        else:
            g = positive(self.integrand.evaluate(c, pts, tensors), self.phi, self.min_slope)
        return d * (g[:, :-1] @ q.weights), g[:, -1]

    def _solve(
        self, c: Tensor, y: Tensor, beta: Tensor | None, tensors: Sequence[Tensor], coordinate: int | None
    ) -> Tensor:
        r"""Solve :math:`Q(x) + \beta = y` elementwise with :func:`solve_monotone` (rtsafe, vectorised).

        The solver works on :math:`Q + \beta`, exactly the sum :meth:`forward` returns, so its residual
        is the forward's: solving :math:`Q(x) = y - \beta` instead would hide the rounding of that
        difference, which is huge where :math:`|\beta| \gg |y|` (far outside the training range).
        Runs with autocast disabled (a low-precision integrand would stall Newton at ~1e-3).
        """
        with torch.autocast(device_type=y.device.type, enabled=False):
            return self._solve_full_precision(c, y, beta, tensors, coordinate)

    def _solve_full_precision(
        self, c: Tensor, y: Tensor, beta: Tensor | None, tensors: Sequence[Tensor], coordinate: int | None
    ) -> Tensor:
        owner = type(self).__name__ if coordinate is None else f"{type(self).__name__} (coordinate {coordinate})"
        floor = None
        if beta is not None:
            # y = Q(x) + beta: where |beta| dwarfs y (far out: an offset of 1e15 cancelling an integral
            # of -1e15), forward() itself rounds y by that much, and differently from one batch to
            # the next. Up to 10% of 1 + |y| (moderate cancellation, common in an untrained flow's
            # samples) the returned point is as exact as forward() can tell, and the tolerance
            # widens to twice that rounding; beyond it no x can be certified, so say so before solving.
            rounding = 4 * torch.finfo(y.dtype).eps * ((y - beta).abs() + beta.abs())
            floor = 2 * rounding
            raise_inverse_error(
                rounding,
                y,
                _CANCELLATION_LIMIT * (1.0 + y.abs()),
                owner=owner,
                measure="attainable residual (the rounding of f = Q + beta at the preimage, 4 ulps of each)",
                fix="The offset beta the conditioner computes there is so large that forward() cannot resolve y "
                "in this dtype. " + resolution_fix(y.dtype),
            )

        def value_and_slope(x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            val, slope = self._value_and_slope(x, c[idx], tensors)
            return (val + beta[idx] if beta is not None else val), slope

        return solve_monotone(
            value_and_slope,
            y,
            self.lower + (y - beta if beta is not None else y),  # the identity map: where an untrained flow starts
            tol=self.inverse_tol,
            max_iter=self.max_iter,
            owner=owner,
            onto=self.min_slope > 0,
            floor=floor,
        )

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, phi={self.phi!r}, min_slope={self.min_slope}, "
            f"lower_limit={float(self.lower)}, offset={self.offset}"
            + (", integrand_per_feature=True" if self.stacked else "")
        )
