"""Glow's transforms: the kit on each one and on the multi-scale whole, actnorm's data
init, the squeeze layout, and the split prior's equivalence with Glow's likelihood."""

import math

import pytest
import torch

from unflow_zoo.core.distributions import StandardNormal
from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose, Inverse
from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.glow import (
    ActNorm,
    GlowAffineCoupling,
    InvertibleConv1x1,
    MultiScaleGlow,
    SplitPrior,
    Squeeze,
    glow_step,
)
from unflow_zoo.transforms.linear import LULinear


def _jacobian_logdet(t, x):
    """log|det| of the autograd Jacobian of t at each point of x (any input/output shapes)."""
    out = []
    for xi in x.double():
        jac = torch.autograd.functional.jacobian(lambda v: t(v.reshape(1, *x.shape[1:]))[0].reshape(-1), xi.reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# ----- actnorm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (3, 4, 4)])
def test_actnorm_passes_the_kit(shape):
    t = randomize_parameters_(ActNorm(3), 0.5, 1)
    check_transform(t, torch.randn(8, *shape), check_grid=False)
    t2 = randomize_parameters_(ActNorm(2), 0.5, 2)
    check_transform(t2, torch.randn(8, 2), grid_bounds=[(-8.0, 8.0)] * 2, grid_points=401)


@pytest.mark.parametrize("shape", [(64, 3), (16, 3, 5, 5)])
def test_actnorm_data_init_and_no_reinit_after_load(shape):
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.5, 2.0, 7.0]).view(1, 3, *([1] * (len(shape) - 2)))
    shift = torch.tensor([-3.0, 1.0, 10.0]).view(1, 3, *([1] * (len(shape) - 2)))
    x = torch.randn(*shape, generator=g) * scale + shift
    t = ActNorm(3)
    assert not bool(t.initialized)
    t.eval()
    y, _ = t(x)
    assert torch.equal(y, x) and not bool(t.initialized)  # evaluation mode never initialises
    t.train()
    y, ladj = t(x)
    dims = [0, *range(2, len(shape))]
    torch.testing.assert_close(y.mean(dims), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dims, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert bool(t.initialized)
    pixels = math.prod(shape[2:])
    # log-det by hand: H W sum_c -log std_c
    torch.testing.assert_close(ladj, -pixels * torch.log(x.std(dims, unbiased=False)).sum().expand(shape[0]))
    # a second training batch does not re-initialise
    before = {k: v.clone() for k, v in t.state_dict().items()}
    t(x * 3 + 1)
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())
    # nor does a fresh module that loaded the state
    fresh = ActNorm(3).train()
    fresh.load_state_dict(t.state_dict())
    assert bool(fresh.initialized)
    y2, _ = fresh(5 * x - 2)
    torch.testing.assert_close(y2, t(5 * x - 2)[0])
    assert torch.equal(fresh.bias, t.bias) and torch.equal(fresh.log_scale, t.log_scale)


def test_actnorm_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 3\) or \(B, 3, H, W\)"):
        ActNorm(3)(torch.randn(4, 2))


# ----- invertible 1x1 convolution -------------------------------------------------------------------


def test_invconv_starts_as_a_rotation_and_is_an_lulinear():
    t = InvertibleConv1x1(6, seed=3)
    assert isinstance(t, LULinear)
    w = t.weight().detach()
    torch.testing.assert_close(w @ w.T, torch.eye(6), atol=1e-6, rtol=0)
    assert abs(float(t.logabsdet().detach())) < 1e-6
    assert not torch.allclose(w.abs(), torch.eye(6))  # a genuine rotation, not a permutation
    torch.testing.assert_close(InvertibleConv1x1(6, seed=3).weight(), t.weight())  # seeded


def test_invconv_acts_per_pixel_and_passes_the_kit():
    t = randomize_parameters_(InvertibleConv1x1(3, seed=0), 0.3, 0)
    x = torch.randn(4, 3, 5, 2)
    y, ladj = t(x)
    # by hand: the same matrix on every pixel's channel vector, plus the bias
    expected = torch.einsum("oc,bchw->bohw", t.weight(), x) + t.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ladj, (10 * torch.linalg.slogdet(t.weight())[1]).expand(4).detach())
    check_transform(t, torch.randn(4, 3, 4, 4), check_grid=False)
    check_transform(t, torch.randn(8, 3), check_grid=False)  # vectors: a plain LULinear
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        t(torch.randn(2, 4, 4, 4))


