r"""Exact fixed-node quadrature of a one-hidden-layer ReLU integrand in :math:`O(m)` per integral.

The seed paper's unconstrained flow integrates
:math:`g(t) = \phi(N(t)) + \epsilon` with :math:`N(t) = \sum_{j=1}^m a_j
\operatorname{ReLU}(c_j + w_j t)` over :math:`[x_0, x]` with a ``K``-node rule
:math:`\int_{x_0}^x g \approx (x - x_0) \sum_k \omega_k\, g(x_0 + (x - x_0) s_k)`.
Evaluated directly that is ``K * m`` hidden units per integral (the official code's
loop over nodes; ``K = 50`` in the paper). But along one integral the pre-activation
of unit ``j`` is affine in the node position,

.. math::

    c_j + w_j\,(x_0 + d\, s_k) = \alpha_j + \beta_j s_k, \qquad
    \alpha_j = c_j + w_j x_0,\ \ \beta_j = w_j d,\ \ d = x - x_0,

so unit ``j`` is active on a contiguous run of nodes: :math:`s_k > \tau_j =
-\alpha_j/\beta_j` if :math:`\beta_j > 0`, :math:`s_k < \tau_j` if :math:`\beta_j < 0`
(all or none if :math:`\beta_j = 0`). Hence

.. math::

    N(s_k) = \sum_{j \text{ active at } k} a_j \alpha_j + s_k \sum_{j \text{ active at } k} a_j \beta_j ,

and both sums are cumulative sums over the nodes of the per-unit terms, each binned at
the node where its unit switches on (or off). The forward pass is one
``searchsorted`` and two ``scatter_add`` over the ``m`` units, then cumulative sums over
``K`` nodes; the backward pass gathers suffix (prefix) sums of the node cotangents at
the same bins. Both cost :math:`O(m + K)` per integral instead of :math:`O(mK)`, and
the result is the same quadrature sum (not an approximation of it): only the order of
the floating-point additions differs. Units switching on and off are accumulated in
separate (forward and reverse) cumulative sums, so no large terms cancel.

The derivative with respect to the upper limit follows the Leibniz rule,
:math:`\partial F/\partial x = g(x)` (the derivative of the integral the quadrature
approximates), as in :class:`~unflow_zoo.transforms.integral.NeuralIntegral`, so the
log-determinant and the Jacobian agree exactly.

Shapes: ``G`` independent integrands (coordinates, ensemble members, or both) with
``B`` integrals each: ``x`` ``(G, B)``, ``x0`` ``(G, 1)``, ``c`` ``(G, B, m)``, ``w``
and ``a`` ``(G, m)``.

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (code:
    github.com/kulinshah98/overparam-NFs, ``UNF/utils.py``: ``sr_integrate``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from unflow_zoo import native
from unflow_zoo.transforms.positive import d_positive, positive

__all__ = [
    "ReluNetIntegral",
    "ReluNetIntegralAR",
    "relu_net",
    "relu_net_integral",
    "relu_net_integral_and_value",
    "relu_net_integral_ar",
]


def relu_net(c: Tensor, w: Tensor, a: Tensor, t: Tensor) -> Tensor:
    r""":math:`N(t) = \sum_j a_j \operatorname{ReLU}(c_j + w_j t)` at one point per row:
    ``c`` ``(G, B, m)``, ``w``, ``a`` ``(G, m)``, ``t`` ``(G, B)`` -> ``(G, B)`` (differentiable)."""
    z = torch.addcmul(c, t.unsqueeze(-1), w.unsqueeze(1))
    return torch.bmm(F.relu(z), a.unsqueeze(-1)).squeeze(-1)


class ReluNetIntegral(torch.autograd.Function):
    """``F = d * sum_k omega_k (phi(N(x0 + d s_k)) + eps)`` by switch-point binning, and
    ``N(x)``; see the module. ``c`` is ``(G, B, m)``, or ``(G, 1, m)`` when shared by all points."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        x0: Tensor,
        c: Tensor,
        w: Tensor,
        a: Tensor,
        nodes: Tensor,
        weights: Tensor,
        phi: str,
        eps: float,
        uniform_right: bool,
    ) -> tuple[Tensor, Tensor]:
        ctx.phi, ctx.eps, ctx.k = phi, eps, nodes.shape[0]
        ctx.shared = c.shape[1] == 1 and x.shape[1] != 1
        ctx.native = uniform_right and native.usable(x, x0, c, w, a, weights)
        if ctx.native:
            return _forward_native(ctx, x, x0, c, w, a, weights, phi, eps)
        k = nodes.shape[0]
        d = x - x0  # (G, B)
        alpha = torch.addcmul(c, x0.unsqueeze(-1), w.unsqueeze(1)).expand(*x.shape, w.shape[-1])  # c + w x0
        beta = w.unsqueeze(1) * d.unsqueeze(-1)
        bins = _switch_bins(alpha, beta, nodes, uniform_right)
        aa = a.unsqueeze(1)
        n = _node_values(torch.mul(aa, alpha), torch.mul(aa, beta), bins, nodes, k)
        g = positive(n, phi)
        slope = d_positive(n, phi, 0.0, g)
        y = d * (g @ weights) + eps * d
        zx = alpha + beta  # c + w x
        nx = torch.bmm(F.relu(zx), a.unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(x, x0, c, w, a, nodes, weights, alpha, beta, bins, slope, d, nx)
        return y, nx

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor | None, grad_nx: Tensor | None) -> tuple[Tensor | None, ...]:
        if ctx.native:
            return _backward_native(ctx, grad, grad_nx)
        x, x0, c, w, a, nodes, weights, alpha, beta, bins, slope, d, nx = ctx.saved_tensors
        need_x, _, need_c, need_w, need_a = ctx.needs_input_grad[:5]
        k = ctx.k
        grad = torch.zeros_like(x) if grad is None else grad
        gn = (grad * d).unsqueeze(-1) * weights * slope  # dL/dN at every node, (G, B, K)
        tg = _range_sums(gn, bins, k)
        tgs = _range_sums(gn * nodes, bins, k)
        if grad_nx is not None:  # N(x) = sum a relu(alpha + beta): the unit's own term
            on = (alpha + beta > 0).to(tg.dtype) * grad_nx.unsqueeze(-1)
            tg = tg + on
            tgs = tgs + on
        aa = a.unsqueeze(1)
        g_alpha = aa * tg
        g_beta = aa * tgs
        gx = gc = gw = ga = None
        if need_c:
            gc = g_alpha.sum(1, keepdim=True) if c.shape[1] == 1 and x.shape[1] != 1 else g_alpha
        if need_w:
            gw = g_alpha.sum(1) * x0 + torch.bmm(d.unsqueeze(1), g_beta).squeeze(1)
        if need_a:
            ga = (alpha * tg + beta * tgs).sum(1)
        if need_x:
            gx = grad * positive(nx, ctx.phi, ctx.eps)
            if grad_nx is not None:
                gx = gx + grad_nx * torch.bmm((alpha + beta > 0).to(a.dtype), (a * w).unsqueeze(-1)).squeeze(-1)
        return gx, None, gc, gw, ga, None, None, None, None, None


