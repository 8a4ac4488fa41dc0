"""ODETransform (FFJORD's CNF block): the kit, trace estimators, RNODE energies, solvers, NFE."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from unflow_zoo.core.distributions import StandardNormal
from unflow_zoo.core.flow import Flow
from unflow_zoo.testing import check_normalization, check_transform, randomize_parameters_
from unflow_zoo.transforms.ode import ConcatSquashLinear, ODENet, ODETransform

# Tight float64 solves for the kit: the inverse is the ODE solved backwards, exact only to the
# solver tolerance, so the round trip is checked to 1e-7 with atol = rtol = 1e-9.
TIGHT = {"atol": 1e-9, "rtol": 1e-9}


class LinearField(nn.Module):
    """f(z, t) = A z: the solution map is expm(A t) and tr(df/dz) = tr(A)."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return z @ self.a.T


def _net_block(d: int, seed: int = 0, std: float = 0.3, **kw) -> ODETransform:
    torch.manual_seed(seed)
    t = ODETransform(ODENet((d,), [16, 16], "tanh"), d, end_time=1.0, **kw)
    return randomize_parameters_(t, std, seed)


@pytest.mark.parametrize("d", [1, 2])
def test_kit_in_one_and_two_dimensions(d):
    t = _net_block(d, seed=d, std=0.5, **TIGHT)
    report = check_transform(
        t,
        1.5 * torch.randn(6, d),
        inverse_atol=1e-7,
        logdet_atol=1e-6,
        logdet_rtol=1e-6,
        max_jacobian_points=3,
        check_grid=False,
    )
    assert report.inverse_error < 1e-7 and report.jacobian_logdet_error < 1e-6
    # the random weights make a map far from the identity, so the checks test the general case
    x = torch.randn(64, d, dtype=torch.float64)
    z, ladj = t.double().eval()(x)
    assert (z - x).abs().max() > 0.1 and ladj.abs().max() > 0.05
    # exp(log_prob) integrates to 1: a density needs far less than the inverse, so this solve
    # (a batch of up to 6561 grid points) runs at atol = rtol = 1e-7
    t.atol = t.rtol = 1e-7
    flow = Flow(t, StandardNormal((d,)).double())
    total = check_normalization(flow, bounds=[(-7.0, 7.0)] * d, points=2001 if d == 1 else 81, tol=1e-3)
    assert abs(total - 1) < 1e-3


def test_kit_on_image_shaped_events_with_the_conv_net():
    torch.manual_seed(0)
    t = ODETransform(ODENet((1, 2, 2), [4], "softplus"), 4, end_time=1.0, **TIGHT)
    randomize_parameters_(t, 0.3, 0)
    check_transform(t, torch.randn(2, 1, 2, 2), inverse_atol=1e-7, logdet_atol=1e-6, max_jacobian_points=2)


def test_concatsquash_formula():
    torch.manual_seed(0)
    layer = randomize_parameters_(ConcatSquashLinear(3, 4), 0.5, 1)
    x, t = torch.randn(5, 3), torch.tensor(0.7)
    gate = torch.sigmoid(layer.gate.weight[:, 0] * 0.7 + layer.gate.bias)
    expected = (x @ layer.layer.weight.T + layer.layer.bias) * gate + layer.time_bias.weight[:, 0] * 0.7
    torch.testing.assert_close(layer(t, x), expected)


def test_linear_field_matches_the_closed_form():
    """z(T) = expm(A T) x and log|det| = T tr(A), with T learnt through softplus."""
    a = torch.tensor([[0.3, -0.8], [0.5, -0.2]], dtype=torch.float64)
    t = ODETransform(LinearField(a), 2, end_time=0.7, **TIGHT).double().eval()
    x = torch.randn(6, 2, dtype=torch.float64)
    z, ladj = t(x)
    torch.testing.assert_close(t.end_time, torch.tensor(0.7, dtype=torch.float64))
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(0.7 * a).T, atol=1e-7, rtol=0)
    torch.testing.assert_close(ladj, torch.full((6,), 0.7 * float(a.trace()), dtype=torch.float64))


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_log_det_is_unbiased(noise):
    """Many copies of one point, one noise draw each, on the same fixed rk4 grid: the mean of
    the Hutchinson log-dets matches the exact one within 4 standard errors."""
    d, n = 4, 4000
    block = _net_block(d, seed=3, std=0.4, train_solver="rk4", train_step_size=0.25, trace="hutchinson", noise=noise)
    block = block.double().train()
    x = torch.randn(1, d, dtype=torch.float64).expand(n, d)
    with torch.no_grad():
        _, hutch = block(x)
        assert block.last_trace_estimator == "hutchinson"
        block.trace = "exact"
        _, exact = block(x[:1])
        assert block.last_trace_estimator == "exact"
    se = float(hutch.std()) / n**0.5
    assert float(hutch.std()) > 1e-3  # it is a random estimate
    assert abs(float(hutch.mean()) - float(exact[0])) < 4 * se, (float(hutch.mean()), float(exact[0]), se)


