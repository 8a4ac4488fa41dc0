"""The fused constrained map against the log-space formula of the official code."""

from __future__ import annotations

import math

import pytest
import torch

from unflow_zoo import native
from unflow_zoo.transforms.monotone import log_sech2
from unflow_zoo.transforms.tanh_sum import tanh_sum


def _params(e: int, d: int, m: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(e, d, m, generator=g, dtype=dtype) + 0.1
    b = torch.randn(e, d, m, generator=g, dtype=dtype)
    a = torch.rand(e, d, m, generator=g, dtype=dtype) + 0.1
    li = lo = None
    if d > 1:
        block = torch.tril(torch.ones(d, d, dtype=dtype), -1)
        li = torch.randn(e, d * m, d, generator=g, dtype=dtype) * block.repeat_interleave(m, 0)
        lo = torch.randn(e, d, d * m, generator=g, dtype=dtype) * block.repeat_interleave(m, 1)
    return w, b, a, li, lo


def _reference(x, w, b, a, li, lo, c, alpha):
    """The official code's form: tanh network, log-derivative by logsumexp in log space."""
    e, batch, d = x.shape
    m = w.shape[-1]
    z = x.unsqueeze(-1) * w.unsqueeze(1) + b.unsqueeze(1)
    if li is not None:
        z = z + torch.bmm(x, li.transpose(1, 2)).view(e, batch, d, m)
    h = c * torch.tanh(z)
    y = (h * a.unsqueeze(1)).sum(-1) + alpha * x
    if lo is not None:
        y = y + torch.bmm(h.reshape(e, batch, d * m), lo.transpose(1, 2))
    ld = torch.logsumexp(math.log(c) + torch.log(a * w).unsqueeze(1) + log_sech2(z), -1)
    if alpha > 0:
        ld = torch.logaddexp(ld, torch.full_like(ld, math.log(alpha)))
    return y, ld


def _value_and_grads(fn, tensors, gy, gl):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    y, ld = fn(*leaves)
    grads = torch.autograd.grad((y * gy).sum() + (ld * gl).sum(), [t for t in leaves if t is not None])
    return y.detach(), ld.detach(), grads


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.01])
@pytest.mark.parametrize("scale", [1.0, 60.0])  # 60: every unit saturated, sech^2 underflows
def test_matches_log_space_formula(d: int, alpha: float, scale: float, monkeypatch) -> None:
    monkeypatch.setenv("UNFLOW_ZOO_NATIVE", "0")  # float64 takes the torch path anyway
    e, batch, m, c = 2, 7, 12, 0.3
    params = _params(e, d, m, torch.float64)
    x = torch.randn(e, batch, d, dtype=torch.float64) * scale
    gy, gl = torch.randn(e, batch, d, dtype=torch.float64), torch.randn(e, batch, d, dtype=torch.float64)
    ours = _value_and_grads(lambda *t: tanh_sum(*t, c=c, alpha=alpha), (x, *params), gy, gl)
    ref = _value_and_grads(lambda *t: _reference(*t, c, alpha), (x, *params), gy, gl)
    assert torch.isfinite(ours[1]).all()
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-10, atol=1e-10)
    for g_ours, g_ref in zip(ours[2][:4], ref[2][:4], strict=True):  # x, w, b, a; lower blocks below
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not native.available(), reason="no C compiler for the fused kernels")
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.01])
@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_native_kernel_matches_the_float64_reference(d: int, alpha: float, scale: float) -> None:
    e, batch, m, c = 2, 9, 40, 0.3
    params = _params(e, d, m, torch.float64, seed=1)
    x = torch.randn(e, batch, d, dtype=torch.float64) * scale
    gy, gl = torch.randn_like(x), torch.randn_like(x)
    ref = _value_and_grads(lambda *t: _reference(*t, c, alpha), (x, *params), gy, gl)
    f32 = [t.float() if t is not None else None for t in (x, *params)]
    ours = _value_and_grads(lambda *t: tanh_sum(*t, c=c, alpha=alpha), f32, gy.float(), gl.float())
    torch.testing.assert_close(ours[0].double(), ref[0], rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(ours[1].double(), ref[1], rtol=1e-5, atol=5e-5)
    masks = [None] * 4
    if d > 1:
        block = torch.tril(torch.ones(d, d), -1)
        masks += [block.repeat_interleave(m, 0).double(), block.repeat_interleave(m, 1).double()]
    for g_ours, g_ref, mask in zip(ours[2], ref[2], masks, strict=True):
        if mask is not None:  # the kernel reads only the free blocks: compare there
            g_ref = g_ref * mask
        scale_ = float(g_ref.abs().max())
        assert float((g_ours.double() - g_ref).abs().max()) <= 1e-5 * scale_ + 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # the torch path, the kernel
def test_blocks_on_and_above_the_diagonal_are_ignored(dtype: torch.dtype) -> None:
    e, d, batch, m, c = 2, 3, 6, 10, 0.3
    w, b, a, li, lo = _params(e, d, m, dtype, seed=2)
    g = torch.Generator().manual_seed(3)
    junk_in = li + torch.randn(li.shape, generator=g, dtype=dtype) * (li == 0)
    junk_out = lo + torch.randn(lo.shape, generator=g, dtype=dtype) * (lo == 0)
    x = torch.randn(e, batch, d, dtype=dtype, generator=g)
    gy, gl = torch.randn_like(x), torch.randn_like(x)
    clean = _value_and_grads(lambda *t: tanh_sum(*t, c=c), (x, w, b, a, li, lo), gy, gl)
    junk = _value_and_grads(lambda *t: tanh_sum(*t, c=c), (x, w, b, a, junk_in, junk_out), gy, gl)
    torch.testing.assert_close(junk[0], clean[0])
    torch.testing.assert_close(junk[1], clean[1])
    for g_junk, g_clean in zip(junk[2], clean[2], strict=True):
        torch.testing.assert_close(g_junk, g_clean)
    assert float(junk[2][4][li == 0].abs().max()) == 0.0
    assert float(junk[2][5][lo == 0].abs().max()) == 0.0
