"""Checks of a family's hyper-parameters, each raising :class:`~unflow_zoo.errors.ConfigError`.

A family's builder (:mod:`unflow_zoo.flows`) calls these before it builds any layer, and
:class:`~unflow_zoo.models.FlowModule` calls them for its training options, e.g.::

    n_layers = positive_int("n_layers", hp.n_layers, owner="realnvp")
    hidden = positive_ints("hidden", hp.hidden, owner="realnvp")

Every message names the owner, the argument, the value received, the valid range and
a fix: ``realnvp needs n_layers >= 1 (an int), got n_layers=0; pass a whole number >= 1,
e.g. n_layers=1``. Each check returns the value normalised (``int``/``float``/``list``),
and accepts NumPy scalars as well as Python ones, but never a ``bool`` for a number.

:func:`config_errors` turns a ``ValueError`` from a transform's own constructor into a
``ConfigError`` too, so that a bad setting the checks here do not cover still surfaces
as one of the package's errors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from unflow_zoo.errors import ConfigError, UnflowZooError

__all__ = [
    "affine_stack",
    "config_errors",
    "event_shape",
    "in_range",
    "integer",
    "mlp_activation",
    "non_negative_float",
    "non_negative_int",
    "one_of",
    "optional_positive_float",
    "positive_float",
    "positive_int",
    "positive_ints",
]

DEFAULT_OWNER = "this model"


_FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def _fail(owner: str, name: str, value: Any, valid: str, fix: str) -> ConfigError:
    return ConfigError(f"{owner} needs {name} {valid}, got {name}={value!r}; {fix}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    owner: str = DEFAULT_OWNER,
    fix: str | None = None,
) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (either bound optional)."""
    parts = ([f">= {minimum}"] if minimum is not None else []) + ([f"<= {maximum}"] if maximum is not None else [])
    valid = " and ".join(parts) + " (an int)" if parts else "to be an int"
    example = minimum if minimum is not None else maximum if maximum is not None else 1
    hint = fix or f"pass a whole number{' ' + ' and '.join(parts) if parts else ''}, e.g. {name}={example}"
    if not _is_int(value):
        raise _fail(owner, name, value, valid, hint)
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise _fail(owner, name, value, valid, hint)
    return v


def positive_int(name: str, value: Any, *, owner: str = DEFAULT_OWNER, fix: str | None = None) -> int:
    """``value`` as an ``int >= 1`` (layer counts, widths, bins, nodes, ...)."""
    return integer(name, value, minimum=1, owner=owner, fix=fix)


def non_negative_int(name: str, value: Any, *, owner: str = DEFAULT_OWNER, fix: str | None = None) -> int:
    """``value`` as an ``int >= 0``."""
    return integer(name, value, minimum=0, owner=owner, fix=fix)


def positive_ints(
    name: str,
    values: Any,
    *,
    owner: str = DEFAULT_OWNER,
    allow_empty: bool = True,
    what: str = "hidden width",
    fix: str | None = None,
) -> list[int]:
    """``values``, a list of layer widths, as a list of ``int >= 1``; empty only with ``allow_empty``."""
    hint = fix or f"pass a list of whole numbers >= 1, e.g. {name}=[64, 64]"
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise _fail(owner, name, values, f"to be a list of ints >= 1 (each {what})", hint)
    items = list(values)
    if not items and not allow_empty:
        raise ConfigError(f"{owner} needs at least one {what} in {name}, got {name}={items!r}; {hint}")
    bad = [v for v in items if not _is_int(v) or int(v) < 1]
    if bad:
        raise ConfigError(
            f"{owner} needs every {what} in {name} to be an int >= 1, got {name}={items!r} "
            f"(bad: {', '.join(map(repr, bad))}); {hint}"
        )
    return [int(v) for v in items]


