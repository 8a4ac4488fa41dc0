r"""Deep sigmoidal flows (the transformer of neural autoregressive flows).

One deep-sigmoidal-flow (DSF) layer with ``n`` hidden units maps a scalar
:math:`x` through pseudo-parameters :math:`a \in \mathbb{R}^n_{>0}`,
:math:`b \in \mathbb{R}^n` and :math:`w` on the probability simplex:

.. math::

    u = \sum_{j=1}^n w_j\, \sigma(a_j x + b_j), \qquad
    \tilde u = (1 - \delta)\, u + \delta / 2, \qquad
    y = \sigma^{-1}(\tilde u) = \log \tilde u - \log(1 - \tilde u),

with :math:`a = \operatorname{softplus}(\cdot)` (shifted so a raw 0 gives
:math:`a = 1`) and :math:`w = \operatorname{softmax}(\cdot)`. It is strictly
increasing, and ``depth`` such layers, each with its own pseudo-parameters,
are composed. The log-derivative is computed entirely in log space:

.. math::

    \log \frac{dy}{dx} = \operatorname{logsumexp}_j\big(\log w_j + \log a_j
        + \log\sigma(p_j) + \log\sigma(-p_j)\big) + \log(1 - \delta)
        - \log \tilde u - \log(1 - \tilde u), \qquad p_j = a_j x + b_j,

where :math:`\log u` and :math:`\log(1 - u)` are themselves logsumexps of
:math:`\log w_j + \log\sigma(\pm p_j)` (using :math:`\sum_j w_j = 1`), so
nothing is computed as a difference of numbers close to 1.

**The** :math:`\delta` **mixing** (``delta = 1e-6`` by default, as in the NAF
reference code) keeps :math:`\tilde u` inside :math:`[\delta/2, 1 - \delta/2]`,
so the logit and its log-derivative stay finite even where the sigmoids
saturate. Its price: a DSF layer is a smooth strictly increasing bijection of
:math:`\mathbb{R}` onto the *bounded* open interval :math:`(-L, L)`,
:math:`L = \log\big((2 - \delta)/\delta\big) \approx 14.5` for
:math:`\delta = 10^{-6}` (not onto all of :math:`\mathbb{R}`). Under a standard
normal base the mass outside :math:`(-L, L)` is below :math:`10^{-46}`, so
densities are unaffected; :meth:`DSFAutoregressive.inverse` raises
:class:`~unflow_zoo.core.transform.InputOutsideDomain` for a point outside the
image.

**Inverse** by batched bisection, coordinate by coordinate in the
autoregressive order (the map is monotone in :math:`x_i` given
:math:`x_{<i}`): the bracket starts at :math:`[-1, 1]` and each end is pushed
out by doubling steps until it contains the root, then bisection runs until no
interval can be split further, i.e. :math:`x` to one ulp of the working
precision. The remaining inverse error is the rounding of :math:`y` divided by
:math:`dy/dx`; in float64 it stays below ``1e-6`` (usually ~1e-13) for
reasonable parameters, which is the tolerance the tests use. The residual
:math:`|f(x) - z|` is then checked (from the bisection's last evaluations, and
again from the forward pass that gives the inverse its log-determinant) against
:func:`~unflow_zoo.transforms.bisection.residual_tolerance`,
:math:`\sqrt{\varepsilon}(1 + |z|)`: a point that does not map back (too small
``max_bisection_iters``, or a target so close to the edge of the image that the
working precision cannot resolve it) raises :class:`~unflow_zoo.errors.InverseError`.

References:
    Huang, Krueger, Lacoste & Courville, "Neural Autoregressive Flows", ICML 2018,
    arXiv:1804.00779.
    Germain, Gregor, Murray & Larochelle, "MADE: Masked Autoencoder for
    Distribution Estimation", ICML 2015.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from unflow_zoo.core.transform import InputOutsideDomain, outside_rows, report_outside
from unflow_zoo.errors import ConfigError
from unflow_zoo.transforms.autoregressive import MaskedAutoregressive
from unflow_zoo.transforms.bisection import solve_increasing
from unflow_zoo.transforms.univariate import Univariate

__all__ = ["DSFAutoregressive", "DSFMap", "dsf_params_per_feature", "sigmoidal_flow"]

_A_SHIFT = math.log(math.expm1(1.0))  # softplus(0 + shift) = 1


def dsf_params_per_feature(units: int, depth: int = 1) -> int:
    """Pseudo-parameters per feature: ``a``, ``b`` and ``w`` for each of ``units`` units
    in each of ``depth`` layers, i.e. ``3 * units * depth``."""
    return 3 * units * depth


def sigmoidal_flow(x: Tensor, params: Tensor, delta: float = 1e-6) -> tuple[Tensor, Tensor]:
    r"""Elementwise deep sigmoidal flow :math:`y = f(x)` and :math:`\log f'(x)`.

    Args:
        x: inputs of any shape ``S``.
        params: unconstrained pseudo-parameters ``(*S, depth, 3, n)``: raw ``a``
            (softplus, 0 means 1), ``b`` and raw ``w`` (softmax) per layer.
        delta: the mixing :math:`\delta \in (0, 1)` that keeps the logit finite.

    Returns:
        ``(y, logabsdet)``, both of shape ``S``.

    Mixed precision: ``params`` are cast to the dtype of ``x`` and the flow runs with
    autocast disabled; the softplus, logsumexps and the logit cancel badly (or
    overflow, in float16) at low precision.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if params.ndim != x.ndim + 3 or params.shape[-2] != 3 or params.shape[: x.ndim] != x.shape:
        raise ValueError(
            f"params must have shape (*x.shape, depth, 3, n); got {tuple(params.shape)} for x {tuple(x.shape)}"
        )
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _dsf(x, params.to(x.dtype), delta)


