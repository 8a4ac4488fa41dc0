r"""Constrained monotone maps: one-hidden-layer tanh networks with positive weights.

The seed paper's *constrained* normalizing flow (Shah, Deshpande & Goyal 2022)
in one dimension is

.. math::

    f(x) = \sum_{r=1}^m a_r\, c \tanh(w_r x + b_r), \qquad a_r, w_r \ge \epsilon,

strictly increasing because every path from ``x`` to ``f(x)`` has a positive
weight, with

.. math::

    f'(x) = c \sum_r a_r w_r (1 - \tanh^2(w_r x + b_r)).

For ``D > 1`` the same network is made block autoregressive (B-NAF, De Cao et
al. 2019): the hidden layer has ``D`` blocks of ``m`` units, block ``i`` sees
``x_i`` through positive weights and ``x_{<i}`` through free weights, and output
``y_i`` reads block ``i`` through positive weights and blocks ``j < i`` through
free weights. Hence ``y_i`` depends on ``x_{\le i}`` only and increases in
``x_i``; the Jacobian is lower triangular and
:math:`\log|\det J| = \sum_i \log \partial y_i / \partial x_i` needs only the
diagonal blocks. More hidden layers (``depth > 1``) give B-NAF.

Naming: in this package "CNF" is never used for these maps; it means
*continuous* flows elsewhere. These are ``constrained`` flows.

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (official code:
    github.com/kulinshah98/overparam-NFs, folder CNF/).
    De Cao, Titov & Aziz, "Block Neural Autoregressive Flow", UAI 2019,
    arXiv:1904.04676.
    Huang, Krueger, Lacoste & Courville, "Neural Autoregressive Flows", ICML 2018.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unflow_zoo.core.transform import InputOutsideDomain, Transform, check_context, check_features
from unflow_zoo.transforms.autoregressive import autoregressive_inverse
from unflow_zoo.transforms.bisection import check_round_trip, solve_increasing
from unflow_zoo.transforms.tanh_sum import tanh_sum

__all__ = [
    "INITS",
    "PARAMETER_GROUPS",
    "POSITIVITY",
    "ConstrainedMonotone",
    "ConstrainedMonotone1d",
    "log_sech2",
]

Positivity = Literal["clamp", "softplus", "exp", "square"]
Init = Literal["standard-normal", "sqrt-m"]
POSITIVITY: tuple[str, ...] = ("clamp", "softplus", "exp", "square")
INITS: tuple[str, ...] = ("standard-normal", "sqrt-m")
#: Names of the parameter groups: hidden weights, hidden biases, output weights.
PARAMETER_GROUPS: tuple[str, ...] = ("W", "b", "a")


def log_sech2(z: Tensor) -> Tensor:
    r""":math:`\log(1 - \tanh^2 z) = 2(\log 2 - z - \operatorname{softplus}(-2z))`.

    Exact rewrite of :math:`\log(4 e^{-2z} / (1 + e^{-2z})^2)`; finite for every
    finite ``z`` where ``1 - tanh(z)**2`` underflows to 0 beyond ``|z| ~ 9``
    (float32) or ``|z| ~ 19`` (float64).
    """
    return 2.0 * (math.log(2.0) - z - F.softplus(-2.0 * z))


def _log_matmul_exp(weight: Tensor, log_v: Tensor) -> Tensor:
    r"""Blockwise :math:`\log \sum_k W_{ijk} e^{v_{bik}}` for positive ``W`` ``(D, m_out, m_in)``
    and ``log_v`` ``(B, D, m_in)``; returns ``(B, D, m_out)``.

    Same value as B-NAF's ``logsumexp(log W + v)`` but without its
    ``(B, D, m_out, m_in)`` intermediate: shifting by the row maximum keeps the
    largest term at ``exp(0) = 1``, so with ``W >= eps > 0`` the sum cannot
    underflow to 0.
    """
    shift = log_v.amax(dim=-1, keepdim=True).detach()  # the shift cancels exactly; no gradient needed
    s = torch.einsum("ijk,bik->bij", weight, torch.exp(log_v - shift))
    return torch.log(s) + shift


class ConstrainedMonotone(Transform):
    r"""Block-autoregressive constrained monotone map :math:`\mathbb R^D \to \mathbb R^D`
    (the seed paper's constrained flow; for ``D = 1`` exactly its 1-D model).

    With hidden width ``m`` per feature, ``depth`` hidden layers and scale ``c``,

    .. math::

        h^{(0)} = x, \quad
        h^{(l)} = c \tanh(W^{(l)} h^{(l-1)} + b^{(l)}), \quad
        y = A\, h^{(L)} + \alpha x,

    where every weight matrix is block lower triangular in ``D`` blocks (block
    ``i`` of a hidden layer has ``m`` units): diagonal blocks are positive
    (:math:`\ge \epsilon`), strictly lower blocks free, upper blocks zero. For
    ``depth = 1``, ``D = 1`` and :math:`\alpha = 0` this is
    :math:`f(x) = \sum_r a_r c \tanh(w_r x + b_r)`. The log-derivative is
    accumulated in log space through the diagonal blocks,

    .. math::

        \log \frac{\partial h^{(l)}_{i,j}}{\partial x_i}
        = \log c + \log(1 - \tanh^2 z^{(l)}_{i,j})
          + \operatorname{logsumexp}_k\!\Big(\log W^{(l)}_{i,jk}
          + \log \frac{\partial h^{(l-1)}_{i,k}}{\partial x_i}\Big),

    so it stays finite where :math:`f'` itself underflows (far tails).

    **The linear term and normalisation.** A tanh network saturates: without
    :math:`\alpha x` the image of coordinate ``i`` is a bounded interval, so
    ``f`` is not onto :math:`\mathbb R^D`, ``exp(log_prob)`` of a standard
    normal base integrates to :math:`P_Z(f(\mathbb R^D)) < 1` (the paper's
    model is sub-normalised by exactly that mass) and sampling can ask for
    points that have no preimage. ``linear_term = alpha > 0`` (a fixed,
    non-trained skip connection) makes each coordinate map onto
    :math:`\mathbb R` with :math:`\partial y_i / \partial x_i \ge \alpha`, so the
    density integrates to 1 and every base sample has a preimage. It adds
    ``alpha`` to every slope: a small change where the network's slope is of
    order 1 (the bulk of standardised data; on a two-Gaussian 1-D mixture the
    trained NLL with ``alpha = 0.01`` and ``alpha = 0`` agree within 0.005
    nats), dominant only where the tanh units have saturated, where it carries
    the base mass beyond the network's range out to far tails (at
    ``|x| ~ (|z| - sup|f_net|) / alpha``). ``linear_term = 0`` is the
    paper-exact model: log-densities are those of the paper, and
    :meth:`inverse` raises :class:`~unflow_zoo.core.InputOutsideDomain` for
    points outside the image.

    **Positivity** of the diagonal blocks (``w``) and of ``a``:

    - ``"clamp"``: projected SGD, the paper's "clamp-zero". The raw parameters
      *are* the weights; :meth:`project_` (which ``FlowModule`` calls after every
      optimizer step) clamps them to ``>= eps``. The forward pass also reads
      them through ``clamp_min(eps)`` so that a model used outside FlowModule
      without projection stays monotone (identical to projected SGD whenever
      :meth:`project_` runs, as the gradient of ``clamp_min`` passes at the
      boundary).
    - ``"softplus"``, ``"exp"``, ``"square"``: reparametrisations, weight
      :math:`= \epsilon + g(\theta)` with :math:`g` = softplus, exp, square.
      The raw :math:`\theta` is initialised so that the *effective* weight
      follows the stated initial distribution.

    **Initialisation** (the official code's two schemes):

    - ``"standard-normal"``: :math:`w = |\mathcal N(0, 1)|`, free weights and
      :math:`b \sim \mathcal N(0, 1)`, :math:`c = 1/\sqrt m`;
    - ``"sqrt-m"``: :math:`w = |\mathcal N(0, 1/m)|`, free weights and
      :math:`b \sim \mathcal N(0, 1/m)`, :math:`c = 1`;

    and in both :math:`a = |\mathcal N(0, \sigma_a^2)|` (free output weights
    :math:`\mathcal N(0, \sigma_a^2)`), :math:`\sigma_a` = ``std_a``.

    **Context** (``context_features = C > 0``, a conditional map :math:`p(x \mid c)`): the
    biases of the first hidden layer depend on the context, :math:`b^{(1)}(c) = b^{(1)} + V c`
    (``context_weight`` :math:`V`, one :math:`m \times C` block per coordinate, zero at
    initialisation, so a freshly built conditional map is the unconditional one). The context
    only shifts pre-activations, so every path from :math:`x_i` to :math:`y_i` keeps its
    positive weights and each :math:`y_i` stays increasing in :math:`x_i`, for every
    :math:`c`; the log-determinant and the inverse are those above, at the shifted biases.
    :math:`V` belongs to the parameter group ``"b"``. The unconditional one-hidden-layer map
    runs through the fused :func:`~unflow_zoo.transforms.tanh_sum.tanh_sum`; a conditional one
    (every point its own biases) through the log-space path that ``depth > 1`` uses.

    **Inverse** by batched bisection, coordinate by coordinate in the
    autoregressive order (``x_i`` is solved once ``x_{<i}`` are known). The
    bracket is the exact bound ``(y_i -+ G_i) / alpha`` when ``alpha > 0``
    (:math:`G_i = c \sum |A_{i\cdot}|` bounds the network part), otherwise it
    is grown by doubling from ``[-1, 1]``; bisection then runs until every
    interval is one ulp wide (at most ``max_bisection_iters``), i.e. the
    inverse is exact to the working precision (about 1e-15 relative in
    float64, 1e-7 in float32). The residual :math:`|f(x) - y|` of every
    coordinate is then checked against
    :func:`~unflow_zoo.transforms.bisection.residual_tolerance`
    (:math:`\sqrt{\varepsilon}(1 + |y|)`: 3.5e-4 relative in float32, 1.5e-8
    in float64), first from the bisection's last evaluations, then from the
    forward pass that gives the inverse its log-determinant: a point that does
    not map back, e.g. far outside the training range where float32 cannot
    resolve :math:`x`, or with too small an iteration cap, raises
    :class:`~unflow_zoo.errors.InverseError` instead of being returned. A
    non-finite ``y`` raises :class:`~unflow_zoo.core.InputOutsideDomain`. The
    inverse is not differentiable with respect to the parameters.

    Args:
        features: D.
        width: m, hidden units per feature (per block).
        depth: number of hidden layers (1: the paper's model; > 1: B-NAF).
        positivity: ``"clamp"``, ``"softplus"``, ``"exp"`` or ``"square"``.
        init: ``"standard-normal"`` or ``"sqrt-m"``.
        std_a: standard deviation of the output weights at initialisation.
        eps: lower bound of the positive weights.
        linear_term: alpha >= 0, the fixed slope of the skip connection (0: paper-exact).
        autoregressive: ``False`` drops the free lower blocks (``D`` independent 1-D maps).
        train_layers: parameter groups that train (``"W"``, ``"b"``, ``"a"``; ``"w"`` is
            accepted for ``"W"``); the others get ``requires_grad=False``.
        max_bisection_iters: cap on bisection steps per coordinate.
        context_features: :math:`C`, the width of the context (0: unconditional, a context is refused).

    Attributes:
        c: the scale after each tanh.

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
        De Cao, Titov & Aziz, "Block Neural Autoregressive Flow", UAI 2019.
    """

    analytic_inverse = False  # a bisection/Newton solve, run without autograd: no rsample

    def __init__(
        self,
        features: int,
        width: int = 100,
        depth: int = 1,
        positivity: Positivity = "clamp",
        init: Init = "standard-normal",
        std_a: float = 0.005,
        eps: float = 1e-6,
        linear_term: float = 0.01,
        autoregressive: bool = True,
        train_layers: Sequence[str] = ("W", "b", "a"),
        max_bisection_iters: int = 400,
        context_features: int = 0,
    ) -> None:
        super().__init__()
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0 (0: unconditional), got {context_features}")
        if features < 1 or width < 1 or depth < 1:
            raise ValueError(f"features, width and depth must be positive integers, got {features}, {width}, {depth}")
        if positivity not in POSITIVITY:
            raise ValueError(f"unknown positivity {positivity!r}; choose one of {list(POSITIVITY)}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0 so that the map is strictly increasing, got {eps}")
        if not std_a > 0:
            raise ValueError(f"std_a must be > 0, got {std_a}")
        if not linear_term >= 0:
            raise ValueError(f"linear_term must be >= 0 (0: the paper's bounded map), got {linear_term}")
        self.features = d = int(features)
        self.width = m = int(width)
        self.depth = int(depth)
        self.positivity = positivity
        self.init = init
        self.std_a = float(std_a)
        self.eps = float(eps)
        self.linear_term = float(linear_term)
        self.autoregressive = bool(autoregressive) and d > 1
        self.max_bisection_iters = int(max_bisection_iters)
        self.context_features = int(context_features)
        std_w = 1.0 if init == "standard-normal" else 1.0 / math.sqrt(m)
        self.c = 1.0 / math.sqrt(m) if init == "standard-normal" else 1.0

        # Diagonal blocks (D, m_out, m_in) hold the raw positive weights; the free strictly
        # lower blocks live in a dense (D*m_out, D*m_in) matrix read through a fixed mask.
        sizes = [1] + [m] * self.depth
        self.w_diag = nn.ParameterList()
        self.w_lower = nn.ParameterList()
        self.b = nn.ParameterList()
        for k in range(self.depth):
            m_in, m_out = sizes[k], sizes[k + 1]
            self.w_diag.append(nn.Parameter(self._init_positive((d, m_out, m_in), std_w)))
            self.b.append(nn.Parameter(torch.randn(d, m_out) * std_w))
            if self.autoregressive:
                self.w_lower.append(nn.Parameter(self._init_lower(m_out, m_in, std_w)))
                self.register_buffer(f"_mask_{k}", self._lower_mask(m_out, m_in), persistent=False)
        self.a_diag = nn.Parameter(self._init_positive((d, 1, m), self.std_a))
        self.a_lower = nn.Parameter(self._init_lower(1, m, self.std_a)) if self.autoregressive else None
        if self.autoregressive:
            self.register_buffer("_mask_out", self._lower_mask(1, m), persistent=False)
        # b(c) = b + V c for the first hidden layer; zeros (no random draw), so that a conditional
        # map starts as the unconditional one and an unconditional one is built exactly as before
        self.context_weight: nn.Parameter | None = (
            nn.Parameter(torch.zeros(d, m, self.context_features)) if self.context_features else None
        )
        self.set_train_layers(train_layers)

    # ----- construction ---------------------------------------------------------------
    def _lower_mask(self, m_out: int, m_in: int) -> Tensor:
        d = self.features
        block = torch.tril(torch.ones(d, d), diagonal=-1)
        return block.repeat_interleave(m_out, 0).repeat_interleave(m_in, 1)

    def _init_lower(self, m_out: int, m_in: int, std: float) -> Tensor:
        d = self.features
        return torch.randn(d * m_out, d * m_in) * std * self._lower_mask(m_out, m_in)

    def _init_positive(self, shape: tuple[int, ...], std: float) -> Tensor:
        """Raw parameter whose effective weight is ``|N(0, std^2)|`` (at least ``eps``)."""
        target = (torch.randn(shape) * std).abs().clamp_min(self.eps)
        if self.positivity == "clamp":
            return target
        # effective = eps + g(raw): invert g on target - eps, kept off 0 so that the
        # inverse is finite; only targets within ~eps of eps are (negligibly) moved.
        excess = (target - self.eps).clamp_min(1e-3 * self.eps)
        if self.positivity == "softplus":
            return excess + torch.log(-torch.expm1(-excess))  # softplus^{-1}(v) = v + log(1 - e^{-v})
        if self.positivity == "exp":
            return torch.log(excess)
        return excess.sqrt()

    def set_train_layers(self, train_layers: Sequence[str]) -> None:
        """Train only the named parameter groups (``"W"``, ``"b"``, ``"a"``) via ``requires_grad``."""
        if isinstance(train_layers, str):
            train_layers = [train_layers]
        names = {"W" if g == "w" else g for g in train_layers}
        unknown = names - set(PARAMETER_GROUPS)
        if unknown:
            raise ValueError(
                f"unknown parameter groups {sorted(unknown)} in train_layers; choose from "
                f"'W' (hidden weights), 'b' (biases), 'a' (output weights)"
            )
        self.train_layers = tuple(g for g in PARAMETER_GROUPS if g in names)
        for group, params in self.parameter_groups().items():
            for p in params:
                p.requires_grad_(group in names)

    # ----- parameters -----------------------------------------------------------------
    def _positive(self, raw: Tensor) -> Tensor:
        if self.positivity == "clamp":
            return raw.clamp_min(self.eps)
        if self.positivity == "softplus":
            return self.eps + F.softplus(raw)
        if self.positivity == "exp":
            return self.eps + torch.exp(raw)
        return self.eps + raw.square()

    def parameter_groups(self, effective: bool = False) -> dict[str, list[Tensor]]:
        """The parameters by group, for weight-movement studies (``||W_t - W_0||``).

        Keys: ``"W"`` hidden weights (per layer: diagonal blocks, then the free
        lower blocks if any), ``"b"`` hidden biases (and last, for a conditional map,
        the context weights :math:`V` of :math:`b^{(1)}(c)`), ``"a"`` output weights
        (diagonal blocks, then lower blocks). With ``effective=False`` (default)
        these are the trained ``nn.Parameter`` objects themselves (raw values:
        equal to the effective weights for ``positivity="clamp"``, the
        pre-reparametrisation values otherwise). With ``effective=True`` they are
        the weights the network uses: positivity applied to the diagonal blocks
        and the lower blocks masked (tensors attached to the graph).
        """
        groups: dict[str, list[Tensor]] = {"W": [], "b": [], "a": []}
        for k in range(self.depth):
            groups["W"].append(self._positive(self.w_diag[k]) if effective else self.w_diag[k])
            if self.autoregressive:
                groups["W"].append(self.w_lower[k] * self._mask(k) if effective else self.w_lower[k])
            groups["b"].append(self.b[k])
        if self.context_weight is not None:
            groups["b"].append(self.context_weight)
        groups["a"].append(self._positive(self.a_diag) if effective else self.a_diag)
        if self.a_lower is not None:
            groups["a"].append(self.a_lower * self._mask_out if effective else self.a_lower)
        return groups

    def _mask(self, k: int) -> Tensor:
        return getattr(self, f"_mask_{k}")

    @torch.no_grad()
    def project_(self) -> None:
        """Projected-SGD step: clamp the positive weights to ``>= eps`` (``positivity="clamp"`` only).

        Also zeroes the unused entries of the lower-block matrices, which keeps
        parameter norms meaningful under weight decay or noise. No-op for the
        reparametrised modes.
        """
        if self.positivity != "clamp":
            return
        for p in self.w_diag:
            p.clamp_(min=self.eps)
        self.a_diag.clamp_(min=self.eps)
        if self.autoregressive:
            for k, p in enumerate(self.w_lower):
                p.mul_(self._mask(k))
            assert self.a_lower is not None
            self.a_lower.mul_(self._mask_out)

    # ----- the map --------------------------------------------------------------------
    def _check(self, x: Tensor, context: Tensor | None = None) -> None:
        check_features(x, self.features, type(self).__name__)
        check_context(context, x.shape[0], self.context_features, type(self).__name__)

    def _run(self, x: Tensor, context: Tensor | None = None, with_logdet: bool = True) -> tuple[Tensor, Tensor | None]:
        """``y`` ``(B, D)`` and the per-coordinate ``log dy_i/dx_i`` ``(B, D)`` (or None).

        Autocast is disabled: the network *is* the transform (there is no separate
        conditioner to run in low precision), its log-derivative is a log-space matmul
        and a logsumexp, and the bisection inverse must invert the same float32 map.
        """
        if not torch.is_autocast_enabled(x.device.type):  # entering the context costs more than the small maps
            return self._run_full_precision(x, context, with_logdet)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._run_full_precision(x, context, with_logdet)

    def _context_shift(self, context: Tensor | None, like: Tensor) -> Tensor | None:
        """:math:`V c`, the context's shift of the first layer's biases, ``(B, D, m)`` (None without context)."""
        if context is None or self.context_weight is None:
            return None
        return torch.einsum("bc,ijc->bij", context.to(like.dtype), self.context_weight)

    def _run_full_precision(self, x: Tensor, context: Tensor | None, with_logdet: bool) -> tuple[Tensor, Tensor | None]:
        shift = self._context_shift(context, x)
        if self.depth == 1 and shift is None:
            return self._run_one_layer(x, with_logdet)
        batch, d, m = x.shape[0], self.features, self.width
        log_c = math.log(self.c)
        h = x.unsqueeze(-1)  # (B, D, m_in) with m_in = 1 for the first layer
        log_dh: Tensor | None = None
        for k in range(self.depth):
            w = self._positive(self.w_diag[k])  # (D, m_out, m_in)
            z = torch.einsum("bik,ijk->bij", h, w) + self.b[k]
            if k == 0 and shift is not None:
                z = z + shift
            if self.autoregressive:
                lower = self.w_lower[k] * self._mask(k)
                z = z + (h.reshape(batch, d * h.shape[-1]) @ lower.T).view(batch, d, m)
            if with_logdet:
                log_w = torch.log(w)
                if log_dh is None:
                    inner = log_w.squeeze(-1)  # d z / d x_i = w (first layer)
                else:
                    inner = _log_matmul_exp(w, log_dh)
                log_dh = log_c + log_sech2(z) + inner
            h = self.c * torch.tanh(z)
        a = self._positive(self.a_diag).squeeze(1)  # (D, m)
        y = (h * a).sum(-1)
        if self.autoregressive:
            assert self.a_lower is not None
            y = y + h.reshape(batch, d * m) @ (self.a_lower * self._mask_out).T
        log_dy = None
        if with_logdet:
            assert log_dh is not None
            log_dy = torch.logsumexp(torch.log(a) + log_dh, dim=-1)
        if self.linear_term > 0:
            y = y + self.linear_term * x
            if log_dy is not None:
                # a Python float, not a float32 buffer: keeps float64 checks exact
                log_dy = torch.logaddexp(log_dy, log_dy.new_tensor(math.log(self.linear_term)))
        return y, log_dy

    def _run_one_layer(self, x: Tensor, with_logdet: bool) -> tuple[Tensor, Tensor | None]:
        """The paper's one-hidden-layer map through the fused :func:`~unflow_zoo.transforms.tanh_sum.tanh_sum`
        (the same function as the log-space path above, several times faster)."""
        w = self._positive(self.w_diag[0]).squeeze(-1)  # (D, m)
        a = self._positive(self.a_diag).squeeze(1)
        lower_in = lower_out = None
        if self.autoregressive:
            assert self.a_lower is not None
            lower_in = (self.w_lower[0] * self._mask(0)).unsqueeze(0)
            lower_out = (self.a_lower * self._mask_out).unsqueeze(0)
        y, log_dy = tanh_sum(
            x.unsqueeze(0), w.unsqueeze(0), self.b[0].unsqueeze(0), a.unsqueeze(0), lower_in, lower_out,
            self.c, self.linear_term,
        )  # fmt: skip
        return y.squeeze(0), (log_dy.squeeze(0) if with_logdet else None)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        y, log_dy = self._run(x, context)
        assert log_dy is not None
        return y, log_dy.sum(-1)

    def log_derivatives(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""The diagonal of the Jacobian in log space, :math:`\log \partial y_i/\partial x_i`, ``(B, D)``."""
        self._check(x, context)
        return self._run(x, context)[1]  # type: ignore[return-value]

    # ----- inverse --------------------------------------------------------------------
    def image_bounds(self, x: Tensor, i: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Infimum and supremum of ``y_i`` over ``x_i`` given ``x_{<i}`` (from ``x``) and the context, each ``(B,)``.

        Infinite when ``linear_term > 0``; otherwise the saturation values of the
        tanh network, computed by sending ``x_i`` to ``-+`` a huge finite value
        (every unit on the path from ``x_i`` is driven to exactly ``-+1``).
        """
        if self.linear_term > 0:
            inf = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
            return -inf, inf
        big = math.sqrt(torch.finfo(x.dtype).max)  # w * big cannot overflow, tanh(w * big) == +-1
        bounds = []
        for s in (-big, big):
            xs = x.clone()
            xs[:, i] = s
            xs[:, i + 1 :] = 0.0  # later coordinates do not touch y_i; keep them finite
            bounds.append(self._run(xs, context, with_logdet=False)[0][:, i])
        return bounds[0], bounds[1]

    @torch.no_grad()
    def _solve_coordinate(self, x: Tensor, y_i: Tensor, i: int, context: Tensor | None = None) -> Tensor:
        """Bisection for ``x_i`` with ``y_i(x_{<i}, x_i) = y_i``; ``x`` holds ``x_{<i}``."""

        def f(xi: Tensor) -> Tensor:
            xs = x.clone()
            xs[:, i] = xi
            return self._run(xs, context, with_logdet=False)[0][:, i]

        bracket = None
        if self.linear_term > 0:
            # |network part| <= G_i = c * sum_k |A_ik|, so alpha x_i lies within y_i -+ G_i
            a = self._positive(self.a_diag).squeeze(1)  # (D, m)
            g = a.abs().sum(-1)
            if self.autoregressive:
                assert self.a_lower is not None
                g = g + (self.a_lower * self._mask_out).abs().sum(-1)
            g_i = self.c * g[i].to(y_i.dtype)
            slack = 1.0 + 1e-6 * y_i.abs()  # absorbs rounding in evaluating the bound
            bracket = ((y_i - g_i - slack) / self.linear_term, (y_i + g_i + slack) / self.linear_term)
        return solve_increasing(
            f,
            y_i,
            bracket=bracket,
            max_iters=self.max_bisection_iters,
            error=f"could not bracket the inverse of coordinate {i}: the target lies at the edge of "
            "the bounded image of the constrained map (linear_term=0); use linear_term > 0 "
            "for a map onto R^D",
            owner=f"{type(self).__name__} (coordinate {i})",
        )

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, context)

        def solve(x: Tensor, i: int) -> Tensor:
            if self.linear_term == 0:
                inf, sup = self.image_bounds(x, i, context)
                outside = (y[:, i] <= inf) | (y[:, i] >= sup) | ~torch.isfinite(y[:, i])
                if outside.any():
                    k = int(outside.nonzero()[0, 0])
                    raise InputOutsideDomain(
                        f"y[{k}, {i}] = {float(y[k, i]):.6g} is outside the image "
                        f"({float(inf[k]):.6g}, {float(sup[k]):.6g}) of coordinate {i}: with "
                        "linear_term=0 (the paper's model) the constrained map is onto a bounded box, "
                        f"not R^{self.features}, so {int(outside.sum())} of {y.shape[0]} points have "
                        "no preimage; build the transform with linear_term > 0 to invert any point"
                    )
            return self._solve_coordinate(x, y[:, i], i, context)

        with torch.no_grad():
            x = autoregressive_inverse(y, range(self.features), solve)
        y_back, ladj = self(x, context)  # the log-determinant, and the residual check of the whole point, in one pass
        check_round_trip(y_back, y, owner=type(self).__name__)
        return x, -ladj

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, width={self.width}, depth={self.depth}, "
            f"positivity={self.positivity!r}, init={self.init!r}, c={self.c:.4g}, "
            f"linear_term={self.linear_term}, autoregressive={self.autoregressive}"
            + (f", context_features={self.context_features}" if self.context_features else "")
        )


class ConstrainedMonotone1d(ConstrainedMonotone):
    r"""The seed paper's 1-D constrained map, :math:`f(x) = \sum_r a_r c \tanh(w_r x + b_r) + \alpha x`.

    :class:`ConstrainedMonotone` with ``features=1`` and ``depth=1`` (see there for
    the options, the linear term and the inverse); takes ``(B, 1)`` batches.

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
    """

    def __init__(
        self,
        width: int = 100,
        positivity: Positivity = "clamp",
        init: Init = "standard-normal",
        std_a: float = 0.005,
        eps: float = 1e-6,
        linear_term: float = 0.01,
        train_layers: Sequence[str] = ("W", "b", "a"),
    ) -> None:
        super().__init__(
            1,
            width=width,
            depth=1,
            positivity=positivity,
            init=init,
            std_a=std_a,
            eps=eps,
            linear_term=linear_term,
            train_layers=train_layers,
        )
