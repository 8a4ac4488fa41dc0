"""Base distributions of a flow: the density of the noise side.

Every base is an ``nn.Module`` (so it moves with ``.to(device)`` and may own
learnable parameters) with

- ``event_shape``: the shape of one sample;
- ``log_prob(z, context=None)``: log-density, shape ``(batch,)``;
- ``sample(n, context=None)``: ``n`` samples, shape ``(n, *event_shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BaseDistribution", "DiagNormal", "StandardExponential", "StandardNormal", "make_base"]


def _shape(event_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(event_shape, int):
        return (event_shape,)
    shape = tuple(int(s) for s in event_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"event_shape must be a non-empty tuple of positive ints, got {event_shape!r}")
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
            raise ValueError(
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


_BASES: dict[str, type[BaseDistribution]] = {
    "normal": StandardNormal,
    "exponential": StandardExponential,
    "diag-normal": DiagNormal,
}


def make_base(name: str, event_shape: int | Sequence[int]) -> BaseDistribution:
    """Build a base distribution by name: ``normal``, ``exponential``, ``diag-normal``."""
    try:
        cls = _BASES[name]
    except KeyError:
        raise ValueError(f"unknown base distribution {name!r}; choose one of {sorted(_BASES)}") from None
    return cls(event_shape)
