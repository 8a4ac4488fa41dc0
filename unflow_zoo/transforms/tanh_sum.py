r"""The seed paper's one-hidden-layer constrained map as one fused autograd function.

For ``E`` independent networks (ensemble members; ``E = 1`` for one flow), each block
autoregressive over ``D`` coordinates with ``m`` units per coordinate,

.. math::

    z_{ir} = w_{ir} x_i + \sum_{j<i} L_{ir,j} x_j + b_{ir}, \qquad
    y_i = c \sum_r a_{ir} \tanh z_{ir} + c \sum_{j<i} \sum_r A_{i,jr} \tanh z_{jr} + \alpha x_i,

    \frac{\partial y_i}{\partial x_i} = c \sum_r a_{ir} w_{ir} \operatorname{sech}^2 z_{ir} + \alpha ,

with ``w, a > 0``. :class:`TanhSum` evaluates ``y`` and :math:`\log \partial y_i/\partial x_i`
and writes the backward pass out by hand: per unit and point it keeps ``tanh z`` and
:math:`\operatorname{sech}^2 z = 1 - \tanh^2 z` and reduces over units and points with
batched matrix products, a handful of passes over the ``(B, m)`` activations where
autograd through the log-space formula (the official code's, and
:class:`~unflow_zoo.transforms.monotone.ConstrainedMonotone`'s for ``depth > 1``) takes
several times as many.

Accuracy. :math:`1 - \tanh^2 z` has an absolute error of about ``2e-7`` in float32 (it is
0 beyond :math:`|z| \approx 9`), so the sum is accurate to ``1e-5`` relative wherever it
is at least ``2%`` of :math:`c \sum_r a_r w_r` (every unit's largest possible slope). Rows
below that (every unit saturated: far tails) are recomputed exactly in log space,
:math:`\operatorname{sech}^2 z = 4e^{-2|z|}/(1 + e^{-2|z|})^2` rescaled by the row's
largest term, so the log-derivative and its gradient stay finite and exact where
:math:`f'` underflows, as the official code's log-space formula does.

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (code:
    github.com/kulinshah98/overparam-NFs, ``CNF/utils.py``).
    De Cao, Titov & Aziz, "Block Neural Autoregressive Flow", UAI 2019.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from unflow_zoo import native

__all__ = ["TanhSum", "tanh_sum"]

#: Rows whose slope sum is below this share of its largest possible value get the exact path.
SATURATION_SHARE = 0.02


def _block_mask(d: int, m: int, like: Tensor) -> Tensor:
    """``(D, D)`` ones strictly below the diagonal (``j < i``), in ``like``'s dtype and device."""
    return torch.tril(torch.ones(d, d, dtype=like.dtype, device=like.device), diagonal=-1)


def _to_groups(v: Tensor) -> Tensor:
    """``(E, B, D)`` -> ``(E * D, B)``."""
    e, b, d = v.shape
    return v.permute(0, 2, 1).reshape(e * d, b)


