r"""Image preprocessing as explicit maps with log-determinants, so bits/dim are exact.

Discrete pixels :math:`k \in \{0, \dots, L-1\}` (``L`` levels: 256 for MNIST, 17
for scikit-learn's digits) become a continuous density problem in two steps:

1. *uniform dequantisation* :math:`y = k + u`, :math:`u \sim U[0, 1)^D`. A density
   :math:`p(y)` on :math:`[0, L)^D` then lower-bounds the discrete model's
   log-likelihood, :math:`\log P(k) \ge \mathbb E_u \log p(k + u)` (Theis et al. 2016);
2. a fixed bijection :math:`x = g(y)` to the space the flow models (:class:`PixelPreprocess`):
   either the centred scaling :math:`x = y/L - 1/2` or the logit transform
   :math:`x = \operatorname{logit}(\alpha + (1 - 2\alpha)\, y / L)`.

A flow density :math:`q(x)` is a density in pixel units through the change of variables
:math:`\log p(y) = \log q(x) + \log|\det \partial x/\partial y|`, and bits/dim are reported as
:math:`-\log p(y) / (D \ln 2)`: :meth:`PixelPreprocess.log_det` computes that
log-determinant from the served :math:`x` alone.

References:
    Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016
    (uniform dequantisation as a bound on the discrete likelihood).
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017
    (the logit transform with :math:`\alpha = 0.05`, bits/dim in pixel space).
    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
    NeurIPS 2017 (MNIST with :math:`\alpha = 10^{-6}`).
    Kingma & Dhariwal, "Glow", NeurIPS 2018 (the centred scaling :math:`y/L - 1/2`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from unflow_zoo.core.transform import InputOutsideDomain, Transform
from unflow_zoo.errors import ConfigError, DataError

__all__ = ["PixelPreprocess", "dequantize"]


def dequantize(pixels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantisation :math:`y = k + u`, :math:`u \sim U[0, 1)` drawn independently per pixel.

    Args:
        pixels: integer pixel values ``k`` of any shape and integer (or float) dtype.
        generator: the random stream for :math:`u`; the global one when None.

    Returns:
        float32 ``y`` of ``pixels``' shape, with :math:`k \le y < k + 1`.

    References:
        Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016.
    """
    noise = torch.rand(pixels.shape, generator=generator, dtype=torch.float32, device=pixels.device)
    # float32 rounding of k + u can reach k + 1 when u is within 2^-24 k of one; clamp to keep y < k + 1.
    k = pixels.to(torch.float32)
    top = k + 1
    return torch.minimum(k + noise, torch.nextafter(top, torch.zeros_like(top)))


class PixelPreprocess(Transform):
    r"""The fixed map from dequantised pixels :math:`y \in [0, L)^D` to the served data :math:`x`.

    Without a logit (``logit_alpha=None``) the data are centred on zero,

    .. math:: x = y / L - \tfrac12 \in [-\tfrac12, \tfrac12), \qquad
              \log|\det \partial x / \partial y| = -D \log L ;

    with the logit transform (``logit_alpha=``:math:`\alpha \in [0, \tfrac12)`),

    .. math:: s = \alpha + (1 - 2\alpha)\, y / L, \qquad x = \log s - \log(1 - s),

    .. math:: \log|\det \partial x / \partial y| = \sum_d \Big[\log(1 - 2\alpha) - \log L
              - \log s_d - \log(1 - s_d)\Big], \quad -\log s - \log(1 - s) =
              \operatorname{softplus}(x) + \operatorname{softplus}(-x) ,

    which :meth:`log_det` evaluates from :math:`x` in float64 (no need to keep :math:`y`).
    ``forward`` (pixels to served data) and ``inverse`` follow the
    :class:`~unflow_zoo.core.Transform` contract, so the map composes with a flow
    and is checked by :func:`unflow_zoo.testing.check_transform`.

    Args:
        levels: number of pixel levels :math:`L` (256 for 8-bit images, 17 for the 8x8 digits).
        logit_alpha: :math:`\alpha` of the logit transform, or None for the centred scaling.
            MAF used :math:`10^{-6}` on MNIST, RealNVP and Glow 0.05.

    References:
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017, sec. 4.1.
        Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
        NeurIPS 2017, appendix (MNIST preprocessing).
    """

    def __init__(self, levels: int, logit_alpha: float | None = None) -> None:
        super().__init__()
        if int(levels) != levels or levels < 2:
            raise ConfigError(f"levels must be an int >= 2 (256 for 8-bit pixels), got {levels}")
        if logit_alpha is not None and not 0.0 <= logit_alpha < 0.5:
            raise ConfigError(
                f"logit_alpha must be in [0, 0.5) (1e-6 as MAF, 0.05 as RealNVP) or None for no logit, "
                f"got {logit_alpha}"
            )
        self.levels = int(levels)
        self.logit_alpha = None if logit_alpha is None else float(logit_alpha)

    @property
    def uses_logit(self) -> bool:
        return self.logit_alpha is not None

    def extra_repr(self) -> str:
        return f"levels={self.levels}, logit_alpha={self.logit_alpha}"

    def _check_pixels(self, y: Tensor) -> None:
        if y.numel() and (bool((y < 0).any()) or bool((y > self.levels).any())):
            raise InputOutsideDomain(
                f"dequantised pixels must lie in [0, {self.levels}), got values in "
                f"[{float(y.min()):.4g}, {float(y.max()):.4g}]; pass raw pixel values plus U[0, 1) noise"
            )

    def to_served(self, y: Tensor) -> Tensor:
        """:math:`x = g(y)` alone, without the log-determinant; any shape."""
        self._check_pixels(y)
        if not self.uses_logit:
            return y / self.levels - 0.5
        s = self.logit_alpha + (1.0 - 2.0 * self.logit_alpha) * (y / self.levels)
        return torch.log(s) - torch.log1p(-s)

    def forward(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Dequantised pixels ``y`` ``(B, ...)`` to served data ``x`` and :math:`\\log|\\det \\partial x/\\partial y|`."""
        x = self.to_served(y)
        return x, self.log_det(x).to(y.dtype)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Served data ``x`` back to dequantised pixels ``y`` and :math:`\\log|\\det \\partial y/\\partial x|`."""
        if not self.uses_logit:
            y = (x + 0.5) * self.levels
        else:
            y = (torch.sigmoid(x) - self.logit_alpha) / (1.0 - 2.0 * self.logit_alpha) * self.levels
        return y, -self.log_det(x).to(x.dtype)

    def log_det(self, x: Tensor) -> Tensor:
        r""":math:`\log|\det \partial x / \partial y|` summed over each event of the served batch ``x``.

        Args:
            x: served data ``(B, *event_shape)``.

        Returns:
            shape ``(B,)``, in ``x``'s dtype (computed in float64, except on MPS which has none).
        """
        if x.ndim < 1:
            raise DataError(f"x must be a batch (B, *event_shape), got a scalar of shape {tuple(x.shape)}")
        dims = math.prod(x.shape[1:])
        constant = -dims * math.log(self.levels)
        if not self.uses_logit:
            return x.new_full((x.shape[0],), constant)
        wide = torch.float32 if x.device.type == "mps" else torch.float64
        x64 = x.to(wide)
        per_pixel = F.softplus(x64) + F.softplus(-x64)
        total = per_pixel.reshape(x.shape[0], -1).sum(dim=1) + constant + dims * math.log1p(-2.0 * self.logit_alpha)
        return total.to(x.dtype)