def in_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    owner: str = DEFAULT_OWNER,
    fix: str | None = None,
) -> float:
    """``value`` as a finite ``float`` in the interval from ``low`` to ``high`` (``None``: unbounded);
    ``low_open``/``high_open`` exclude the end points. ``in_range("dropout", p, 0, 1, high_open=True)``
    is ``[0, 1)``."""
    if low is not None and high is not None:
        valid = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        valid = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        valid = f"{'<' if high_open else '<='} {high:g}"
    else:
        valid = "finite"
    hint = fix or f"pass a finite number {valid}"
    try:
        v = float(value) if _is_real(value) else math.nan
    except OverflowError:  # an int beyond the float range
        v = math.inf
    if not math.isfinite(v):
        raise _fail(owner, name, value, f"{valid} (a finite number)", hint)
    if abs(v) > _FLOAT32_MAX:
        # a value finite in float64 but inf in float32 turns the first float32 op into inf/NaN
        raise _fail(owner, name, value, f"{valid} (a finite number; at most 3.4e38, which float32 can hold)", hint)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        raise _fail(owner, name, value, f"{valid} (a finite number)", hint)
    return v


def positive_float(name: str, value: Any, *, owner: str = DEFAULT_OWNER, fix: str | None = None) -> float:
    """``value`` as a finite ``float > 0`` (tolerances, bounds, scales)."""
    return in_range(name, value, 0, None, low_open=True, owner=owner, fix=fix)


def optional_positive_float(
    name: str, value: Any, *, owner: str = DEFAULT_OWNER, fix: str | None = None
) -> float | None:
    """``None``, or ``value`` as a finite ``float > 0``."""
    if value is None:
        return None
    return positive_float(name, value, owner=owner, fix=fix or f"pass a finite number > 0, or {name}=None")


def non_negative_float(name: str, value: Any, *, owner: str = DEFAULT_OWNER, fix: str | None = None) -> float:
    """``value`` as a finite ``float >= 0`` (penalty weights, slopes)."""
    return in_range(name, value, 0, None, owner=owner, fix=fix)


def one_of(name: str, value: Any, choices: Sequence[Any], *, owner: str = DEFAULT_OWNER) -> Any:
    """``value`` if it is one of ``choices`` (a name from a fixed list)."""
    if value not in choices:
        raise ConfigError(
            f"unknown {owner} {name} {value!r}; choose one of {list(choices)}, e.g. {name}={choices[0]!r}"
        )
    return value


def event_shape(value: Any, *, owner: str = DEFAULT_OWNER) -> tuple[int, ...]:
    """``value`` (the shape of one data point) as a non-empty tuple of ``int >= 1``."""
    hint = "pass the shape of one data point as positive ints, e.g. event_shape=(2,) or (1, 28, 28)"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail(owner, "event_shape", value, "to be a tuple of ints >= 1", hint)
    items = tuple(value)
    if not items or any(not _is_int(s) or int(s) < 1 for s in items):
        raise _fail(owner, "event_shape", items, "to be a non-empty tuple of ints >= 1", hint)
    return tuple(int(s) for s in items)


@contextmanager
def config_errors(owner: str) -> Iterator[None]:
    """Re-raise a plain ``ValueError`` from the block (a transform's constructor rejecting a
    setting) as a :class:`ConfigError` with the same message (prefixed by ``owner`` unless it
    names it already)."""
    try:
        yield
    except UnflowZooError:
        raise
    except ValueError as e:
        message = str(e)
        raise ConfigError(message if owner in message else f"{owner}: {message}") from e


def mlp_activation(name: str, value: Any, *, owner: str = DEFAULT_OWNER) -> str:
    """``value`` if it names an activation of the MLP/MADE conditioners (:func:`unflow_zoo.nn.mlp.activation`)."""
    from unflow_zoo.nn.mlp import _ACTIVATIONS

    return one_of(name, value, sorted(_ACTIVATIONS), owner=owner)


def affine_stack(
    n_layers: Any, hidden: Any, act: Any, scale_clamp: Any, *, owner: str
) -> tuple[int, list[int], float | None]:
    """``(n_layers, hidden, scale_clamp)`` of an affine MLP/MADE family (maf, realnvp), checked with its ``act``."""
    layers = positive_int("n_layers", n_layers, owner=owner)
    widths = positive_ints("hidden", hidden, owner=owner)
    mlp_activation("act", act, owner=owner)
    return layers, widths, optional_positive_float("scale_clamp", scale_clamp, owner=owner)
