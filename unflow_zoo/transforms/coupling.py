"""Affine coupling layers (RealNVP)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unflow_zoo.core.transform import Transform
from unflow_zoo.nn.mlp import MLP
from unflow_zoo.transforms.affine import soft_clamp

__all__ = ["AffineCoupling", "alternating_mask"]


def alternating_mask(features: int, parity: int) -> Tensor:
    """Boolean mask selecting features ``i`` with ``i % 2 == parity`` (the conditioning half)."""
    return torch.arange(features) % 2 == parity


class AffineCoupling(Transform):
    r"""Affine coupling layer on ``(B, D)`` batches.

    With a binary mask splitting :math:`x` into a conditioning part
    :math:`x_A` and a transformed part :math:`x_B`,

    .. math:: y_A = x_A, \qquad y_B = x_B \odot e^{s(x_A)} + t(x_A),
              \qquad \log|\det J| = \textstyle\sum s(x_A).

    :math:`s` is soft-clamped to ``(-scale_clamp, scale_clamp)``; the
    conditioner's last layer starts at zero so the layer starts as the identity.

    References:
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    mask: Tensor

    def __init__(
        self,
        mask: Tensor | Sequence[bool],
        hidden: Sequence[int] = (64, 64),
        act: str = "relu",
        context_features: int = 0,
        scale_clamp: float | None = 3.0,
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.ndim != 1 or not mask.any() or mask.all():
            raise ValueError(f"coupling mask must select some but not all features, got {mask.tolist()}")
        # A float mask multiplies instead of indexing: boolean gathers and scatters make
        # the backward pass several times slower than a couple of elementwise products.
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.features = len(mask)
        self.scale_clamp = scale_clamp
        self.net = MLP(self.features + context_features, 2 * self.features, hidden, act, zero_init_last=True)

    def _params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x * self.mask
        if context is not None:
            h = torch.cat([h, context], dim=1)
        s, t = self.net(h).chunk(2, dim=1)
        free = 1 - self.mask
        return soft_clamp(s, self.scale_clamp) * free, t * free

    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"AffineCoupling over {self.features} features got a batch of shape {tuple(x.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        s, t = self._params(x, context)
        return x * torch.exp(s) + t, s.sum(dim=1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        s, t = self._params(y, context)
        return (y - t) * torch.exp(-s), -s.sum(dim=1)
