import math

import pytest
import torch

from unflow_zoo.core import DiagNormal, StandardExponential, StandardNormal, make_base


def _integrate_1d(dist, lo, hi, n=200001):
    x = torch.linspace(lo, hi, n, dtype=torch.float64)[:, None]
    with torch.no_grad():
        return float(torch.trapezoid(dist.log_prob(x).exp(), x[:, 0]))


def test_standard_normal_matches_torch():
    d = StandardNormal((3,)).double()
    z = torch.randn(10, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert torch.allclose(d.log_prob(z), ref)
    assert d.sample(7).shape == (7, 3)


def test_image_shaped_normal():
    d = StandardNormal((1, 2, 2))
    z = d.sample(4)
    assert z.shape == (4, 1, 2, 2)
    assert torch.allclose(d.log_prob(z), -0.5 * z.reshape(4, -1).square().sum(1) - 2 * math.log(2 * math.pi))


def test_exponential_density_support_and_normalisation():
    d = StandardExponential(1).double()
    assert abs(_integrate_1d(d, 0.0, 60.0) - 1) < 1e-4
    assert d.log_prob(torch.tensor([[-0.1]], dtype=torch.float64)).item() == -math.inf
    torch.manual_seed(0)
    s = d.sample(20000)
    assert (s >= 0).all() and abs(s.mean().item() - 1) < 0.03


def test_diag_normal_is_learnable_and_normalised():
    d = DiagNormal(1).double()
    with torch.no_grad():
        d.loc.fill_(1.5)
        d.log_scale.fill_(math.log(0.3))
    assert abs(_integrate_1d(d, -5, 8) - 1) < 1e-6
    torch.manual_seed(0)
    s = d.sample(20000)
    assert abs(s.mean().item() - 1.5) < 0.01 and abs(s.std().item() - 0.3) < 0.01
    assert sum(p.numel() for p in d.parameters()) == 2


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"expected \(B, 2\)"):
        StandardNormal(2).log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="unknown base distribution 'gauss'"):
        make_base("gauss", 2)
    with pytest.raises(ValueError, match="positive ints"):
        StandardNormal((0,))
