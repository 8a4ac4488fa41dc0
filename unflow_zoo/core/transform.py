"""The bijection contract every flow in the package is built from.

A :class:`Transform` maps data to noise (the *normalizing* direction) and
returns the log-absolute-determinant of its Jacobian alongside the output::

    y, ladj = t(x)            # ladj = log|det dy/dx|, shape (batch,)
    x, ladj_inv = t.inverse(y)  # ladj_inv = log|det dx/dy| = -ladj

Tabular batches are ``(B, D)``, image batches ``(B, C, H, W)``; the batch
dimension is always the first and only one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from unflow_zoo.errors import ConfigError, DataError, DataTypeError, InputOutsideDomain

__all__ = [
    "Compose",
    "InputOutsideDomain",
    "Inverse",
    "Permutation",
    "Transform",
    "check_context",
    "check_features",
    "collect_outside",
    "outside_rows",
    "report_outside",
]

# The rows of the batch being sampled whose draw fell outside a bounded transform's image
# (None: no sampler is collecting them, so such a row is an error). See collect_outside.
_OUTSIDE: ContextVar[list[Tensor] | None] = ContextVar("unflow_zoo_outside_rows", default=None)


@contextmanager
def collect_outside(batch: int, device: torch.device | None = None) -> Iterator[list[Tensor]]:
    """Collect, instead of raising, the rows of a ``batch``-row inverse pass that fall outside the
    bounded image of a transform (NAF's sigmoidal layers map R onto an interval).

    Inside the block such a transform calls :func:`report_outside`, fills those rows with NaN and
    goes on; the yielded one-item list holds the ``(batch,)`` boolean mask of the reported rows, so
    that a sampler can redraw exactly them (:meth:`unflow_zoo.core.flow.Flow.sample` does: rejection
    sampling of the base draws that the flow cannot map back). Outside the block they raise
    :class:`~unflow_zoo.errors.InputOutsideDomain`, as before.
    """
    box = [torch.zeros(batch, dtype=torch.bool, device=device)]
    token = _OUTSIDE.set(box)
    try:
        yield box
    finally:
        _OUTSIDE.reset(token)


def report_outside(rows: Tensor) -> bool:
    """Mark ``rows`` (a ``(B,)`` boolean mask) as outside a transform's image when a sampler collects
    them (:func:`collect_outside`, same batch size) and return True; else return False (raise)."""
    box = _OUTSIDE.get()
    if box is None or box[0].shape != rows.shape:
        return False
    box[0] = box[0] | rows.to(box[0].device)
    return True


def outside_rows() -> Tensor | None:
    """The rows reported so far by :func:`report_outside` in the active collection, or None."""
    box = _OUTSIDE.get()
    return None if box is None else box[0]


def check_features(x: Tensor, features: int, owner: str) -> None:
    """Raise :class:`~unflow_zoo.errors.DataError` (a ``ValueError``) unless ``x`` is a ``(B, features)`` batch.

    The one shape check of the tabular transforms; ``owner`` names the transform in the message.
    """
    if x.ndim != 2 or x.shape[1] != features:
        raise DataError(
            f"{owner} over {features} features expects a batch of shape (B, {features}), got {tuple(x.shape)}"
        )


def check_context(context: Tensor | None, batch: int, context_features: int, owner: str) -> None:
    """Raise :class:`~unflow_zoo.errors.DataError` unless ``context`` fits a transform built with
    ``context_features`` (0: unconditional, so ``context`` must be None) for a batch of ``batch`` rows.

    One check for every conditional transform: a missing context, a context given to an unconditional
    transform, the wrong width and the wrong batch size each get a message with the shapes and the fix.
    """
    if context is None:
        if context_features:
            raise DataError(
                f"{owner} was built with context_features={context_features} and models p(x | c): pass "
                f"context=c of shape (B, {context_features}) with the batch"
            )
        return
    if not context_features:
        raise DataError(
            f"{owner} is unconditional (context_features=0) but got a context of shape {tuple(context.shape)}; "
            "call it without a context, or build it with context_features=C to model p(x | c)"
        )
    if context.ndim != 2 or context.shape[1] != context_features:
        raise DataError(f"{owner} expects a context of shape (B, {context_features}), got {tuple(context.shape)}")
    if context.shape[0] != batch:
        raise DataError(
            f"{owner} got a batch of {batch} rows but a context of {context.shape[0]} rows; "
            "give one context row per data row"
        )


class Transform(nn.Module):
    """A bijection with a tractable log-determinant.

    Subclasses implement :meth:`forward` (data -> noise) and :meth:`inverse`
    (noise -> data); both return ``(output, logabsdet)`` where ``logabsdet``
    has shape ``(batch,)``. ``context`` is an optional conditioning tensor
    with the same batch size, for conditional flows.

    A transform whose inverse is computed numerically (bisection, Newton, an
    ODE solve) says so in its docstring and states its tolerance; one whose inverse
    is not differentiable (a solve run without autograd) sets :attr:`analytic_inverse`
    to False, so that a flow built on it offers no ``rsample``.
    """

    analytic_inverse: bool = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement inverse()")

    def invert(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """The inverse without its log-determinant: what sampling needs. ``inverse(y)[0]`` unless the
        log-determinant costs extra work (a continuous flow's trace), which a subclass then skips."""
        return self.inverse(y, context)[0]


class Compose(Transform):
    """Apply transforms in order: ``Compose(t1, t2)(x) = t2(t1(x))``.

    The log-determinants add up; the inverse runs the inverses in reverse order.
    """

    def __init__(self, *transforms: Transform | Iterable[Transform]) -> None:
        super().__init__()
        if len(transforms) == 1 and not isinstance(transforms[0], Transform):
            transforms = tuple(transforms[0])  # Compose([t1, t2]) as well as Compose(t1, t2)
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise DataTypeError(f"Compose expects Transform objects, item {i} is a {type(t).__name__}")
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ladj = t(x, context)
            total = total + ladj
        return x, total

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = y.new_zeros(y.shape[0])
        for t in reversed(self.transforms):
            y, ladj = t.inverse(y, context)
            total = total + ladj
        return y, total

    def invert(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        for t in reversed(self.transforms):
            y = t.invert(y, context)
        return y

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]


class Inverse(Transform):
    """Swap the two directions of a transform."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.base_transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.base_transform.inverse(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.base_transform(y, context)

    def invert(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return self.base_transform(y, context)[0]


class Permutation(Transform):
    """Permute the features along ``dim`` (1 by default: features of a ``(B, D)``
    batch, channels of a ``(B, C, H, W)`` batch). Volume preserving.

    Use :meth:`reverse` for the fixed reversal that autoregressive stacks
    alternate with, or :meth:`random` for a seeded random permutation.
    """

    perm: Tensor
    inv_perm: Tensor

    def __init__(self, perm: Sequence[int] | Tensor, dim: int = 1) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.ndim != 1 or not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ConfigError(f"not a permutation of 0..{len(perm) - 1}: {perm.tolist()}")
        if dim == 0:
            raise ConfigError("dim 0 is the batch dimension; permute features (dim >= 1)")
        self.dim = dim
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    @classmethod
    def reverse(cls, features: int, dim: int = 1) -> Permutation:
        return cls(torch.arange(features - 1, -1, -1), dim=dim)

    @classmethod
    def random(cls, features: int, seed: int | None = None, dim: int = 1) -> Permutation:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return cls(torch.randperm(features, generator=gen), dim=dim)

    def _check(self, x: Tensor) -> None:
        if x.ndim <= self.dim or x.shape[self.dim] != len(self.perm):
            raise DataError(
                f"Permutation of {len(self.perm)} features along dim {self.dim} got a batch of shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return x.index_select(self.dim, self.perm), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        return y.index_select(self.dim, self.inv_perm), y.new_zeros(y.shape[0])

    def extra_repr(self) -> str:
        return f"features={len(self.perm)}, dim={self.dim}"
