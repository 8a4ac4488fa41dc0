"""What every builder shares: the event shape, the base, the context, stacks with permutations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from unflow_zoo.core.distributions import BaseDistribution, StandardExponential, make_base
from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose, Permutation, Transform
from unflow_zoo.errors import ConfigError
from unflow_zoo.flows import validate as v
from unflow_zoo.nn.mlp import MLP

__all__ = [
    "BaseSpec",
    "conditioner_context",
    "context_embedding_net",
    "finish_flow",
    "is_exponential",
    "shape_of",
    "stack_with_permutations",
    "vector_features",
]

#: a base distribution by name (:func:`~unflow_zoo.core.distributions.make_base`) or as a module
BaseSpec = str | BaseDistribution


def shape_of(event_shape: Any, *, owner: str) -> tuple[int, ...]:
    """``event_shape`` as a tuple of ints >= 1; a bare int ``D`` means ``(D,)``.

    Args:
        event_shape: the shape of one data point, ``(D,)``, ``(C, H, W)`` or ``D``.
        owner: the family named in the error message.

    Returns:
        The shape as a tuple.

    Raises:
        ConfigError: not a non-empty sequence of positive ints.
    """
    if isinstance(event_shape, int) and not isinstance(event_shape, bool):
        event_shape = (event_shape,)
    return v.event_shape(event_shape, owner=owner)


def vector_features(event_shape: tuple[int, ...], *, owner: str) -> int:
    """``D`` for a family that works on vectors; a clear error for image-shaped events.

    Args:
        event_shape: the shape of one data point.
        owner: the family named in the error message.

    Returns:
        ``D`` of ``event_shape = (D,)``.

    Raises:
        ConfigError: ``event_shape`` has more than one axis.
    """
    if len(event_shape) != 1:
        raise ConfigError(f"{owner} works on vectors, event_shape (D,); got {event_shape}. Flatten the data first")
    return event_shape[0]


def conditioner_context(context_features: Any, context_embedding: Any, *, owner: str) -> int:
    """The context width the conditioners see, after checking the two context arguments.

    Args:
        context_features: the raw context width :math:`C` (0: an unconditional flow).
        context_embedding: hidden widths of the context's embedding MLP, its last entry the
            embedding's width, or None for none.
        owner: the family named in the error messages.

    Returns:
        ``context_embedding[-1]`` with an embedding, else ``context_features``.

    Raises:
        ConfigError: a negative or non-integer width, or an embedding without a context.
    """
    ctx = v.non_negative_int("context_features", context_features, owner=owner)
    if context_embedding is None:
        return ctx
    if not ctx:
        raise ConfigError(f"{owner}: context_embedding needs context_features > 0 (an unconditional flow)")
    widths = v.positive_ints(
        "context_embedding",
        context_embedding,
        owner=owner,
        allow_empty=False,
        fix="pass the embedding MLP's widths, the last its output, e.g. context_embedding=[64, 16]",
    )
    return widths[-1]


def context_embedding_net(context_features: int, context_embedding: Sequence[int] | None) -> nn.Module | None:
    """The MLP that embeds a ``context_features``-wide context (ReLU, widths ``context_embedding``,
    the last its output width); None without widths.

    Args:
        context_features: the raw context width.
        context_embedding: the MLP's hidden widths and output width, or None (or empty) for none.

    Returns:
        The embedding network, or None.
    """
    if not context_embedding:
        return None
    widths = [int(w) for w in context_embedding]
    return MLP(int(context_features), widths[-1], widths[:-1], "relu")


def is_exponential(base: BaseSpec) -> bool:
    """Whether ``base`` is the standard exponential (by name, or as a module).

    Args:
        base: a base name or a base distribution.

    Returns:
        True for ``"exponential"`` or a :class:`~unflow_zoo.core.distributions.StandardExponential`.
    """
    return base == "exponential" if isinstance(base, str) else isinstance(base, StandardExponential)


def finish_flow(
    transform: Transform,
    base: BaseSpec,
    event_shape: tuple[int, ...],
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    """``Flow(transform, base)`` with its context declared, the last step of every builder.

    The base is built from its name here, after the transform's layers, and the embedding
    network after both: the order in which a family's module draws its initial weights.

    Args:
        transform: the flow's bijection (data -> noise).
        base: a base name (:func:`~unflow_zoo.core.distributions.make_base`) or a base distribution.
        event_shape: the shape of one data point (for a base given by name).
        context_features: the raw context width (0: unconditional).
        context_embedding: widths of the context's embedding MLP (see :func:`context_embedding_net`).

    Returns:
        The flow.
    """
    flow = Flow(transform, base if isinstance(base, BaseDistribution) else make_base(base, event_shape))
    flow.set_context(int(context_features), context_embedding_net(context_features, context_embedding))
    return flow


def stack_with_permutations(
    make_layer: Callable[[int], Transform], n_layers: int, features: int, permutation: str = "reverse"
) -> Compose:
    """``n_layers`` transforms from ``make_layer(k)``, with the feature order reversed (or
    permuted at random, seeded by ``k``) between consecutive ones, so that every feature
    gets to condition on every other. No permutation for a single feature.

    Args:
        make_layer: builds layer ``k``, ``k = 0, ..., n_layers - 1``.
        n_layers: the number of layers, >= 1.
        features: ``D``, the width of the vectors.
        permutation: ``reverse`` or ``random``.

    Returns:
        The stack, data side first.

    Raises:
        ConfigError: ``n_layers < 1`` or an unknown permutation.
    """
    if n_layers < 1:
        raise ConfigError(f"n_layers must be >= 1, got {n_layers}")
    if permutation not in ("reverse", "random"):
        raise ConfigError(f"unknown permutation {permutation!r}; choose 'reverse' or 'random'")
    layers: list[Transform] = []
    for k in range(n_layers):
        if k > 0 and features > 1:
            perm = Permutation.reverse(features) if permutation == "reverse" else Permutation.random(features, seed=k)
            layers.append(perm)
        layers.append(make_layer(k))
    return Compose(layers)
