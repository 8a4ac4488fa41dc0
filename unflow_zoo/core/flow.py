"""A normalizing flow: a base distribution pushed through a transform."""

from __future__ import annotations

from torch import Tensor, nn

from unflow_zoo.core.distributions import BaseDistribution
from unflow_zoo.core.transform import Transform

__all__ = ["Flow"]


class Flow(nn.Module):
    r"""Density :math:`p(x) = p_Z(f(x))\,|\det \partial f / \partial x|`.

    ``transform`` is :math:`f` (data -> noise) and ``base`` is :math:`p_Z`.
    Sampling draws :math:`z \sim p_Z` and returns :math:`f^{-1}(z)`.
    """

    def __init__(self, transform: Transform, base: BaseDistribution) -> None:
        super().__init__()
        self.transform = transform
        self.base = base

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected a batch of shape (B, {', '.join(map(str, self.event_shape))}) "
                f"for a flow over events of shape {self.event_shape}, got {tuple(x.shape)}"
            )

    def transform_to_noise(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(x)
        return self.transform(x, context)[0]

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(x)
        z, ladj = self.transform(x, context)
        return self.base.log_prob(z, context) + ladj

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        z = self.base.sample(n, context)
        return self.transform.inverse(z, context)[0]

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = self.base.sample(n, context)
        x, ladj_inv = self.transform.inverse(z, context)
        return x, self.base.log_prob(z, context) - ladj_inv