def test_hutchinson_noise_is_fixed_during_a_solve():
    """For f = A z, a fixed epsilon gives exactly T eps^T A eps; redrawing it per step would not."""
    a = torch.tensor([[0.3, -0.8, 0.1], [0.5, -0.2, 0.0], [0.2, 0.4, -0.6]], dtype=torch.float64)
    for noise in ("gaussian", "rademacher"):
        t = ODETransform(LinearField(a), 3, end_time=0.5, trace="hutchinson", exact_trace_max_dim=0, noise=noise)
        t = t.double().train()
        with torch.no_grad():
            _, ladj = t(torch.randn(32, 3, dtype=torch.float64))
        eps = t._last_dynamics.noise
        assert t.nfe_forward > 6  # several evaluations shared the one draw
        if noise == "rademacher":
            assert set(eps.unique().tolist()) == {-1.0, 1.0}
        torch.testing.assert_close(ladj, 0.5 * torch.einsum("bi,ij,bj->b", eps, a, eps))


def test_which_estimator_is_used():
    low = ODETransform(ODENet((2,), [8]), 2, trace="hutchinson")
    high = ODETransform(ODENet((9,), [8]), 9)  # auto, above exact_trace_max_dim = 8
    forced = ODETransform(ODENet((9,), [8]), 9, trace="exact")
    for mode, expected in (
        ("train", ("hutchinson", "hutchinson", "exact")),
        ("eval", ("exact", "hutchinson", "exact")),
    ):
        for block, want in zip((low, high, forced), expected):
            getattr(block, mode)()
            with torch.no_grad():
                block(torch.randn(4, block.features))
            assert block.last_trace_estimator == want, (mode, block.features, block.trace)


def test_rnode_energies_match_quadrature_for_a_linear_field():
    r"""f = A z: E_K = \int_0^T |A expm(A t) x|^2 dt (trapezoid on 4001 nodes) and
    E_J = T |A|_F^2, both integrated by the solver as extra states."""
    a = torch.tensor([[0.3, -0.8], [0.5, -0.2]], dtype=torch.float64)
    t = ODETransform(LinearField(a), 2, end_time=0.9, regularize=True, **TIGHT).double().train()
    x = torch.randn(5, 2, dtype=torch.float64)
    t(x)
    ts = torch.linspace(0, 0.9, 4001, dtype=torch.float64)
    traj = torch.einsum("tij,bj->tbi", torch.linalg.matrix_exp(ts[:, None, None] * a), x)
    speed2 = (traj @ a.T).pow(2).sum(-1)  # (time, batch)
    kinetic = torch.trapezoid(speed2, ts, dim=0)
    torch.testing.assert_close(t.kinetic_energy, kinetic, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(t.jacobian_frobenius, torch.full((5,), 0.9 * float(a.pow(2).sum()), dtype=torch.float64))
    # not tracked in evaluation or for the inverse
    t.kinetic_energy = None
    t.eval()(x)
    assert t.kinetic_energy is None


def test_hutchinson_jacobian_frobenius_is_unbiased():
    a = torch.tensor([[0.3, -0.8, 0.1], [0.5, -0.2, 0.0], [0.2, 0.4, -0.6]], dtype=torch.float64)
    t = ODETransform(LinearField(a), 3, end_time=0.5, trace="hutchinson", regularize=True).double().train()
    n = 4000
    with torch.no_grad():
        t(torch.randn(n, 3, dtype=torch.float64))
    jf = t.jacobian_frobenius
    se = float(jf.std()) / n**0.5
    assert abs(float(jf.mean()) - 0.5 * float(a.pow(2).sum())) < 4 * se


def test_regularised_loss_trains_and_lowers_the_kinetic_energy():
    torch.manual_seed(0)
    block = _net_block(2, seed=0, std=0.5, regularize=True, train_solver="rk4", train_step_size=0.5).train()
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    x = torch.randn(64, 2)
    losses, energies = [], []
    for _ in range(20):
        block(x)
        ke, jf = block.kinetic_energy.mean(), block.jacobian_frobenius.mean()
        loss = ke + jf  # the penalty alone: its minimum is f = 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        energies.append(float(ke))
    assert losses[-1] < 0.5 * losses[0] and energies[-1] < energies[0], losses


def test_fixed_step_training_solver_and_nfe():
    block = _net_block(2, train_solver="rk4", train_step_size=0.25)
    x = torch.randn(16, 2)
    block.train()
    z_train, _ = block(x)
    assert block.nfe_forward == 16  # 4 rk4 steps of 4 stages
    block.eval()
    with torch.no_grad():
        z_eval, _ = block(x)
        nfe_loose = block.nfe_forward
        block.atol = block.rtol = 1e-9
        z_tight, _ = block(x)
    assert 0 < nfe_loose < block.nfe_forward  # the adaptive solver works harder for tighter tolerances
    assert (z_train - z_tight).abs().max() < 1e-3 and (z_eval - z_tight).abs().max() < 1e-3


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_adjoint_gradients_match_backpropagation(solver):
    """Same loss gradients (end time included) with and without the adjoint; the adjoint
    counts the function evaluations of its backward solve."""
    kw = {"atol": 1e-9, "rtol": 1e-9, "train_solver": solver, "train_step_size": 0.25 if solver == "rk4" else None}
    grads = []
    for adjoint in (False, True):
        block = _net_block(2, seed=1, adjoint=adjoint, **kw).double().train()
        x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        z, ladj = block(x)
        (z.pow(2).sum() - ladj.sum()).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in block.parameters()]))
        assert block.raw_end_time.grad is not None and block.raw_end_time.grad.abs() > 0
        if adjoint:
            assert block.nfe_backward > 0
        else:
            assert block.nfe_backward == 0
    # dopri5 solves both to 1e-9; on a fixed rk4 grid the adjoint ODE's discretisation differs
    # from backpropagating through the forward steps by O(h^4)
    tol = {"atol": 1e-6, "rtol": 1e-5} if solver == "dopri5" else {"atol": 1e-4, "rtol": 1e-3}
    torch.testing.assert_close(grads[0], grads[1], **tol)


