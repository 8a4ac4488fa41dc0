"""A normalizing flow: a base distribution pushed through a transform."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from unflow_zoo.core.distributions import BaseDistribution
from unflow_zoo.core.transform import Transform
from unflow_zoo.errors import ConfigError, DataError, DataTypeError

__all__ = ["Flow", "check_sample_count"]

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

    def _check_context(self, context: object, method: str) -> None:
        if context is not None and not isinstance(context, Tensor):
            raise DataTypeError(
                f"{method} expects context as a torch.Tensor or None, got a {_type_name(context)}; "
                f"convert it with torch.as_tensor(context, dtype={self._reference()[0]})"
            )

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
        self._check_context(context, "transform_to_noise")
        if x.shape[0] == 0:
            return x.clone()
        return self.transform(x, context)[0]

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = self._check(x, "log_prob")
        self._check_context(context, "log_prob")
        if x.shape[0] == 0:
            return self._empty_log_prob(x)
        z, ladj = self.transform(x, context)
        return self.base.log_prob(z, context) + ladj

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        n = check_sample_count(n)
        self._check_context(context, "sample")
        if n == 0:
            return self._empty_events()
        z = self.base.sample(n, context)
        return self.transform.inverse(z, context)[0]

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n = check_sample_count(n)
        self._check_context(context, "sample_and_log_prob")
        if n == 0:
            x = self._empty_events()
            return x, x.new_zeros(0)
        z = self.base.sample(n, context)
        x, ladj_inv = self.transform.inverse(z, context)
        return x, self.base.log_prob(z, context) - ladj_inv
