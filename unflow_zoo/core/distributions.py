"""Base distributions of a flow: the density of the noise side.

Every base is an ``nn.Module`` (so it moves with ``.to(device)`` and may own
learnable parameters) with

- ``event_shape``: the shape of one sample;
- ``log_prob(z, context=None)``: log-density, shape ``(batch,)``;
- ``sample(n, context=None)``: ``n`` samples, shape ``(n, *event_shape)``.

Besides the Gaussian and exponential bases, :class:`CopulaBase` gives a flow
heavy tails: Student-t marginals with learned degrees of freedom, joined by an
independence or a Gaussian copula (names ``student-t``, ``copula-t``,
``copula-normal`` in :func:`make_base`). A Lipschitz flow cannot turn a
light-tailed base into a heavy-tailed density (Jaini et al. 2020), so the tails
must come from the base.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from unflow_zoo.errors import ConfigError, DataError

__all__ = [
    "BaseDistribution",
    "CopulaBase",
    "DiagNormal",
    "StandardExponential",
    "StandardNormal",
    "make_base",
    "student_t_cdf",
    "student_t_icdf",
    "student_t_log_prob",
    "student_t_normal_score",
]


def _shape(event_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(event_shape, int):
        return (event_shape,)
    shape = tuple(int(s) for s in event_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"event_shape must be a non-empty tuple of positive ints, got {event_shape!r}")
    return shape


class BaseDistribution(nn.Module):
    """A distribution over events of shape ``event_shape``."""

    _anchor: Tensor  # a zero-size buffer that tells device and dtype

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = _shape(event_shape)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def event_dims(self) -> int:
        return len(self.event_shape)

    @property
    def numel(self) -> int:
        return math.prod(self.event_shape)

    def _check(self, z: Tensor) -> None:
        if tuple(z.shape[1:]) != self.event_shape:
            raise DataError(
                f"{type(self).__name__} over events of shape {self.event_shape} "
                f"got a batch of shape {tuple(z.shape)}; expected (B, {', '.join(map(str, self.event_shape))})"
            )

    def _sum_event(self, v: Tensor) -> Tensor:
        return v.reshape(v.shape[0], -1).sum(dim=1)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}"


class StandardNormal(BaseDistribution):
    r"""Isotropic standard Gaussian :math:`\mathcal N(0, I)`."""

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(z)
        return self._sum_event(-0.5 * z.square()) - 0.5 * self.numel * math.log(2 * math.pi)

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        return torch.randn(n, *self.event_shape, device=self._anchor.device, dtype=self._anchor.dtype)


class StandardExponential(BaseDistribution):
    r"""Independent unit-rate exponentials, :math:`p(z) = \prod_i e^{-z_i}` on :math:`z_i \ge 0`.

    The base of the seed paper's unconstrained flows (Shah et al. 2022), which
    integrate a positive function from the data minimum so that the image is
    non-negative. Points with a negative coordinate get log-density ``-inf``.
    """

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(z)
        lp = self._sum_event(-z)
        outside = (z < 0).reshape(z.shape[0], -1).any(dim=1)
        return lp.masked_fill(outside, -math.inf)

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        u = torch.rand(n, *self.event_shape, device=self._anchor.device, dtype=self._anchor.dtype)
        return -torch.log1p(-u)  # inverse CDF; log1p keeps u -> 0 exact


class DiagNormal(BaseDistribution):
    r"""Gaussian with learnable mean and diagonal scale,
    :math:`\mathcal N(\mu, \operatorname{diag}(\sigma^2))`, :math:`\sigma = e^{s}`.

    Initialised at the standard normal.
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(z)
        u = (z - self.loc) * torch.exp(-self.log_scale)
        lp = -0.5 * u.square() - self.log_scale - 0.5 * math.log(2 * math.pi)
        return self._sum_event(lp)

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        eps = torch.randn(n, *self.event_shape, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + torch.exp(self.log_scale) * eps


# ----- Student-t math ---------------------------------------------------------------------------
#
# torch has no regularised incomplete beta function (no torch.special.betainc), so the Student-t
# CDF is computed here from its continued fraction, in float64, with gradients w.r.t. both the
# point and the degrees of freedom (the copula base learns them).

_CF_MAX_ITER = 1000
_CF_EPS = 1e-15
_TINY = 1e-300


def _ndtr(w: Tensor) -> Tensor:
    """Standard normal CDF, accurate in the lower tail (relative ~1e-15 down to w = -37)."""
    return 0.5 * torch.special.erfc(-w / math.sqrt(2.0))


def student_t_log_prob(z: Tensor, df: Tensor | float) -> Tensor:
    r"""Elementwise log-density of the standard Student-t with ``df`` degrees of freedom,

    .. math:: \log f_\nu(z) = \log\Gamma(\tfrac{\nu+1}2) - \log\Gamma(\tfrac\nu2)
        - \tfrac12\log(\nu\pi) - \tfrac{\nu+1}2 \log(1 + z^2/\nu).

    Differentiable in ``z`` and ``df`` (broadcast against each other).
    """
    df = torch.as_tensor(df, dtype=z.dtype, device=z.device)
    return (
        torch.lgamma((df + 1) / 2)
        - torch.lgamma(df / 2)
        - 0.5 * torch.log(df * math.pi)
        - (df + 1) / 2 * torch.log1p(z.square() / df)
    )


def _betacf(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """Continued fraction of the incomplete beta function, modified Lentz's method
    (Numerical Recipes, 3rd ed., section 6.4, ``betacf``); converges fast for
    ``x < (a + 1) / (a + b + 2)``. Stops once every element has converged; autograd
    runs through the iterations when the inputs require it."""
    qab, qap, qam = a + b, a + 1, a - 1

    def guard(v: Tensor) -> Tensor:  # Lentz: keep denominators away from zero
        return torch.where(v.abs() < _TINY, torch.full_like(v, _TINY), v)

    c = torch.ones_like(x)
    d = 1 / guard(1 - qab * x / qap)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 / guard(1 + aa * d)
        c = guard(1 + aa / c)
        h = h * d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 / guard(1 + aa * d)
        c = guard(1 + aa / c)
        delta = d * c
        h = h * delta
        if bool(((delta - 1).abs() < _CF_EPS).all()):
            break
    return h


def _t_tail(z: Tensor, df: Tensor) -> Tensor:
    r"""Two-sided-symmetric tail :math:`P(T > |z|) = \tfrac12 I_{\nu/(\nu+z^2)}(\tfrac\nu2, \tfrac12)`,
    float64, differentiable in ``df``.

    The logs of :math:`x = \nu/(\nu+z^2)` and :math:`1-x = z^2/(\nu+z^2)` are formed
    directly, never as ``log(1 - x)``: the tail stays accurate far out (it is the small
    number), and at :math:`z = 0` the gradient in :math:`\nu` is 0 rather than NaN.
    """
    a, b = df / 2, torch.full_like(df, 0.5)
    z2 = z.square()
    log_den = torch.log(df + z2)
    log_x = torch.log(df) - log_den
    log_y = 2 * torch.log(z.abs()) - log_den  # -inf at z = 0: the prefactor below is then 0
    x, y = log_x.exp(), log_y.exp()
    log_front = a * log_x + b * log_y - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))
    direct = x < (a + 1) / (a + b + 2)
    # one continued fraction per element, in whichever form converges fast there:
    # I_x(a, b) directly, or 1 - I_{1-x}(b, a) (the symmetry of the incomplete beta)
    ca, cb, cx = torch.where(direct, a, b), torch.where(direct, b, a), torch.where(direct, x, y)
    part = log_front.exp() * _betacf(ca, cb, cx) / ca
    return 0.5 * torch.where(direct, part, 1 - part)


