r"""Monotone rational-quadratic splines (neural spline flows).

A rational-quadratic spline (RQS) with ``K`` bins maps :math:`[-B, B]` onto
itself through ``K + 1`` knots :math:`(x^{(k)}, y^{(k)})` with positive slopes
:math:`\delta^{(k)}` at the knots. In bin :math:`k`, with
:math:`w_k = x^{(k+1)} - x^{(k)}`, :math:`h_k = y^{(k+1)} - y^{(k)}`,
:math:`s_k = h_k / w_k` and :math:`\xi = (x - x^{(k)}) / w_k \in [0, 1]`,

.. math::

    g(x) = y^{(k)} + \frac{h_k \big[s_k \xi^2 + \delta^{(k)} \xi (1 - \xi)\big]}
                          {s_k + \big[\delta^{(k+1)} + \delta^{(k)} - 2 s_k\big] \xi (1 - \xi)},

    g'(x) = \frac{s_k^2 \big[\delta^{(k+1)} \xi^2 + 2 s_k \xi (1 - \xi) + \delta^{(k)} (1 - \xi)^2\big]}
                 {\big(s_k + \big[\delta^{(k+1)} + \delta^{(k)} - 2 s_k\big] \xi (1 - \xi)\big)^2}.

Outside :math:`[-B, B]` the map is the identity ("linear tails"); the slopes
at :math:`\pm B` are fixed to 1 so that :math:`g` is :math:`C^1` everywhere.
The inverse solves a quadratic in :math:`\xi` in closed form, so it is exact
up to floating point.

References:
    Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019,
    arXiv:1906.04032.
    Gregory & Delbourgo, "Piecewise rational quadratic interpolation to monotonic
    data", IMA Journal of Numerical Analysis, 1982.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from unflow_zoo.errors import ConfigError
from unflow_zoo.transforms.autoregressive import MaskedAutoregressive
from unflow_zoo.transforms.coupling import Coupling
from unflow_zoo.transforms.univariate import Univariate

__all__ = [
    "RQSAutoregressive",
    "RQSCoupling",
    "RQSMap",
    "rational_quadratic_spline",
    "spline_knots",
    "spline_params_per_feature",
]


def spline_params_per_feature(bins: int) -> int:
    """Number of unconstrained numbers a conditioner outputs per feature: ``K`` widths,
    ``K`` heights and ``K - 1`` interior derivatives."""
    return 3 * bins - 1


def spline_knots(unnormalized: Tensor, tail_bound: float, min_size: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Knot positions and bin sizes from unnormalised bin sizes ``(..., K)``.

    Softmax, then mixed with the uniform partition so that every bin is at least
    ``min_size`` of the interval, then scaled to ``[-tail_bound, tail_bound]``.
    Returns ``(knots (..., K+1), sizes (..., K))``; the end knots are exactly
    ``-tail_bound`` and ``tail_bound`` and the sizes are the knot differences, so
    the two always agree.
    """
    k = unnormalized.shape[-1]
    if min_size * k >= 1:
        raise ValueError(f"min bin size {min_size} is too large for {k} bins (need min_size * bins < 1)")
    frac = min_size + (1 - min_size * k) * torch.softmax(unnormalized, dim=-1)
    cum = F.pad(torch.cumsum(frac, dim=-1), (1, 0), value=0.0)
    knots = (2 * tail_bound) * cum - tail_bound
    # pin the ends: the cumulative sum may end a few ulps away from 1
    knots = torch.cat(
        [torch.full_like(knots[..., :1], -tail_bound), knots[..., 1:-1], torch.full_like(knots[..., :1], tail_bound)],
        dim=-1,
    )
    return knots, knots[..., 1:] - knots[..., :-1]


def _derivatives(unnormalized: Tensor, min_derivative: float) -> Tensor:
    """Slopes at all ``K + 1`` knots from the ``K - 1`` interior ones: ``min_derivative +
    softplus(u + c)`` with ``c`` chosen so that ``u = 0`` gives slope 1 (a zero conditioner
    output is the identity), and slope exactly 1 at both ends (smooth linear tails)."""
    if not 0 <= min_derivative < 1:
        raise ValueError(f"min_derivative must be in [0, 1), got {min_derivative}")
    shift = math.log(math.expm1(1 - min_derivative))
    inner = min_derivative + F.softplus(unnormalized + shift)
    return F.pad(inner, (1, 1), value=1.0)


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    return t.gather(-1, idx).squeeze(-1)


