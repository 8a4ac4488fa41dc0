"""Elementwise affine maps and the scale parametrisation shared by affine flows."""

from __future__ import annotations

import torch
from torch import Tensor

from unflow_zoo.core.transform import Transform

__all__ = ["Affine", "soft_clamp"]


def soft_clamp(s: Tensor, bound: float | None) -> Tensor:
    r"""Smoothly limit a log-scale to :math:`(-b, b)`: :math:`b \tanh(s / b)`.

    Unbounded log-scales let an affine layer blow a point up by :math:`e^{s}`
    early in training; the tanh keeps gradients alive (a hard clamp would not).
    ``bound=None`` leaves ``s`` unchanged.
    """
    if bound is None or bound <= 0:
        return s
    return bound * torch.tanh(s / bound)


class Affine(Transform):
    r"""Fixed elementwise affine map :math:`y = (x - \mu) / \sigma` (data -> noise).

    Used to put a preprocessing step (standardisation) inside a flow so that
    ``log_prob`` applies to raw data, with log-det :math:`-\sum_i \log \sigma_i`.
    """

    loc: Tensor
    scale: Tensor

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype())
        if (scale <= 0).any():
            raise ValueError("Affine scale must be positive")
        self.register_buffer("loc", torch.as_tensor(loc, dtype=scale.dtype))
        self.register_buffer("scale", scale)

    def _ladj(self, x: Tensor) -> Tensor:
        per_event = torch.log(self.scale).expand(x.shape[1:]).sum()
        return (-per_event).expand(x.shape[0]).to(x.dtype)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.loc) / self.scale, self._ladj(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y * self.scale + self.loc, -self._ladj(y)