class _NormalScore(torch.autograd.Function):
    r"""``w = Phi^{-1}(F_nu(z))`` with hand-written gradients:
    :math:`\partial w/\partial z = f_\nu(z)/\varphi(w)` and
    :math:`\partial w/\partial\nu = (\partial F_\nu(z)/\partial\nu)/\varphi(w)`, the latter by
    autograd through the continued fraction."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: Tensor, df: Tensor) -> Tensor:  # type: ignore[override]
        z64, df64 = torch.broadcast_tensors(z.detach().double(), df.detach().double())
        with torch.no_grad():
            tail = _t_tail(z64, df64).clamp_min(_TINY)
            # F = 1 - tail above 0 and tail below: Phi^{-1}(1 - tail) = -Phi^{-1}(tail) keeps precision
            w = -torch.sign(z64) * torch.special.ndtri(tail)
        ctx.save_for_backward(z64, df64, w)
        ctx.shapes = (z.shape, df.shape)
        return w.to(z.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        z64, df64, w = ctx.saved_tensors
        z_shape, df_shape = ctx.shapes
        g = grad.double()
        log_phi_w = -0.5 * w.square() - 0.5 * math.log(2 * math.pi)
        grad_z = grad_df = None
        if ctx.needs_input_grad[0]:
            grad_z = (g * torch.exp(student_t_log_prob(z64, df64) - log_phi_w)).to(grad.dtype)
            grad_z = grad_z.sum_to_size(z_shape)
        if ctx.needs_input_grad[1]:
            with torch.enable_grad():
                df_req = df64.detach().requires_grad_(True)
                tail = _t_tail(z64, df_req)
                # dF/dnu = -sign(z) d tail/dnu (F = 1 - tail above 0, tail below, and 1/2 at 0)
                (dtail,) = torch.autograd.grad(tail, df_req, torch.ones_like(tail))
            grad_df = (g * (-torch.sign(z64)) * dtail * torch.exp(-log_phi_w)).sum_to_size(df_shape)
            grad_df = grad_df.to(grad.dtype)
        return grad_z, grad_df


def student_t_normal_score(z: Tensor, df: Tensor | float) -> Tensor:
    r"""The Gaussian copula's normal score :math:`w = \Phi^{-1}(F_\nu(z))` of a standard Student-t.

    :math:`F_\nu` is the Student-t CDF,
    :math:`F_\nu(z) = 1 - \tfrac12 I_{\nu/(\nu+z^2)}(\tfrac\nu2, \tfrac12)` for :math:`z \ge 0`
    (and symmetric), :math:`I` the regularised incomplete beta function, here evaluated
    by its continued fraction in float64 to about 1e-15. Computing :math:`w` from the
    tail probability keeps it exact far in the tails, where :math:`F_\nu(z)` rounds to 1
    (:math:`|w|` is capped near 37, where the tail probability underflows).
    Differentiable in ``z`` and ``df`` (first order).

    References:
        Press, Teukolsky, Vetterling & Flannery, "Numerical Recipes", 3rd ed., 2007,
        section 6.4 (incomplete beta function), 6.14.9 (Student-t).
    """
    df_t = torch.as_tensor(df, dtype=z.dtype, device=z.device)
    return _NormalScore.apply(z, df_t)


def student_t_cdf(z: Tensor, df: Tensor | float) -> Tensor:
    r"""Student-t CDF :math:`F_\nu(z) = \Phi(w)`, :math:`w` from :func:`student_t_normal_score`.

    Differentiable in ``z`` (gradient :math:`f_\nu(z)`) and ``df``. In float64 it
    matches ``scipy.stats.t.cdf`` to ~1e-14.
    """
    # 0.5 erfc(-w / sqrt 2) rather than torch.special.ndtr, which loses ~1e-5 relative accuracy
    # in the lower tail (w < -7 or so)
    return _ndtr(student_t_normal_score(z, df))


def student_t_icdf(u: Tensor, df: Tensor | float) -> Tensor:
    r"""Student-t quantile :math:`F_\nu^{-1}(u)`, by ``scipy.special.stdtrit`` in float64.

    For sampling only: no gradient. (scipy comes with scikit-learn, a dependency.)
    """
    from scipy.special import stdtrit

    df_t = torch.as_tensor(df, dtype=torch.float64).detach().cpu()
    u64, df64 = torch.broadcast_tensors(u.detach().double().cpu(), df_t)
    q = torch.from_numpy(stdtrit(df64.numpy(), u64.numpy()))
    return q.to(u.device, u.dtype)


def _t_from_normal_score(w: Tensor, df: Tensor) -> Tensor:
    """Inverse of :func:`student_t_normal_score`: ``F_nu^{-1}(Phi(w))``, computed from the lower
    tail ``Phi(-|w|)`` so that large ``|w|`` keep their precision. No gradient."""
    lower = _ndtr(-w.detach().abs().double())
    return (-torch.sign(w.detach().double()) * student_t_icdf(lower, df)).to(w.dtype)


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class CopulaBase(BaseDistribution):
    r"""Heavy-tailed base: Student-t (or Gaussian) marginals joined by a copula.

    By Sklar's theorem a density with marginal CDFs :math:`F_i` and densities
    :math:`f_i` is

    .. math:: p(z) = c\big(F_1(z_1), \dots, F_D(z_D)\big) \prod_{i=1}^D f_i(z_i),

    :math:`c` the copula density. Here the marginals are standard Student-t with
    learned degrees of freedom :math:`\nu_i = \nu_{\min} + \operatorname{softplus}(\rho_i)`
    (or standard normal), and the copula is

    - ``independence``: :math:`c \equiv 1`, so :math:`\log p = \sum_i \log f_i(z_i)`;
    - ``gaussian``: with normal scores :math:`w_i = \Phi^{-1}(F_i(z_i))` and a
      correlation matrix :math:`R = LL^\top`,

      .. math:: \log c = -\tfrac12 w^\top R^{-1} w + \tfrac12 w^\top w - \tfrac12\log\det R.

      :math:`L` is lower triangular with unit-norm rows :math:`L_i = m_i/\lVert m_i\rVert`,
      :math:`m_{ii} = 1` and :math:`m_{ij}` (:math:`j<i`) free, which spans every
      correlation matrix and starts at the identity; or ``correlation`` is fixed.

    Sampling is exact: :math:`w = L\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, I)`,
    then :math:`z_i = F_i^{-1}(\Phi(w_i))` (Student-t quantile by
    ``scipy.special.stdtrit``; samples carry no gradient). Image-shaped events are
    flattened to :math:`D = \prod` ``event_shape`` numbers.

    Args:
        event_shape: shape of one sample.
        marginals: ``t`` or ``normal``.
        copula: ``independence`` or ``gaussian``.
        df: initial degrees of freedom (one number, or one per dimension).
        min_df: lower bound :math:`\nu_{\min}` of the degrees of freedom.
        learn_df: learn :math:`\nu` (else fixed at ``df``).
        correlation: a fixed ``(D, D)`` correlation matrix for the Gaussian copula
            (default: learned, starting at the identity).

    References:
        Laszkiewicz, Lederer & Fischer, "Copula-Based Normalizing Flows", ICML 2021
        INNF+ workshop, arXiv:2107.07352.
        Laszkiewicz, Lederer & Fischer, "Marginal Tail-Adaptive Normalizing Flows",
        ICML 2022, arXiv:2206.10311.
        Jaini, Kobyzev, Yu & Brubaker, "Tails of Lipschitz Triangular Flows", ICML 2020.
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        marginals: str = "t",
        copula: str = "gaussian",
        df: float | Sequence[float] = 5.0,
        min_df: float = 1.0,
        learn_df: bool = True,
        correlation: Tensor | None = None,
    ) -> None:
        super().__init__(event_shape)
        if marginals not in ("t", "normal"):
            raise ConfigError(f"marginals must be 't' or 'normal', got {marginals!r}")
        if copula not in ("independence", "gaussian"):
            raise ConfigError(f"copula must be 'independence' or 'gaussian', got {copula!r}")
        self.marginals, self.copula = marginals, copula
        d = self.numel
        # Fixed (not learned) buffers in float64, exactly as constructed: a buffer holds them in the
        # module's dtype, and a cast up to float64 (.double(), precision="64-true") takes these exact
        # values instead of the float32 ones cast up (a fixed correlation would be off by ~1e-8).
        self._exact: dict[str, Tensor] = {}
        self.min_df = float(min_df)
        if marginals == "t":
            init = torch.as_tensor(df, dtype=torch.float64).expand(d).clone()
            if not (torch.isfinite(init).all() and (init > min_df).all() and min_df > 0):
                raise ConfigError(
                    f"need degrees of freedom df > min_df > 0; got df={df!r}, min_df={min_df!r}. "
                    "Raise df or lower min_df"
                )
            raw = init - min_df
            raw64 = torch.tensor([_softplus_inverse(float(r)) for r in raw], dtype=torch.float64)
            raw = raw64.to(torch.get_default_dtype())
            if learn_df:
                self.df_raw = nn.Parameter(raw)
            else:
                self.register_buffer("df_raw", raw)
                self._exact["df_raw"] = raw64
        self._fixed_chol: Tensor | None
        if copula == "gaussian":
            if correlation is None:
                self.chol_raw = nn.Parameter(torch.zeros(d, d))
                self.register_buffer("_fixed_chol", None)
            else:
                corr = torch.as_tensor(correlation, dtype=torch.float64)
                if (
                    corr.shape != (d, d)
                    or not torch.allclose(corr, corr.T)
                    or not torch.allclose(torch.diagonal(corr), torch.ones(d, dtype=torch.float64))
                ):
                    raise ConfigError(
                        f"correlation must be a symmetric ({d}, {d}) matrix with unit diagonal, "
                        f"got shape {tuple(corr.shape)}"
                    )
                chol, info = torch.linalg.cholesky_ex(corr)
                if int(info) != 0:
                    raise ConfigError("correlation must be positive definite (its Cholesky factorisation failed)")
                self.register_buffer("_fixed_chol", chol.to(torch.get_default_dtype()))
                self._exact["_fixed_chol"] = chol
        elif correlation is not None:
            raise ConfigError("a fixed correlation needs copula='gaussian'")

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CopulaBase:
        before = {name: self._buffers[name].dtype for name in self._exact if self._buffers.get(name) is not None}
        out = super()._apply(fn, recurse)
        for name, dtype in before.items():
            buf = self._buffers[name]
            if buf is not None and buf.dtype == torch.float64 and dtype != torch.float64:
                self._buffers[name] = self._exact[name].to(device=buf.device)
        return out

    # ----- parameters ---------------------------------------------------------------------
    @property
    def df(self) -> Tensor:
        r"""Degrees of freedom per dimension, :math:`\nu_{\min} + \operatorname{softplus}(\rho)`."""
        if self.marginals != "t":
            raise AttributeError("normal marginals have no degrees of freedom")
        return self.min_df + nn.functional.softplus(self.df_raw)

    @property
    def cholesky(self) -> Tensor:
        r"""Lower-triangular :math:`L` with unit-norm rows, :math:`R = LL^\top` (identity: independence)."""
        if self.copula != "gaussian":
            return torch.eye(self.numel, dtype=self._anchor.dtype, device=self._anchor.device)
        if self._fixed_chol is not None:
            return self._fixed_chol
        eye = torch.eye(self.numel, dtype=self.chol_raw.dtype, device=self.chol_raw.device)
        m = torch.tril(self.chol_raw, diagonal=-1) + eye
        return m / m.norm(dim=1, keepdim=True)

    @property
    def correlation(self) -> Tensor:
        r"""The copula's correlation matrix :math:`R = LL^\top`."""
        chol = self.cholesky
        return chol @ chol.T

    # ----- density ------------------------------------------------------------------------
    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(z)
        flat = z.reshape(z.shape[0], -1)
        if self.marginals == "t":
            df = self.df.to(flat.dtype)
            lp = student_t_log_prob(flat, df).sum(dim=1)
            if self.copula == "independence":
                return lp
            w = student_t_normal_score(flat, df)
        else:
            lp = (-0.5 * flat.square() - 0.5 * math.log(2 * math.pi)).sum(dim=1)
            if self.copula == "independence":
                return lp
            w = flat  # normal marginals: the normal scores are the points themselves
        chol = self.cholesky.to(flat.dtype)
        v = torch.linalg.solve_triangular(chol, w.T, upper=False).T  # L^{-1} w
        log_c = -0.5 * v.square().sum(dim=1) + 0.5 * w.square().sum(dim=1) - torch.log(torch.diagonal(chol)).sum()
        return lp + log_c

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        dtype, device = self._anchor.dtype, self._anchor.device
        w = torch.randn(n, self.numel, device=device, dtype=dtype)
        if self.copula == "gaussian":
            w = w @ self.cholesky.detach().to(dtype).T
        z = _t_from_normal_score(w, self.df.detach()) if self.marginals == "t" else w
        return z.reshape(n, *self.event_shape)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, marginals={self.marginals!r}, copula={self.copula!r}"


