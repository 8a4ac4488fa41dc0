"""Masked affine autoregressive transform (MAF)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unflow_zoo.core.transform import Transform
from unflow_zoo.nn.made import MADE
from unflow_zoo.transforms.affine import soft_clamp

__all__ = ["MaskedAffineAutoregressive"]


class MaskedAffineAutoregressive(Transform):
    r"""MAF layer: :math:`z_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}`.

    The density direction (data -> noise) is one MADE pass;
    :math:`\log|\det J| = -\sum_i \alpha_i`. The inverse (sampling) needs
    ``D`` sequential passes, :math:`x_i = z_i e^{\alpha_i} + \mu_i`, exact
    up to floating point. :math:`\alpha` is soft-clamped to
    ``(-scale_clamp, scale_clamp)``.

    References:
        Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for
        Density Estimation", NeurIPS 2017.
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        act: str = "relu",
        context_features: int = 0,
        order: Sequence[int] | None = None,
        scale_clamp: float | None = 3.0,
    ) -> None:
        super().__init__()
        self.features = features
        self.scale_clamp = scale_clamp
        self.made = MADE(features, 2, hidden, context_features, order, act, zero_init_last=True)
        # the position of each feature in the autoregressive order, for the sequential inverse
        self.register_buffer("order", torch.argsort(self.made.degrees))

    def _params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        p = self.made(x, context)
        return p[..., 0], soft_clamp(p[..., 1], self.scale_clamp)

    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"MAF layer over {self.features} features got a batch of shape {tuple(x.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        mu, alpha = self._params(x, context)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        x = torch.zeros_like(z)
        for i in self.order.tolist():
            mu, alpha = self._params(x, context)
            x = x.clone()
            x[:, i] = z[:, i] * torch.exp(alpha[:, i]) + mu[:, i]
        mu, alpha = self._params(x, context)
        return x, alpha.sum(dim=1)