def _from_groups(v: Tensor, e: int) -> Tensor:
    """``(E * D, B)`` -> ``(E, B, D)``."""
    g, b = v.shape
    return v.view(e, g // e, b).permute(0, 2, 1)


def _units_by_point(v: Tensor, e: int) -> Tensor:
    """``(E * D, B, m)`` -> ``(E, B, D * m)`` (the layout of the dense lower-block matrices)."""
    g, b, m = v.shape
    return v.view(e, g // e, b, m).permute(0, 2, 1, 3).reshape(e, b, (g // e) * m)


class TanhSum(torch.autograd.Function):
    """``(y, log dy/dx)`` of the constrained map; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w: Tensor,
        b: Tensor,
        a: Tensor,
        lower_in: Tensor | None,
        lower_out: Tensor | None,
        c: float,
        alpha: float,
    ) -> tuple[Tensor, Tensor]:
        e, batch, d = x.shape
        m = w.shape[-1]
        g = e * d
        xg = _to_groups(x)  # (G, B)
        wg, bg, ag = w.reshape(g, m), b.reshape(g, m), a.reshape(g, m)
        ctx.c, ctx.alpha, ctx.e = c, alpha, e
        ctx.has_lower_in, ctx.has_lower_out = lower_in is not None, lower_out is not None
        ctx.native = native.usable(x, w, b, a, lower_in, lower_out)
        if ctx.native:
            return _forward_native(ctx, x, xg, wg, bg, ag, lower_in, lower_out, c, alpha)
        # the kernel reads only the blocks below the diagonal; here they are masked explicitly
        lower_in = lower_in * _block_mask(d, m, x).repeat_interleave(m, 0) if lower_in is not None else None
        lower_out = lower_out * _block_mask(d, m, x).repeat_interleave(m, 1) if lower_out is not None else None
        z = torch.addcmul(bg.unsqueeze(1), xg.unsqueeze(-1), wg.unsqueeze(1)).contiguous()  # (G, B, m)
        if lower_in is not None:
            zl = torch.bmm(x, lower_in.transpose(1, 2))  # (E, B, D*m)
            z += zl.view(e, batch, d, m).permute(0, 2, 1, 3).reshape(g, batch, m)
        t = torch.tanh(z)
        s = torch.addcmul(torch.ones_like(t), t, t, value=-1.0)
        ca = c * ag
        caw = ca * wg
        y = torch.bmm(t, ca.unsqueeze(-1)).squeeze(-1)  # (G, B)
        slope = torch.bmm(s, caw.unsqueeze(-1)).squeeze(-1)
        if lower_out is not None:
            yl = torch.bmm(_units_by_point(t, e), lower_out.transpose(1, 2))  # (E, B, D)
            y = y + c * _to_groups(yl)
        if alpha != 0.0:
            y = y + alpha * xg
        fp = slope + alpha
        log_dy = torch.log(fp)
        # the exact path for rows whose slope comes from saturated units (see the module)
        rows = (fp < SATURATION_SHARE * caw.sum(-1, keepdim=True)).view(-1).nonzero().squeeze(-1)
        exact = None
        if rows.numel() > 0:
            zr = z.view(g * batch, m).index_select(0, rows)
            grp = torch.div(rows, batch, rounding_mode="floor")
            s_shift, log_sum, shift = _exact_slopes(zr, caw.index_select(0, grp))
            # log(sum + alpha * e^shift) - shift, with alpha e^shift possibly overflowing harmlessly
            lr = log_sum - shift
            if alpha != 0.0:
                lr = torch.logaddexp(lr, lr.new_tensor(math.log(alpha)))
            log_dy.view(-1).index_copy_(0, rows, lr)
            exact = (rows, grp, s_shift, lr - (-shift))  # lr + shift = log(sum_shifted + alpha e^shift)
        ctx.exact = exact
        saved = [x, wg, ag, t, s, fp]
        saved += [lower_in] if lower_in is not None else []
        saved += [lower_out] if lower_out is not None else []
        ctx.save_for_backward(*saved)
        return _from_groups(y, e), _from_groups(log_dy, e)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor, gl: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.native:
            return _backward_native(ctx, gy, gl)
        x, wg, ag, t, s, fp, *rest = ctx.saved_tensors
        lower_in = rest.pop(0) if ctx.has_lower_in else None
        lower_out = rest.pop(0) if ctx.has_lower_out else None
        c, alpha, e = ctx.c, ctx.alpha, ctx.e
        batch, d = x.shape[1], x.shape[2]
        g, m = wg.shape
        need_x, need_w, need_b, need_a, need_li, need_lo = ctx.needs_input_grad[:6]
        gyg = _to_groups(gy.contiguous())  # (G, B)
        glg = _to_groups(gl.contiguous())
        q = glg / fp  # dL/d(slope)
        ca = c * ag
        exact = ctx.exact
        if exact is not None:
            q.view(-1).index_fill_(0, exact[0], 0.0)  # those rows' slope terms are added below
        # dL/dz = s * dL/dt - 2 s t * dL/ds, with dL/dt = c (gy a + lower terms), dL/ds = q c a w
        gt = torch.mul(gyg.unsqueeze(-1), ca.unsqueeze(1))
        if lower_out is not None:
            gtl = torch.bmm(gy, lower_out)  # (E, B, D*m)
            gt.add_(gtl.view(e, batch, d, m).permute(0, 2, 1, 3).reshape(g, batch, m), alpha=c)
        two_caw = 2.0 * ca * wg
        gz = torch.mul(t, q.unsqueeze(-1))
        gz.mul_(two_caw.unsqueeze(1))
        gz = torch.sub(gt, gz).mul_(s).contiguous()
        q_s = torch.bmm(q.unsqueeze(1), s).squeeze(1)  # sum_b q s, (G, m)
        if exact is not None:
            rows, grp, s_shift, log_norm = exact
            q_r = glg.reshape(-1).index_select(0, rows) * torch.exp(-log_norm)  # gl / (f' + alpha) * e^shift
            tr = t.view(g * batch, m).index_select(0, rows)
            corr = (tr * s_shift).mul_(q_r.unsqueeze(-1)).mul_(two_caw.index_select(0, grp))
            gz.view(g * batch, m).index_add_(0, rows, corr, alpha=-1.0)
            q_s.index_add_(0, grp, s_shift * q_r.unsqueeze(-1))
        gx = gw = gb = ga = gli = glo = None
        xg = _to_groups(x)
        if need_b:
            gb = gz.sum(1).view(e, d, m)
        if need_w:
            gw = (torch.bmm(xg.unsqueeze(1), gz).squeeze(1) + ca * q_s).view(e, d, m)
        if need_a:
            ga = (c * torch.bmm(gyg.unsqueeze(1), t).squeeze(1) + (c * wg) * q_s).view(e, d, m)
        gz_p = _units_by_point(gz, e) if (need_li or (need_x and lower_in is not None)) else None
        if need_li:
            gli = torch.bmm(gz_p.transpose(1, 2), x)  # (E, D*m, D)
            gli.mul_(_block_mask(d, m, x).repeat_interleave(m, 0))  # zero on and above the diagonal
        if need_lo:
            glo = c * torch.bmm(gy.transpose(1, 2), _units_by_point(t, e))  # (E, D, D*m)
            glo.mul_(_block_mask(d, m, x).repeat_interleave(m, 1))
        if need_x:
            gxg = (gz * wg.unsqueeze(1)).sum(-1)
            if alpha != 0.0:
                gxg = gxg + alpha * gyg
            gx = _from_groups(gxg, e)
            if lower_in is not None:
                gx = gx + torch.bmm(gz_p, lower_in)
        return gx, gw, gb, ga, gli, glo, None, None


def _forward_native(
    ctx: Any,
    x: Tensor,
    xg: Tensor,
    wg: Tensor,
    bg: Tensor,
    ag: Tensor,
    lower_in: Tensor | None,
    lower_out: Tensor | None,
    c: float,
    alpha: float,
) -> tuple[Tensor, Tensor]:
    """The fused C kernel (:mod:`unflow_zoo.native`): same quantities, one pass per point, the
    block-autoregressive products inside the kernel (nothing of size ``B * D * m`` is stored)."""
    e, batch, d = x.shape
    g, m = wg.shape
    xg, wg, bg, ag = (v.contiguous() for v in (xg, wg, bg, ag))
    # lt[e, i, j, :]: weights from x_j into block i; at[e, k, i, :]: from block i into y_k
    lt = lower_in.reshape(e, d, m, d).permute(0, 1, 3, 2).contiguous() if lower_in is not None else None
    at = lower_out.reshape(e, d, d, m).contiguous() if lower_out is not None else None
    y = xg.new_empty(g, batch)
    log_dy = torch.empty_like(y)
    shift = torch.empty_like(y)
    work = xg.new_empty(2 * m + 2 * batch)
    P = native.ptr
    native.library().tanh_sum_forward(  # type: ignore[union-attr]
        e, d, batch, m, P(xg), P(wg), P(bg), P(ag), P(lt), P(at), c, alpha, P(y), P(log_dy), P(shift), P(work)
    )
    ctx.save_for_backward(xg, wg, bg, ag, lt, at, shift, log_dy)
    ctx.shape = (e, batch, d)
    return _from_groups(y, e), _from_groups(log_dy, e)


def _backward_native(ctx: Any, gy: Tensor, gl: Tensor) -> tuple[Tensor | None, ...]:
    xg, wg, bg, ag, lt, at, shift, log_dy = ctx.saved_tensors
    c, alpha = ctx.c, ctx.alpha
    e, batch, d = ctx.shape
    g, m = wg.shape
    need_x, need_w, need_b, need_a, need_li, need_lo = ctx.needs_input_grad[:6]
    gyg = _to_groups(gy).contiguous()
    glg = _to_groups(gl).contiguous()
    gw, gb, ga = (wg.new_empty(g, m) for _ in range(3))
    glt = wg.new_empty(e, d, d, m) if lt is not None else None
    gat = wg.new_empty(e, d, d, m) if at is not None else None
    gxg = xg.new_empty(g, batch) if need_x else None
    work = xg.new_empty(3 * 1024)  # UNITS in kernels.c
    P = native.ptr
    native.library().tanh_sum_backward(  # type: ignore[union-attr]
        e, d, batch, m, P(xg), P(wg), P(bg), P(ag), P(lt), P(at), c, alpha, P(shift), P(log_dy), P(gyg), P(glg),
        P(gw), P(gb), P(ga), P(glt), P(gat), P(gxg), P(work),
    )  # fmt: skip
    gli = glt.permute(0, 1, 3, 2).reshape(e, d * m, d) if (need_li and glt is not None) else None
    glo = gat.reshape(e, d, d * m) if (need_lo and gat is not None) else None
    return (
        _from_groups(gxg, e) if need_x else None,
        gw.view(e, d, m) if need_w else None,
        gb.view(e, d, m) if need_b else None,
        ga.view(e, d, m) if need_a else None,
        gli,
        glo,
        None,
        None,
    )


def _exact_slopes(z: Tensor, caw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""For rows ``z`` ``(n, m)``: :math:`\tilde s = e^{\text{shift}} \operatorname{sech}^2 z`,
    :math:`\log \sum_r caw_r \tilde s_r` and the shift (the smallest :math:`2|z|` of the row)."""
    two_abs = 2.0 * z.abs()
    shift = two_abs.amin(-1)
    u = torch.exp(-two_abs)
    s_shift = 4.0 * torch.exp(shift.unsqueeze(-1) - two_abs) / (1.0 + u).square()
    return s_shift, torch.log((s_shift * caw).sum(-1)), shift


def tanh_sum(
    x: Tensor,
    w: Tensor,
    b: Tensor,
    a: Tensor,
    lower_in: Tensor | None = None,
    lower_out: Tensor | None = None,
    c: float = 1.0,
    alpha: float = 0.0,
) -> tuple[Tensor, Tensor]:
    r"""``y`` and :math:`\log \partial y_i / \partial x_i`, both ``(E, B, D)``, of ``E`` constrained maps.

    Args:
        x: ``(E, B, D)``.
        w: positive input weights of the diagonal blocks, ``(E, D, m)``.
        b: biases, ``(E, D, m)``.
        a: positive output weights of the diagonal blocks, ``(E, D, m)``.
        lower_in: free weights from :math:`x_{<i}` into block ``i``, ``(E, D*m, D)`` (``None``
            for ``D = 1`` or independent coordinates). Only the blocks below the diagonal are
            read; entries on and above it are ignored and get a zero gradient, so a caller need
            not mask them.
        lower_out: free output weights from blocks ``j < i`` into :math:`y_i`, ``(E, D, D*m)``
            (likewise only below the block diagonal).
        c: scale after the tanh.
        alpha: fixed linear term.
    """
    return TanhSum.apply(x, w, b, a, lower_in, lower_out, float(c), float(alpha))