def test_autocast_keeps_the_solve_in_float32():
    block = _net_block(2).eval()
    x = torch.randn(32, 2)
    z32, l32 = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, ladj = block(x)
        zb, _lb = block(x.bfloat16())
    assert z.dtype == ladj.dtype == zb.dtype == torch.float32
    torch.testing.assert_close(z, z32)
    torch.testing.assert_close(ladj, l32)
    assert (zb - z32).abs().max() < 0.05  # only the bf16 rounding of the input


def test_inference_mode_gives_the_same_result():
    """Lightning validates under torch.inference_mode(), where autograd (needed for the trace) is off."""
    block = _net_block(2).eval()
    x = torch.randn(16, 2)
    with torch.no_grad():
        z, ladj = block(x)
    with torch.inference_mode():
        zi, li = block(torch.randn(16, 2).copy_(x))
    torch.testing.assert_close((zi, li), (z, ladj))


def test_fixed_end_time_is_a_buffer():
    block = ODETransform(ODENet((2,), [8]), 2, end_time=1.3, train_end_time=False)
    assert "raw_end_time" not in dict(block.named_parameters())
    torch.testing.assert_close(block.end_time, torch.tensor(1.3))


def test_bad_input_and_options():
    net = ODENet((2,), [8])
    with pytest.raises(ValueError, match="unknown solver"):
        ODETransform(net, 2, solver="dopri6")
    with pytest.raises(ValueError, match="must be adaptive"):
        ODETransform(net, 2, solver="rk4")
    with pytest.raises(ValueError, match="train_step_size"):
        ODETransform(net, 2, train_solver="rk4")
    with pytest.raises(ValueError, match="unknown trace"):
        ODETransform(net, 2, trace="stochastic")
    with pytest.raises(ValueError, match="unknown noise"):
        ODETransform(net, 2, noise="uniform")
    with pytest.raises(ValueError, match="end_time must be > 0"):
        ODETransform(net, 2, end_time=0.0)
    with pytest.raises(ValueError, match="unknown ODE activation"):
        ODENet((2,), [8], act="relu")
    block = ODETransform(net, 2)
    with pytest.raises(ValueError, match="unconditional"):
        block(torch.randn(3, 2), torch.randn(3, 1))
    with pytest.raises(ValueError, match="2 numbers per event"):
        block(torch.randn(3, 3))


# ----- context (conditional dynamics f(z, t, c)) ---------------------------------------------------


@pytest.mark.parametrize("adjoint", [False, True])
def test_conditional_block_passes_the_kit_and_the_context_gets_gradients(adjoint):
    torch.manual_seed(0)
    t = ODETransform(ODENet((2,), [8], "tanh", context_features=3), 2, end_time=1.0, adjoint=adjoint, **TIGHT)
    assert t.context_features == 3  # read from the net
    randomize_parameters_(t, 0.3, 0)
    x, c = torch.randn(5, 2), torch.randn(5, 3)
    check_transform(t, x, c, inverse_atol=1e-7, max_jacobian_points=2, check_grid=False)
    z1, _ = t(x, c)
    assert (z1 - t(x, c.flip(0))[0]).abs().max() > 1e-3
    # the trace is d f / d z only; the context (e.g. an embedding's output) is differentiable
    c.requires_grad_(True)
    _, ladj = t(x, c)
    (grad,) = torch.autograd.grad(ladj.sum() + t(x, c)[0].sum(), c)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    copy.deepcopy(t)  # no graph of the context is left on the module


def test_conditional_conv_net_broadcasts_the_context():
    torch.manual_seed(0)
    net = ODENet((1, 3, 3), [4], "tanh", context_features=2)
    t = randomize_parameters_(ODETransform(net, 9, end_time=1.0, exact_trace_max_dim=9, **TIGHT), 0.3, 0)
    x, c = torch.randn(3, 1, 3, 3), torch.randn(3, 2)
    check_transform(t, x, c, inverse_atol=1e-7, max_jacobian_points=1, check_grid=False)
    with pytest.raises(ValueError, match=r"p\(x \| c\)"):
        t(x)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        t(x, torch.randn(3, 1))