# ----- squeeze --------------------------------------------------------------------------------


def test_squeeze_layout_by_hand():
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float64).reshape(2, 2, 4, 6)
    y, ladj = Squeeze()(x)
    assert y.shape == (2, 8, 2, 3) and torch.equal(ladj, torch.zeros(2, dtype=torch.float64))
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    x_rec, ladj_inv = Squeeze().inverse(y)
    assert torch.equal(x_rec, x) and torch.equal(ladj_inv, torch.zeros(2, dtype=torch.float64))


def test_squeeze_jacobian_and_kit():
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    # check_transform needs output shape == input shape: the kit runs on squeeze -> coupling -> unsqueeze,
    # and the autograd Jacobian of the bare squeeze (a permutation) is checked here
    torch.testing.assert_close(_jacobian_logdet(Squeeze(), x), torch.zeros(3, dtype=torch.float64))
    sandwich = Compose(Squeeze(), randomize_parameters_(GlowAffineCoupling(4, 8), 0.2, 0), Inverse(Squeeze()))
    check_transform(sandwich, torch.randn(4, 1, 4, 4))


def test_squeeze_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even height and width.*5x4"):
        Squeeze()(torch.randn(2, 1, 5, 4))
    with pytest.raises(ValueError, match="multiple of 4 channels"):
        Squeeze().inverse(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Squeeze()(torch.randn(2, 4))


# ----- affine coupling ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["sigmoid", "clamp"])
@pytest.mark.parametrize("channels", [2, 5])
def test_coupling_passes_the_kit(scale, channels):
    t = randomize_parameters_(GlowAffineCoupling(channels, 8, scale=scale), 0.2, channels)
    report = check_transform(t, torch.randn(4, channels, 4, 4))
    assert report.inverse_error < 1e-10
    # and it is not the identity once perturbed
    x = torch.randn(4, channels, 4, 4)
    assert (t(x)[0] - x)[:, channels // 2 :].abs().max() > 1e-3


def test_coupling_start():
    x = torch.randn(3, 4, 4, 4)
    y, ladj = GlowAffineCoupling(4, 8, scale="clamp")(x)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(3))
    y, ladj = GlowAffineCoupling(4, 8, scale="sigmoid")(x)
    s = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(y, torch.cat([x[:, :2], s * x[:, 2:]], 1))
    torch.testing.assert_close(ladj, torch.full((3,), 32 * math.log(s)))
    with pytest.raises(ValueError, match="C >= 2"):
        GlowAffineCoupling(1)
    with pytest.raises(ValueError, match="unknown coupling scale"):
        GlowAffineCoupling(4, scale="exp")


def test_glow_step_passes_the_kit():
    t = randomize_parameters_(glow_step(4, 8), 0.2, 0)
    check_transform(t, torch.randn(4, 4, 2, 2))


# ----- split prior ---------------------------------------------------------------------------


def test_split_prior_passes_the_kit_and_is_glows_gaussian():
    t = randomize_parameters_(SplitPrior(3, 2), 0.3, 0)
    z2, z1 = torch.randn(4, 3, 4, 4), torch.randn(4, 2, 4, 4)
    check_transform(t, z2, z1)
    # N(u; 0, I) + log-det == log N(z2; mu(z1), sigma(z1)^2), the prior Glow writes down
    u, ladj = t(z2, z1)
    h = t.net(z1)
    glow = torch.distributions.Normal(h[:, 0::2], torch.exp(h[:, 1::2])).log_prob(z2).flatten(1).sum(1)
    torch.testing.assert_close(StandardNormal((3, 4, 4)).log_prob(u) + ladj, glow)


def test_split_prior_starts_as_identity_and_needs_context():
    z2 = torch.randn(2, 3, 4, 4)
    u, ladj = SplitPrior(3, 2)(z2, torch.randn(2, 2, 4, 4))
    assert torch.equal(u, z2) and torch.equal(ladj, torch.zeros(2))
    with pytest.raises(ValueError, match="pass the kept half z1 as context"):
        SplitPrior(3, 2)(z2)
    with pytest.raises(ValueError, match="share batch and pixels"):
        SplitPrior(3, 2)(z2, torch.randn(2, 2, 2, 2))


# ----- the multi-scale whole ------------------------------------------------------------------


@pytest.mark.parametrize("split_prior", [True, False])
@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 8, 8)])
def test_multiscale_passes_the_kit(shape, split_prior):
    torch.manual_seed(1)
    t = MultiScaleGlow(shape, levels=2, steps_per_level=2, hidden_channels=8, split_prior=split_prior)
    randomize_parameters_(t, 0.1, 0)
    # one full 192x192 autograd Jacobian at 3x8x8 is already the slowest check in this file
    report = check_transform(t, torch.randn(4, *shape), max_jacobian_points=2 if shape[0] == 1 else 1)
    assert report.inverse_error < 1e-10


