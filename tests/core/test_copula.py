"""Copula base (Student-t / normal marginals, independence / Gaussian copula) against scipy."""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from unflow_zoo.core.distributions import (
    CopulaBase,
    make_base,
    student_t_cdf,
    student_t_icdf,
    student_t_log_prob,
    student_t_normal_score,
)
from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Transform
from unflow_zoo.testing import check_normalization, check_transform


class Sinh(Transform):
    """z = sinh(x): squeezes heavy tails into a finite grid, |det| = cosh(x).

    Flow(Sinh(), base) is the density of asinh(Z); it integrates to 1 on [-S, S] iff the
    base does up to its mass beyond |z| = sinh(S) (for S = 20, sinh(S) = 2.4e8: below 1e-8
    even for a Cauchy)."""

    def forward(self, x, context=None):
        return torch.sinh(x), torch.log(torch.cosh(x)).reshape(x.shape[0], -1).sum(1)

    def inverse(self, y, context=None):
        return torch.asinh(y), -torch.log1p(y.square()).mul(0.5).reshape(y.shape[0], -1).sum(1)


def _base(marginals, copula, df, corr=None, d=2):
    return CopulaBase(d, marginals=marginals, copula=copula, df=df, min_df=0.5, correlation=corr).double()


CORR = torch.tensor([[1.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
Z = torch.tensor([-1e4, -30.0, -3.0, -1.0, -0.2, 0.0, 0.3, 1.5, 4.0, 50.0, 1e5], dtype=torch.float64)


@pytest.mark.parametrize("df", [0.7, 1.0, 1.5, 3.0, 12.0, 150.0])
def test_t_log_prob_and_cdf_match_scipy(df):
    assert torch.allclose(student_t_log_prob(Z, df), torch.from_numpy(st.t.logpdf(Z.numpy(), df)), atol=1e-12)
    cdf = student_t_cdf(Z, df)
    assert torch.allclose(cdf, torch.from_numpy(st.t.cdf(Z.numpy(), df)), atol=1e-13, rtol=1e-12)
    # the normal score keeps the far tail: log P(T > z) from it matches scipy's logsf
    # (down to tail probabilities of 1e-300, where the score is capped near 37)
    pos = Z[Z > 0].numpy()
    ref = st.t.logsf(pos, df)
    keep = ref > math.log(1e-300)
    w = student_t_normal_score(torch.from_numpy(pos[keep]), df)
    assert np.allclose(st.norm.logsf(w.numpy()), ref[keep], rtol=1e-10, atol=1e-10)


def test_t_cdf_closed_forms():
    z = torch.linspace(-20, 20, 81, dtype=torch.float64)
    assert torch.allclose(student_t_cdf(z, 1.0), 0.5 + torch.atan(z) / math.pi, atol=1e-14)  # Cauchy
    assert torch.allclose(student_t_cdf(z, 2.0), 0.5 + z / (2 * torch.sqrt(2 + z**2)), atol=1e-14)


def test_t_icdf_inverts_cdf():
    u = torch.tensor([1e-12, 0.01, 0.3, 0.5, 0.9, 0.999999], dtype=torch.float64)
    for df in (1.2, 4.0):
        assert torch.allclose(student_t_cdf(student_t_icdf(u, df), df), u, rtol=1e-9, atol=0)


def test_gradients_wrt_point_and_df_are_correct():
    torch.manual_seed(0)
    z = (3 * torch.randn(6, dtype=torch.float64)).requires_grad_()
    df = torch.tensor([0.8, 1.3, 2.0, 4.5, 9.0, 70.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(student_t_normal_score, (z, df))
    assert torch.autograd.gradcheck(student_t_cdf, (z, df))
    # and through the whole base: log_prob w.r.t. df and the Cholesky parameters
    base = _base("t", "gaussian", [1.5, 4.0])
    with torch.no_grad():
        base.chol_raw.copy_(torch.tensor([[0.0, 0.0], [0.8, 0.0]]))
    x = torch.tensor([[0.3, -2.0], [5.0, 4.0], [-0.1, 0.0]], dtype=torch.float64)

    def lp(df_raw, chol_raw):
        del base.df_raw, base.chol_raw  # plain tensors in place of the parameters, for gradcheck
        base.df_raw, base.chol_raw = df_raw, chol_raw
        return base.log_prob(x)

    params = (base.df_raw.detach().clone().requires_grad_(), base.chol_raw.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(lp, params)
    # the derivative at z = 0 in df is exactly 0 (F(0) = 1/2 for every df), not NaN
    zero = torch.zeros(1, dtype=torch.float64)
    d = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(student_t_cdf(zero, d).sum(), d)
    assert g.item() == 0.0


def test_independent_t_is_product_of_scipy_t():
    b = _base("t", "independence", [1.5, 6.0])
    x = torch.tensor([[0.0, 0.0], [3.0, -1.0], [-40.0, 7.0]], dtype=torch.float64)
    ref = st.t.logpdf(x[:, 0].numpy(), 1.5) + st.t.logpdf(x[:, 1].numpy(), 6.0)
    assert np.allclose(b.log_prob(x).detach().numpy(), ref, atol=1e-12)
    assert torch.allclose(b.df, torch.tensor([1.5, 6.0], dtype=torch.float64))


def test_gaussian_copula_normal_marginals_is_a_correlated_gaussian():
    b = _base("normal", "gaussian", 5.0, CORR)
    x = torch.randn(20, 2, dtype=torch.float64)
    ref = st.multivariate_normal(mean=[0, 0], cov=CORR.numpy()).logpdf(x.numpy())
    assert np.allclose(b.log_prob(x).numpy(), ref, atol=1e-12)


def test_gaussian_copula_t_density_matches_sklar_formula():
    b = _base("t", "gaussian", [1.5, 3.0], CORR)
    x = torch.tensor([[0.1, 0.2], [-5.0, 3.0], [20.0, 30.0]], dtype=torch.float64)
    u = np.stack([st.t.cdf(x[:, 0].numpy(), 1.5), st.t.cdf(x[:, 1].numpy(), 3.0)], 1)
    w = st.norm.ppf(u)
    log_c = st.multivariate_normal(mean=[0, 0], cov=CORR.numpy()).logpdf(w) - st.norm.logpdf(w).sum(1)
    ref = log_c + st.t.logpdf(x[:, 0].numpy(), 1.5) + st.t.logpdf(x[:, 1].numpy(), 3.0)
    assert np.allclose(b.log_prob(x).detach().numpy(), ref, atol=1e-10)


@pytest.mark.parametrize(
    "marginals,copula,df,corr,d",
    [
        ("t", "independence", 1.0, None, 1),  # Cauchy
        ("t", "independence", [1.5, 3.0], None, 2),
        ("t", "gaussian", [1.5, 3.0], CORR, 2),
        ("t", "gaussian", [1.2, 8.0], None, 2),  # learned Cholesky, perturbed below
    ],
)
def test_log_prob_integrates_to_one(marginals, copula, df, corr, d):
    base = _base(marginals, copula, df, corr, d)
    if copula == "gaussian" and corr is None:
        with torch.no_grad():
            base.chol_raw.copy_(torch.tensor([[0.0, 0.0], [-1.3, 0.0]]))
    flow = Flow(Sinh(), base)
    # trapezoid rule in x = asinh(z) on [-20, 20] (2001 points, 201^2 in 2-D): the integrand is smooth
    # and decays fast, so the rule is accurate to ~1e-10; tolerance 1e-6
    total = check_normalization(flow, bounds=[(-20.0, 20.0)] * d, points=2001 if d == 1 else 201, tol=1e-6)
    assert abs(total - 1) < 1e-6


def test_sinh_helper_is_a_valid_transform():
    check_transform(Sinh(), torch.randn(8, 2, dtype=torch.float64), check_grid=False)


def test_samples_have_the_right_marginals_and_correlation():
    torch.manual_seed(0)
    b = _base("t", "gaussian", [1.5, 3.0], CORR)
    s = b.sample(20000)
    for i, df in enumerate((1.5, 3.0)):
        ks = st.kstest(s[:, i].numpy(), st.t(df).cdf)
        assert ks.pvalue > 0.01, ks
        q = torch.quantile(s[:, i], torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64))
        assert np.allclose(q.numpy(), st.t.ppf([0.01, 0.5, 0.99], df), rtol=0.1, atol=0.05)
    # Spearman's rho of a Gaussian copula is (6/pi) asin(r/2)
    rho = st.spearmanr(s[:, 0].numpy(), s[:, 1].numpy()).statistic
    assert abs(rho - 6 / math.pi * math.asin(0.35)) < 0.02
    ind = _base("t", "independence", 2.0, d=1)
    assert st.kstest(ind.sample(5000)[:, 0].numpy(), st.t(2.0).cdf).pvalue > 0.01


def test_make_base_names_and_learned_parameters():
    for name, n_params in (("student-t", 2), ("copula-t", 2 + 4), ("copula-normal", 4)):
        b = make_base(name, (2,))
        assert isinstance(b, CopulaBase)
        assert sum(p.numel() for p in b.parameters()) == n_params
        assert torch.allclose(b.correlation, torch.eye(2))  # starts independent
        x = b.sample(7)
        assert x.shape == (7, 2) and torch.isfinite(b.log_prob(x)).all()
    b = make_base("copula-t", (1, 2, 2))
    assert b.sample(3).shape == (3, 1, 2, 2)
    assert b.df.min() >= 1.0


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="df > min_df"):
        CopulaBase(2, df=0.5, min_df=1.0)
    with pytest.raises(ValueError, match="unit diagonal"):
        CopulaBase(2, correlation=torch.eye(3))
    with pytest.raises(ValueError, match="positive definite"):
        CopulaBase(2, correlation=torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="copula must be"):
        CopulaBase(2, copula="clayton")
    with pytest.raises(ValueError, match="expected"):
        make_base("copula-t", 2).log_prob(torch.zeros(3, 4))


def test_family_with_copula_base_trains_and_stays_finite(trainer_factory):
    from unflow_zoo.data.module import DensityDataModule
    from unflow_zoo.models.maf import MaskedAutoregressiveFlow

    model = MaskedAutoregressiveFlow(event_shape=(2,), base="copula-t", n_layers=2, hidden=[16])
    dm = DensityDataModule(dataset="student-t2", n_samples=400, batch_size=64)
    df0 = model.flow.base.df.detach().clone()
    trainer_factory(max_steps=8).fit(model, datamodule=dm)
    dm.setup("test")
    lp = model.log_prob(dm.test_data)
    assert torch.isfinite(lp).all()
    assert not torch.equal(model.flow.base.df.detach(), df0)  # the degrees of freedom were learned


def test_fixed_correlation_and_df_are_exact_in_float64():
    """A fixed correlation (and fixed df) are not rounded through float32 on the way to a float64 model."""
    corr = torch.tensor([[1.0, 0.7, -0.2], [0.7, 1.0, 0.1], [-0.2, 0.1, 1.0]], dtype=torch.float64)
    base = CopulaBase(3, marginals="normal", copula="gaussian", correlation=corr).double()
    z = torch.tensor([[10.0, -10.0, 3.0], [-10.0, -10.0, 10.0], [0.5, 0.2, -0.1]], dtype=torch.float64)
    ref = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), covariance_matrix=corr)
    # a float32 Cholesky factor cast up would be off by ~3e-5 at |z| = 10
    torch.testing.assert_close(base.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(base.correlation, corr, rtol=0, atol=1e-15)
    # the float32 model keeps a float32 factor; a round trip through float32 and back is exact again
    f32 = CopulaBase(3, marginals="normal", copula="gaussian", correlation=corr)
    assert f32.cholesky.dtype == torch.float32
    torch.testing.assert_close(f32.double().log_prob(z), ref.log_prob(z), rtol=0, atol=1e-12)
    fixed_df = CopulaBase(3, marginals="t", copula="independence", df=3.3, min_df=0.5, learn_df=False).double()
    torch.testing.assert_close(fixed_df.df, torch.full((3,), 3.3, dtype=torch.float64), rtol=0, atol=1e-14)
    # the state dict (what a checkpoint holds) is the same as before: one float buffer each
    assert set(base.state_dict()) == {"_fixed_chol"}
