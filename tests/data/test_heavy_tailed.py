"""Heavy-tailed synthetic sources: exact density, marginals, tails, and the data module's KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from unflow_zoo.data.module import DensityDataModule
from unflow_zoo.data.synthetic import StudentTCopula, get_source


def test_marginals_are_student_t_with_the_stated_tails() -> None:
    x = get_source("student-t2").sample(20_000, np.random.default_rng(0))
    for i, df in enumerate((1.5, 3.0)):
        assert st.kstest(x[:, i], st.t(df).cdf).pvalue > 0.01
        # far tail: P(|X| > q) at the true 0.999 quantile is 0.002 (binomial sd 0.0003)
        q = st.t.ppf(0.999, df)
        assert abs(np.mean(np.abs(x[:, i]) > q) - 0.002) < 0.0012
    rho = st.spearmanr(x[:, 0], x[:, 1]).statistic
    assert abs(rho - 6 / math.pi * math.asin(0.3)) < 0.02  # Spearman's rho of a Gaussian copula, r = 0.6


def test_density_matches_sklar_formula_with_scipy() -> None:
    source = get_source("student-t2")
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [-30.0, -4.0], [200.0, 5.0]], dtype=torch.float64)
    w = st.norm.ppf(np.stack([st.t.cdf(x[:, 0], 1.5), st.t.cdf(x[:, 1], 3.0)], 1))
    corr = np.array([[1.0, 0.6], [0.6, 1.0]])
    ref = (
        st.t.logpdf(x[:, 0], 1.5)
        + st.t.logpdf(x[:, 1], 3.0)
        + st.multivariate_normal([0, 0], corr).logpdf(w)
        - st.norm.logpdf(w).sum(1)
    )
    np.testing.assert_allclose(source.log_prob(x).numpy(), ref, atol=1e-10)
    one = get_source("student-t1")
    z = torch.linspace(-50, 50, 11, dtype=torch.float64)[:, None]
    np.testing.assert_allclose(one.log_prob(z).numpy(), st.t.logpdf(z[:, 0].numpy(), 2.0), atol=1e-12)


@pytest.mark.parametrize("name", ["student-t1", "student-t2"])
def test_density_integrates_to_one(name: str) -> None:
    # change of variables x = sinh(s): p_S(s) = p(sinh s) cosh s on s in [-20, 20] holds all but
    # ~1e-8 of the mass even for df = 1.5; the trapezoid rule on this smooth, fast-decaying integrand
    # is accurate to ~1e-12, so the tolerance is 1e-6
    source = get_source(name)
    n = 2001 if source.dim == 1 else 201
    s = torch.linspace(-20, 20, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[s] * source.dim, indexing="ij"), -1).reshape(-1, source.dim)
    dens = (source.log_prob(torch.sinh(grid)) + torch.log(torch.cosh(grid)).sum(1)).exp()
    total = dens.reshape([n] * source.dim)
    for _ in range(source.dim):
        total = torch.trapezoid(total, s, dim=0)
    assert float(total) == pytest.approx(1.0, abs=1e-6)


def test_same_seed_same_points_and_bad_arguments() -> None:
    a = get_source("student-t2").sample(10, np.random.default_rng(3))
    b = get_source("student-t2").sample(10, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="dfs must be positive"):
        StudentTCopula(dfs=(1.0, -2.0))
    with pytest.raises(ValueError, match="rho must lie"):
        StudentTCopula(dfs=(1.0, 2.0), rho=1.0)


def test_data_module_reports_the_true_density() -> None:
    dm = DensityDataModule(dataset="student-t2", n_samples=500)
    dm.setup("fit")
    truth = dm.true_log_prob(dm.val_data)
    assert truth is not None and truth.shape == (dm.val_data.shape[0],) and torch.isfinite(truth).all()
    src = get_source("student-t2")
    torch.testing.assert_close(truth.double(), src.log_prob(dm.val_data.double()), rtol=1e-5, atol=1e-5)