def rational_quadratic_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    tail_bound: float = 4.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    r"""Elementwise monotone rational-quadratic spline on :math:`[-B, B]`, identity outside.

    Args:
        x: inputs of any shape ``S`` (the spline's input, or its output when ``inverse``).
        widths: unnormalised bin widths ``(*S, K)`` (softmax-normalised here).
        heights: unnormalised bin heights ``(*S, K)``.
        derivatives: unnormalised slopes at the ``K - 1`` interior knots ``(*S, K-1)``;
            0 means slope 1, the slopes at :math:`\pm B` are 1.
        inverse: evaluate :math:`g^{-1}` instead of :math:`g`.
        tail_bound: :math:`B`; the spline acts on :math:`[-B, B]` (both ends included).
        min_bin_width: lower bound of a bin's width, so that the spline stays away from
            degenerate (non-invertible in floating point) shapes.
        min_bin_height: lower bound of a bin's height, likewise.
        min_derivative: lower bound of the slope at a knot, likewise.

    Returns:
        ``(outputs, logabsdet)``, both of shape ``S``: :math:`g(x)` and
        :math:`\log g'(x)` (or :math:`g^{-1}(y)` and :math:`-\log g'(g^{-1}(y))`).
        Points outside :math:`[-B, B]` pass through with log-det 0.

    The bin is found with ``searchsorted`` on the knots, the last knot nudged up so
    that :math:`x = B` falls in the last bin; the inverse uses the root
    :math:`\xi = 2c / (-b - \sqrt{b^2 - 4ac})`, which does not cancel catastrophically,
    with the discriminant clamped at 0.

    Mixed precision: the parameters are cast to the dtype of ``x`` and the spline runs
    with autocast disabled, so that under ``bf16-mixed``/``16-mixed`` the knots (a
    cumulative sum of softmax widths), the ``searchsorted`` bin search, the root of the
    inverse and the log-derivative are all float32: in bfloat16 the knots of 8 bins on
    ``[-4, 4]`` are only good to ~0.02, and a point can land in the wrong bin.
    """
    k = widths.shape[-1]
    if k < 1 or heights.shape[-1] != k or derivatives.shape[-1] != k - 1:
        raise ValueError(
            f"a spline with K bins needs K widths, K heights and K-1 derivatives; got "
            f"{widths.shape[-1]}, {heights.shape[-1]} and {derivatives.shape[-1]}"
        )
    if not tail_bound > 0:
        raise ValueError(f"tail_bound must be positive, got {tail_bound}")
    dtype = x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _rqs(
            x,
            widths.to(dtype),
            heights.to(dtype),
            derivatives.to(dtype),
            inverse,
            tail_bound,
            min_bin_width,
            min_bin_height,
            min_derivative,
        )


def _rqs(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool,
    tail_bound: float,
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
) -> tuple[Tensor, Tensor]:
    """:func:`rational_quadratic_spline` after its checks, all in the dtype of ``x``."""
    k = widths.shape[-1]
    shape = x.shape
    if widths.shape[:-1] != shape:
        widths = widths.expand(*shape, k)
        heights = heights.expand(*shape, k)
        derivatives = derivatives.expand(*shape, k - 1)

    inside = (x >= -tail_bound) & (x <= tail_bound)
    # Evaluate the spline on the clamped input everywhere and select afterwards: finite
    # everywhere, so torch.where's unused branch cannot poison the gradients with NaN.
    xc = x.clamp(-tail_bound, tail_bound)

    cumw, w = spline_knots(widths, tail_bound, min_bin_width)
    cumh, h = spline_knots(heights, tail_bound, min_bin_height)
    d = _derivatives(derivatives, min_derivative)

    search = (cumh if inverse else cumw).contiguous()
    eps = torch.finfo(x.dtype).eps * tail_bound * 4
    search = torch.cat([search[..., :-1], search[..., -1:] + eps], dim=-1)
    idx = torch.searchsorted(search, xc.unsqueeze(-1).contiguous(), right=True) - 1
    idx = idx.clamp(0, k - 1)

    x_k, w_k = _gather(cumw, idx), _gather(w, idx)
    y_k, h_k = _gather(cumh, idx), _gather(h, idx)
    d_k, d_k1 = _gather(d, idx), _gather(d[..., 1:], idx)
    s_k = h_k / w_k
    dsum = d_k1 + d_k - 2 * s_k

    if not inverse:
        xi = ((xc - x_k) / w_k).clamp(0, 1)
    else:
        dy = xc - y_k
        a = h_k * (s_k - d_k) + dy * dsum
        b = h_k * d_k - dy * dsum
        c = -s_k * dy
        disc = (b * b - 4 * a * c).clamp(min=0)
        # -b - sqrt(disc) < 0 on the whole bin (b > 0 where c ~ 0), so no cancellation;
        # the naive (-b + sqrt(disc)) / 2a cancels where a ~ 0 (nearly linear bins).
        xi = ((2 * c) / (-b - torch.sqrt(disc))).clamp(0, 1)

    omx = xi * (1 - xi)
    denom = s_k + dsum * omx
    dnum = s_k * s_k * (d_k1 * xi * xi + 2 * s_k * omx + d_k * (1 - xi) * (1 - xi))
    ladj = torch.log(dnum) - 2 * torch.log(denom)

    if not inverse:
        out = y_k + h_k * (s_k * xi * xi + d_k * omx) / denom
    else:
        out = x_k + xi * w_k
        ladj = -ladj
    out = torch.where(inside, out, x)
    ladj = torch.where(inside, ladj, torch.zeros_like(ladj))
    return out, ladj


