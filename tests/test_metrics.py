import math

import pytest
import torch

from unflow_zoo.metrics import bits_per_dim, gaussian_nll


def test_gaussian_nll_equals_the_fitted_gaussian_nll():
    torch.manual_seed(0)
    a = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-0.3, 0.2, 0.1]])
    x = (torch.randn(5000, 3) @ a.T + torch.tensor([1.0, -2.0, 3.0])).double()
    mu, cov = x.mean(0), torch.cov(x.T, correction=0)
    fitted = torch.distributions.MultivariateNormal(mu, cov)
    assert gaussian_nll(x) == pytest.approx(-fitted.log_prob(x).mean().item(), abs=1e-9)


def test_gaussian_nll_by_hand_and_errors():
    x = torch.tensor([[-1.0], [1.0]])  # ML variance 1
    assert gaussian_nll(x) == pytest.approx(0.5 * math.log(2 * math.pi * math.e))
    with pytest.raises(ValueError, match="singular"):
        gaussian_nll(torch.ones(10, 2))


def test_bits_per_dim():
    assert bits_per_dim(math.log(2) * 4, 2) == pytest.approx(2.0)
