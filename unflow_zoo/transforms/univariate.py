r"""Univariate monotone maps that take their parameters from outside.

A :class:`Univariate` is the elementwise half of an autoregressive or coupling layer:
given ``x`` of any shape ``S`` and parameters ``(*S, n_params)`` (computed by a
conditioner, a MADE or an MLP), it returns ``y`` and :math:`\log \partial y / \partial x`,
both of shape ``S``; :meth:`Univariate.inverse` undoes it with the same parameters.
The wrappers that make a D-dimensional transform out of one,
:class:`~unflow_zoo.transforms.autoregressive.MaskedAutoregressive` and
:class:`~unflow_zoo.transforms.coupling.Coupling`, are written once and work with every map:
the affine map here, the rational-quadratic spline
(:class:`~unflow_zoo.transforms.spline.RQSMap`) and the deep sigmoidal flow
(:class:`~unflow_zoo.transforms.sigmoidal.DSFMap`).

The layout follows zuko's ``MaskedAutoregressiveTransform(univariate=...)`` and nflows'
``AutoregressiveTransform._elementwise_forward``: the conditioner knows nothing about the
map but its number of parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unflow_zoo.errors import ConfigError
from unflow_zoo.transforms.affine import soft_clamp

__all__ = ["AffineMap", "InverseMap", "Univariate"]


class Univariate(nn.Module):
    """An elementwise increasing bijection of :math:`\\mathbb{R}` parametrised from outside.

    Subclasses set :attr:`n_params` and implement :meth:`forward` and :meth:`inverse`.
    A map whose inverse is numerical (bisection) sets :attr:`analytic_inverse` to False: the
    wrappers then run its inverse without autograd and check the round trip.
    """

    n_params: int = 0
    analytic_inverse: bool = True

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """``(y, log dy/dx)`` for ``x`` of shape ``S`` and ``params`` of shape ``(*S, n_params)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """``(x, log dx/dy)`` with the same parameters as :meth:`forward`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement inverse()")


class AffineMap(Univariate):
    r""":math:`y = x\, e^{s} + t` with parameters ``(t, s)``; :math:`s` soft-clamped to
    ``(-scale_clamp, scale_clamp)`` (:func:`~unflow_zoo.transforms.affine.soft_clamp`).

    Zero parameters give the identity, so a conditioner whose last layer starts at zero
    starts the layer at the identity.
    """

    n_params = 2

    def __init__(self, scale_clamp: float | None = 3.0) -> None:
        super().__init__()
        self.scale_clamp = scale_clamp

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., 0], soft_clamp(params[..., 1], self.scale_clamp)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, s = self._shift_log_scale(params)
        return x * torch.exp(s) + t, s

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, s = self._shift_log_scale(params)
        return (y - t) * torch.exp(-s), -s

    def extra_repr(self) -> str:
        return f"scale_clamp={self.scale_clamp}"


class InverseMap(Univariate):
    """A map with its two directions swapped: the parameters describe the sampling direction.

    MAF is the affine map written this way (:math:`x = z\\,e^{\\alpha} + \\mu` generates the
    data, so the density direction is :math:`z = (x - \\mu)\\,e^{-\\alpha}`), as in the paper.
    """

    def __init__(self, univariate: Univariate) -> None:
        super().__init__()
        if not univariate.analytic_inverse:
            # its forward would then be the numerical direction, run in every density evaluation
            raise ConfigError(f"InverseMap needs a map with an exact inverse, {type(univariate).__name__} has none")
        self.univariate = univariate
        self.n_params = univariate.n_params

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.univariate.inverse(x, params)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.univariate(y, params)
