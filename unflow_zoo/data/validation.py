"""Checks every data set passes before a model sees it.

Points are checked in the dtype they will be trained in (float32 unless a data module is
told otherwise), not only in the float64 they were read in: ``1e39`` is a finite float64
but ``inf`` in float32, and would surface much later as a NaN loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from unflow_zoo.errors import DataError, DataTypeError

__all__ = ["validate_points"]

_SHOWN = 5  # how many offending rows an error names; enough to find them, short enough to read
# Kinds of NumPy arrays that hold real numbers: booleans, signed and unsigned integers, floats.
_REAL_KINDS = "biuf"


def _as_array(data: Any, where: str) -> np.ndarray:
    if isinstance(data, np.ndarray):
        array = data
    else:
        try:
            if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor, wherever it lives
                tensor = data.detach().cpu()
                # NumPy has no bfloat16: widen it (exactly) to float32 first
                data = (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()
            array = np.asarray(data)
        except (ValueError, TypeError, RuntimeError) as e:  # ragged nested lists, objects NumPy cannot hold
            raise DataError(f"{where}: expected points as an (n, D) array of numbers; NumPy cannot make one ({e})")
    if array.dtype.kind not in _REAL_KINDS:
        hint = {
            "c": "complex numbers have no density on the real line; put the real and imaginary parts in two columns",
            "U": "parse the strings first, e.g. np.asarray(x, dtype=np.float64)",
            "S": "parse the bytes first, e.g. np.asarray(x, dtype=np.float64)",
            "O": "convert it first, e.g. np.asarray(x, dtype=np.float64), which names the entry that is not a number",
        }.get(array.dtype.kind, "convert it to floats first")
        raise DataTypeError(f"{where}: expected real numbers, got an array of dtype {array.dtype}; {hint}")
    return array


def _where_rows(bad: np.ndarray, lines: Sequence[int] | None) -> str:
    first = bad[:_SHOWN]
    named = (
        ("lines " + ", ".join(str(lines[i]) for i in first))
        if lines is not None
        else ("row indices " + ", ".join(str(i) for i in first))
    )
    return named + (f" (first {_SHOWN} shown)" if bad.size > _SHOWN else "")


def _overflow_error(
    data: np.ndarray, over: np.ndarray, where: str, lines: Sequence[int] | None, dtype: np.dtype
) -> DataError:
    rows = np.flatnonzero(over.any(axis=1))
    cells = []
    for i in rows[:_SHOWN]:
        j = int(np.flatnonzero(over[i])[0])
        at = f"line {lines[i]}, column {j + 1}" if lines is not None else f"row index {i}, column index {j}"
        cells.append(f"{at} ({data[i, j]:.6g})")
    more = f" (first {_SHOWN} shown)" if rows.size > _SHOWN else ""
    columns = np.flatnonzero(over.any(axis=0))
    divisors = []
    for j in columns[:_SHOWN]:
        largest = float(np.abs(data[:, j].astype(np.float64)).max())
        name = f"column {j + 1}" if lines is not None else f"column index {j}"
        divisors.append(f"{name} by 1e{math.floor(math.log10(largest))}")
    return DataError(
        f"{where}: {rows.size} of {data.shape[0]} rows hold values too large for {dtype} (its largest finite "
        f"value is {float(np.finfo(dtype).max):.4g}), which training would turn into inf: at "
        f"{'; '.join(cells)}{more}. Rescale those columns, e.g. divide {', '.join(divisors)}, "
        "or train in float64 (DensityDataModule(dtype='float64') with Trainer(precision='64-true'))"
    )


def validate_points(
    data: Any, where: str, lines: Sequence[int] | None = None, dtype: DTypeLike = np.float32
) -> np.ndarray:
    """Check that ``data`` is a non-empty ``(n, D)`` array of real numbers, finite in ``dtype``.

    A single NaN or inf turns the NLL of a whole batch into NaN, so bad rows are
    refused up front rather than discovered as a diverged run. So are values that
    are finite as given but overflow ``dtype``, the dtype the points are trained in
    (``1e39`` is a float64, but inf in float32).

    Args:
        data: the points, one per row: a NumPy array, or anything ``np.asarray`` takes
            (nested lists, a CPU or GPU tensor).
        where: the file or source the points came from; every error names it.
        lines: for data read from a file, the 1-based line number of each row, so
            that errors point at lines (and 1-based columns) rather than indices.
        dtype: the floating dtype the points will be trained in; float32 by default,
            as :class:`~unflow_zoo.data.module.DensityDataModule` serves them.

    Returns:
        ``data`` as a NumPy array in its own dtype (not cast to ``dtype``), so the call
        can be chained and later arithmetic (standardisation) keeps its precision.

    Raises:
        DataTypeError: ``data`` holds strings, objects, complex numbers or other non-reals.
        DataError: ``data`` is not 2-D, has no rows, has rows with NaN/inf, or has values
            that overflow ``dtype``; the message says how many rows are bad, names the
            first few (by line and column for files) and how to fix them.
    """
    data = _as_array(data, where)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise DataTypeError(f"{where}: points are trained in a floating dtype, not {dtype}")
    if data.ndim != 2:
        raise DataError(f"{where}: expected points as an array of shape (n, D), got shape {data.shape}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise DataError(f"{where}: expected at least one point with at least one coordinate, got shape {data.shape}")
    bad = np.flatnonzero(~np.isfinite(data).all(axis=1))
    if bad.size:
        hint = "; a number beyond float64's range (such as 1e400) reads as inf" if lines is not None else ""
        raise DataError(
            f"{where}: {bad.size} of {data.shape[0]} rows contain NaN or inf, at {_where_rows(bad, lines)}; "
            f"remove or impute those rows before training{hint}"
        )
    if not np.can_cast(data.dtype, dtype, casting="safe"):
        with np.errstate(over="ignore"):
            over = np.isinf(data.astype(dtype))
        if over.any():
            raise _overflow_error(data, over, where, lines, dtype)
    return data