_PHI_CODES = {"elu": 0, "softplus": 1, "exp": 2}


def _forward_native(
    ctx: Any, x: Tensor, x0: Tensor, c: Tensor, w: Tensor, a: Tensor, weights: Tensor, phi: str, eps: float
) -> tuple[Tensor, Tensor]:
    """The fused C kernel (:mod:`unflow_zoo.native`, uniform right-Riemann nodes, float32)."""
    g, batch = x.shape
    m, k = w.shape[-1], weights.shape[0]
    x, w, a, weights = (v.contiguous() for v in (x, w, a, weights))
    x0 = x0.reshape(g).contiguous()
    c = (c[:, 0] if ctx.shared else c.expand(g, batch, m)).contiguous()
    y = x.new_empty(g, batch)
    nx = torch.empty_like(y)
    dphi = x.new_empty(g, batch, k)
    work = _forward_work(x, m, k)  # held here: a temporary would be freed before the call
    P = native.ptr
    native.library().relu_integral_forward(  # type: ignore[union-attr]
        g, batch, m, k, P(x), P(x0), P(c), int(ctx.shared), P(w), P(a), P(weights), _PHI_CODES[phi], eps,
        P(y), P(nx), P(dphi), P(work), 1, None,
    )  # fmt: skip
    ctx.save_for_backward(x, x0, c, w, a, weights, nx, dphi)
    return y, nx


