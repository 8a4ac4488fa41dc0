"""One integrand per feature (``integrand_per_feature=True``, zuko's UNAF layout): the Transform
contract with and without context, the batched network, its hand-written backward, the flow builder
and the LightningModule."""

from __future__ import annotations

import pytest
import torch

from unflow_zoo.errors import ConfigError
from unflow_zoo.flows import build
from unflow_zoo.models import create_model
from unflow_zoo.nn.integrand import INTEGRAND_ACTIVATIONS, Integrand, MLPIntegrand
from unflow_zoo.nn.stacked_integrand import StackedMLPIntegrand
from unflow_zoo.testing import check_transform
from unflow_zoo.transforms.integral import (
    PER_FEATURE_HIDDEN,
    SHARED_HIDDEN,
    NeuralIntegral,
    UnconstrainedMonotoneTransform,
    log_positive,
    positive,
)
from unflow_zoo.transforms.quadrature import Quadrature

F64 = torch.float64
SMALL = {"hidden": (16, 16), "embedding": 4, "conditioner_hidden": (16, 16), "integrand_per_feature": True}


def small(features: int, **kw) -> UnconstrainedMonotoneTransform:
    return UnconstrainedMonotoneTransform(features, **{**SMALL, **kw})


def plain_forward(t: UnconstrainedMonotoneTransform, x: torch.Tensor, context=None) -> tuple:
    """The same transform with plain autograd through the quadrature, feature by feature with the
    plain (unstacked) network evaluation: the reference for the batched path and its backward."""
    c, beta = t._conditioning(x, context)  # (D, B, H)
    ts = t.integrand.path_tensors()
    ys, logs = [], []
    for i in range(t.features):
        ti = StackedMLPIntegrand.select(ts, i)
        xi = x[:, i]
        pts = t.quadrature.points(xi, t.lower)
        g = positive(t.integrand.evaluate(c[i : i + 1], pts[None], ti)[0], t.phi, t.min_slope)
        ys.append((xi - t.lower) * (g @ t.quadrature.weights))
        n_x = t.integrand.evaluate(c[i : i + 1], xi[None, :, None], ti)[0, :, 0]
        logs.append(log_positive(n_x, t.phi, t.min_slope))
    y = torch.stack(ys, dim=1)
    if beta is not None:
        y = y + beta
    return y, torch.stack(logs, dim=1).sum(-1)


# ----- the Transform contract ----------------------------------------------------------------


@pytest.mark.parametrize(("features", "rule", "n_nodes"), [(1, "clenshaw-curtis", 48), (2, "gauss-legendre", 32)])
def test_contract_with_grid_normalisation(features: int, rule: str, n_nodes: int) -> None:
    torch.manual_seed(features)
    t = small(features, act="tanh", quadrature=rule, n_nodes=n_nodes)
    grid = {"grid_points": 4001, "grid_tol": 2e-3} if features == 1 else {"grid_points": 161, "grid_tol": 0.01}
    report = check_transform(t, torch.randn(32, features) * 1.5, **grid)
    assert report.normalization is not None
    assert report.inverse_error < 1e-6


@pytest.mark.parametrize("features", [1, 2, 5])
def test_contract_with_context(features: int) -> None:
    torch.manual_seed(10 + features)
    t = small(features, context_features=3, act="tanh")
    # the context moves the MADE's hidden units; make it matter before checking
    with torch.no_grad():
        for p in t.conditioner.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, ctx = torch.randn(24, features), torch.randn(24, 3)
    report = check_transform(t, x, ctx, check_grid=features <= 2, grid_points=161 if features == 2 else 2001)
    assert report.inverse_error < 1e-6
    y0, _ = t(x, ctx)
    y1, _ = t(x, ctx + 1.0)
    assert not torch.allclose(y0, y1)


@pytest.mark.parametrize("act", ["leaky_relu", "elu"])
def test_contract_5d(act: str) -> None:
    torch.manual_seed(3)
    report = check_transform(small(5, act=act), torch.randn(32, 5))
    assert report.inverse_error < 1e-6


def test_contract_without_embedding_or_offset() -> None:
    # no conditioner at all: every coordinate is independent, solved with its own network
    torch.manual_seed(4)
    t = small(3, embedding=0, offset=False)
    assert t.conditioner is None
    check_transform(t, torch.randn(16, 3))


# ----- one network per feature ---------------------------------------------------------------


def test_features_do_not_share_weights_and_the_gradient_reaches_each() -> None:
    torch.manual_seed(0)
    d = 4
    t = small(d)
    net = t.integrand
    assert isinstance(net, StackedMLPIntegrand) and net.stack == d
    for w in [*net.weights, *net.biases]:
        assert w.shape[0] == d
        flat = w.detach().reshape(d, -1)
        assert all(not torch.equal(flat[i], flat[j]) for i in range(d) for j in range(i))
    # D times the shared integrand's parameters
    shared = UnconstrainedMonotoneTransform(d, **{**SMALL, "integrand_per_feature": False})
    n_shared = sum(p.numel() for p in shared.integrand.parameters())
    assert sum(p.numel() for p in net.parameters()) == d * n_shared

    x = torch.randn(64, d)
    y, ladj = t(x)
    (y.square().sum() - ladj.sum()).backward()
    for w in [*net.weights, *net.biases]:
        assert w.grad is not None
        # every feature's network gets its own nonzero gradient
        assert (w.grad.reshape(d, -1).abs().sum(dim=1) > 0).all()

    # a coordinate's output depends on its own network only
    t.zero_grad()
    y, _ = t(x)
    y[:, 2].sum().backward()
    per_feature = net.weights[1].grad.reshape(d, -1).abs().sum(dim=1)
    assert per_feature[2] > 0 and bool((per_feature[[0, 1, 3]] == 0).all())


