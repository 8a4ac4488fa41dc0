"""The seed paper's D-dimensional unconstrained layout: contract, agreement with the official code, inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unflow_zoo.core.distributions import StandardExponential
from unflow_zoo.core.transform import InputOutsideDomain
from unflow_zoo.testing import check_transform
from unflow_zoo.transforms.integral import positive
from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform
from unflow_zoo.transforms.quadrature import QUADRATURE_RULES, quadrature_rule

F64 = torch.float64


def above(x0: list[float], n: int, spread: float = 3.0, seed: int = 0) -> torch.Tensor:
    """``n`` points with every coordinate above its lower limit (the paper's domain)."""
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(x0, dtype=F64) + spread * torch.rand(n, len(x0), generator=g, dtype=F64)


# ----- the official network, transcribed from UNF/utils.py (float64, no .type(FloatTensor) casts) -------


class OfficialMLP(nn.Module):
    """``UNF/utils.py: MLP`` with one hidden layer: ``phi(s * w_final relu(w [h, t] + b))``."""

    def __init__(self, inp_dim: int, width: int, init: str, train_last_layer: bool) -> None:
        super().__init__()
        # registration order as in the original (w, w_final, b): it fixes the order of _flatten
        self.w = nn.ParameterList([nn.Parameter(torch.empty(width, inp_dim, dtype=F64))])
        w_final = torch.empty(1, width, dtype=F64)
        self.w_final = nn.Parameter(w_final) if train_last_layer else w_final
        self.b = nn.ParameterList([nn.Parameter(torch.empty(width, dtype=F64))])
        self.normalization_factor = 1.0 if init == "gaussian-sqrt-m" else 1.0 / np.sqrt(width)

    def set_embedding(self, h: torch.Tensor) -> None:
        self.h = h

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out = inp.view(-1, 1)
        out = torch.cat((self.h, out), 1)
        out = F.relu(F.linear(out, self.w[0], self.b[0]))
        out = F.linear(out, self.w_final, torch.zeros(1, dtype=F64))
        return (F.elu(out * self.normalization_factor) + 1.0).squeeze(dim=1)


def _flatten(sequence):
    flat = [p.contiguous().view(-1) for p in sequence]
    return torch.cat(flat) if len(flat) > 0 else torch.tensor([])


def compute_sr_weights(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    sr_weights = np.zeros(n_steps)
    sr_weights[:] = 2.0 / n_steps
    steps = np.arange(n_steps) + 1
    steps = steps * 2 / n_steps
    steps = steps - 1
    return torch.tensor(sr_weights, dtype=F64), torch.tensor(steps, dtype=F64)


def sr_integrate(xT, h, n_steps, model, starting_point, compute_grad=False, prev_grad=None):
    sr_weights, steps = compute_sr_weights(n_steps)
    if compute_grad:
        g_param = 0.0
    else:
        z = 0.0
    x0 = torch.ones_like(xT) * starting_point
    for i in range(n_steps):  # the per-node loop of the official code
        x = x0 + (xT - x0) * (steps[i] + 1) / 2
        if compute_grad:
            dg_param = computeIntegrand(x, h, model, prev_grad * (xT - x0) / 2)
            g_param += sr_weights[i] * dg_param
        else:
            model.set_embedding(h)
            dz = model(x)
            z = z + sr_weights[i] * dz
    if compute_grad:
        return g_param
    return z * (xT - x0) / 2


def computeIntegrand(x, h, model, grad_mult_vec):
    with torch.enable_grad():
        model.set_embedding(h)
        f = model.forward(x)
        return _flatten(torch.autograd.grad(f, model.parameters(), grad_mult_vec))


class sr_integral(torch.autograd.Function):
    @staticmethod
    def forward(ctx, model, model_params, x, h, n_steps, starting_point):
        with torch.no_grad():
            vals = sr_integrate(x, h, n_steps, model, starting_point, compute_grad=False)
            ctx.func_model = model
            ctx.int_steps = n_steps
            ctx.starting_point = starting_point
            ctx.save_for_backward(x.clone(), h.clone())
        return vals

    @staticmethod
    def backward(ctx, grad_output):
        x, h = ctx.saved_tensors
        model = ctx.func_model
        param_grad = sr_integrate(x, h, ctx.int_steps, model, ctx.starting_point, True, grad_output)
        model.set_embedding(h)
        x_grad = model(x)
        return None, param_grad, x_grad * grad_output, None, None, None


def give_function(d, module_list, inp, n_steps, minimum_point):
    deriv_func = torch.zeros_like(inp)
    func = torch.zeros_like(inp)
    for i in range(d):
        module_list[i].set_embedding(inp[:, :i])
        deriv_func[:, i] = module_list[i](inp[:, i])
        func[:, i] = sr_integral.apply(
            module_list[i], _flatten(module_list[i].parameters()), inp[:, i], inp[:, :i], n_steps, minimum_point[i]
        )
    jacob = torch.prod(deriv_func, 1)
    return func, deriv_func, jacob


def official_loss(func: torch.Tensor, jacob: torch.Tensor) -> torch.Tensor:
    """``UNF/main.py``'s loss with its ``exponential`` base: ``-(log_prob + log jacob)`` averaged."""
    log_p = torch.log(torch.exp(-torch.sum(func, 1)))
    return (-log_p.sum() - jacob.log().sum()) / len(func)


def official_copy(t: PaperUnconstrainedTransform, train_top: bool) -> list[OfficialMLP]:
    """The official per-coordinate networks holding ``t``'s weights."""
    nets = []
    with torch.no_grad():
        for i in range(t.features):
            net = OfficialMLP(i + 1, t.width, t.init, train_top)
            net.w[0].copy_(torch.cat([t.W[i, :, :i], t.w_t[i, :, None]], dim=1))
            net.b[0].copy_(t.b[i])
            net.w_final.copy_(t.a[i][None, :])
            nets.append(net)
    return nets


@pytest.mark.parametrize(
    ("features", "init", "train_top"),
    [(1, "gaussian-sqrt-m", False), (2, "gaussian-sqrt-m", False), (2, "gaussian-std", True),
     (5, "gaussian-sqrt-m", False), (5, "gaussian-std", False)],
)
def test_agrees_with_the_official_code_on_the_same_weights(features: int, init: str, train_top: bool) -> None:
    torch.manual_seed(features)
    x0 = [-1.0 + 0.25 * i for i in range(features)]
    t = PaperUnconstrainedTransform(
        features, 48, init=init, train_top=train_top, lower_limit=x0, quadrature="riemann", n_nodes=50, min_slope=0.0
    ).to(F64)
    with torch.no_grad():  # a larger top layer than at initialisation, so that phi(N) is far from 1
        t.a.mul_(4.0)
    x = above(x0, 64, seed=features)
    nets = official_copy(t, train_top)

    func, deriv, jacob = give_function(features, nets, x, 50, x0)
    official_loss(func, jacob).backward()
    y, ladj = t(x)
    (-(StandardExponential(features).to(F64).log_prob(y) + ladj).mean()).backward()

    assert torch.allclose(y, func, rtol=0, atol=1e-10), float((y - func).abs().max())
    assert torch.allclose(ladj, jacob.log(), rtol=0, atol=1e-10), float((ladj - jacob.log()).abs().max())
    assert torch.allclose(t.derivative(x), deriv, rtol=0, atol=1e-12)
    for i, net in enumerate(nets):
        gw = net.w[0].grad
        assert torch.allclose(t.W.grad[i, :, :i], gw[:, :i], rtol=0, atol=1e-10)
        assert torch.allclose(t.w_t.grad[i], gw[:, i], rtol=0, atol=1e-10)
        assert torch.allclose(t.b.grad[i], net.b[0].grad, rtol=0, atol=1e-10)
        if train_top:
            assert torch.allclose(t.a.grad[i], net.w_final.grad[0], rtol=0, atol=1e-10)
    # the masked weights (on x_{>=i}) get no gradient and stay zero
    assert float((t.W.grad * (1 - t.mask)).abs().max()) == 0.0
    assert float((t.W.detach() * (1 - t.mask)).abs().max()) == 0.0


@pytest.mark.parametrize("rule", QUADRATURE_RULES)
def test_every_rule_matches_the_direct_quadrature_sum(rule: str) -> None:
    torch.manual_seed(0)
    t = PaperUnconstrainedTransform(3, 32, quadrature=rule, n_nodes=17, lower_limit=-0.5, min_slope=1e-3).to(F64)
    nodes, weights = quadrature_rule(rule, 17)
    assert bool((nodes[1:] >= nodes[:-1]).all()) and t._ascending  # the kernel's precondition
    x = above([-0.5] * 3, 16) - 1.0  # on both sides of x0
    y, _ = t(x)
    for i in range(3):
        c = F.linear(x[:, :i], t.W[i, :, :i], t.b[i])  # (B, m)
        pts = -0.5 + (x[:, i : i + 1] + 0.5) * nodes  # (B, K)
        n = F.relu(c[:, None, :] + pts[..., None] * t.w_t[i]) @ t.a[i]
        ref = (x[:, i] + 0.5) * (positive(n, "elu", 1e-3) @ weights)
        assert torch.allclose(y[:, i], ref, rtol=0, atol=1e-12)


# ----- the Transform contract ---------------------------------------------------------------------


@pytest.mark.parametrize("min_slope", [0.0, 1e-3])
def test_contract_1d_and_2d_with_grid_normalisation(min_slope: float) -> None:
    torch.manual_seed(0)
    for x0 in ([-1.0], [-1.0, 0.5]):
        d = len(x0)
        t = PaperUnconstrainedTransform(d, 32, lower_limit=x0, min_slope=min_slope)
        # the map is a 50-node right Riemann sum: the density integrates to 1 up to O(1/K)
        check_transform(
            t, above(x0, 32), inverse_atol=1e-7, logdet_atol=1e-8, base=StandardExponential(d),
            grid_bounds=[(v, v + 25.0) for v in x0], grid_points=20001 if d == 1 else 301, grid_tol=2e-2,
        )


@pytest.mark.parametrize("init", ["gaussian-sqrt-m", "gaussian-std"])
def test_contract_5d(init: str) -> None:
    torch.manual_seed(1)
    x0 = [-1.0, 0.0, 0.5, -2.0, 1.0]
    t = PaperUnconstrainedTransform(5, 32, init=init, lower_limit=x0, min_slope=1e-3, quadrature="gauss-legendre")
    with torch.no_grad():
        t.a.mul_(4.0)
    check_transform(t, above(x0, 16), inverse_atol=1e-7, logdet_atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inverse_recovers_points_on_both_sides_of_the_lower_limit(seed: int) -> None:
    torch.manual_seed(seed)
    t = PaperUnconstrainedTransform(4, 64, lower_limit=[-1.0, 0.0, 1.0, 2.0], min_slope=1e-3).to(F64)
    # x0 - 2 to x0 + 8: far below x0 the 50-node right sum stops being increasing (see the docstring)
    x = t.lower - 2 + 10 * torch.rand(300, 4, dtype=F64)
    with torch.no_grad():
        y, ladj = t(x)
        x_rec, ladj_inv = t.inverse(y)
    assert float((x_rec - x).abs().max()) < 1e-6
    assert torch.allclose(ladj, -ladj_inv, atol=1e-7)
    # sampling direction: exponential noise, some of it deep in the tail of the untrained map
    noise = -3 * torch.rand(300, 4, dtype=F64).log()
    with torch.no_grad():
        x_noise = t.inverse(noise)[0]
    # a root of y_i(x) = noise_i lies within 1e-5 of x_i (checked on the map itself). Not 1e-6:
    # Newton steps by g, and hundreds of units from x0 (where this untrained map sends the far
    # noise) the right sum's slope differs from g by up to several times, so the step-size
    # stopping rule is off by that factor
    for i in range(4):
        delta = torch.zeros_like(x_noise)
        delta[:, i] = 1e-5 + 4 * torch.finfo(F64).eps * x_noise[:, i].abs()
        with torch.no_grad():
            lo, hi = t(x_noise - delta)[0][:, i], t(x_noise + delta)[0][:, i]
        assert bool(((lo <= noise[:, i]) & (noise[:, i] <= hi)).all())
    # float32, moderate values: 1e-6 in x or a few ulps
    t32 = t.float()
    x32 = above([-1.0, 0.0, 1.0, 2.0], 128).float()
    with torch.no_grad():
        back32 = t32.inverse(t32(x32)[0])[0]
    assert float(((back32 - x32).abs() - 4 * torch.finfo(torch.float32).eps * x32.abs()).max()) <= 1e-6


def test_exponential_base_support() -> None:
    torch.manual_seed(0)
    x0 = [-1.0, 0.5]
    t = PaperUnconstrainedTransform(2, 32, lower_limit=x0)
    with torch.no_grad():
        y, _ = t(above(x0, 100).float())
        assert bool((y >= 0).all())
        y_below, _ = t(torch.tensor([[-1.5, 1.0], [0.0, 0.0]]))
    assert float(y_below[0, 0]) < 0 and float(y_below[1, 1]) < 0


def test_image_bounded_without_min_slope_raises() -> None:
    t = PaperUnconstrainedTransform(1, 4, min_slope=0.0, max_iter=80)
    with torch.no_grad():
        # N(t) = -sum relu(t + 1): g = exp(N) decays, so the image is bounded above
        t.w_t.fill_(1.0)
        t.b.fill_(1.0)
        t.a.fill_(-1.0)
        assert float(t(torch.tensor([[50.0]]))[0]) < 1
    with pytest.raises(InputOutsideDomain, match="outside the image"):
        t.inverse(torch.tensor([[100.0]]))
    t.min_slope = 1e-3  # a floor on the slope makes the same network onto
    x, _ = t.inverse(torch.tensor([[100.0]]))
    with torch.no_grad():
        assert abs(float(t(x)[0]) - 100.0) < 1e-3


# ----- parameters and errors -----------------------------------------------------------------------


def test_parameters_initialisation_and_groups() -> None:
    torch.manual_seed(0)
    m, d = 4096, 3
    t = PaperUnconstrainedTransform(d, m).requires_grad_(False)
    assert t.W.shape == (d, m, d) and t.w_t.shape == t.b.shape == t.a.shape == (d, m)
    for tensor in (t.w_t, t.b, t.W[2, :, :2]):
        assert float(tensor.std()) == pytest.approx(1 / math.sqrt(m), rel=0.05)
    assert float(t.a.std()) == pytest.approx(0.25, rel=0.05) and t.scale == 1.0
    lower_mask = torch.tril(torch.ones(d, d), diagonal=-1).bool()
    assert bool((t.W != 0).any(dim=1).eq(lower_mask).all())  # block i uses x_j, j < i, only
    groups = PaperUnconstrainedTransform(d, 8).parameter_groups()
    assert set(groups) == {"W", "b", "a"}
    assert [tuple(w.shape) for w in groups["W"]] == [(d, 8, d), (d, 8)] and groups["b"][0].shape == (d, 8)
    assert all(w.requires_grad for w in groups["W"] + groups["b"])
    assert not groups["a"][0].requires_grad and "a" in dict(t.named_buffers())  # the paper's fixed top layer
    ntk = PaperUnconstrainedTransform(d, m, init="gaussian-std", train_top=True)
    assert float(ntk.w_t.detach().std()) == pytest.approx(1.0, rel=0.05)
    assert ntk.scale == pytest.approx(1 / math.sqrt(m))
    assert isinstance(ntk.a, nn.Parameter) and any(p is ntk.a for p in ntk.parameters())


def test_errors() -> None:
    t = PaperUnconstrainedTransform(2, 8)
    with pytest.raises(ValueError, match=r"expects a batch of shape \(B, 2\)"):
        t(torch.randn(4, 3))
    with pytest.raises(ValueError, match="unconditional"):
        t(torch.randn(4, 2), torch.randn(4, 1))
    with pytest.raises(ValueError, match="unconditional"):
        t.inverse(torch.randn(4, 2), torch.randn(4, 1))
    with pytest.raises(ValueError, match="one per coordinate"):
        PaperUnconstrainedTransform(2, 8, lower_limit=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="unknown init"):
        PaperUnconstrainedTransform(2, 8, init="xavier")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown phi"):
        PaperUnconstrainedTransform(2, 8, phi="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_slope"):
        PaperUnconstrainedTransform(2, 8, min_slope=-1.0)
    assert PaperUnconstrainedTransform(3, 8, lower_limit=-2).lower.tolist() == [-2.0] * 3


def test_conditional_layout_shifts_the_hidden_biases() -> None:
    """``b_i(c) = b_i + V_i c``: zero V gives the paper's map; a moved V passes the kit, per context."""
    torch.manual_seed(0)
    plain = PaperUnconstrainedTransform(2, 16, min_slope=1e-3).to(F64)
    torch.manual_seed(0)
    cond = PaperUnconstrainedTransform(2, 16, min_slope=1e-3, context_features=3).to(F64)
    x, c = above([0.0, 0.0], 10), torch.randn(10, 3, dtype=F64)
    torch.testing.assert_close(cond(x, c)[0], plain(x)[0])
    with torch.no_grad():
        cond.context_weight.normal_(0, 0.5)
    assert not torch.allclose(cond(x, c)[1], cond(x, c.flip(0))[1])
    check_transform(cond, x, c, inverse_atol=1e-5, check_grid=False)
    assert cond.parameter_groups()["b"] == [cond.b, cond.context_weight]
    with pytest.raises(ValueError, match=r"p\(x \| c\)"):
        cond(x)
