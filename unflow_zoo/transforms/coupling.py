"""Coupling layers: one wrapper for every univariate map, and RealNVP's affine coupling.

:class:`Coupling` splits :math:`x` with a binary mask into a conditioning part :math:`x_A`
and a transformed part :math:`x_B`; each coordinate of :math:`x_B` goes through the
univariate map (:mod:`unflow_zoo.transforms.univariate`) with parameters an MLP computes
from :math:`x_A` and the context. Both directions are one MLP pass.

:class:`AffineCoupling` is the affine case written for speed: its conditioner outputs a
scale and shift for every feature and a float mask multiplies the conditioning half away,
because boolean gathers and scatters make the backward pass of such a cheap map several
times slower than the map itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unflow_zoo.core.transform import Transform, check_context, check_features
from unflow_zoo.errors import ConfigError
from unflow_zoo.nn.mlp import MLP
from unflow_zoo.transforms.affine import soft_clamp
from unflow_zoo.transforms.univariate import Univariate

__all__ = ["AffineCoupling", "Coupling", "alternating_mask", "coupling_mask"]


def alternating_mask(features: int, parity: int) -> Tensor:
    """Boolean mask selecting features ``i`` with ``i % 2 == parity`` (the conditioning half)."""
    return torch.arange(features) % 2 == parity


def coupling_mask(mask: Tensor | Sequence[bool], owner: str) -> Tensor:
    """``mask`` as a boolean tensor; a :class:`~unflow_zoo.errors.ConfigError` unless it selects
    some but not all features (a coupling layer needs D >= 2)."""
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.ndim != 1 or not mask.any() or mask.all():
        raise ConfigError(
            f"{owner}: coupling mask must select some but not all features, got {mask.tolist()}; "
            "a coupling layer needs D >= 2 features (use an autoregressive layer for D = 1)"
        )
    return mask


class Coupling(Transform):
    r"""A univariate map made D-dimensional by coupling (see the module docstring):

    .. math:: y_A = x_A, \qquad y_{B,i} = g(x_{B,i};\ \theta_i(x_A, c)),
              \qquad \log|\det J| = \textstyle\sum_i \log g'(x_{B,i};\ \theta_i).

    The MLP's last layer starts at zero: the identity at initialisation for maps whose
    zero parameters are the identity. The inverse is as exact as the map's.

    Args:
        mask: booleans, ``True`` for the conditioning features (some but not all).
        univariate: the elementwise map; the MLP outputs its ``n_params`` per transformed feature.
        hidden: hidden widths of the conditioner.
        act: activation of the conditioner.
        context_features: size of the conditioning vector :math:`c` (0: unconditional).

    Raises:
        ConfigError: a mask that selects none or all features (a ``ValueError``).
        DataError: at call time, a batch or context of the wrong shape.
    """

    mask: Tensor
    free_idx: Tensor

    def __init__(
        self,
        mask: Tensor | Sequence[bool],
        univariate: Univariate,
        hidden: Sequence[int] = (64, 64),
        act: str = "relu",
        context_features: int = 0,
    ) -> None:
        super().__init__()
        mask = coupling_mask(mask, type(self).__name__)
        self.features, self.context_features = len(mask), context_features
        self.univariate = univariate
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.register_buffer("free_idx", torch.nonzero(~mask).flatten())
        self.n_params = univariate.n_params
        self.net = MLP(
            self.features + context_features, len(self.free_idx) * self.n_params, hidden, act, zero_init_last=True
        )

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        check_features(x, self.features, type(self).__name__)
        check_context(context, x.shape[0], self.context_features, type(self).__name__)
        h = x * self.mask
        if context is not None:
            h = torch.cat([h, context], dim=1)
        params = self.net(h).reshape(x.shape[0], len(self.free_idx), self.n_params)
        x_free = x.index_select(1, self.free_idx)
        y_free, ladj = (self.univariate.inverse if inverse else self.univariate)(x_free, params)
        return x.index_copy(1, self.free_idx, y_free), ladj.sum(dim=1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(y, context, inverse=True)

    def extra_repr(self) -> str:
        ctx = f", context_features={self.context_features}" if self.context_features else ""
        return f"features={self.features}{ctx}"


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
        mask = coupling_mask(mask, type(self).__name__)
        # A float mask multiplies instead of indexing: boolean gathers and scatters make
        # the backward pass several times slower than a couple of elementwise products.
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.features, self.context_features = len(mask), context_features
        self.scale_clamp = scale_clamp
        self.net = MLP(self.features + context_features, 2 * self.features, hidden, act, zero_init_last=True)

    def _params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x * self.mask
        if context is not None:
            h = torch.cat([h, context], dim=1)
        s, t = self.net(h).chunk(2, dim=1)
        free = 1 - self.mask
        return soft_clamp(s, self.scale_clamp) * free, t * free

    def _check(self, x: Tensor, context: Tensor | None) -> None:
        check_features(x, self.features, type(self).__name__)
        check_context(context, x.shape[0], self.context_features, type(self).__name__)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        s, t = self._params(x, context)
        return x * torch.exp(s) + t, s.sum(dim=1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, context)
        s, t = self._params(y, context)
        return (y - t) * torch.exp(-s), -s.sum(dim=1)
