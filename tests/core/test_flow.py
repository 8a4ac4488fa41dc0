import pytest
import torch

from unflow_zoo.core import Flow, StandardNormal
from unflow_zoo.testing import randomize_parameters_
from unflow_zoo.transforms import MaskedAffineAutoregressive


def _flow(seed=0):
    torch.manual_seed(seed)
    t = MaskedAffineAutoregressive(3, [16])
    randomize_parameters_(t, 0.2, seed)
    return Flow(t, StandardNormal(3)).double()


def test_log_prob_is_base_plus_logdet():
    f = _flow()
    x = torch.randn(5, 3, dtype=torch.float64)
    z, ladj = f.transform(x)
    assert torch.allclose(f.log_prob(x), f.base.log_prob(z) + ladj)
    assert torch.allclose(f.transform_to_noise(x), z)


def test_sample_and_log_prob_agrees_with_log_prob():
    f = _flow(1)
    torch.manual_seed(0)
    x, lp = f.sample_and_log_prob(64)
    assert x.shape == (64, 3)
    assert torch.allclose(lp, f.log_prob(x), atol=1e-10)
    assert f.sample(10).shape == (10, 3)


def test_wrong_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"expected a batch of shape \(B, 3\).*got \(4, 2\)"):
        _flow().log_prob(torch.zeros(4, 2, dtype=torch.float64))