def _split(p: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    return p[..., :bins], p[..., bins : 2 * bins], p[..., 2 * bins :]


class RQSMap(Univariate):
    """The rational-quadratic spline as a univariate map: ``3K - 1`` parameters per coordinate
    (:func:`spline_params_per_feature`), identity outside :math:`[-B, B]`, exact inverse.

    Args:
        bins: :math:`K`, the number of spline bins.
        tail_bound: :math:`B`.
    """

    def __init__(self, bins: int = 8, tail_bound: float = 4.0) -> None:
        super().__init__()
        if bins < 1 or not tail_bound > 0:
            raise ConfigError(f"a spline needs bins >= 1 and tail_bound > 0, got {bins}, {tail_bound}")
        self.bins, self.tail_bound = bins, float(tail_bound)
        self.n_params = spline_params_per_feature(bins)

    def _spline(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        w, h, d = _split(params, self.bins)
        return rational_quadratic_spline(x, w, h, d, inverse=inverse, tail_bound=self.tail_bound)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(y, params, inverse=True)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, tail_bound={self.tail_bound}"


class RQSCoupling(Coupling):
    r"""Rational-quadratic spline coupling layer on ``(B, D)`` batches.

    A binary mask splits :math:`x` into a conditioning part :math:`x_A` and a
    transformed part :math:`x_B`; each coordinate of :math:`x_B` goes through
    its own monotone RQS with ``bins`` bins on :math:`[-B, B]` (identity outside),
    whose :math:`3K - 1` parameters an MLP computes from :math:`x_A` (and the context):

    .. math:: y_A = x_A, \qquad y_{B,i} = g_{\theta_i(x_A)}(x_{B,i}),
              \qquad \log|\det J| = \textstyle\sum_i \log g'_{\theta_i}(x_{B,i}).

    The MLP's last layer starts at zero, which makes the layer the identity at
    initialisation. The inverse is exact (closed-form quadratic root).
    :class:`~unflow_zoo.transforms.coupling.Coupling` with :class:`RQSMap`.

    Args:
        mask: booleans, ``True`` for the conditioning features (some but not all).
        hidden: hidden widths of the conditioner.
        bins: :math:`K`, the number of spline bins.
        tail_bound: :math:`B`.
        act: activation of the conditioner.
        context_features: size of an optional conditioning vector.

    References:
        Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019.
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self,
        mask: Tensor | Sequence[bool],
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        tail_bound: float = 4.0,
        act: str = "relu",
        context_features: int = 0,
    ) -> None:
        super().__init__(mask, RQSMap(bins, tail_bound), hidden, act, context_features)
        self.bins, self.tail_bound = bins, float(tail_bound)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bins={self.bins}, tail_bound={self.tail_bound}"


class RQSAutoregressive(MaskedAutoregressive):
    r"""Autoregressive rational-quadratic spline layer (RQ-NSF (AR)).

    Each coordinate goes through its own monotone RQS whose :math:`3K - 1`
    parameters a MADE computes from the preceding coordinates (and the context):

    .. math:: z_i = g_{\theta_i(x_{<i})}(x_i), \qquad
              \log|\det J| = \textstyle\sum_i \log g'_{\theta_i(x_{<i})}(x_i).

    The density direction (data -> noise) is one MADE pass; the inverse
    (sampling) needs ``D`` sequential passes, each exact up to floating point.
    The MADE's output layer starts at zero: the identity at initialisation.
    :class:`~unflow_zoo.transforms.autoregressive.MaskedAutoregressive` with :class:`RQSMap`.

    Args:
        features: :math:`D`.
        hidden: hidden widths of the MADE.
        bins: :math:`K`, the number of spline bins.
        tail_bound: :math:`B`; identity outside :math:`[-B, B]`.
        act: activation of the MADE.
        context_features: size of an optional conditioning vector.
        order: autoregressive order (a permutation of ``range(D)``; default identity).

    References:
        Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019.
        Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density
        Estimation", NeurIPS 2017.
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        tail_bound: float = 4.0,
        act: str = "relu",
        context_features: int = 0,
        order: Sequence[int] | None = None,
    ) -> None:
        if features < 1:
            raise ConfigError(f"RQSAutoregressive needs features >= 1, got {features}")
        super().__init__(features, RQSMap(bins, tail_bound), hidden, act, context_features, order)
        self.bins, self.tail_bound = bins, float(tail_bound)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bins={self.bins}, tail_bound={self.tail_bound}"
