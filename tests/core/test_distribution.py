"""A flow as a torch Distribution, used the way sbi and Pyro use one: torch sample shapes,
log_prob broadcasting, rsample gradients to the parameters and the context."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Distribution

from unflow_zoo.core import Flow, StandardNormal
from unflow_zoo.core.flow import FlowDistribution
from unflow_zoo.core.transform import Compose
from unflow_zoo.errors import ConfigError, DataError
from unflow_zoo.nn.mlp import MLP
from unflow_zoo.transforms import DSFAutoregressive, MaskedAffineAutoregressive, RQSCoupling

D, C = 3, 2


def _flow(layer=MaskedAffineAutoregressive, embedding: bool = False, **kw) -> Flow:
    torch.manual_seed(0)
    width = 4 if embedding else C
    t = (
        layer(D, context_features=width, **kw)
        if layer is not RQSCoupling
        else layer([True, False, True], context_features=width)
    )
    for p in t.parameters():  # away from the identity initialisation, so the context matters
        torch.nn.init.normal_(p, std=0.3)
    f = Flow(Compose(t), StandardNormal(D))
    f.set_context(C, MLP(C, 4, [8]) if embedding else None)
    return f


@pytest.mark.parametrize("embedding", [False, True])
def test_shapes_follow_torch(embedding: bool) -> None:
    f = _flow(embedding=embedding)
    c = torch.randn(5, C)
    d = f(c)
    assert isinstance(d, Distribution) and isinstance(d, FlowDistribution)
    assert d.batch_shape == (5,) and d.event_shape == (D,)
    x = d.sample((7,))
    assert x.shape == (7, 5, D) and not x.requires_grad
    assert d.log_prob(x).shape == (7, 5)
    assert d.sample().shape == (5, D)
    # one context row: batch_shape ()
    d1 = f(c[0])
    assert d1.batch_shape == () and d1.sample((4, 2)).shape == (4, 2, D)
    assert d1.log_prob(torch.randn(6, D)).shape == (6,)
    # log_prob broadcasts a value against the batch, as torch distributions do
    assert d.log_prob(torch.randn(D)).shape == (5,)
    # the flow's own methods agree: sample(n, (B, C)) -> (n, B, D)
    assert f.sample(3, c).shape == (3, 5, D)
    xs, lp = f.sample_and_log_prob(3, c)
    assert xs.shape == (3, 5, D) and lp.shape == (3, 5)
    torch.testing.assert_close(lp, d.log_prob(xs), rtol=1e-4, atol=1e-4)


def test_log_prob_matches_the_flow_row_by_row() -> None:
    f = _flow()
    c, x = torch.randn(5, C), torch.randn(5, D)
    torch.testing.assert_close(f(c).log_prob(x), f.log_prob(x, c))
    # the same context for every row: a (C,) context equals its expansion
    torch.testing.assert_close(f.log_prob(x, c[1]), f.log_prob(x, c[1].expand(5, C)))
    # and the context changes the density
    assert not torch.allclose(f.log_prob(x, c), f.log_prob(x, c.flip(0)))


@pytest.mark.parametrize("layer", [MaskedAffineAutoregressive, RQSCoupling])
def test_rsample_gradients_reach_parameters_and_context(layer) -> None:
    f = _flow(layer)
    c = torch.randn(4, C, requires_grad=True)
    d = f(c)
    assert d.has_rsample
    x = d.rsample((3,))
    assert x.shape == (3, 4, D) and x.requires_grad
    (x.square().sum()).backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    assert all(p.grad is not None for p in f.parameters())
    # rsample_and_log_prob: the pathwise gradient of a KL-type objective
    f.zero_grad()
    x, lp = f(c.detach()).rsample_and_log_prob((2,))
    lp.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())


def test_numerical_inverse_has_no_rsample() -> None:
    f = _flow(DSFAutoregressive, units=4)
    d = f(torch.randn(2, C))
    assert not d.has_rsample
    with pytest.raises(NotImplementedError, match="not differentiable"):
        d.rsample((2,))
    assert d.sample((2,)).shape == (2, 2, D)  # sampling still works


def test_sample_distribution_matches_log_prob_in_1d_grid() -> None:
    """exp(log_prob) of the distribution view integrates to one for each context."""
    torch.manual_seed(1)
    t = MaskedAffineAutoregressive(1, context_features=C, hidden=[8])
    for p in t.parameters():
        torch.nn.init.normal_(p, std=0.5)
    f = Flow(Compose(t.double()), StandardNormal(1).double())
    f.set_context(C)
    grid = torch.linspace(-30, 30, 20001, dtype=torch.float64).unsqueeze(1)
    for c in torch.randn(3, C, dtype=torch.float64):
        p = f(c).log_prob(grid).exp()
        assert torch.trapezoid(p, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-4)


def test_bad_contexts_are_refused_before_any_work() -> None:
    f = _flow()
    x = torch.randn(4, D)
    with pytest.raises(DataError, match="context of width 2"):
        f.log_prob(x)
    with pytest.raises(DataError, match=r"width 2.*got \(4, 3\)"):
        f.log_prob(x, torch.randn(4, 3))
    with pytest.raises(DataError, match="4 rows but a context of 3 rows"):
        f.log_prob(x, torch.randn(3, C))
    bad = torch.randn(4, C)
    bad[2, 1] = float("nan")
    with pytest.raises(DataError, match="NaN or infinite.*row 2"):
        f.log_prob(x, bad)
    with pytest.raises(DataError, match="NaN"):
        f(bad)
    with pytest.raises(ValueError, match="floating-point context"):
        f.log_prob(x, torch.ones(4, C, dtype=torch.long))
    unconditional = Flow(Compose(MaskedAffineAutoregressive(D)), StandardNormal(D))
    unconditional.set_context(0)
    with pytest.raises(DataError, match="unconditional"):
        unconditional.log_prob(x, torch.randn(4, C))


def test_temperature_scales_the_base_draw() -> None:
    f = _flow()
    c = torch.randn(1, C)
    torch.manual_seed(3)
    cold = f.sample(4000, c, temperature=0.5)
    torch.manual_seed(3)
    z = f.base.sample(4000)
    torch.testing.assert_close(cold, f.transform.inverse(0.5 * z, c.repeat(4000, 1))[0].reshape(4000, 1, D))
    for bad in (0, -1.0, float("inf"), "hot", True):
        with pytest.raises(ConfigError, match="temperature"):
            f.sample(2, c, temperature=bad)


def test_draws_outside_a_bounded_image_are_redrawn() -> None:
    """NAF's sigmoidal layers map R onto (-L, L): base draws beyond it have no preimage. sample(n)
    redraws them (rejection from the base restricted to the image) and returns n points, while the
    bare inverse of such a draw still raises."""
    from unflow_zoo.errors import InputOutsideDomain

    torch.manual_seed(0)
    flow = Flow(
        Compose(DSFAutoregressive(2, hidden=[8], units=4), DSFAutoregressive(2, hidden=[8], units=4)), StandardNormal(2)
    )
    flow.set_context(0)
    hot = 12.0  # z of scale 12: about half the draws fall outside (-14.5, 14.5) in some coordinate or layer
    x = flow.sample(500, temperature=hot)
    assert x.shape == (500, 2) and torch.isfinite(x).all()
    z = hot * torch.randn(500, 2)
    with pytest.raises(InputOutsideDomain, match="outside the image"):
        flow.transform.inverse(z)
    # each accepted draw is a true preimage: mapping it forward lands inside the image
    xs, lp = flow.sample_and_log_prob(300, temperature=hot)
    assert torch.isfinite(lp).all()
    zb, _ = flow.transform(xs)
    assert (zb.abs() < 14.6).all()
    # at T = 1 nothing needs redrawing and the draw is the plain inverse of the base draw
    torch.manual_seed(5)
    plain = flow.sample(200)
    torch.manual_seed(5)
    torch.testing.assert_close(plain, flow.transform.inverse(flow.base.sample(200))[0])