def test_changing_one_network_changes_only_its_coordinate_in_the_first_layer_of_a_flow() -> None:
    torch.manual_seed(1)
    t = small(3)
    x = torch.randn(8, 3)
    y0, _ = t(x)
    with torch.no_grad():
        t.integrand.weights[1][1].add_(0.5)
    y1, _ = t(x)
    changed = (y0 - y1).abs().amax(dim=0) > 0
    assert changed.tolist() == [False, True, False]


def test_backward_matches_plain_autograd_through_the_quadrature() -> None:
    torch.manual_seed(0)
    t = small(3, act="tanh", n_nodes=128, context_features=2).to(F64)
    x = torch.randn(16, 3, dtype=F64, requires_grad=True)
    ctx = torch.randn(16, 2, dtype=F64)
    w = torch.randn(16, 3, dtype=F64)
    params = list(t.parameters())
    y, ladj = t(x, ctx)
    grads = torch.autograd.grad((y * w).sum() + ladj.sum(), [x, *params])
    y_ref, ladj_ref = plain_forward(t, x, ctx)
    grads_ref = torch.autograd.grad((y_ref * w).sum() + ladj_ref.sum(), [x, *params])
    assert torch.allclose(y, y_ref, atol=1e-12) and torch.allclose(ladj, ladj_ref, atol=1e-12)
    for (name, _), g, g_ref in zip(t.named_parameters(), grads[1:], grads_ref[1:]):
        assert torch.allclose(g, g_ref, atol=1e-11, rtol=1e-9), name
    assert float((grads[0] - grads_ref[0]).abs().max()) < 1e-6  # the Leibniz rule: to the quadrature error


def test_blocking_does_not_change_results() -> None:
    torch.manual_seed(2)
    t = small(4).to(F64)
    x = torch.randn(40, 4, dtype=F64)
    out = {}
    for chunk in (0, 64, 1000, 10**6):
        t.chunk = chunk
        t.zero_grad()
        y, ladj = t(x)
        (y.sum() + ladj.sum()).backward()
        out[chunk] = (y.detach(), [p.grad.clone() for p in t.parameters()])
    for chunk in (64, 1000, 10**6):
        assert torch.allclose(out[chunk][0], out[0][0], atol=1e-13)
        for a, b in zip(out[chunk][1], out[0][1]):
            assert torch.allclose(a, b, atol=1e-12)


def _stacked_inputs(net: StackedMLPIntegrand, n: int) -> tuple:
    torch.manual_seed(1)
    x = torch.randn(net.stack, n, dtype=F64, requires_grad=True)
    x0 = torch.tensor(-0.3, dtype=F64, requires_grad=True)
    c = torch.randn(net.stack, n, net.hidden_size, dtype=F64, requires_grad=True)
    tensors = [p.detach().clone().requires_grad_(True) for p in net.path_tensors()]
    return x, x0, c, tensors


