r"""The seed paper's unconstrained flow for :math:`D \ge 1`: one ReLU network per coordinate.

The official code (``UNF/utils.py``: ``give_module_list``, ``give_function``, ``MLP``)
gives coordinate :math:`i` its own one-hidden-layer network of width :math:`m`, fed
the raw preceding coordinates and the integration variable,

.. math::

    N_i(t; x_{<i}) = s\, a_i^\top \operatorname{ReLU}\big(W_i x_{<i} + w_i t + b_i\big),
    \qquad
    y_i = \int_{x_{0,i}}^{x_i} \phi\big(N_i(t; x_{<i})\big) + \epsilon\; dt,

with :math:`\phi = \mathrm{ELU} + 1`, no offset (the image of :math:`x_i \ge x_{0,i}`
is :math:`y_i \ge 0`, the support of the standard exponential base it is paired
with) and a triangular Jacobian,
:math:`\log|\det J| = \sum_i \log(\phi(N_i(x_i; x_{<i})) + \epsilon)`. This differs
from UMNN-MAF (:class:`~unflow_zoo.transforms.integral.UnconstrainedMonotoneTransform`),
where one integrand shared by all coordinates reads a MADE embedding of
:math:`x_{<i}`.

The integrals go through
:func:`~unflow_zoo.transforms.relu_integral.relu_net_integral` with one group per
coordinate: the same quadrature sum as the official per-node loop, in
:math:`O(m + K)` per integral instead of :math:`O(mK)`.

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (code:
    github.com/kulinshah98/overparam-NFs, folder UNF/).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unflow_zoo.core.transform import Transform, check_context, check_features
from unflow_zoo.nn.integrand import PaperInit
from unflow_zoo.transforms.bisection import check_finite_target, check_round_trip, far_rows
from unflow_zoo.transforms.integral import PHI_NAMES, PhiName, log_positive, positive, solve_monotone
from unflow_zoo.transforms.quadrature import Quadrature, QuadratureRule, quadrature_rule
from unflow_zoo.transforms.relu_integral import (
    relu_net,
    relu_net_integral,
    relu_net_integral_and_value,
    relu_net_integral_ar,
)

__all__ = ["PaperUnconstrainedTransform"]


class PaperUnconstrainedTransform(Transform):
    r"""The seed paper's unconstrained (UNF) transform, data -> noise, for any :math:`D`:

    .. math::

        y_i = \int_{x_{0,i}}^{x_i} \phi\big(N_i(t; x_{<i})\big) + \epsilon\; dt, \qquad
        N_i(t; x_{<i}) = s\, a_i^\top \operatorname{ReLU}\big(W_i x_{<i} + w_i t + b_i\big),

    .. math::

        \log\left|\det \frac{\partial y}{\partial x}\right|
        = \sum_{i=1}^{D} \log\big(\phi(N_i(x_i; x_{<i})) + \epsilon\big).

    One network of width :math:`m` per coordinate, as in the official ``give_module_list``;
    network :math:`i`'s first layer is :math:`[W_i, w_i]` on :math:`[x_{<i}, t]`.
    Parameters (all coordinates stacked):

    - ``W`` ``(D, m, D)``: the weights on :math:`x_{<i}`; block ``i`` is masked to its
      first ``i`` columns (entries on :math:`x_{\ge i}` are zero and stay zero), so the
      Jacobian is lower triangular;
    - ``w_t`` ``(D, m)``: the weights on :math:`t`; ``b`` ``(D, m)``: the hidden biases;
    - ``a`` ``(D, m)``: the top layer, a fixed buffer unless ``train_top`` (the paper
      keeps it at its random initialisation).

    Initialisation, as the official ``MLP``: ``init="gaussian-sqrt-m"`` (the paper's
    default): :math:`W, w, b \sim \mathcal N(0, 1/m)`, :math:`s = 1`; ``"gaussian-std"``:
    :math:`\mathcal N(0, 1)` and :math:`s = 1/\sqrt m` (the NTK parametrisation); the
    top layer :math:`a \sim \mathcal N(0, \sigma_a^2)`, :math:`\sigma_a` = ``std_a``.

    Context (``context_features = C > 0``, a conditional map, not in the paper): the hidden
    pre-activations get a context-dependent shift, :math:`b_i(c) = b_i + V_i c`
    (``context_weight`` :math:`V` ``(D, m, C)``, zero at initialisation, so a freshly built
    conditional map is the unconditional one, and no random draw is spent on it). :math:`c`
    enters beside :math:`x_{<i}` and not through :math:`t`, so every coordinate stays an
    integral of a positive function of :math:`t`, increasing in :math:`x_i` for every
    :math:`c`; quadrature, log-determinant and inverse are unchanged. :math:`V` belongs to
    the parameter group ``"b"``.

    The integral is the ``K = n_nodes`` point ``quadrature`` (the paper: right Riemann
    sum, 50 nodes). As in the official code, the derivative in :math:`x_i` is the
    Leibniz-rule one, :math:`\phi(N_i(x_i)) + \epsilon`, so the log-determinant equals
    that of the autograd Jacobian, while the map itself is the quadrature: the density
    integrates to 1 up to the quadrature error. :math:`\phi` is ``elu`` (ELU + 1),
    ``softplus`` or ``exp``; :math:`\epsilon` = ``min_slope`` (0: the paper's exact
    parametrisation) bounds the slope below, which makes every coordinate map onto
    :math:`\mathbb R`.

    The inverse is numerical: coordinate by coordinate in the order :math:`0, \dots,
    D - 1` (coordinate :math:`i` once :math:`x_{<i}` is known), all batch elements at
    once, with the vectorised safeguarded Newton-bisection solver
    :func:`~unflow_zoo.transforms.integral.solve_monotone` on the same quadrature, to an
    absolute tolerance ``inverse_tol`` in :math:`x` (or a few ulps of :math:`x`; Newton
    steps by :math:`g`, so where the quadrature's slope departs from :math:`g`, far from
    :math:`x_0`, the tolerance loosens by their ratio). With
    ``min_slope=0`` the image can be a bounded interval (where :math:`\phi(N)` decays);
    a value outside it raises :class:`~unflow_zoo.core.transform.InputOutsideDomain`, as
    does a NaN or inf. Every solve ends with a residual check,
    :math:`|Q_i(x) - y_i| \le` :func:`~unflow_zoo.transforms.bisection.residual_tolerance`
    :math:`= \sqrt{\varepsilon}(1 + |y_i|)` (3.5e-4 relative in float32, 1.5e-8 in
    float64, estimated from the last Newton evaluation, so no extra pass is needed;
    rows far from the origin, where :meth:`forward` may round the large terms
    differently, are checked once more by :meth:`forward`, see
    :func:`~unflow_zoo.transforms.bisection.far_rows`): a point that does not map back
    (``max_iter`` too small, or a target so far out that the working precision cannot
    resolve :math:`x`) raises :class:`~unflow_zoo.errors.InverseError` instead of being
    returned. The inverse runs without autograd. The quadrature :math:`Q_i` is increasing only up
    to its error: with the first-order right sum, far from :math:`x_{0,i}` (segments
    much longer than the scale on which :math:`g` varies) where :math:`g` has fallen
    below about :math:`g(x_{0,i}) / 2K`, :math:`Q_i` can turn back, and the inverse then
    returns *a* solution of :math:`Q_i(x) = y` that need not be the original :math:`x`.
    The paper's setting (:math:`x_0` the data minimum) keeps segments short; more nodes
    or ``clenshaw-curtis`` widen the range.

    Args:
        features: :math:`D`.
        width: :math:`m`, hidden units per coordinate.
        std_a: :math:`\sigma_a`, standard deviation of the top layer (0.25 in the paper).
        init: ``gaussian-sqrt-m`` or ``gaussian-std``, see above.
        train_top: train :math:`a` too.
        quadrature: ``riemann`` (the paper's right sum), ``clenshaw-curtis`` or ``gauss-legendre``.
        n_nodes: :math:`K`, nodes per integral.
        phi: positive function :math:`\phi`.
        min_slope: :math:`\epsilon \ge 0`.
        lower_limit: :math:`x_0`, one float for every coordinate or a sequence of
            :math:`D` (the paper: the per-coordinate data minimum).
        inverse_tol: absolute tolerance of the inverse in :math:`x`.
        max_iter: iteration cap of the inverse solver (bracketing + Newton).
        context_features: :math:`C`, the width of the context (0: unconditional, the paper's map).

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (Section 4 and the official
        code, github.com/kulinshah98/overparam-NFs, ``UNF/utils.py``).
    """

    analytic_inverse = False  # a bisection/Newton solve, run without autograd: no rsample

    a: Tensor
    mask: Tensor
    lower: Tensor

    def __init__(
        self,
        features: int,
        width: int = 256,
        *,
        std_a: float = 0.25,
        init: PaperInit = "gaussian-sqrt-m",
        train_top: bool = False,
        quadrature: QuadratureRule = "riemann",
        n_nodes: int = 50,
        phi: PhiName = "elu",
        min_slope: float = 0.0,
        lower_limit: float | Sequence[float] = 0.0,
        inverse_tol: float = 1e-6,
        max_iter: int = 200,
        context_features: int = 0,
    ) -> None:
        super().__init__()
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0 (0: unconditional), got {context_features}")
        if features < 1 or width < 1:
            raise ValueError(f"features and width must be >= 1, got features={features}, width={width}")
        if init not in ("gaussian-sqrt-m", "gaussian-std"):
            raise ValueError(f"unknown init {init!r}; choose 'gaussian-sqrt-m' or 'gaussian-std'")
        if phi not in PHI_NAMES:
            raise ValueError(f"unknown phi {phi!r}; choose one of {PHI_NAMES}")
        if min_slope < 0:
            raise ValueError(f"min_slope must be >= 0, got {min_slope}")
        self.features, self.width = int(features), int(width)
        self.init, self.std_a = init, float(std_a)
        self.phi, self.min_slope = phi, float(min_slope)
        self.inverse_tol, self.max_iter = float(inverse_tol), int(max_iter)
        self.context_features = int(context_features)

        self.register_buffer("lower", self._lower_limits(lower_limit))
        self.quadrature = Quadrature(quadrature, n_nodes)
        nodes, _ = quadrature_rule(quadrature, n_nodes)
        # relu_net_integral bins units by node index and needs ascending nodes (every rule
        # here has them, but the kernel would silently give a wrong sum otherwise).
        self._ascending = bool((nodes[1:] >= nodes[:-1]).all())
        # the kernel's arithmetic shortcut holds only for the nodes (k + 1) / K
        self._uniform_right = quadrature == "riemann"

        d, m = self.features, self.width
        std = 1.0 / math.sqrt(m) if init == "gaussian-sqrt-m" else 1.0
        self.scale = 1.0 if init == "gaussian-sqrt-m" else 1.0 / math.sqrt(m)
        mask = torch.tril(torch.ones(d, d), diagonal=-1).unsqueeze(1)  # mask[i, 0, j] = j < i
        self.register_buffer("mask", mask, persistent=False)  # a function of D alone
        self.W = nn.Parameter(torch.randn(d, m, d) * std * mask)
        self.w_t = nn.Parameter(torch.randn(d, m) * std)
        self.b = nn.Parameter(torch.randn(d, m) * std)
        a = torch.randn(d, m) * std_a
        if train_top:
            self.a = nn.Parameter(a)  # type: ignore[assignment]
        else:
            self.register_buffer("a", a)
        # b_i(c) = b_i + V_i c; zeros (no random draw): an unconditional map is built exactly as before
        self.context_weight: nn.Parameter | None = (
            nn.Parameter(torch.zeros(d, m, self.context_features)) if self.context_features else None
        )

    def _lower_limits(self, lower_limit: float | Sequence[float]) -> Tensor:
        if isinstance(lower_limit, (int, float)):
            return torch.full((self.features,), float(lower_limit))
        values = [float(v) for v in lower_limit]
        if len(values) != self.features:
            raise ValueError(
                f"lower_limit must be a float or {self.features} floats (one per coordinate), got {len(values)}"
            )
        return torch.tensor(values)

    # ----- pieces ---------------------------------------------------------------------
    def _check(self, x: Tensor, context: Tensor | None) -> None:
        check_features(x, self.features, type(self).__name__)
        check_context(context, x.shape[0], self.context_features, type(self).__name__)

    def _rule(self) -> tuple[Tensor, Tensor]:
        q = self.quadrature
        if self._ascending:
            return q.nodes, q.weights
        order = q.nodes.argsort()
        return q.nodes[order], q.weights[order]

    def _top(self) -> Tensor:
        """:math:`s\\,a`, the top layer with the parametrisation's output scale folded in."""
        return self.a * self.scale if self.scale != 1.0 else self.a

    def _context_shift(self, context: Tensor | None, like: Tensor) -> Tensor | None:
        r""":math:`V_i c` for every coordinate, ``(D, B, m)`` (None without a context)."""
        if context is None or self.context_weight is None:
            return None
        return torch.einsum("bc,imc->ibm", context.to(like.dtype), self.context_weight)

    def _conditioning(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r""":math:`W_i x_{<i} + b_i` (:math:`+ V_i c` with a context) for every coordinate, shape ``(D, B, m)``."""
        w_x = (self.W * self.mask).transpose(1, 2)  # (D, D, m)
        c = torch.baddbmm(self.b.unsqueeze(1), x.unsqueeze(0).expand(self.features, -1, -1), w_x)
        shift = self._context_shift(context, x)
        return c if shift is None else c + shift

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        """``{"W": [W, w_t], "b": [b], "a": [a]}``, for tracking :math:`\\|W_t - W_0\\|`
        (``W`` and ``w_t`` together are the official networks' first-layer weights); a conditional
        map adds its context weights :math:`V` to ``"b"``."""
        b = [self.b] if self.context_weight is None else [self.b, self.context_weight]
        return {"W": [self.W, self.w_t], "b": b, "a": [self.a]}

    def derivative(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r""":math:`\partial y_i / \partial x_i = \phi(N_i(x_i; x_{<i})) + \epsilon`, shape ``(B, D)``."""
        self._check(x, context)
        with torch.autocast(device_type=x.device.type, enabled=False):
            n = relu_net(self._conditioning(x, context), self.w_t, self._top(), x.t())
            return positive(n, self.phi, self.min_slope).t()

    # ----- the contract -----------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        # Full precision: the kernel's hand-written backward runs outside autocast and must
        # see the dtypes its forward saw.
        with torch.autocast(device_type=x.device.type, enabled=False):
            a = self._top()
            xt = x.t().contiguous()  # one group per coordinate: (D, B)
            nodes, weights = self._rule()
            if self.features > 1 and self._context_shift(context, x) is None:
                # W_i x_{<i} + b_i formed inside the kernel (no (D, B, m) pre-activations stored)
                y, n_x = relu_net_integral_ar(
                    xt, self.lower.unsqueeze(-1), self.b, (self.W * self.mask).transpose(1, 2).unsqueeze(0),
                    self.w_t, a, nodes, weights, self.phi, self.min_slope, self._uniform_right,
                )  # fmt: skip
            else:
                y, n_x = relu_net_integral_and_value(
                    xt, self.lower.unsqueeze(-1), self._conditioning(x, context), self.w_t, a, nodes, weights,
                    self.phi, self.min_slope, self._uniform_right,
                )  # fmt: skip
            ladj = log_positive(n_x, self.phi, self.min_slope).sum(dim=0)
        return y.t().contiguous(), ladj

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, context)
        check_finite_target(y, type(self).__name__)
        with torch.no_grad(), torch.autocast(device_type=y.device.type, enabled=False):
            a = self._top()
            w_x = self.W * self.mask
            x = torch.empty_like(y)
            shift = self._context_shift(context, y)
            cs: list[Tensor] = []
            for i in range(self.features):
                c_i = F.linear(x[:, :i], w_x[i, :, :i], self.b[i])  # needs x_{<i} only: solved already
                if shift is not None:
                    c_i = c_i + shift[i]
                x[:, i] = self._solve(i, c_i, y[:, i], a)
                cs.append(c_i)
            c_all = torch.stack(cs)  # (D, B, m)
            n_x = relu_net(c_all, self.w_t, a, x.t())
            ladj = -log_positive(n_x, self.phi, self.min_slope).sum(dim=0)
            far = far_rows(y, x, c_all.transpose(0, 1))
            if bool(far.any()):
                # far out, forward() may round the large terms differently from the solver: check those rows
                y_back, _ = self(x[far], context[far] if context is not None else None)
                check_round_trip(y_back, y[far], owner=type(self).__name__)
        return x, ladj

    def _solve(self, i: int, c: Tensor, target: Tensor, a: Tensor) -> Tensor:
        r"""Solve :math:`Q_i(x) = \text{target}` for coordinate ``i``, ``c`` = :math:`W_i x_{<i} + b_i` ``(B, m)``."""
        nodes, weights = self._rule()
        w_i, a_i, x0 = self.w_t[i : i + 1], a[i : i + 1], self.lower[i].reshape(1, 1)

        def value_and_slope(x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            c_a, x_a = c[idx].unsqueeze(0), x.unsqueeze(0)  # a single group of len(idx) integrals
            val = relu_net_integral(
                x_a, x0, c_a, w_i, a_i, nodes, weights, self.phi, self.min_slope, self._uniform_right
            )
            slope = positive(relu_net(c_a, w_i, a_i, x_a), self.phi, self.min_slope)
            return val[0], slope[0]

        return solve_monotone(
            value_and_slope,
            target,
            self.lower[i] + target,  # the identity map: where an untrained flow starts
            tol=self.inverse_tol,
            max_iter=self.max_iter,
            owner=f"{type(self).__name__} (coordinate {i})",
            onto=self.min_slope > 0,
        )

    def extra_repr(self) -> str:
        trained = isinstance(self.a, nn.Parameter)
        return (
            f"features={self.features}, width={self.width}, std_a={self.std_a}, init={self.init!r}, "
            f"train_top={trained}, phi={self.phi!r}, min_slope={self.min_slope}, "
            f"lower_limit={self.lower.tolist()}"
            + (f", context_features={self.context_features}" if self.context_features else "")
        )
