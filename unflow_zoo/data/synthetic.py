r"""Synthetic sources: the 2-D toys of the flow literature and Gaussian mixtures.

A :class:`Source` draws points with a NumPy ``Generator`` (so a data set is a
pure function of its seed) and, where the density is known in closed form,
evaluates it. The true density lets metrics report the gap between a model's
NLL and the entropy :math:`H(p) = -\mathbb E_p[\log p(x)]`, the best NLL any
model can reach.

The 2-D toys follow FFJORD's ``lib/toy_data.py`` (also used by nflows and
zuko), with NumPy ports of the scikit-learn generators it calls, so that they
need neither scikit-learn nor the global NumPy random state.

References:
    Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, "FFJORD: Free-form
    Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019,
    arXiv 1810.01367; code: github.com/rtqichen/ffjord, ``lib/toy_data.py``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from torch import Tensor

from unflow_zoo.errors import ConfigError, DataError, DataTypeError

__all__ = [
    "SOURCES",
    "Checkerboard",
    "Circles",
    "EightGaussians",
    "GaussianMixture",
    "Moons",
    "Pinwheel",
    "Rings",
    "Source",
    "StudentTCopula",
    "SwissRoll",
    "TwoSpirals",
    "check_draw",
    "checkerboard_log_prob",
    "get_source",
    "source_names",
]


def check_draw(name: str, n: object, rng: object) -> int:
    """``n`` as an int for a source called ``name``; a clear error unless ``n`` is a positive int and
    ``rng`` a NumPy ``Generator`` (every source draws from one, so a data set is a function of its seed)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{name}: n must be a positive int, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise DataTypeError(
            f"{name}: rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return int(n)


class Source(ABC):
    """A distribution to draw a data set from.

    Subclasses set ``name`` and ``dim`` and implement :meth:`sample`; those with
    a closed-form density also set ``has_density = True`` and implement
    :meth:`log_prob`.
    """

    name: str = "source"
    dim: int = 2
    has_density: bool = False

    @abstractmethod
    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` points, an ``(n, dim)`` float64 array; the same ``rng`` state gives the same points."""
        n = check_draw(self.name, n, rng)
        x = np.asarray(self._sample(n, rng), dtype=np.float64)
        return x.reshape(n, self.dim)

    def log_prob(self, x: Tensor) -> Tensor | None:
        """True log-density at ``x`` of shape ``(n, dim)``, in float64, shape ``(n,)``; ``None`` when unknown."""
        return None

    def _as64(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"{self.name}: expected points of shape (n, {self.dim}), got {tuple(x.shape)}")
        return x.to(torch.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


# ----- Gaussian mixtures ------------------------------------------------------------------------


class GaussianMixture(Source):
    r"""Mixture of Gaussians with diagonal covariances,

    .. math:: p(x) = \sum_{k=1}^K w_k \prod_{d=1}^D \mathcal N(x_d;\, \mu_{kd}, \sigma_{kd}^2),

    evaluated exactly with a log-sum-exp over components.

    Args:
        means: component means, shape ``(K, D)``, or ``(K,)`` for a 1-D mixture.
        stds: component standard deviations, same shape as ``means``, or ``(K,)``
            for isotropic components, or a scalar shared by all.
        weights: mixing weights ``(K,)``, positive, summing to 1; uniform if omitted.
        name: the name the data set is reported under.
    """

    has_density = True

    def __init__(
        self,
        means: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
        stds: float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray = 1.0,
        weights: Sequence[float] | np.ndarray | None = None,
        name: str = "gmm",
    ) -> None:
        self.name = name
        mu = np.asarray(means, dtype=np.float64)
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.ndim != 2 or mu.shape[0] == 0:
            raise ConfigError(f"{name}: means must have shape (K,) or (K, D) with K >= 1, got {np.shape(means)}")
        k, d = mu.shape
        sd = np.asarray(stds, dtype=np.float64)
        if sd.ndim == 1 and sd.shape[0] == k:
            sd = sd[:, None]  # one std per component: isotropic
        try:
            sd = np.broadcast_to(sd, (k, d)).copy()
        except ValueError:
            raise ConfigError(f"{name}: stds of shape {np.shape(stds)} do not fit means of shape {(k, d)}") from None
        if not (np.isfinite(sd).all() and (sd > 0).all()):
            raise ConfigError(f"{name}: every std must be positive and finite, got {sd.tolist()}")
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (k,):
            raise ConfigError(f"{name}: expected {k} weights (one per component), got shape {w.shape}")
        if not (w > 0).all() or abs(w.sum() - 1.0) > 1e-6:
            raise ConfigError(f"{name}: weights must be positive and sum to 1, got {w.tolist()} (sum {w.sum():.6g})")
        self.means, self.stds, self.weights = mu, sd, w / w.sum()
        self.dim = d

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        return self.means[k] + self.stds[k] * rng.standard_normal((n, self.dim))

    def log_prob(self, x: Tensor) -> Tensor:
        x = self._as64(x)
        mu = torch.as_tensor(self.means, device=x.device)
        sd = torch.as_tensor(self.stds, device=x.device)
        logw = torch.as_tensor(np.log(self.weights), device=x.device)
        z = (x[:, None, :] - mu) / sd  # (n, K, D)
        comp = (-0.5 * z.square() - torch.log(sd) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(comp + logw, dim=-1)


class EightGaussians(GaussianMixture):
    r"""FFJORD's ``8gaussians``: eight equally weighted isotropic Gaussians on a circle.

    FFJORD draws :math:`x = (s\,c_k + \sigma\varepsilon) / 1.414` with centres
    :math:`c_k \in \{(\pm1, 0), (0, \pm1), (\pm\tfrac{1}{\sqrt2}, \pm\tfrac{1}{\sqrt2})\}`,
    :math:`s = 4`, :math:`\sigma = 0.5`, :math:`\varepsilon \sim \mathcal N(0, I)`, so

    .. math:: p(x) = \tfrac18 \sum_k \mathcal N\big(x;\, s c_k / 1.414,\, (\sigma/1.414)^2 I\big).

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py``.
    """

    def __init__(self, scale: float = 4.0, std: float = 0.5) -> None:
        r = 1.0 / math.sqrt(2.0)
        unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)]
        # 1.414, not sqrt(2): FFJORD's literal constant, kept so the density is that of its data.
        centres = np.asarray(unit, dtype=np.float64) * scale / 1.414
        super().__init__(centres, np.full(8, std / 1.414), name="8gaussians")


# ----- checkerboard ---------------------------------------------------------------------------


def checkerboard_log_prob(x: Tensor, low: float, high: float) -> Tensor:
    r"""Log-density of the uniform distribution on the "black" squares of a 4x4 board.

    The board :math:`[\mathrm{low}, \mathrm{high})^2` is cut into 16 squares of side
    :math:`a = (\mathrm{high}-\mathrm{low})/4`; square :math:`(i, j)` (counted from
    ``low``) is black when :math:`i + j` is even. The density is :math:`2 / (16 a^2)`
    on black squares and 0 (log ``-inf``) elsewhere. Shared by FFJORD's
    ``checkerboard`` (board :math:`[-4, 4)^2`) and the seed paper's ``grid`` (:math:`[0, 4)^2`).
    """
    x = x.to(torch.float64)
    side = (high - low) / 4.0
    inside = ((x >= low) & (x < high)).all(dim=1)
    cell = torch.floor((x - low) / side)
    black = cell.sum(dim=1).remainder(2) == 0
    log_density = math.log(2.0 / (high - low) ** 2)
    out = torch.full(x.shape[:1], -math.inf, dtype=torch.float64, device=x.device)
    return out.masked_fill(inside & black, log_density)


class Checkerboard(Source):
    r"""FFJORD's ``checkerboard``: uniform on 8 of the 16 squares of side 2 in :math:`[-4, 4]^2`.

    FFJORD draws :math:`x_1 \sim U[-2, 2)`, :math:`x_2 = u - 2b + (\lfloor x_1 \rfloor \bmod 2)`
    with :math:`u \sim U[0, 1)`, :math:`b \sim \{0, 1\}`, and returns :math:`2(x_1, x_2)`.
    The density is :math:`1/32` on the black squares (those whose integer
    coordinates :math:`\lfloor x/2 \rfloor` sum to an even number) and 0 elsewhere;
    the entropy is :math:`\log 32`.

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py``.
    """

    name = "checkerboard"
    has_density = True

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x1 = rng.random(n) * 4 - 2
        x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
        return np.stack([x1, x2], axis=1) * 2

    def log_prob(self, x: Tensor) -> Tensor:
        return checkerboard_log_prob(self._as64(x), -4.0, 4.0)


# ----- toys without a closed-form density -------------------------------------------------------


class Moons(Source):
    r"""FFJORD's ``moons``: scikit-learn's two interleaved half circles, :math:`2x + (-1, -0.2)`.

    Upper moon :math:`(\cos t, \sin t)`, lower moon :math:`(1 - \cos t, \tfrac12 - \sin t)`,
    :math:`t` evenly spaced on :math:`[0, \pi]` (as scikit-learn does), plus
    :math:`\mathcal N(0, \mathrm{noise}^2)` per coordinate. No closed-form density.

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py``;
        scikit-learn ``datasets.make_moons``.
    """

    name = "moons"

    def __init__(self, noise: float = 0.1) -> None:
        self.noise = float(noise)

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        n_out = n // 2
        t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n - n_out)
        x = np.concatenate(
            [np.stack([np.cos(t_out), np.sin(t_out)], 1), np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], 1)]
        )
        x = rng.permutation(x) + rng.normal(scale=self.noise, size=x.shape)
        return x * 2 + np.array([-1.0, -0.2])


class Circles(Source):
    r"""FFJORD's ``circles``: two concentric circles of radii 3 and 1.5.

    scikit-learn's ``make_circles(factor=0.5, noise=0.08)`` times 3: angles evenly
    spaced on :math:`[0, 2\pi)`, noise :math:`\mathcal N(0, 0.08^2)` added before the
    scaling. No closed-form density.

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py``;
        scikit-learn ``datasets.make_circles``.
    """

    name = "circles"

    def __init__(self, noise: float = 0.08, factor: float = 0.5) -> None:
        self.noise, self.factor = float(noise), float(factor)

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        n_out = n // 2
        t_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
        t_in = np.linspace(0, 2 * np.pi, n - n_out, endpoint=False)
        x = np.concatenate(
            [np.stack([np.cos(t_out), np.sin(t_out)], 1), self.factor * np.stack([np.cos(t_in), np.sin(t_in)], 1)]
        )
        x = rng.permutation(x) + rng.normal(scale=self.noise, size=x.shape)
        return x * 3


class Rings(Source):
    r"""FFJORD's ``rings``: four concentric circles of radii 3, 2.25, 1.5 and 0.75.

    A quarter of the points on each (the innermost takes the remainder), angles
    evenly spaced on :math:`[0, 2\pi)`, then :math:`\mathcal N(0, 0.08^2)` noise added
    after scaling. No closed-form density.

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py``.
    """

    name = "rings"

    def __init__(self, noise: float = 0.08) -> None:
        self.noise = float(noise)

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        q = n // 4
        parts = []
        for radius, m in ((1.0, q), (0.75, q), (0.5, q), (0.25, n - 3 * q)):
            t = np.linspace(0, 2 * np.pi, m, endpoint=False)
            parts.append(radius * np.stack([np.cos(t), np.sin(t)], 1))
        x = rng.permutation(np.concatenate(parts)) * 3.0
        return x + rng.normal(scale=self.noise, size=x.shape)


class Pinwheel(Source):
    r"""FFJORD's ``pinwheel``: five curved arms.

    Per point: arm :math:`k`, feature :math:`f = (1 + 0.3\varepsilon_1, 0.1\varepsilon_2)`,
    angle :math:`\theta = 2\pi k/5 + 0.25 e^{f_1}`, point :math:`2 R(\theta)^\top f`.
    FFJORD draws ``n // 5`` points per arm; here the arms get ``n`` points in
    all, the first ``n mod 5`` arms one more. No closed-form density.

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py``;
        Johnson et al., "Composing graphical models with neural networks", NeurIPS 2016.
    """

    name = "pinwheel"

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        labels = np.arange(n) % 5
        f = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
        f[:, 0] += 1.0
        theta = 2 * np.pi * labels / 5 + 0.25 * np.exp(f[:, 0])
        c, s = np.cos(theta), np.sin(theta)
        # FFJORD's einsum("ti,tij->tj", f, [[c, -s], [s, c]]) written out.
        x = np.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], 1)
        return 2 * rng.permutation(x)


class TwoSpirals(Source):
    r"""FFJORD's ``2spirals``: two interleaved spiral arms.

    :math:`t = \sqrt{u}\cdot 3\pi`, arm :math:`a = (-t\cos t + v_1/2,\ t\sin t + v_2/2)`,
    :math:`u, v_i \sim U[0, 1)`; the second arm is :math:`-a`; all divided by 3,
    then :math:`\mathcal N(0, 0.1^2)` noise. FFJORD mirrors each first-arm point
    into the second arm; here each arm is drawn independently (same distribution),
    so no test point is the mirror image of a training point. No closed-form density.

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py``.
    """

    name = "2spirals"

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        t = np.sqrt(rng.random((n, 1))) * 540 * (2 * np.pi) / 360
        arm = np.hstack([-np.cos(t) * t + rng.random((n, 1)) * 0.5, np.sin(t) * t + rng.random((n, 1)) * 0.5])
        sign = np.where(np.arange(n) < n // 2, 1.0, -1.0)[:, None]
        x = rng.permutation(sign * arm) / 3
        return x + rng.standard_normal(x.shape) * 0.1


class SwissRoll(Source):
    r"""FFJORD's ``swissroll``: scikit-learn's Swiss roll seen from its axis, divided by 5.

    :math:`t = \tfrac{3\pi}{2}(1 + 2u)`, :math:`u \sim U[0, 1)`;
    :math:`x = (t\cos t + \varepsilon_1,\ t\sin t + \varepsilon_2)/5` with
    :math:`\varepsilon \sim \mathcal N(0, \mathrm{noise}^2)`. No closed-form density.

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py``;
        scikit-learn ``datasets.make_swiss_roll``.
    """

    name = "swissroll"

    def __init__(self, noise: float = 1.0) -> None:
        self.noise = float(noise)

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        t = 1.5 * np.pi * (1 + 2 * rng.random(n))
        x = np.stack([t * np.cos(t), t * np.sin(t)], 1)
        return (x + rng.normal(scale=self.noise, size=x.shape)) / 5


# ----- heavy tails -----------------------------------------------------------------------------


class StudentTCopula(Source):
    r"""Student-t marginals joined by a Gaussian copula: heavy tails with a known density.

    :math:`w \sim \mathcal N(0, R)`, :math:`x_i = F_{\nu_i}^{-1}(\Phi(w_i))`, so that
    :math:`x_i` is a standard Student-t with :math:`\nu_i` degrees of freedom and

    .. math:: \log p(x) = \sum_i \log f_{\nu_i}(x_i) - \tfrac12 w^\top (R^{-1} - I) w
        - \tfrac12 \log\det R, \qquad w_i = \Phi^{-1}(F_{\nu_i}(x_i)),

    evaluated by :class:`~unflow_zoo.core.distributions.CopulaBase` with the degrees of
    freedom and correlation fixed. With :math:`\nu \le 2` a marginal has infinite
    variance; a flow with a light-tailed (Gaussian) base cannot match such tails
    (Jaini et al. 2020), the case copula bases are for.

    Args:
        dfs: degrees of freedom, one per dimension (``dim = len(dfs)``).
        rho: correlation of every pair of normal scores (``R = (1 - rho) I + rho 11^T``).
        name: the name the data set is reported under.

    References:
        Laszkiewicz, Lederer & Fischer, "Copula-Based Normalizing Flows", arXiv:2107.07352, 2021.
        Jaini, Kobyzev, Yu & Brubaker, "Tails of Lipschitz Triangular Flows", ICML 2020.
    """

    has_density = True

    def __init__(self, dfs: Sequence[float] = (1.5, 3.0), rho: float = 0.6, name: str = "student-t2") -> None:
        self.dfs = np.asarray(dfs, dtype=np.float64).reshape(-1)
        if self.dfs.size == 0 or not (np.isfinite(self.dfs).all() and (self.dfs > 0).all()):
            raise ConfigError(f"{name}: dfs must be positive and finite, one per dimension, got {dfs!r}")
        self.dim = int(self.dfs.size)
        if not -1.0 / max(self.dim - 1, 1) < rho < 1.0:
            raise ConfigError(f"{name}: rho must lie in (-1/(D-1), 1) for a valid correlation matrix, got {rho}")
        self.rho, self.name = float(rho), name
        self.correlation = (1 - rho) * np.eye(self.dim) + rho * np.ones((self.dim, self.dim))
        self._base = None

    def _density(self):  # built lazily: core's CopulaBase is a torch module
        if self._base is None:
            from unflow_zoo.core.distributions import CopulaBase

            low = float(self.dfs.min())
            self._base = CopulaBase(
                self.dim,
                marginals="t",
                copula="gaussian" if self.dim > 1 else "independence",
                df=self.dfs.tolist(),
                min_df=low / 2,
                learn_df=False,
                correlation=torch.from_numpy(self.correlation) if self.dim > 1 else None,
            ).double()
        return self._base

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        from scipy.special import ndtr, stdtrit

        w = rng.standard_normal((n, self.dim)) @ np.linalg.cholesky(self.correlation).T
        # quantile of the lower tail Phi(-|w|), mirrored: exact far out, where Phi(w) rounds to 1
        return -np.sign(w) * stdtrit(self.dfs, ndtr(-np.abs(w)))

    def log_prob(self, x: Tensor) -> Tensor:
        x = self._as64(x)
        with torch.no_grad():
            return self._density().to(x.device).log_prob(x)


# ----- registry -------------------------------------------------------------------------------

SOURCES: dict[str, Callable[..., Source]] = {
    "moons": Moons,
    "circles": Circles,
    "rings": Rings,
    "8gaussians": EightGaussians,
    "pinwheel": Pinwheel,
    "2spirals": TwoSpirals,
    "checkerboard": Checkerboard,
    "swissroll": SwissRoll,
    # The seed paper's mog1d shape (Shah et al. 2022), with an exactly known density.
    "gmm1d": partial(GaussianMixture, means=[-2.5, 2.5], stds=[1.0, 1.0], weights=[0.5, 0.5], name="gmm1d"),
    # Unequal weights and widths: a sharp minor mode next to a broad major one.
    "gmm1d-3": partial(
        GaussianMixture, means=[-3.0, 0.0, 2.5], stds=[0.5, 1.0, 0.3], weights=[0.3, 0.5, 0.2], name="gmm1d-3"
    ),
    # Heavy tails (Student-t marginals, infinite variance in the first coordinate) joined by a
    # Gaussian copula, correlation 0.6: the case for copula bases (Laszkiewicz et al. 2021).
    "student-t2": partial(StudentTCopula, dfs=(1.5, 3.0), rho=0.6, name="student-t2"),
    # A 1-D standard Student-t with 2 degrees of freedom (finite mean, infinite variance).
    "student-t1": partial(StudentTCopula, dfs=(2.0,), rho=0.0, name="student-t1"),
}


def source_names() -> list[str]:
    """Names accepted by :func:`get_source`."""
    return sorted(SOURCES)


def get_source(name: str, **kwargs: object) -> Source:
    """Build the synthetic source registered as ``name``; ``kwargs`` go to its constructor.

    Raises:
        ConfigError: ``name`` is not registered; the message lists the valid names (a ``ValueError``).
    """
    if name not in SOURCES:
        raise ConfigError(f"unknown synthetic source {name!r}; choose one of: {', '.join(source_names())}")
    return SOURCES[name](**kwargs)
