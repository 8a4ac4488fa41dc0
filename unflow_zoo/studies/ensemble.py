r"""Many independent runs of the seed paper's flows as one vectorised model.

A width sweep trains dozens of small, identical-but-for-the-seed networks. One at a time,
per-step framework overhead (a few hundred microseconds of Python and dispatch) dominates
the small widths; side by side, ``E`` members share every kernel launch. The ensembles
here hold the parameters of ``E`` members stacked along a leading axis, take a batch of
shape ``(E, B, D)`` (each member its own points, in its own order) and return the
per-member log-densities ``(E, B)``. The members never interact: the loss is the sum of
the members' mean NLLs, so each member's gradient is exactly the gradient it would get
alone, and :meth:`sgd_step` applies plain SGD with a learning rate per member followed
by the projection of the constrained weights, as ``torch.optim.SGD`` plus
``project_()`` do for one flow. The tests train a member and the same flow alone from the
same initialisation on the same batches and compare the weights.

Both ensembles are built from the package's own transforms
(:meth:`ConstrainedEnsemble.from_transforms`, :meth:`UnconstrainedEnsemble.from_transforms`),
so a member starts from exactly the initialisation ``create_model`` gives under its seed,
and :meth:`~_Ensemble.member_state_dict` writes a member back into such a transform
(``load_state_dict``), e.g. to save it as a pretrained flow.

Models these ensembles cannot hold (the multi-layer UMNN-MAF and B-NAF flows of the MINIBOONE
sweep) train one at a time behind the same interface: :class:`FlowMember` is a family's whole
model as a one-member "ensemble" (batches ``(1, B, D)``), with the official codes' gradient
clipping before its plain SGD step and the family's projection after it.

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unflow_zoo.errors import ConfigError, DataError
from unflow_zoo.transforms.monotone import ConstrainedMonotone
from unflow_zoo.transforms.positive import log_positive
from unflow_zoo.transforms.relu_integral import relu_net_integral_and_value, relu_net_integral_ar
from unflow_zoo.transforms.tanh_sum import tanh_sum

__all__ = ["ConstrainedEnsemble", "FlowMember", "UnconstrainedEnsemble"]

_LOG_2PI = math.log(2 * math.pi)


class _Ensemble(nn.Module):
    """Shared machinery: parameter groups per member, SGD with per-member rates, movement."""

    #: names of the trained parameters, in a fixed order, and their groups ("W", "b", "a")
    GROUPS: dict[str, str] = {}

    def __init__(self, members: int, features: int, width: int) -> None:
        super().__init__()
        self.members, self.features, self.width = int(members), int(features), int(width)

    def trained(self) -> dict[str, Tensor]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def check_batch(self, x: Tensor) -> None:
        if x.ndim != 3 or x.shape[0] != self.members or x.shape[2] != self.features:
            raise DataError(
                f"{type(self).__name__} of {self.members} members over {self.features} features expects a batch "
                f"of shape ({self.members}, B, {self.features}), got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def sgd_step(self, lr: Tensor) -> None:
        """``p -= lr_e * grad`` for every member ``e`` (``lr`` of shape ``(E,)``), then :meth:`project_`."""
        rates = [-float(r) for r in lr.reshape(-1).tolist()]
        for p in self.trained().values():
            if p.grad is not None:
                # member by member with a scalar rate: the same fused update as torch.optim.SGD's
                # (p + alpha * grad), so a member's weights stay bitwise those of its run alone
                for k, rate in enumerate(rates):
                    p[k].add_(p.grad[k], alpha=rate)
                p.grad = None
        self.project_()

    def project_(self) -> None:
        """Projection after a step (the constrained family's clamp); nothing by default."""

    @torch.no_grad()
    def snapshot(self) -> dict[str, Tensor]:
        """A copy of every parameter group's tensors (for movement from the initialisation)."""
        return {n: p.detach().clone() for n, p in self.named_parameters()}

    @torch.no_grad()
    def movement(self, start: dict[str, Tensor]) -> dict[str, Tensor]:
        r"""Per member, :math:`\|\theta_t - \theta_0\|` and :math:`\|\theta_t - \theta_0\| / \|\theta_0\|`
        of each group over its tensors: keys ``move_W``, ``rel_move_W``, ... each ``(E,)``."""
        out: dict[str, Tensor] = {}
        for group in ("W", "b", "a"):
            num = torch.zeros(self.members, dtype=torch.float64)
            den = torch.zeros(self.members, dtype=torch.float64)
            for name, p in self.named_parameters():
                if self.GROUPS.get(name) != group:
                    continue
                num += self._member_sq(p.detach() - start[name])
                den += self._member_sq(start[name])
            out[f"move_{group}"] = num.sqrt()
            out[f"rel_move_{group}"] = num.sqrt() / den.sqrt().clamp_min(1e-300)
        return out

    def grad_sq_norm(self) -> Tensor:
        """Per member, the squared norm of the current gradient over the trained parameters, ``(E,)``."""
        total = torch.zeros(self.members, dtype=torch.float64)
        for p in self.trained().values():
            if p.grad is not None:
                total += self._member_sq(p.grad)
        return total

    def _member_sq(self, t: Tensor) -> Tensor:
        """Per member, the sum of squares of a stacked tensor ``(E, ...)``, float64 on the CPU, ``(E,)``."""
        return t.double().flatten(1).square().sum(1).cpu()

    def member_state_dict(self, k: int) -> dict[str, Tensor]:  # pragma: no cover - per family
        raise NotImplementedError


class ConstrainedEnsemble(_Ensemble):
    r"""``E`` constrained flows :math:`f(x) = \sum_r a_r c \tanh(w_r x + b_r) + \alpha x`
    (block autoregressive for ``D > 1``; one hidden layer), standard normal base, with
    projected SGD (``w, a >= eps``) as in the official code's "clamp-zero".

    ``log_prob(x)`` for ``x`` ``(E, B, D)`` is :math:`\log \mathcal N(f(x)) + \sum_i \log
    \partial_i f_i(x)`, computed by :func:`~unflow_zoo.transforms.tanh_sum.tanh_sum`.
    """

    GROUPS = {"w": "W", "lower_in": "W", "b": "b", "a": "a", "lower_out": "a"}

    def __init__(
        self, w: Tensor, b: Tensor, a: Tensor, lower_in: Tensor | None, lower_out: Tensor | None,
        c: float, eps: float, linear_term: float,
    ) -> None:  # fmt: skip
        e, d, m = w.shape
        super().__init__(e, d, m)
        self.w, self.b, self.a = nn.Parameter(w.clone()), nn.Parameter(b.clone()), nn.Parameter(a.clone())
        # masked once: entries on and above the block diagonal are never read and never move
        block = torch.tril(torch.ones(d, d), diagonal=-1)
        self.lower_in = nn.Parameter(lower_in * block.repeat_interleave(m, 0)) if lower_in is not None else None
        self.lower_out = nn.Parameter(lower_out * block.repeat_interleave(m, 1)) if lower_out is not None else None
        self.c, self.eps, self.linear_term = float(c), float(eps), float(linear_term)

    @classmethod
    def from_transforms(cls, transforms: Sequence[ConstrainedMonotone]) -> ConstrainedEnsemble:
        """Stack the parameters of one-hidden-layer, clamp-positivity :class:`ConstrainedMonotone` maps."""
        first = transforms[0]
        for t in transforms:
            if not isinstance(t, ConstrainedMonotone) or t.depth != 1 or t.positivity != "clamp":
                raise ConfigError(
                    "ConstrainedEnsemble takes one-hidden-layer ConstrainedMonotone maps with clamp positivity"
                )
            if (t.features, t.width, t.c, t.eps, t.linear_term, t.autoregressive) != (
                first.features, first.width, first.c, first.eps, first.linear_term, first.autoregressive
            ):  # fmt: skip
                raise ConfigError("every member must have the same features, width, scale, eps and linear term")
            if set(t.train_layers) != {"W", "b", "a"}:
                raise ConfigError("ConstrainedEnsemble trains every layer (train_layers W, b, a)")
        with torch.no_grad():
            w = torch.stack([t.w_diag[0].squeeze(-1) for t in transforms]).float()
            b = torch.stack([t.b[0] for t in transforms]).float()
            a = torch.stack([t.a_diag.squeeze(1) for t in transforms]).float()
            lower_in = lower_out = None
            if first.autoregressive:
                lower_in = torch.stack([t.w_lower[0] * t._mask(0) for t in transforms]).float()
                lower_out = torch.stack([t.a_lower * t._mask_out for t in transforms]).float()  # type: ignore[operator]
        return cls(w, b, a, lower_in, lower_out, first.c, first.eps, first.linear_term)

    def log_prob(self, x: Tensor) -> Tensor:
        self.check_batch(x)
        w = self.w.clamp_min(self.eps)  # identical to the projected weights; keeps f monotone regardless
        a = self.a.clamp_min(self.eps)
        # unmasked: tanh_sum reads only the blocks below the diagonal and gives the others a zero
        # gradient, so the masked entries (zero from the start) stay zero with no projection
        y, log_dy = tanh_sum(x, w, self.b, a, self.lower_in, self.lower_out, self.c, self.linear_term)
        return (-0.5 * y.square() - 0.5 * _LOG_2PI + log_dy).sum(-1)

    @torch.no_grad()
    def project_(self) -> None:
        self.w.clamp_(min=self.eps)
        self.a.clamp_(min=self.eps)

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member ``k`` as a state dict of :class:`ConstrainedMonotone` (``depth=1``)."""
        sd = {"w_diag.0": self.w[k].detach().unsqueeze(-1).clone(), "b.0": self.b[k].detach().clone(),
              "a_diag": self.a[k].detach().unsqueeze(1).clone()}  # fmt: skip
        if self.lower_in is not None:
            sd["w_lower.0"] = self.lower_in[k].detach().clone()
            sd["a_lower"] = self.lower_out[k].detach().clone()  # type: ignore[index]
        return sd


class UnconstrainedEnsemble(_Ensemble):
    r"""``E`` unconstrained flows in the seed paper's layout: coordinate ``i`` has its own
    one-hidden-layer ReLU net of width ``m`` fed the raw :math:`[x_{<i}, t]`,

    .. math::

        y_i = \int_{x_{0,i}}^{x_i} \phi\big(a_i^\top \operatorname{ReLU}(W_i x_{<i} + w_{t,i} t + b_i)\big)
        + \epsilon \, dt, \qquad p_Z = \text{standard exponential},

    with the top layers :math:`a_i` fixed, a right Riemann sum over ``K`` nodes, and the
    integrals by :func:`~unflow_zoo.transforms.relu_integral.relu_net_integral_and_value`.
    """

    GROUPS = {"w_x": "W", "w_t": "W", "b": "b", "a": "a"}
    a: Tensor

    def __init__(
        self, w_x: Tensor | None, w_t: Tensor, b: Tensor, a: Tensor, lower: Tensor, n_nodes: int = 50,
        phi: str = "elu", min_slope: float = 0.0, train_top: bool = False,
    ) -> None:  # fmt: skip
        e, d, m = w_t.shape
        super().__init__(e, d, m)
        self.w_x = nn.Parameter(w_x.clone()) if w_x is not None and d > 1 else None  # (E, D, m, D)
        if d > 1:
            self.register_buffer("mask_x", torch.tril(torch.ones(d, d), diagonal=-1).unsqueeze(1), persistent=False)
        self.w_t, self.b = nn.Parameter(w_t.clone()), nn.Parameter(b.clone())
        if train_top:
            self.a = nn.Parameter(a.clone())  # type: ignore[assignment]
        else:
            self.register_buffer("a", a.clone())
        self.register_buffer("lower", lower.clone().reshape(e, d))
        k = int(n_nodes)
        self.register_buffer("nodes", torch.arange(1, k + 1, dtype=torch.float32) / k, persistent=False)
        self.register_buffer("weights", torch.full((k,), 1.0 / k), persistent=False)
        self.phi, self.min_slope = phi, float(min_slope)

    @classmethod
    def from_transforms(cls, transforms: Sequence[nn.Module]) -> UnconstrainedEnsemble:
        """Stack :class:`~unflow_zoo.transforms.paper_integral.PaperUnconstrainedTransform` members
        (right Riemann rule; their output scale is folded into the fixed top layer)."""
        from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform

        first = transforms[0]
        for t in transforms:
            if not isinstance(t, PaperUnconstrainedTransform) or not t._uniform_right:
                raise ConfigError(
                    "UnconstrainedEnsemble takes PaperUnconstrainedTransform members with quadrature='riemann'"
                )
            if (t.features, t.width, t.phi, t.min_slope, t.quadrature.n_nodes, isinstance(t.a, nn.Parameter)) != (
                first.features, first.width, first.phi, first.min_slope, first.quadrature.n_nodes,
                isinstance(first.a, nn.Parameter),
            ):  # fmt: skip
                raise ConfigError(
                    "every member must have the same features, width, phi, min_slope, nodes and top layer"
                )
        with torch.no_grad():
            w_x = torch.stack([t.W * t.mask for t in transforms]).float()
            w_t = torch.stack([t.w_t for t in transforms]).float()
            b = torch.stack([t.b for t in transforms]).float()
            a = torch.stack([t._top() for t in transforms]).float()
            lower = torch.stack([t.lower for t in transforms]).float()
        return cls(
            w_x, w_t, b, a, lower, first.quadrature.n_nodes, first.phi, first.min_slope,
            isinstance(first.a, nn.Parameter),
        )  # fmt: skip

    def log_prob(self, x: Tensor) -> Tensor:
        self.check_batch(x)
        e, batch, d = x.shape
        m = self.width
        xg = x.permute(0, 2, 1).reshape(e * d, batch)
        x0, w_t, a = self.lower.reshape(e * d, 1), self.w_t.reshape(e * d, m), self.a.reshape(e * d, m)
        if self.w_x is None:
            c = self.b.reshape(e * d, 1, m)  # shared by the points: the kernel sums its gradient
            y, nx = relu_net_integral_and_value(
                xg, x0, c, w_t, a, self.nodes, self.weights, self.phi, self.min_slope, uniform_right=True
            )
        else:
            # the conditioning W_i x_{<i} + b_i is formed inside the kernel, one point at a time;
            # entries j >= i of lx are ignored there (and masked in the torch fallback)
            lx = self.w_x.transpose(2, 3)  # (E, D, D_j, m)
            y, nx = relu_net_integral_ar(
                xg, x0, self.b.reshape(e * d, m), lx, w_t, a, self.nodes, self.weights, self.phi,
                self.min_slope, uniform_right=True,
            )  # fmt: skip
        lp = -y + log_positive(nx, self.phi, self.min_slope)  # as the transform computes its log-det
        lp = lp.view(e, d, batch).sum(1)
        outside = (y.view(e, d, batch) < 0).any(1)  # below the lower limit: zero base density
        return lp.masked_fill(outside, -math.inf)

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member ``k`` as a state dict of ``PaperUnconstrainedTransform`` (``gaussian-sqrt-m``, scale 1)."""
        d, m = self.features, self.width
        sd = {"w_t": self.w_t[k].detach().clone(), "b": self.b[k].detach().clone(), "a": self.a[k].detach().clone(),
              "lower": self.lower[k].detach().clone()}  # fmt: skip
        sd["W"] = (self.w_x[k] * self.mask_x).detach().clone() if self.w_x is not None else torch.zeros(d, m, d)
        return sd


class FlowMember(_Ensemble):
    r"""One whole model of a family, trained alone, behind the ensembles' interface (``E = 1``).

    For the models a vectorised ensemble cannot hold (several layers, a MADE conditioner, an
    MLP integrand: UMNN-MAF and B-NAF on MINIBOONE), so that the study's training loop, its
    checkpoints and its result columns are the same for every job: ``log_prob`` takes
    ``(1, B, D)`` and returns ``(1, B)``; :meth:`sgd_step` clips the gradient (by value and/or
    by norm, as the official codes do before their step), takes a plain SGD step and calls
    every ``project_`` of the model (the projection of clamp-positive weights, as
    :class:`~unflow_zoo.models.base.FlowModule` does after each optimizer step); the
    ``W``/``b``/``a`` groups of :meth:`movement` are the model's own ``parameter_groups()``
    (UMNN: the integrand's hidden weights, biases and top layer; B-NAF: every block's hidden
    weights, biases and output weights).

    Args:
        model: a module with ``log_prob(x)`` ``(B, D) -> (B,)`` and ``parameter_groups()``
            (any :class:`~unflow_zoo.models.base.FlowModule` of the constrained or
            unconstrained family).
        features: ``D``.
        width: the swept width (used for sizing evaluation blocks).
        clip_value: clip every gradient entry to ``[-clip_value, clip_value]`` (None: no clipping).
        clip_norm: rescale the gradient to a global 2-norm of at most ``clip_norm`` (None: no clipping).
    """

    def __init__(
        self, model: nn.Module, features: int, width: int, clip_value: float | None = None,
        clip_norm: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(1, features, width)
        self.model = model
        self.clip_value = None if clip_value is None else float(clip_value)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        names = {id(p): n for n, p in self.named_parameters()}
        groups = model.parameter_groups()  # type: ignore[operator]
        # an instance attribute: each model has its own parameter names
        self.GROUPS = {names[id(t)]: g for g, ts in groups.items() for t in ts if id(t) in names}

    def log_prob(self, x: Tensor) -> Tensor:
        self.check_batch(x)
        return self.model.log_prob(x[0]).unsqueeze(0)  # type: ignore[operator]

    @torch.no_grad()
    def sgd_step(self, lr: Tensor) -> None:
        """Clip, ``p -= lr * grad``, then :meth:`project_` (``lr`` of shape ``(1,)``)."""
        params = [p for p in self.trained().values() if p.grad is not None]
        if self.clip_value is not None:
            nn.utils.clip_grad_value_(params, self.clip_value)
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(params, self.clip_norm)
        rate = float(lr.reshape(-1)[0])
        for p in params:
            p.sub_(p.grad, alpha=rate)  # type: ignore[arg-type]
            p.grad = None
        self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        for m in self.model.modules():
            project = getattr(m, "project_", None)
            if callable(project):
                project()

    def _member_sq(self, t: Tensor) -> Tensor:
        return t.double().square().sum().reshape(1).cpu()

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """The model's own state dict (``k`` must be 0)."""
        if k != 0:
            raise IndexError(f"a FlowMember holds one member, got k={k}")
        return {n: t.detach().clone() for n, t in self.model.state_dict().items()}