def _backward_native(ctx: Any, grad: Tensor | None, grad_nx: Tensor | None) -> tuple[Tensor | None, ...]:
    x, x0, c, w, a, weights, nx, dphi = ctx.saved_tensors
    need_x, _, need_c, need_w, need_a = ctx.needs_input_grad[:5]
    g, batch = x.shape
    m, k = w.shape[-1], weights.shape[0]
    grad = torch.zeros_like(x) if grad is None else grad.contiguous()
    grad_nx = torch.zeros_like(x) if grad_nx is None else grad_nx.contiguous()
    gc = (x.new_empty(g, m) if ctx.shared else x.new_empty(g, batch, m)) if need_c else None
    gw = x.new_empty(g, m) if need_w else None
    ga = x.new_empty(g, m) if need_a else None
    gx = x.new_empty(g, batch) if need_x else None
    work = _backward_work(x, m, k)
    P = native.ptr
    native.library().relu_integral_backward(  # type: ignore[union-attr]
        g, batch, m, k, P(x), P(x0), P(c), int(ctx.shared), P(w), P(a), P(weights), _PHI_CODES[ctx.phi],
        ctx.eps, P(nx), P(dphi), P(grad), P(grad_nx), P(gc), P(gw), P(ga), P(gx), P(work),
        1, None, None,
    )  # fmt: skip
    if gc is not None and ctx.shared:
        gc = gc.unsqueeze(1)
    return gx, None, gc, gw, ga, None, None, None, None, None


def _forward_work(like: Tensor, m: int, k: int) -> Tensor:
    """Scratch of the forward kernel: 4 interleaved bin tables x 2 sums, per-unit terms and bins, one
    conditioning row."""
    return like.new_empty(8 * (2 * k + 2) + 4 * m)


def _backward_work(like: Tensor, m: int, k: int) -> Tensor:
    """Scratch of the backward kernel: the suffix/prefix tables, a conditioning row and a gradient row."""
    return like.new_empty(4 * k + 4 + 2 * m)


