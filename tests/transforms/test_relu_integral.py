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


def _ar_case(dtype: torch.dtype, seed: int = 5):
    """Two members of the seed paper's D = 4 layout, with junk on and above the diagonal of ``lx``
    (the function must ignore it)."""
    g = torch.Generator().manual_seed(seed)
    e, d, batch, m = 2, 4, 9, 37
    x = torch.rand(e * d, batch, generator=g, dtype=dtype) * 0.8 - 0.3
    x0 = torch.full((e * d, 1), -0.5, dtype=dtype)
    bias = torch.randn(e * d, m, generator=g, dtype=dtype) / m**0.5
    lx = torch.randn(e, d, d, m, generator=g, dtype=dtype)
    w = torch.randn(e * d, m, generator=g, dtype=dtype)
    a = torch.randn(e * d, m, generator=g, dtype=dtype) * 0.5
    return x, x0, bias, lx, w, a


def _formed(x, bias, lx):
    """The pre-activations c = b + sum_{j<i} L x_j in full, ``(E * D, B, m)``."""
    e, d, _, m = lx.shape
    mask = torch.tril(torch.ones(d, d, dtype=x.dtype), -1).view(1, d, d, 1)
    c = bias.view(e, d, 1, m) + torch.einsum("ejb,eijr->eibr", x.view(e, d, -1), lx * mask)
    return c.reshape(e * d, -1, m)


def _ar_direct(x, x0, bias, lx, w, a, nodes, weights):
    """The same flow with ``c`` formed in full, then evaluated node by node (the official code's
    way). Its x-gradient differentiates the nodes; ours is the Leibniz rule: see _ar_x_grad."""
    return _direct(x, x0, _formed(x, bias, lx), w, a, nodes, weights, 0.0)


def _ar_x_grad(x, x0, bias, lx, w, a, nodes, weights, gy, gn):
    """dL/dx: through c by autograd (the other coordinates' inputs), plus the own coordinate's
    Leibniz rule dF/dx = g(x) and dN(x)/dx."""
    xl = x.detach().requires_grad_()
    c = _formed(xl, bias, lx)
    y, nx = _direct(x, x0, c, w, a, nodes, weights, 0.0)  # the own coordinate held fixed
    through_c = torch.autograd.grad((y * gy).sum() + (nx * gn).sum(), xl)[0]
    on = (c.detach() + w.unsqueeze(1) * x.unsqueeze(-1) > 0).to(x.dtype)
    own = gy * (F.elu(nx.detach()) + 1) + gn * (on * (a * w).unsqueeze(1)).sum(-1)
    return through_c + own


@pytest.mark.parametrize("native_kernel", [False, True])
@pytest.mark.parametrize("train_top", [False, True])  # the kernel has a branch for each
def test_autoregressive_conditioning_matches_the_formed_pre_activations(native_kernel: bool, train_top: bool) -> None:
    from unflow_zoo.transforms.relu_integral import relu_net_integral_ar

    if native_kernel and not native.available():
        pytest.skip("no C compiler for the fused kernels")
    nodes, weights = quadrature_rule("riemann", 50)
    case = _ar_case(torch.float64)
    gy, gn = torch.randn_like(case[0]), torch.randn_like(case[0])
    dtype = torch.float32 if native_kernel else torch.float64  # float64 takes the torch path

    def grads(fn, tensors, dt):
        leaves = [t.to(dt).clone().requires_grad_(i != 1 and (i != 5 or train_top)) for i, t in enumerate(tensors)]
        y, nx = fn(*leaves, nodes.to(dt), weights.to(dt))
        wrt = [t for t in leaves if t.requires_grad]
        return [y, nx, *torch.autograd.grad((y * gy.to(dt)).sum() + (nx * gn.to(dt)).sum(), wrt)]

    ours = grads(lambda *t: relu_net_integral_ar(*t, "elu", 0.0, True), case, dtype)
    ref = grads(_ar_direct, case, torch.float64)
    ref[2] = _ar_x_grad(*case, nodes.double(), weights.double(), gy, gn)
    tol = 1e-5 if native_kernel else 1e-10
    for name, o, r in zip(["y", "nx", "x", "bias", "lx", "w", "a"], ours, ref, strict=False):
        err = float((o.double() - r).abs().max())
        assert err <= tol * float(r.abs().max()) + tol, (name, err)
    d = case[3].shape[1]
    upper = torch.triu(torch.ones(d, d, dtype=torch.bool))
    assert float(ours[4][:, upper].abs().max()) == 0.0  # lx on and above the diagonal: not read