def test_multiscale_one_and_three_levels():
    for levels, shape in [(1, (2, 2, 2)), (3, (1, 8, 8))]:
        t = randomize_parameters_(MultiScaleGlow(shape, levels=levels, steps_per_level=1, hidden_channels=4), 0.1, 0)
        check_transform(t, torch.randn(2, *shape), max_jacobian_points=1)


def test_multiscale_likelihood_is_glows():
    """Flow(MultiScaleGlow, N(0, I)).log_prob equals Glow's likelihood written out level by level."""
    torch.manual_seed(0)
    t = MultiScaleGlow((1, 4, 4), levels=2, steps_per_level=2, hidden_channels=8).double()
    randomize_parameters_(t, 0.2, 0)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    sq = Squeeze()
    h, ladj0 = t.steps[0](sq(x)[0])  # level 1: (4, 2, 2)
    z1, z2 = h[:, :2], h[:, 2:]
    p = t.priors[0].net(z1)
    log_p2 = torch.distributions.Normal(p[:, 0::2], torch.exp(p[:, 1::2])).log_prob(z2).flatten(1).sum(1)
    top, ladj1 = t.steps[1](sq(z1)[0])  # level 2: (8, 1, 1)
    log_top = torch.distributions.Normal(0.0, 1.0).log_prob(top).flatten(1).sum(1)
    expected = log_p2 + log_top + ladj0 + ladj1
    got = Flow(t, StandardNormal((1, 4, 4)).double()).log_prob(x)
    torch.testing.assert_close(got, expected)


def test_multiscale_bad_shapes():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*2 = 4; got 6x8"):
        MultiScaleGlow((1, 6, 8), levels=2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        MultiScaleGlow((4,))  # type: ignore[arg-type]
    t = MultiScaleGlow((1, 4, 4), levels=1, steps_per_level=1, hidden_channels=4)
    with pytest.raises(ValueError, match=r"\(B, 1, 4, 4\)"):
        t(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="unconditional"):
        t(torch.randn(2, 1, 4, 4), torch.randn(2, 3))


# ----- context ----------------------------------------------------------------------------------------


def test_conditional_coupling_and_multiscale_pass_the_kit():
    torch.manual_seed(0)
    coupling = randomize_parameters_(GlowAffineCoupling(4, 8, context_features=3), 0.2, 0)
    x, c = torch.randn(4, 4, 2, 2), torch.randn(4, 3)
    check_transform(coupling, x, c)
    assert not torch.allclose(coupling(x, c)[0], coupling(x, c.flip(0))[0])
    torch.manual_seed(1)
    t = MultiScaleGlow((1, 4, 4), levels=2, steps_per_level=1, hidden_channels=8, context_features=3)
    randomize_parameters_(t, 0.1, 0)
    x = torch.randn(4, 1, 4, 4)
    report = check_transform(t, x, c, max_jacobian_points=2)
    assert report.inverse_error < 1e-10
    assert not torch.allclose(t(x, c)[1], t(x, c.flip(0))[1])
    with pytest.raises(ValueError, match=r"p\(x \| c\)"):
        t(x)
    with pytest.raises(ValueError, match="unconditional"):
        MultiScaleGlow((1, 4, 4), levels=2, steps_per_level=1, hidden_channels=8)(x, c)