class ReluNetIntegralAR(torch.autograd.Function):
    """The fused kernel with the seed paper's D > 1 conditioning formed inside it (see
    :func:`relu_net_integral_ar`); float32 on the CPU with the kernels built only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, x0: Tensor, bias: Tensor, lx: Tensor, w: Tensor, a: Tensor, weights: Tensor,
        phi: str, eps: float,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        g, batch = x.shape
        _, d, _, m = lx.shape
        k = weights.shape[0]
        x, bias, lx, w, a, weights = (v.contiguous() for v in (x, bias, lx, w, a, weights))
        x0 = x0.reshape(g).contiguous()
        y = x.new_empty(g, batch)
        nx = torch.empty_like(y)
        dphi = x.new_empty(g, batch, k)
        work = _forward_work(x, m, k)  # held here: a temporary would be freed before the call
        P = native.ptr
        native.library().relu_integral_forward(  # type: ignore[union-attr]
            g, batch, m, k, P(x), P(x0), P(bias), 1, P(w), P(a), P(weights), _PHI_CODES[phi], eps,
            P(y), P(nx), P(dphi), P(work), d, P(lx),
        )  # fmt: skip
        ctx.phi, ctx.eps = phi, eps
        ctx.save_for_backward(x, x0, bias, lx, w, a, weights, nx, dphi)
        return y, nx

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor | None, grad_nx: Tensor | None) -> tuple[Tensor | None, ...]:
        x, x0, bias, lx, w, a, weights, nx, dphi = ctx.saved_tensors
        need_x, _, need_bias, need_lx, need_w, need_a = ctx.needs_input_grad[:6]
        g, batch = x.shape
        e, d, _, m = lx.shape
        k = weights.shape[0]
        grad = torch.zeros_like(x) if grad is None else grad.contiguous()
        grad_nx = torch.zeros_like(x) if grad_nx is None else grad_nx.contiguous()
        gbias = x.new_empty(g, m)  # also the kernel's per-unit accumulator of the c gradient
        glx = x.new_empty(e, d, d, m) if need_lx else None
        gw = x.new_empty(g, m) if need_w else None
        ga = x.new_empty(g, m) if need_a else None
        gx = x.new_empty(g, batch) if need_x else None
        work = _backward_work(x, m, k)
        P = native.ptr
        native.library().relu_integral_backward(  # type: ignore[union-attr]
            g, batch, m, k, P(x), P(x0), P(bias), 1, P(w), P(a), P(weights), _PHI_CODES[ctx.phi], ctx.eps,
            P(nx), P(dphi), P(grad), P(grad_nx), P(gbias), P(gw), P(ga), P(gx), P(work),
            d, P(lx), P(glx),
        )  # fmt: skip
        return gx, None, gbias if need_bias else None, glx, gw, ga, None, None, None


def relu_net_integral_ar(
    x: Tensor,
    x0: Tensor,
    bias: Tensor,
    lx: Tensor,
    w: Tensor,
    a: Tensor,
    nodes: Tensor,
    weights: Tensor,
    phi: str = "elu",
    eps: float = 0.0,
    uniform_right: bool = False,
) -> tuple[Tensor, Tensor]:
    r""":func:`relu_net_integral_and_value` for ``E`` members of the seed paper's ``D``-coordinate
    layout, whose pre-activations are :math:`c_{ir} = b_{ir} + \sum_{j<i} L_{ijr} x_j` (coordinate
    ``i`` fed the raw :math:`x_{<i}` of its own member).

    Shapes: groups ``g = e * D + i``; ``x`` ``(G, B)``, ``x0`` ``(G, 1)``, ``bias``, ``w``, ``a``
    ``(G, m)``, ``lx`` ``(E, D, D, m)`` with ``lx[e, i, j]`` the weights from :math:`x_j` into
    coordinate ``i``; entries with ``j >= i`` are ignored (they get a zero gradient). Returns the
    integrals and :math:`N(x)`, each ``(G, B)``. The fused kernel forms ``c`` one point at a time
    (nothing of size ``G * B * m`` is stored); elsewhere ``c`` is formed in torch and the result
    is the same (the tests compare them).
    """
    e, d, _, m = lx.shape
    if uniform_right and native.usable(x, x0, bias, lx, w, a, weights):
        return ReluNetIntegralAR.apply(x, x0, bias, lx, w, a, weights, phi, float(eps))
    mask = torch.tril(torch.ones(d, d, dtype=lx.dtype, device=lx.device), diagonal=-1)  # j < i
    xs = x.view(e, d, -1)  # (E, D_j, B)
    c = bias.view(e, d, 1, m) + torch.einsum("ejb,eijr->eibr", xs, lx * mask.view(1, d, d, 1))
    return relu_net_integral_and_value(x, x0, c.reshape(e * d, -1, m), w, a, nodes, weights, phi, eps, uniform_right)


def _switch_bins(alpha: Tensor, beta: Tensor, nodes: Tensor, uniform_right: bool) -> Tensor:
    r"""Bin of every unit, in ``[0, 2K + 1]``: ``k0`` (first active node) for units that switch
    on (:math:`\beta > 0`), ``K + 1 + k1`` (first inactive node) for units that switch off
    (:math:`\beta < 0`). The count of nodes :math:`s_k \le \tau` is exact arithmetic for the
    uniform right-Riemann nodes ``(k + 1) / K`` and a ``searchsorted`` otherwise. A unit with
    :math:`\beta = \pm 0` has :math:`\tau = \pm\infty`, which lands it in the right bin through
    the sign bit of :math:`\beta` (on everywhere iff :math:`\alpha > 0`); :math:`\alpha = \beta = 0`
    contributes nothing, so its bin does not matter."""
    k = nodes.shape[0]
    with torch.no_grad():
        if uniform_right:
            idx = torch.div(alpha, beta).mul_(-float(k)).floor_()  # tau * K
            idx = torch.nan_to_num_(idx, nan=0.0).clamp_(0.0, float(k))
        else:
            tau = torch.div(alpha, beta).neg_()
            idx = torch.searchsorted(nodes, torch.nan_to_num_(tau, nan=0.0), right=True).to(alpha.dtype)
        idx.add_(torch.signbit(beta), alpha=float(k + 1))
        return idx.long()


def _node_values(p: Tensor, q: Tensor, bins: Tensor, nodes: Tensor, k: int) -> Tensor:
    """``N`` at the ``K`` nodes from the per-unit terms ``p = a alpha``, ``q = a beta``."""
    shape = (*p.shape[:-1], 2 * k + 2)
    bp = p.new_zeros(shape).scatter_add_(-1, bins, p)
    bq = q.new_zeros(shape).scatter_add_(-1, bins, q)
    # rising units are on at node i if their bin k0 <= i; falling ones if their k1 > i
    on = bp[..., :k].cumsum(-1) + bp[..., k + 2 :].flip(-1).cumsum(-1).flip(-1)
    slope = bq[..., :k].cumsum(-1) + bq[..., k + 2 :].flip(-1).cumsum(-1).flip(-1)
    return torch.addcmul(on, slope, nodes)


def _range_sums(v: Tensor, bins: Tensor, k: int) -> Tensor:
    """For every unit, the sum of ``v`` (``(..., K)``) over the nodes where it is active."""
    zero = v.new_zeros(*v.shape[:-1], 1)
    suffix = torch.cat([v.flip(-1).cumsum(-1).flip(-1), zero], -1)  # suffix[k0] = sum_{i >= k0}
    prefix = torch.cat([zero, v.cumsum(-1)], -1)  # prefix[k1] = sum_{i < k1}
    table = torch.cat([suffix, prefix], -1)  # laid out like the bins
    return table.gather(-1, bins)


def relu_net_integral(
    x: Tensor,
    x0: Tensor,
    c: Tensor,
    w: Tensor,
    a: Tensor,
    nodes: Tensor,
    weights: Tensor,
    phi: str = "elu",
    eps: float = 0.0,
    uniform_right: bool = False,
) -> Tensor:
    r""":math:`(x - x_0) \sum_k \omega_k\, g(x_0 + (x - x_0) s_k)`, ``(G, B)``, for the ReLU net
    :func:`relu_net`; ``nodes`` must be sorted ascending in ``[0, 1]``; ``uniform_right=True``
    promises they are exactly ``(k + 1) / K`` (the right Riemann sum), which replaces a
    ``searchsorted`` by arithmetic and allows the fused C kernel. Differentiable in ``x``
    (Leibniz rule), ``c``, ``w`` and ``a``; ``c`` may be ``(G, 1, m)`` (shared by the points)."""
    return relu_net_integral_and_value(x, x0, c, w, a, nodes, weights, phi, eps, uniform_right)[0]


def relu_net_integral_and_value(
    x: Tensor,
    x0: Tensor,
    c: Tensor,
    w: Tensor,
    a: Tensor,
    nodes: Tensor,
    weights: Tensor,
    phi: str = "elu",
    eps: float = 0.0,
    uniform_right: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""The integral of :func:`relu_net_integral` and :math:`N(x)` (the integrand's network at the
    upper limit, for the log-derivative :math:`\log(\phi(N(x)) + \epsilon)`), from one pass."""
    return ReluNetIntegral.apply(x, x0, c, w, a, nodes, weights, phi, float(eps), bool(uniform_right))
