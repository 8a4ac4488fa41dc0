r"""Masked autoregressive transforms: one wrapper for every univariate map, one inverse loop.

:class:`MaskedAutoregressive` turns a :class:`~unflow_zoo.transforms.univariate.Univariate`
map into a D-dimensional transform whose coordinate :math:`i` is the map with parameters
:math:`\theta_i(x_{<i}, c)` from a MADE (context concatenated into every hidden layer):

.. math:: z_i = g(x_i;\ \theta_i(x_{<i}, c)), \qquad
          \log|\det J| = \textstyle\sum_i \log g'(x_i;\ \theta_i).

The density direction is one MADE pass; the inverse needs ``D`` passes in the
autoregressive order (:func:`autoregressive_inverse`, the package's one copy of that
loop, also used by the constrained and unconstrained monotone transforms).

MAF is the affine map in its sampling parametrisation
(:class:`MaskedAffineAutoregressive`); NSF (AR) and NAF are the spline and sigmoidal maps
(:class:`~unflow_zoo.transforms.spline.RQSAutoregressive`,
:class:`~unflow_zoo.transforms.sigmoidal.DSFAutoregressive`).

References:
    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
    NeurIPS 2017.
    Germain, Gregor, Murray & Larochelle, "MADE: Masked Autoencoder for Distribution
    Estimation", ICML 2015.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from unflow_zoo.core.transform import Transform, check_context, check_features, outside_rows
from unflow_zoo.nn.made import MADE
from unflow_zoo.transforms.bisection import check_round_trip
from unflow_zoo.transforms.univariate import AffineMap, InverseMap, Univariate

__all__ = ["MaskedAffineAutoregressive", "MaskedAutoregressive", "autoregressive_inverse"]


def autoregressive_inverse(y: Tensor, order: Iterable[int], solve: Callable[[Tensor, int], Tensor]) -> Tensor:
    """Invert an autoregressive map one coordinate at a time.

    ``solve(x, i)`` returns coordinate ``i`` of the preimage, ``(B,)``, given ``x`` whose
    coordinates before ``i`` in ``order`` are already exact (the others are zero); the
    result is ``x`` with every coordinate filled in. Each step writes out of place, so the
    loop is differentiable wherever ``solve`` is (an analytic inverse: ``rsample``).
    """
    x = torch.zeros_like(y)
    for i in order:
        x = x.index_copy(1, torch.tensor([i], device=y.device), solve(x, i).unsqueeze(1).to(x.dtype))
    return x


class MaskedAutoregressive(Transform):
    """A univariate map made D-dimensional by a MADE conditioner (see the module docstring).

    Args:
        features: :math:`D`.
        univariate: the elementwise map; the MADE outputs its ``n_params`` per feature.
        hidden: hidden widths of the MADE.
        act: activation of the MADE.
        context_features: size of the conditioning vector :math:`c` (0: unconditional).
        order: autoregressive order, a permutation of ``range(D)`` (default identity).
        zero_init_last: start the MADE's output at zero (the identity for maps whose zero
            parameters are the identity: affine, spline).

    Raises:
        ConfigError: an order that is not a permutation (a ``ValueError``).
        DataError: at call time, a batch or context of the wrong shape.
    """

    def __init__(
        self,
        features: int,
        univariate: Univariate,
        hidden: Sequence[int] = (64, 64),
        act: str = "relu",
        context_features: int = 0,
        order: Sequence[int] | None = None,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        self.features, self.context_features = features, context_features
        self.univariate = univariate
        self.made = MADE(features, univariate.n_params, hidden, context_features, order, act, zero_init_last)

    @property
    def order(self) -> Tensor:
        return self.made.order

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # checkpoints from before the wrapper stored the order as a buffer; the MADE's degrees hold it
        state_dict.pop(prefix + "order", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _checked(self, x: Tensor, context: Tensor | None) -> None:
        check_features(x, self.features, type(self).__name__)
        check_context(context, x.shape[0], self.context_features, type(self).__name__)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._checked(x, context)
        z, log_dz = self.univariate(x, self.made(x, context))
        return z, log_dz.sum(dim=1)

    def _solve_all(self, z: Tensor, context: Tensor | None) -> Tensor:
        self._checked(z, context)
        exact = self.univariate.analytic_inverse

        terms = self.made.context_terms(context)  # the same for all D passes

        def solve(x: Tensor, i: int) -> Tensor:
            # x_{<i} is exact, so the parameters of coordinate i are too
            return self.univariate.inverse(z[:, i], self.made(x, context, terms)[:, i])[0]

        with torch.set_grad_enabled(torch.is_grad_enabled() and exact):
            return autoregressive_inverse(z, self.order.tolist(), solve)

    def _final_pass(self, x: Tensor, z: Tensor, context: Tensor | None) -> Tensor:
        # one more MADE pass gives every coordinate's parameters at the exact x: the log-determinant,
        # and for a numerical inverse the residual of the whole point
        z_back, log_dz = self.univariate(x, self.made(x, context))
        if not self.univariate.analytic_inverse:
            rejected = outside_rows()  # rows a sampler will redraw (outside a bounded image) have no preimage
            keep = slice(None) if rejected is None or rejected.shape[0] != z.shape[0] else ~rejected
            check_round_trip(z_back[keep], z[keep], owner=type(self).__name__)
        return -log_dz.sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._solve_all(z, context)
        return x, self._final_pass(x, z, context)

    def invert(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """The inverse without the log-determinant: ``D`` MADE passes instead of ``D + 1`` for an
        analytic map (the last pass is only for the log-determinant); a numerical inverse still
        makes it, to check its residual."""
        x = self._solve_all(z, context)
        if not self.univariate.analytic_inverse:
            self._final_pass(x, z, context)
        return x

    def extra_repr(self) -> str:
        ctx = f", context_features={self.context_features}" if self.context_features else ""
        return f"features={self.features}{ctx}"


class MaskedAffineAutoregressive(MaskedAutoregressive):
    r"""MAF layer: :math:`z_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}`.

    The density direction (data -> noise) is one MADE pass;
    :math:`\log|\det J| = -\sum_i \alpha_i`. The inverse (sampling) needs
    ``D`` sequential passes, :math:`x_i = z_i e^{\alpha_i} + \mu_i`, exact
    up to floating point (and differentiable). :math:`\alpha` is soft-clamped to
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
        # the MADE's (mu, alpha) parametrise the sampling direction x = z e^alpha + mu, as in the paper
        super().__init__(features, InverseMap(AffineMap(scale_clamp)), hidden, act, context_features, order)
        self.scale_clamp = scale_clamp
