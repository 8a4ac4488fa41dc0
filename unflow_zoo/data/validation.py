"""Checks every data set passes before a model sees it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["validate_points"]

_SHOWN = 5  # how many offending rows an error names; enough to find them, short enough to read


def validate_points(data: np.ndarray, where: str, lines: Sequence[int] | None = None) -> np.ndarray:
    """Check that ``data`` is a non-empty ``(n, D)`` array of finite numbers.

    A single NaN or inf turns the NLL of a whole batch into NaN, so bad rows are
    refused up front rather than discovered as a diverged run.

    Args:
        data: the points, one per row.
        where: the file or source the points came from; every error names it.
        lines: for data read from a file, the 1-based line number of each row, so
            that errors point at lines rather than row indices.

    Returns:
        ``data``, unchanged, so the call can be chained.

    Raises:
        ValueError: ``data`` is not 2-D, has no rows, or has rows with NaN/inf;
            the message says how many rows are bad and names the first few.
    """
    if data.ndim != 2:
        raise ValueError(f"{where}: expected points as an array of shape (n, D), got shape {data.shape}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{where}: expected at least one point with at least one coordinate, got shape {data.shape}")
    bad = np.flatnonzero(~np.isfinite(data).all(axis=1))
    if bad.size:
        first = bad[:_SHOWN]
        if lines is not None:
            named = "lines " + ", ".join(str(lines[i]) for i in first)
        else:
            named = "row indices " + ", ".join(str(i) for i in first)
        more = f" (first {_SHOWN} shown)" if bad.size > _SHOWN else ""
        raise ValueError(
            f"{where}: {bad.size} of {data.shape[0]} rows contain NaN or inf, at {named}{more}; "
            "remove or impute those rows before training"
        )
    return data
