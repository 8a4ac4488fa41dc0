"""A normalizing flow: a base distribution pushed through a transform, and its
``torch.distributions.Distribution`` view (:class:`FlowDistribution`)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from unflow_zoo.core.distributions import BaseDistribution
from unflow_zoo.core.transform import Transform, collect_outside
from unflow_zoo.errors import ConfigError, DataError, DataTypeError, InputOutsideDomain

__all__ = ["Flow", "FlowDistribution", "check_sample_count", "check_temperature"]

#: rounds of redrawing base samples that fall outside a bounded transform's image (see Flow._draw_and_invert)
_MAX_REDRAWS = 100

_DTYPE_METHODS = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "half",
    torch.bfloat16: "bfloat16",
}


def _type_name(obj: object) -> str:
    """``numpy.ndarray`` for a NumPy array, ``list`` for a list."""
    cls = type(obj)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__.split('.')[0]}.{cls.__name__}"


def _cast_hint(obj: str, dtype: torch.dtype) -> str:
    """``x.float()`` for a dtype with a Tensor/Module shorthand, else ``x.to(torch.<dtype>)``."""
    method = _DTYPE_METHODS.get(dtype)
    return f"{obj}.{method}()" if method else f"{obj}.to({dtype})"


def _finite_rows(x: Tensor) -> Tensor:
    """``(B,)``: whether every entry of each row of ``x`` is finite."""
    return torch.isfinite(x).flatten(1).all(dim=1)


def check_sample_count(n: object) -> int:
    """``n``, the number of samples to draw, as an ``int >= 0``.

    Accepts Python and NumPy integers and 0-dim integer tensors; anything else (a float
    such as ``2.5``, even ``2.0``; a bool; a negative count) raises
    :class:`~unflow_zoo.errors.ConfigError` (a ``ValueError``) saying so.
    """
    if isinstance(n, Tensor) and n.ndim == 0 and not (n.is_floating_point() or n.is_complex() or n.dtype == torch.bool):
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ConfigError(
            f"the number of samples n must be an int >= 0, got n={n!r} ({type(n).__name__}); "
            "pass a whole number, e.g. sample(int(n))"
        )
    count = int(n)
    if count < 0:
        raise ConfigError(
            f"the number of samples n must be >= 0, got n={count}; pass a positive count "
            "(n=0 gives an empty batch of shape (0, *event_shape))"
        )
    return count


class Flow(nn.Module):
    r"""Density :math:`p(x) = p_Z(f(x))\,|\det \partial f / \partial x|`.

    ``transform`` is :math:`f` (data -> noise) and ``base`` is :math:`p_Z`.
    Sampling draws :math:`z \sim p_Z` and returns :math:`f^{-1}(z)`.

    Inputs are checked once, here, for every family (:class:`~unflow_zoo.errors.DataError`
    and its subclass :class:`~unflow_zoo.errors.DataTypeError`, both ``ValueError``):

    - ``x`` must be a ``torch.Tensor`` of shape ``(B, *event_shape)``: a NumPy array or a
      list raises ``DataTypeError`` (convert it with ``torch.as_tensor(x, dtype=torch.float32)``),
      and so does an integer, boolean or complex tensor;
    - ``x`` must have the flow's floating dtype (that of its first floating parameter, else
      the base's). A float64 batch for a float32 flow raises ``DataTypeError``
      naming both dtypes and the two fixes, ``x.float()`` or ``model.double()``, rather than
      being cast silently: a cast would quietly give float32 densities to a caller who asked
      for float64 ones (and hide the common ``torch.from_numpy`` float64 slip), and it is what
      ``torch.nn`` layers, zuko and nflows do too, only with a clearer message. Under
      ``torch.autocast`` any floating dtype is accepted (the autocast regions cast it);
    - ``x`` must be on the flow's device (``DataError`` otherwise).

    An empty batch, ``(0, *event_shape)``, is no error: :meth:`log_prob` returns a ``(0,)``
    tensor without running the transform (so it initialises no actnorm layer), still
    connected to ``x`` and the parameters for autograd. ``sample(0)`` returns an empty
    ``(0, *event_shape)`` tensor; a negative or non-integer count raises
    :class:`~unflow_zoo.errors.ConfigError` (a ``ValueError``).

    The values are not scanned for NaN or infinities (that would synchronise with the
    GPU on every call): such rows get a non-finite log-density, or the transform's own
    error (:class:`~unflow_zoo.errors.InputOutsideDomain` for bounded domains).
    """

    _anchor: Tensor  # zero-size, tells the flow's dtype and device when nothing else floating does

    def __init__(self, transform: Transform, base: BaseDistribution) -> None:
        super().__init__()
        self.transform = transform
        self.base = base
        ref = getattr(base, "_anchor", None)
        dtype, device = (ref.dtype, ref.device) if isinstance(ref, Tensor) else (torch.get_default_dtype(), None)
        # the flow's own buffers come first in .buffers(): code that reads the dtype from the first
        # buffer (unflow_zoo.testing) then finds a floating one, not a permutation's index buffer
        self.register_buffer("_anchor", torch.zeros(0, dtype=dtype, device=device), persistent=False)
        #: the width of the raw context (None: not declared, the transforms check it), and the
        #: network that embeds it before the transforms and the base see it (None: none)
        self.context_features: int | None = None
        self.register_module("context_embedding", None)

    def set_context(self, context_features: int, embedding: nn.Module | None = None) -> None:
        """Declare the raw context width (0: unconditional, a context is refused) and the optional
        embedding applied to the context before the transforms and the base."""
        self.context_features = int(context_features)
        self.register_module("context_embedding", embedding)

    def _embed(self, context: Tensor | None) -> Tensor | None:
        emb = self.context_embedding
        return context if context is None or emb is None else emb(context)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    # ----- input checks ---------------------------------------------------------------
    def _reference(self) -> tuple[torch.dtype, torch.device]:
        """The flow's floating dtype and device: those of its first floating parameter, else of its
        anchor buffer (the base's dtype and device, moved by ``.to()`` with the rest)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype, p.device
        return self._anchor.dtype, self._anchor.device

    def _check(self, x: object, method: str = "log_prob") -> Tensor:
        """``x`` if it is a batch this flow can evaluate, else a DataError/DataTypeError that says why."""
        dtype, device = self._reference()
        where = "" if device.type == "cpu" else f", device={str(device)!r}"
        if not isinstance(x, Tensor):
            raise DataTypeError(
                f"{method} expects x as a torch.Tensor of shape (B, {', '.join(map(str, self.event_shape))}), "
                f"got a {_type_name(x)}; convert it with torch.as_tensor(x, dtype={dtype}{where})"
            )
        if not x.is_floating_point():
            raise DataTypeError(
                f"{method} expects a floating-point tensor, got x of dtype {x.dtype}; a flow is a "
                f"density of real-valued data: pass {_cast_hint('x', dtype)} (or torch.as_tensor(x, "
                f"dtype={dtype})), and dequantise discrete data such as pixel counts first"
            )
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise DataTypeError(
                f"{method} got x of dtype {x.dtype} but the flow's parameters are "
                f"{dtype}; cast the data with {_cast_hint('x', dtype)} or the model with "
                f"{_cast_hint('model', x.dtype)}"
            )
        if x.device != device:
            raise DataError(
                f"{method} got x on device {str(x.device)!r} but the flow is on {str(device)!r}; "
                f"move the data with x.to({str(device)!r}) or the model with model.to({str(x.device)!r})"
            )
        if tuple(x.shape[1:]) != self.event_shape:
            want = f"(B, {', '.join(map(str, self.event_shape))})"
            hint = f"reshape it to {want}"
            if tuple(x.shape) == self.event_shape:
                hint = "for a single point add the batch dimension, x.unsqueeze(0)"
            raise DataError(
                f"expected a batch of shape {want} for a flow over events of shape {self.event_shape}, "
                f"got {tuple(x.shape)}; {hint}"
            )
        return x

    def _check_context(self, context: object, method: str) -> Tensor | None:
        """``context`` if it is None or a floating tensor on the flow's device of shape ``(B, C)`` or
        ``(C,)``, else a DataError/DataTypeError. It is also scanned for NaN and infinities, except
        on an accelerator in training, where the scan would synchronise with the device on every
        step (the data module has validated the context already)."""
        declared = self.context_features
        if context is None:
            if declared:
                raise DataError(
                    f"{method}: this flow models p(x | c) with a context of width {declared}; pass "
                    f"context=c of shape (B, {declared}) (or ({declared},) for one row)"
                )
            return None
        if declared == 0:
            raise DataError(
                f"{method}: this flow is unconditional (context_features=0) but got a context; call it "
                "without one, or build it with context_features=C to model p(x | c)"
            )
        dtype, device = self._reference()
        if not isinstance(context, Tensor):
            raise DataTypeError(
                f"{method} expects context as a torch.Tensor or None, got a {_type_name(context)}; "
                f"convert it with torch.as_tensor(context, dtype={dtype})"
            )
        if not context.is_floating_point():
            raise DataTypeError(
                f"{method} expects a floating-point context, got dtype {context.dtype}; pass "
                f"{_cast_hint('context', dtype)} (one-hot encode labels first)"
            )
        if context.dtype != dtype and not torch.is_autocast_enabled(context.device.type):
            raise DataTypeError(
                f"{method} got a context of dtype {context.dtype} but the flow's parameters are {dtype}; "
                f"cast it with {_cast_hint('context', dtype)}"
            )
        if context.device != device:
            raise DataError(
                f"{method} got a context on device {str(context.device)!r} but the flow is on "
                f"{str(device)!r}; move it with context.to({str(device)!r})"
            )
        if context.ndim not in (1, 2):
            raise DataError(
                f"{method} expects a context of shape (B, C) (one row per point) or (C,) (one row for all), "
                f"got {tuple(context.shape)}"
            )
        if declared is not None and context.shape[-1] != declared:
            raise DataError(
                f"{method} expects a context of width {declared}, shape (B, {declared}) or ({declared},), got "
                f"{tuple(context.shape)}"
            )
        on_accelerator_in_training = context.device.type != "cpu" and self.training and torch.is_grad_enabled()
        if not on_accelerator_in_training and not bool(torch.isfinite(context).all()):
            bad = (~torch.isfinite(context.reshape(-1, context.shape[-1]))).any(-1)
            raise DataError(
                f"{method} got a context with NaN or infinite values (first in row {int(bad.nonzero()[0, 0])}); "
                "a flow cannot condition on a non-finite value: clean or impute the context first"
            )
        return context

    @staticmethod
    def _rows(context: Tensor | None, batch: int) -> Tensor | None:
        """A ``(C,)`` context as one row for each of ``batch`` points; a ``(B, C)`` context as it is."""
        if context is None or context.ndim == 2:
            return context
        return context.expand(batch, context.shape[0])

    def _empty_log_prob(self, x: Tensor) -> Tensor:
        """The ``(0,)`` log-density of an empty batch, on the autograd graph of ``x`` and of the
        trainable parameters (so that ``.sum().backward()`` gives zero gradients, not an error)."""
        lp = x.sum(dim=tuple(range(1, x.ndim)))
        if torch.is_grad_enabled():
            for p in self.parameters():
                if p.requires_grad:
                    lp = lp + (p.sum() * 0).to(lp.dtype)
        return lp

    def _empty_events(self) -> Tensor:
        dtype, device = self._reference()
        return torch.zeros((0, *self.event_shape), dtype=dtype, device=device)

    # ----- density API ----------------------------------------------------------------
    def transform_to_noise(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = self._check(x, "transform_to_noise")
        context = self._embed(self._rows(self._check_context(context, "transform_to_noise"), x.shape[0]))
        if x.shape[0] == 0:
            return x.clone()
        return self.transform(x, context)[0]

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r""":math:`\log p(x \mid c)`, shape ``(B,)``, for ``x`` of shape ``(B, *event_shape)`` and a
        context of shape ``(B, C)`` (one row per point) or ``(C,)`` (the same row for every point)."""
        x = self._check(x, "log_prob")
        context = self._rows(self._check_context(context, "log_prob"), x.shape[0])
        if x.shape[0] == 0:
            return self._empty_log_prob(x)
        context = self._embed(context)
        z, ladj = self.transform(x, context)
        lp = self.base.log_prob(z, context) + ladj
        # A finite point whose image overflows the dtype inside the stack (|x| ~ 1e20 through a map
        # that grows like x^2, in float32) has a density that underflows: -inf. Left alone, the inf
        # meets a mixed-sign weight in the next layer's conditioner and comes out NaN.
        overflowed = torch.isnan(lp) & ~_finite_rows(z) & _finite_rows(x)
        return lp.masked_fill(overflowed, -math.inf)

    def _sample(
        self, n: int, context: Tensor | None, temperature: float, method: str, with_log_prob: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The draws (and their log-densities) of :meth:`sample`/:meth:`sample_and_log_prob`."""
        n = check_sample_count(n)
        temperature = check_temperature(temperature)
        context = self._check_context(context, method)
        # a (B, C) context: n draws per row, n-major, so that the result reshapes to (n, B, ...)
        lead = (n,) if context is None or context.ndim == 1 else (n, context.shape[0])
        rows = math.prod(lead)
        if rows == 0:
            x = self._empty_events().reshape(*lead, *self.event_shape)
            return x, (x.new_zeros(lead) if with_log_prob else None)
        if context is not None:
            # embed each context row once, then repeat it for its n draws
            embedded = self._embed(context.unsqueeze(0) if context.ndim == 1 else context)
            assert embedded is not None
            context = embedded.expand(n, -1) if context.ndim == 1 else embedded.repeat(n, 1)
        z, x, ladj_inv = self._draw_and_invert(rows, context, temperature, with_log_det=with_log_prob)
        x = x.reshape(*lead, *self.event_shape)
        if not with_log_prob:
            return x, None
        # the model's density of the draw: p_Z at z itself, whatever temperature drew it
        return x, (self.base.log_prob(z, context) - ladj_inv).reshape(lead)

    def _draw_and_invert(
        self, rows: int, context: Tensor | None, temperature: float, with_log_det: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``rows`` base draws ``z`` (times the temperature), their preimages and the inverse
        log-determinants. A draw outside the bounded image of a transform (NAF's sigmoidal layers,
        reported through :func:`~unflow_zoo.core.transform.collect_outside`) is redrawn: rejection
        sampling from the base restricted to what the flow can map back, which is exactly the model's
        distribution (the rejected mass is what the flow gives no density to). Without ``with_log_det``
        the transforms' :meth:`~unflow_zoo.core.transform.Transform.invert` runs (no log-determinant:
        a continuous flow skips its trace) and the log-determinants returned are zeros."""

        def attempt(k: int, ctx: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            z = self.base.sample(k, ctx)
            if temperature != 1.0:
                z = z * temperature
            with collect_outside(k, z.device) as outside:
                if with_log_det:
                    x, ladj_inv = self.transform.inverse(z, ctx)
                else:
                    x = self.transform.invert(z, ctx)
                    ladj_inv = z.new_zeros(k)
            return z, x, ladj_inv, outside[0]

        z, x, ladj_inv, bad = attempt(rows, context)
        if not bool(bad.any()):  # the usual case: one check, nothing to redraw
            return z, x, ladj_inv
        # candidates per missing row: about 1 / (acceptance rate), from the first attempt, at most 64
        over = min(64, math.ceil(rows / max(rows - int(bad.sum()), 1)))
        for _ in range(_MAX_REDRAWS):
            if not bool(bad.any()):
                return z, x, ladj_inv
            idx = bad.nonzero().flatten()
            cand = idx.repeat(over)  # candidate j redraws row cand[j]
            z_new, x_new, l_new, bad_new = attempt(len(cand), None if context is None else context[cand])
            good = (~bad_new).view(over, len(idx))  # candidate (r, j) redraws row idx[j]
            # the first good candidate of each row (argmax returns the first of equal maxima)
            found = good.any(0)
            pick = (good.int().argmax(0) * len(idx) + torch.arange(len(idx), device=idx.device))[found]
            filled = idx[found]
            z = z.index_copy(0, filled, z_new[pick])
            x = x.index_copy(0, filled, x_new[pick])
            ladj_inv = ladj_inv.index_copy(0, filled, l_new[pick])
            bad = bad.index_fill(0, filled, False)
        raise InputOutsideDomain(
            f"after {_MAX_REDRAWS} redraws, {int(bad.sum())} of {rows} base draws still fall outside the bounded "
            "image of the flow's transforms: the model puts almost no mass where its base does; sample at a "
            "lower temperature, or check the model (a diverged NAF layer)"
        )

    def sample(self, n: int, context: Tensor | None = None, *, temperature: float = 1.0) -> Tensor:
        r"""``n`` draws: shape ``(n, *event_shape)`` without a context or for one ``(C,)`` row,
        ``(n, B, *event_shape)`` for a ``(B, C)`` context (``n`` per row, the torch convention).

        ``temperature`` scales the base draw, :math:`z \sim T \cdot Z` (reduced-temperature sampling,
        Kingma & Dhariwal, "Glow", 2018, which samples at ``T = 0.7``); 1 samples the model.
        """
        return self._sample(n, context, temperature, "sample", with_log_prob=False)[0]

    def sample_and_log_prob(
        self, n: int, context: Tensor | None = None, *, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """:meth:`sample` and the model's log-density of each draw (shapes ``(n[, B], *event_shape)``
        and ``(n[, B])``), from one inverse pass."""
        x, lp = self._sample(n, context, temperature, "sample_and_log_prob", with_log_prob=True)
        assert lp is not None
        return x, lp

    @property
    def has_rsample(self) -> bool:
        """Whether sampling is differentiable: every transform's inverse is analytic (or an ODE solve),
        none is a bisection or Newton solve run without autograd."""
        return all(getattr(m, "analytic_inverse", True) for m in self.transform.modules())

    def forward(self, context: Tensor | None = None) -> FlowDistribution:
        """The flow as a ``torch.distributions.Distribution``, given ``context`` (see :class:`FlowDistribution`)."""
        return FlowDistribution(self, context)


def check_temperature(temperature: object) -> float:
    """``temperature`` as a float, finite and ``> 0``; a :class:`~unflow_zoo.errors.ConfigError` otherwise."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ConfigError(f"temperature must be a number > 0, got {temperature!r}")
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ConfigError(f"temperature must be finite and > 0, got {t} (1 samples the model; Glow samples at 0.7)")
    return t


class FlowDistribution(Distribution):
    r"""A :class:`Flow` given a context, as a ``torch.distributions.Distribution``.

    ``flow(context)`` returns one; so does a family's module, ``model(context)``. Shapes follow
    torch: with a ``(B, C)`` context the ``batch_shape`` is ``(B,)``, with a single ``(C,)`` row or
    no context it is ``()``; ``event_shape`` is the flow's. ``sample(sample_shape)`` has shape
    ``(*sample_shape, *batch_shape, *event_shape)`` and ``log_prob(value)`` takes a value of shape
    ``(*any, *batch_shape, *event_shape)`` (broadcast against the batch) and returns
    ``(*any, *batch_shape)``. ``rsample`` keeps the autograd graph to the flow's parameters and to
    the context; it exists where every inverse is analytic (:attr:`Flow.has_rsample`), else it raises
    ``NotImplementedError`` as torch distributions without reparametrisation do.

    Args:
        flow: the flow.
        context: ``(B, C)``, ``(C,)`` or None.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012 - torch's class-level contract

    def __init__(self, flow: Flow, context: Tensor | None = None) -> None:
        self.flow = flow
        self.context = flow._check_context(context, "Flow(context)")
        batch = () if self.context is None or self.context.ndim == 1 else (self.context.shape[0],)
        self.has_rsample = flow.has_rsample
        super().__init__(torch.Size(batch), torch.Size(flow.event_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def _flat(self, sample_shape: Sequence[int]) -> tuple[int, torch.Size]:
        shape = torch.Size(sample_shape)
        return math.prod(shape), shape

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        if not self.has_rsample:
            raise NotImplementedError(
                "this flow's inverse is numerical (bisection/Newton, run without autograd), so its samples "
                "are not differentiable; use sample()"
            )
        n, shape = self._flat(sample_shape)
        return self.flow.sample(n, self.context).reshape(*shape, *self.batch_shape, *self.event_shape)

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        n, shape = self._flat(sample_shape)
        with torch.no_grad():
            return self.flow.sample(n, self.context).reshape(*shape, *self.batch_shape, *self.event_shape)

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = torch.Size()) -> tuple[Tensor, Tensor]:
        """Draws and their log-densities in one inverse pass, differentiable (see :meth:`rsample`)."""
        n, shape = self._flat(sample_shape)
        x, lp = self.flow.sample_and_log_prob(n, self.context)
        return x.reshape(*shape, *self.batch_shape, *self.event_shape), lp.reshape(*shape, *self.batch_shape)

    def sample_and_log_prob(self, sample_shape: Sequence[int] = torch.Size()) -> tuple[Tensor, Tensor]:
        """:meth:`sample` and the log-density of each draw, from one inverse pass."""
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        event = len(self.event_shape)
        if value.ndim < event or tuple(value.shape[value.ndim - event :]) != tuple(self.event_shape):
            raise DataError(
                f"log_prob expects a value of shape (..., {', '.join(map(str, self.event_shape))}) for a "
                f"distribution with event_shape {tuple(self.event_shape)}, got {tuple(value.shape)}"
            )
        lead = torch.broadcast_shapes(value.shape[: value.ndim - event], self.batch_shape)
        x = value.expand(*lead, *self.event_shape).reshape(-1, *self.event_shape)
        context = self.context
        if context is not None and context.ndim == 2:
            context = context.expand(*lead, context.shape[-1]).reshape(-1, context.shape[-1])
        return self.flow.log_prob(x, context).reshape(lead)

    def __repr__(self) -> str:
        return f"FlowDistribution(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)})"
