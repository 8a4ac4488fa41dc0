r"""Conditional synthetic sources: pairs :math:`(x, c)` with a closed-form :math:`p(x \mid c)`.

A :class:`ConditionalSource` draws contexts :math:`c \sim p(c)` and points
:math:`x \sim p(x \mid c)` with a NumPy ``Generator`` (a data set is a pure function of its
seed), and evaluates :math:`\log p(x \mid c)` exactly, so that a conditional flow's
validation and test KL, :math:`\mathbb E_{c}\,\mathrm{KL}(p(\cdot \mid c)\,\|\,q(\cdot \mid c))`
estimated on held-out pairs, is measured against the truth:

- ``8gaussians-by-label``: a one-hot label of 4 classes picks two opposite modes of FFJORD's
  ``8gaussians`` (so every conditional is bimodal and the mixture over labels is ``8gaussians``);
- ``gaussian-by-context``: a Gaussian whose mean, scales and orientation are smooth non-linear
  functions of a scalar context :math:`c \sim U(-1, 1)`;
- ``two-moons-sbi``: the two-moons simulator of the simulation-based-inference benchmark, with the
  parameters :math:`\theta \sim U(-1, 1)^2` as context and the observation :math:`x` as data
  (neural posterior estimation swaps the two roles; the flow does not care which is which).

References:
    Grathwohl et al., "FFJORD", ICLR 2019, ``lib/toy_data.py`` (``8gaussians``).
    Greenberg, Nonnenmacher & Macke, "Automatic Posterior Transformation for Likelihood-free
    Inference", ICML 2019 (two moons); Lueckmann et al., "Benchmarking Simulation-Based
    Inference", AISTATS 2021, ``sbibm/tasks/two_moons``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from unflow_zoo.data.synthetic import EightGaussians, check_draw
from unflow_zoo.errors import ConfigError, DataError

__all__ = [
    "CONDITIONAL_SOURCES",
    "ConditionalGaussian",
    "ConditionalSource",
    "LabelledEightGaussians",
    "TwoMoonsSimulator",
    "conditional_source_names",
    "get_conditional_source",
]

_LOG_2PI = math.log(2 * math.pi)


class ConditionalSource(ABC):
    """A joint distribution of points ``x`` (``dim`` columns) and contexts ``c`` (``context_dim``).

    Subclasses set ``name``, ``dim``, ``context_dim`` and implement :meth:`_sample` and
    :meth:`_log_prob` (the conditional density, float64).
    """

    name: str = "conditional"
    dim: int = 2
    context_dim: int = 1
    has_density: bool = True

    @abstractmethod
    def _sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _log_prob(self, x: Tensor, c: Tensor) -> Tensor: ...

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` pairs: ``x`` ``(n, dim)`` and ``c`` ``(n, context_dim)``, float64."""
        n = check_draw(self.name, n, rng)
        x, c = self._sample(n, rng)
        return (
            np.asarray(x, dtype=np.float64).reshape(n, self.dim),
            np.asarray(c, dtype=np.float64).reshape(n, self.context_dim),
        )

    def log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        r""":math:`\log p(x \mid c)` in float64, shape ``(n,)``, for ``x`` ``(n, dim)`` and ``c`` ``(n, context_dim)``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"{self.name}: expected points of shape (n, {self.dim}), got {tuple(x.shape)}")
        if c.shape != (x.shape[0], self.context_dim):
            raise DataError(
                f"{self.name}: expected contexts of shape ({x.shape[0]}, {self.context_dim}), got {tuple(c.shape)}"
            )
        return self._log_prob(x.to(torch.float64), c.to(device=x.device, dtype=torch.float64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, context_dim={self.context_dim})"


class LabelledEightGaussians(ConditionalSource):
    r"""``8gaussians`` with a label: class :math:`k \in \{0, 1, 2, 3\}` (one-hot context) picks the two
    opposite modes :math:`\pm c_k` of FFJORD's eight, each with weight 1/2:

    .. math:: p(x \mid k) = \tfrac12\,\mathcal N(x;\, m_k, s^2 I) + \tfrac12\,\mathcal N(x;\, -m_k, s^2 I),

    with :math:`m_k = 4 u_k / 1.414`, :math:`u_k` the unit vectors at angles :math:`0, \pi/2,
    \pi/4, -\pi/4`, and :math:`s = 0.5 / 1.414`. Labels are uniform, so the marginal of
    :math:`x` is ``8gaussians`` itself.
    """

    name = "8gaussians-by-label"
    dim = 2
    context_dim = 4

    def __init__(self) -> None:
        base = EightGaussians()
        # EightGaussians' centre order: (1,0) (-1,0) (0,1) (0,-1) (r,r) (r,-r) (-r,r) (-r,-r)
        self.pairs = np.stack([base.means[[0, 1]], base.means[[2, 3]], base.means[[4, 7]], base.means[[5, 6]]])
        self.std = float(base.stds[0, 0])

    def _sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        label = rng.integers(0, 4, size=n)
        side = rng.integers(0, 2, size=n)
        x = self.pairs[label, side] + self.std * rng.standard_normal((n, 2))
        return x, np.eye(4)[label]

    def _log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        label = c.argmax(dim=1)
        centres = torch.as_tensor(self.pairs, device=x.device)[label]  # (n, 2 modes, 2)
        z = (x[:, None, :] - centres) / self.std
        comp = (-0.5 * z.square()).sum(-1) - 2 * math.log(self.std) - _LOG_2PI
        return torch.logsumexp(comp, dim=1) - math.log(2.0)


class ConditionalGaussian(ConditionalSource):
    r"""A 2-D Gaussian moved, stretched and turned by a scalar context :math:`c \sim U(-1, 1)`:

    .. math:: x \mid c \sim \mathcal N\big(\mu(c),\ R(\phi)\,\mathrm{diag}(s_1^2, s_2^2)\,R(\phi)^\top\big),
              \quad \mu(c) = (2 \sin \pi c,\ 2c^2 - 1),\ s_1 = 0.5 + 0.3c,\ s_2 = 0.1 + 0.2(1 - c^2),
              \ \phi = \pi c / 2,

    :math:`R(\phi)` the rotation by :math:`\phi`. Evaluated exactly in the rotated frame.
    """

    name = "gaussian-by-context"
    dim = 2
    context_dim = 1

    @staticmethod
    def _params(c: Tensor | np.ndarray, lib: object) -> tuple[object, ...]:
        sin, cos = lib.sin, lib.cos  # type: ignore[attr-defined]
        mean = (2 * sin(math.pi * c), 2 * c**2 - 1)
        s1, s2 = 0.5 + 0.3 * c, 0.1 + 0.2 * (1 - c**2)
        phi = math.pi * c / 2
        return mean, s1, s2, cos(phi), sin(phi)

    def _sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = rng.uniform(-1.0, 1.0, size=n)
        (m1, m2), s1, s2, cp, sp = self._params(c, np)
        e1, e2 = s1 * rng.standard_normal(n), s2 * rng.standard_normal(n)
        x = np.stack([m1 + cp * e1 - sp * e2, m2 + sp * e1 + cp * e2], axis=1)
        return x, c[:, None]

    def _log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        (m1, m2), s1, s2, cp, sp = self._params(c[:, 0], torch)
        d1, d2 = x[:, 0] - m1, x[:, 1] - m2
        e1, e2 = cp * d1 + sp * d2, -sp * d1 + cp * d2  # R(phi)^T (x - mu)
        return -0.5 * ((e1 / s1) ** 2 + (e2 / s2) ** 2) - torch.log(s1) - torch.log(s2) - _LOG_2PI


class TwoMoonsSimulator(ConditionalSource):
    r"""The two-moons simulator (sbibm's ``two_moons``) with :math:`\theta \sim U(-1, 1)^2` as context:

    .. math:: a \sim U(-\tfrac\pi2, \tfrac\pi2),\quad r \sim \mathcal N(0.1, 0.01^2),\quad
              x = \big(r\cos a + 0.25 - \tfrac{|\theta_1 + \theta_2|}{\sqrt2},\
                       r \sin a + \tfrac{\theta_2 - \theta_1}{\sqrt2}\big).

    Its likelihood is closed-form in polar coordinates around the shifted centre
    :math:`(u, v)`: :math:`p(x \mid \theta) = \mathcal N(\rho;\, 0.1, 0.01^2)\,/\,(\pi \rho)`
    for :math:`u > 0`, :math:`\rho = \sqrt{u^2 + v^2}` (zero for :math:`u \le 0`; a negative
    radius, ten standard deviations away, is ignored).
    """

    name = "two-moons-sbi"
    dim = 2
    context_dim = 2
    r_mean, r_std = 0.1, 0.01

    def _sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        theta = rng.uniform(-1.0, 1.0, size=(n, 2))
        a = rng.uniform(-math.pi / 2, math.pi / 2, size=n)
        r = self.r_mean + self.r_std * rng.standard_normal(n)
        shift = np.stack([-np.abs(theta.sum(1)) / math.sqrt(2), (theta[:, 1] - theta[:, 0]) / math.sqrt(2)], 1)
        x = np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], axis=1) + shift
        return x, theta

    def _log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        u = x[:, 0] - 0.25 + (c[:, 0] + c[:, 1]).abs() / math.sqrt(2)
        v = x[:, 1] - (c[:, 1] - c[:, 0]) / math.sqrt(2)
        rho = torch.hypot(u, v)
        z = (rho - self.r_mean) / self.r_std
        lp = -0.5 * z.square() - math.log(self.r_std) - 0.5 * _LOG_2PI - math.log(math.pi) - torch.log(rho)
        return torch.where(u > 0, lp, torch.full_like(lp, -math.inf))


CONDITIONAL_SOURCES: dict[str, Callable[[], ConditionalSource]] = {
    LabelledEightGaussians.name: LabelledEightGaussians,
    ConditionalGaussian.name: ConditionalGaussian,
    TwoMoonsSimulator.name: TwoMoonsSimulator,
}


def conditional_source_names() -> list[str]:
    """Names accepted by :func:`get_conditional_source`."""
    return sorted(CONDITIONAL_SOURCES)


def get_conditional_source(name: str) -> ConditionalSource:
    """The conditional source registered as ``name``.

    Raises:
        ConfigError: ``name`` is not registered; the message lists the valid names (a ``ValueError``).
    """
    if name not in CONDITIONAL_SOURCES:
        raise ConfigError(
            f"unknown conditional source {name!r}; choose one of: {', '.join(conditional_source_names())}"
        )
    return CONDITIONAL_SOURCES[name]()