_BASES: dict[str, Callable[[int | Sequence[int]], BaseDistribution]] = {
    "normal": StandardNormal,
    "exponential": StandardExponential,
    "diag-normal": DiagNormal,
    # Student-t marginals with learned df, independent (a product of t's)
    "student-t": lambda shape: CopulaBase(shape, marginals="t", copula="independence"),
    # Student-t marginals with learned df, joined by a learned Gaussian copula
    "copula-t": lambda shape: CopulaBase(shape, marginals="t", copula="gaussian"),
    # normal marginals, learned Gaussian copula: a Gaussian with learned correlation
    "copula-normal": lambda shape: CopulaBase(shape, marginals="normal", copula="gaussian"),
}


def make_base(name: str, event_shape: int | Sequence[int]) -> BaseDistribution:
    """Build a base distribution by name: ``normal``, ``exponential``, ``diag-normal``,
    ``student-t`` (independent Student-t marginals with learned degrees of freedom),
    ``copula-t`` (the same joined by a learned Gaussian copula) or ``copula-normal``
    (normal marginals, learned Gaussian copula); see :class:`CopulaBase`."""
    try:
        factory = _BASES[name]
    except KeyError:
        raise ConfigError(f"unknown base distribution {name!r}; choose one of {sorted(_BASES)}") from None
    return factory(event_shape)