def _dsf(x: Tensor, params: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """:func:`sigmoidal_flow` after its checks, in the dtype of ``x``."""
    log_keep, log_half_delta = math.log1p(-delta), math.log(delta / 2)
    h = x
    ladj = torch.zeros_like(x)
    for k in range(params.shape[-3]):
        a_raw, b, w_raw = params[..., k, 0, :], params[..., k, 1, :], params[..., k, 2, :]
        a = F.softplus(a_raw + _A_SHIFT)
        log_w = torch.log_softmax(w_raw, dim=-1)
        pre = a * h.unsqueeze(-1) + b
        ls_pos, ls_neg = F.logsigmoid(pre), F.logsigmoid(-pre)
        log_u = torch.logsumexp(log_w + ls_pos, dim=-1)
        log_1mu = torch.logsumexp(log_w + ls_neg, dim=-1)  # 1 - u = sum_j w_j sigma(-p_j)
        half = torch.full_like(log_u, log_half_delta)
        log_ut = torch.logaddexp(log_u + log_keep, half)
        log_1mut = torch.logaddexp(log_1mu + log_keep, half)
        log_du = torch.logsumexp(log_w + torch.log(a) + ls_pos + ls_neg, dim=-1)
        ladj = ladj + log_du + log_keep - log_ut - log_1mut
        h = log_ut - log_1mut
    return h, ladj


class DSFMap(Univariate):
    """The deep sigmoidal flow as a univariate map (see the module docstring): ``depth * 3 * units``
    pseudo-parameters per coordinate (:func:`dsf_params_per_feature`), a bisection inverse.

    Args:
        units: :math:`n`, sigmoid units per DSF layer.
        depth: number of stacked DSF layers.
        delta: the mixing :math:`\\delta` (bounds the logit).
        max_bisection_iters: cap on bisection steps.
    """

    analytic_inverse = False

    def __init__(self, units: int = 16, depth: int = 1, delta: float = 1e-6, max_bisection_iters: int = 400) -> None:
        super().__init__()
        if units < 1 or depth < 1:
            raise ConfigError(f"a deep sigmoidal flow needs units >= 1 and depth >= 1, got {units}, {depth}")
        if not 0 < delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {delta}")
        self.units, self.depth, self.delta = units, depth, float(delta)
        self.max_bisection_iters = int(max_bisection_iters)
        self.n_params = dsf_params_per_feature(units, depth)

    def _pseudo(self, params: Tensor) -> Tensor:
        return params.reshape(*params.shape[:-1], self.depth, 3, self.units)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return sigmoidal_flow(x, self._pseudo(params), self.delta)

    def image_bound(self, params: Tensor) -> Tensor:
        """Infimum and supremum of the map, :math:`f(\\mp\\infty)`, for pseudo-parameters
        ``(*S, depth, 3, n)``, stacked on a new first axis."""
        big = math.sqrt(torch.finfo(params.dtype).max)
        x = torch.full(params.shape[:-3], big, dtype=params.dtype, device=params.device)
        return torch.stack([sigmoidal_flow(-x, params, self.delta)[0], sigmoidal_flow(x, params, self.delta)[0]])

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        p = self._pseudo(params)
        lo, hi = self.image_bound(p)
        outside = (y <= lo) | (y >= hi) | ~torch.isfinite(y)
        already = outside_rows()
        if already is not None and outside.ndim >= 1 and already.shape[0] == outside.shape[0]:
            # rows a sampler already redraws: their earlier coordinates are NaN, and so are these parameters
            outside = outside | already.view(-1, *([1] * (outside.ndim - 1)))
        rows = outside if outside.ndim <= 1 else outside.flatten(1).any(1)
        collected = bool(outside.any()) and report_outside(rows)
        if collected:
            # a sampler redraws these rows: solve for an in-image stand-in, then mark them NaN
            y = torch.where(outside, (lo + hi) / 2, y)
            p = torch.where(outside.view(*outside.shape, 1, 1, 1), torch.zeros_like(p), p)
            lo, hi = self.image_bound(p)
            y = torch.where(outside, (lo + hi) / 2, y)
        elif outside.any():
            k = tuple(int(j) for j in outside.nonzero()[0])
            raise InputOutsideDomain(
                f"z = {float(y[k]):.6g} (at index {k} of the {tuple(y.shape)} targets) is outside the image "
                f"({float(lo[k]):.6g}, {float(hi[k]):.6g}) of the sigmoidal flow: with delta={self.delta} each "
                "DSF layer maps R onto a bounded interval"
            )
        x = solve_increasing(
            lambda xi: sigmoidal_flow(xi, p, self.delta)[0],
            y,
            max_iters=self.max_bisection_iters,
            error="could not bracket the inverse of the sigmoidal flow",
            owner=type(self).__name__,
        )
        if collected:
            x = torch.where(outside, torch.full_like(x, math.nan), x)
        return x, -sigmoidal_flow(x, p, self.delta)[1]

    def extra_repr(self) -> str:
        return f"units={self.units}, depth={self.depth}, delta={self.delta}"


class DSFAutoregressive(MaskedAutoregressive):
    r"""Autoregressive deep sigmoidal flow layer (NAF-DSF).

    Each coordinate goes through its own deep sigmoidal flow (see the module
    docstring) whose pseudo-parameters a MADE computes from the preceding
    coordinates:

    .. math:: z_i = f_{\theta_i(x_{<i})}(x_i), \qquad
              f(x) = \sigma^{-1}\Big(\textstyle\sum_j w_j \sigma(a_j x + b_j)\Big)
              \ (\text{composed ``depth`` times}), \qquad
              \log|\det J| = \textstyle\sum_i \log f'_{\theta_i}(x_i).

    The density direction (data -> noise) is one MADE pass; the inverse solves
    one coordinate at a time in the autoregressive order by bisection (``D``
    MADE passes). The MADE output layer keeps its random initialisation: with a
    zero one all ``units`` sigmoids would be identical and get identical
    gradients forever. :class:`~unflow_zoo.transforms.autoregressive.MaskedAutoregressive`
    with :class:`DSFMap`.

    Args:
        features: :math:`D`.
        hidden: hidden widths of the MADE.
        units: :math:`n`, sigmoid units per DSF layer.
        depth: number of stacked DSF layers per coordinate.
        act: activation of the MADE.
        context_features: size of an optional conditioning vector.
        order: autoregressive order (a permutation of ``range(D)``; default identity).
        delta: the mixing :math:`\delta` (bounds the logit, see the module docstring).
        max_bisection_iters: cap on bisection steps per coordinate.

    References:
        Huang, Krueger, Lacoste & Courville, "Neural Autoregressive Flows", ICML 2018.
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        units: int = 16,
        depth: int = 1,
        act: str = "relu",
        context_features: int = 0,
        order: Sequence[int] | None = None,
        delta: float = 1e-6,
        max_bisection_iters: int = 400,
    ) -> None:
        if features < 1:
            raise ConfigError(f"DSFAutoregressive needs features >= 1, got {features}")
        dsf = DSFMap(units, depth, delta, max_bisection_iters)
        super().__init__(features, dsf, hidden, act, context_features, order, zero_init_last=False)
        self.units, self.depth, self.delta = units, depth, float(delta)
        self.max_bisection_iters = int(max_bisection_iters)

    def extra_repr(self) -> str:
        return f"features={self.features}, units={self.units}, depth={self.depth}, delta={self.delta}"