@pytest.mark.parametrize("phi", ["elu", "softplus"])
def test_gradcheck_every_input(phi: str) -> None:
    torch.manual_seed(0)
    net = StackedMLPIntegrand(3, 2, hidden=(6, 5), act="tanh").to(F64)
    q = Quadrature("clenshaw-curtis", 40).to(F64)
    x, x0, c, tensors = _stacked_inputs(net, 4)

    def f(x, x0, c, *ts):
        return NeuralIntegral.apply(x, x0, c, q.nodes, q.weights, net, phi, 1e-3, 200, *ts)

    # chunk=200 puts one row of all 3 features per block: the blocked backward is exercised
    assert torch.autograd.gradcheck(f, (x, x0, c, *tensors), eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("act", INTEGRAND_ACTIVATIONS)
def test_hand_written_vjp_matches_autograd(act: str) -> None:
    torch.manual_seed(0)
    net = StackedMLPIntegrand(3, 2, hidden=(8, 6), act=act).to(F64)
    c = torch.randn(3, 4, net.hidden_size, dtype=F64)
    t = torch.randn(3, 4, 5, dtype=F64)
    tensors = net.path_tensors()
    weight = torch.randn(3, 4, 5, dtype=F64)
    need = [True] * len(tensors)
    got = net.vjp(c, t, tensors, lambda n: weight * n.cos(), True, need)
    ref = Integrand.vjp(net, c, t, tensors, lambda n: weight * n.cos(), True, need)
    assert torch.allclose(got[0], ref[0], atol=1e-14)
    assert torch.allclose(got[1], ref[1], atol=1e-12)
    for a, b in zip(got[2], ref[2]):
        assert torch.allclose(a, b, atol=1e-12)


def test_each_network_is_the_plain_mlp_integrand_with_its_weights() -> None:
    torch.manual_seed(0)
    net = StackedMLPIntegrand(3, 2, hidden=(8, 6), act="elu")
    h, t = torch.randn(3, 5, 2), torch.randn(3, 5, 7)
    out = net(t, h)
    assert out.shape == (3, 5, 7)
    for s in range(3):
        plain = MLPIntegrand(2, hidden=(8, 6), act="elu")
        with torch.no_grad():
            for layer, w, b in zip(plain.layers, net.weights, net.biases):
                layer.weight.copy_(w[s])
                layer.bias.copy_(b[s])
        assert torch.allclose(plain(t[s], h[s]), out[s], atol=1e-6)


def test_shapes() -> None:
    torch.manual_seed(0)
    t = small(3)
    x = torch.randn(7, 3)
    y, ladj = t(x)
    assert y.shape == (7, 3) and ladj.shape == (7,)
    assert t.derivative(x).shape == (7, 3) and bool((t.derivative(x) > 0).all())
    c, beta = t._conditioning(x, None)
    assert c.shape == (3, 7, 16) and beta.shape == (7, 3)  # stack first
    x_back, ladj_inv = t.inverse(y)
    assert x_back.shape == (7, 3) and torch.allclose(ladj_inv, -ladj, atol=1e-4)
    groups = t.parameter_groups()
    assert [w.shape for w in groups["W"]] == [(3, 16, 5), (3, 16, 16)]
    assert [w.shape for w in groups["a"]] == [(3, 1, 16), (3, 1)]
    assert "integrand_per_feature=True" in repr(t)


def test_bad_input() -> None:
    t = small(3, context_features=2)
    with pytest.raises(Exception, match="3"):
        t(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(Exception, match="context"):
        t(torch.randn(4, 3))
    with pytest.raises(ValueError, match="integrand='mlp'"):
        UnconstrainedMonotoneTransform(3, "paper", integrand_per_feature=True)
    with pytest.raises(ValueError, match="stack=2"):
        UnconstrainedMonotoneTransform(3, StackedMLPIntegrand(2, 4))
    with pytest.raises(ValueError, match="stack >= 1"):
        StackedMLPIntegrand(0, 4)
    with pytest.raises(ValueError, match="hidden layer"):
        StackedMLPIntegrand(2, 4, hidden=())
    with pytest.raises(ValueError, match="activation"):
        StackedMLPIntegrand(2, 4, act="gelu")
    with pytest.raises(ValueError, match="shape"):
        StackedMLPIntegrand(2, 4).condition(torch.randn(3, 5, 4))


# ----- the builder and the LightningModule ---------------------------------------------------


def test_builder_and_model() -> None:
    torch.manual_seed(0)
    flow = build(
        "unconstrained",
        event_shape=(4,),
        integrand_per_feature=True,
        n_layers=2,
        **{k: v for k, v in SMALL.items() if k != "integrand_per_feature"},
    )
    layers = [m for m in flow.modules() if isinstance(m, UnconstrainedMonotoneTransform)]
    assert len(layers) == 2 and all(layer.stacked for layer in layers)
    x = torch.randn(10, 4)
    assert flow.log_prob(x).shape == (10,)

    model = create_model("unconstrained", event_shape=(4,), integrand_per_feature=True, hidden=[16], embedding=4,
                         conditioner_hidden=[16], context_features=2, n_layers=2)  # fmt: skip
    assert model.hparams.integrand_per_feature is True
    assert all(t.stacked for t in model.transforms)
    ctx = torch.randn(10, 2)
    lp = model.log_prob(x, ctx)
    assert lp.shape == (10,) and torch.isfinite(lp).all()
    assert model.sample(3, context=ctx[:2]).shape == (3, 2, 4)
    # the default stays the shared integrand, [64, 64]; one integrand per feature defaults to [96, 96]
    shared = create_model("unconstrained", event_shape=(4,)).transforms
    assert not any(t.stacked for t in shared) and shared[0].integrand.hidden == [64, 64]
    wide = create_model("unconstrained", event_shape=(4,), integrand_per_feature=True).transforms
    assert wide[0].integrand.hidden == list(PER_FEATURE_HIDDEN) == [96, 96]
    assert UnconstrainedMonotoneTransform(3).integrand.hidden == list(SHARED_HIDDEN) == [64, 64]


def test_builder_refuses_bad_combinations() -> None:
    with pytest.raises(ConfigError, match="integrand_per_feature"):
        build("unconstrained", event_shape=(3,), integrand_per_feature="yes")
    with pytest.raises(ConfigError, match="integrand='mlp'"):
        build("unconstrained", event_shape=(3,), integrand_per_feature=True, integrand="paper")
    with pytest.raises(ConfigError, match="layout='umnn-maf'"):
        build("unconstrained", event_shape=(3,), integrand_per_feature=True, integrand="paper", layout="paper")
