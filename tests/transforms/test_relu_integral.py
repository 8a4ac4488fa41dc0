"""The O(m) switch-point quadrature against the direct per-node evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unflow_zoo import native
from unflow_zoo.transforms.quadrature import quadrature_rule
from unflow_zoo.transforms.relu_integral import relu_net_integral_and_value


def _direct(x, x0, c, w, a, nodes, weights, eps):
    """The official code's evaluation: every hidden unit at every node (sr_integrate)."""
    d = x - x0
    t = x0.unsqueeze(-1) + d.unsqueeze(-1) * nodes  # (G, B, K)
    z = c.unsqueeze(2) + w[:, None, None, :] * t.unsqueeze(-1)
    n = (torch.relu(z) * a[:, None, None, :]).sum(-1)
    nx = (torch.relu(c + w.unsqueeze(1) * x.unsqueeze(-1)) * a.unsqueeze(1)).sum(-1)
    return d * ((F.elu(n) + 1 + eps) @ weights), nx


def _case(shared: bool, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    groups, batch, m = 3, 11, 60
    x = torch.rand(groups, batch, generator=g, dtype=dtype) * 2 - 0.5
    x0 = torch.full((groups, 1), -0.6, dtype=dtype)
    c = torch.randn(groups, 1 if shared else batch, m, generator=g, dtype=dtype)
    w = torch.randn(groups, m, generator=g, dtype=dtype) * 2
    a = torch.randn(groups, m, generator=g, dtype=dtype)
    return x, x0, c, w, a


def _grads(fn, x, x0, c, w, a, gy, gn):
    leaves = [t.detach().clone().requires_grad_() for t in (x, c, w, a)]
    y, nx = fn(leaves[0], x0, *leaves[1:])
    grads = torch.autograd.grad((y * gy).sum() + (nx * gn).sum(), leaves)
    return y.detach(), nx.detach(), grads


@pytest.mark.parametrize("rule", ["riemann", "clenshaw-curtis", "gauss-legendre"])
@pytest.mark.parametrize("shared", [False, True])
def test_matches_direct_evaluation(rule: str, shared: bool, monkeypatch) -> None:
    monkeypatch.setenv("UNFLOW_ZOO_NATIVE", "0")
    nodes, weights = quadrature_rule(rule, 50)
    nodes, weights = nodes.double(), weights.double()
    x, x0, c, w, a = _case(shared, torch.float64)
    gy, gn = torch.randn_like(x), torch.randn_like(x)
    eps = 1e-3
    ours = _grads(
        lambda *t: relu_net_integral_and_value(*t, nodes, weights, "elu", eps, rule == "riemann"), x, x0, c, w, a, gy, gn
    )
    ref = _grads(lambda *t: _direct(*t, nodes, weights, eps), x, x0, c, w, a, gy, gn)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-12, atol=1e-12)
    # c, w, a: the quadrature's own gradient; x: the Leibniz rule dF/dx = g(x), plus dN(x)/dx
    for g_ours, g_ref in zip(ours[2][1:], ref[2][1:], strict=True):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-10)
    xl = x.detach().requires_grad_()
    nx = _direct(xl, x0, c, w, a, nodes, weights, eps)[1]
    dnx = torch.autograd.grad((nx * gn).sum(), xl)[0]
    torch.testing.assert_close(ours[2][0], gy * (F.elu(ref[1]) + 1 + eps) + dnx, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not native.available(), reason="no C compiler for the fused kernels")
@pytest.mark.parametrize("shared", [False, True])
def test_native_kernel_matches_the_float64_reference(shared: bool) -> None:
    nodes, weights = quadrature_rule("riemann", 50)
    x, x0, c, w, a = _case(shared, torch.float64, seed=3)
    gy, gn = torch.randn_like(x), torch.randn_like(x)
    ref = _grads(lambda *t: _direct(*t, nodes.double(), weights.double(), 0.0), x, x0, c, w, a, gy, gn)
    f32 = [t.float() for t in (x, x0, c, w, a)]
    ours = _grads(
        lambda *t: relu_net_integral_and_value(*t, nodes.float(), weights.float(), "elu", 0.0, True),
        *f32, gy.float(), gn.float(),
    )  # fmt: skip
    for o, r in zip(ours[:2], ref[:2], strict=True):
        assert float((o.double() - r).abs().max()) <= 1e-5 * float(r.abs().max()) + 1e-5
    for o, r in zip(ours[2][1:], ref[2][1:], strict=True):
        assert float((o.double() - r).abs().max()) <= 1e-5 * float(r.abs().max()) + 1e-5
