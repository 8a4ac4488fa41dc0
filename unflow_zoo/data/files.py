"""Points from text files, and the seed paper's four data sets shipped with the package.

A data file holds one point per line, coordinates separated by whitespace.
Blank lines and lines starting with ``#`` are skipped. Every malformed line is
reported by its 1-based number, so a bad file can be fixed in an editor.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from torch import Tensor

from unflow_zoo.data.synthetic import checkerboard_log_prob
from unflow_zoo.data.validation import validate_points

__all__ = ["VENDORED", "VENDORED_DIR", "VendoredDataset", "load_vendored", "peek_dim", "read_points", "resolve_path"]

VENDORED_DIR = Path(__file__).resolve().parent / "overparam_nfs"


def resolve_path(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find a data file: ``path`` as given (absolute, or relative to the working
    directory), then relative to ``data_dir``.

    Raises:
        FileNotFoundError: no candidate exists; the message lists every place looked at.
    """
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() or data_dir is None else [p, Path(data_dir).expanduser() / p]
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c.resolve()) for c in candidates)
    raise FileNotFoundError(
        f"no data file {str(path)!r} (looked at: {looked}); pass path= an existing text file "
        "with one point per line, or a path relative to data_dir"
    )


def _empty_error(path: Path) -> ValueError:
    return ValueError(
        f"{path} contains no data rows (blank lines and lines starting with '#' are skipped); "
        "expected one point per line, coordinates separated by whitespace"
    )


def peek_dim(path: str | os.PathLike[str]) -> int:
    """Number of columns on the first data line of ``path``, without reading the rest."""
    p = Path(path)
    with p.open(encoding="utf-8") as fh:
        for line in fh:
            text = line.strip()
            if text and not text.startswith("#"):
                return len(text.split())
    raise _empty_error(p)


def read_points(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a whitespace-separated text file of points into an ``(n, D)`` float64 array.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file has no data rows; a row has a different number of
            columns than the first (names the line, the expected and the found
            count); a token is not a number (names the line and column); a row
            holds NaN or inf (names the lines).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no data file at {str(p.resolve())!r}; check the path")
    # One flat list of floats, not a list per row: fewer objects for the garbage collector to scan.
    values: list[float] = []
    lines: list[int] = []
    width, first_line = 0, 0
    with p.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if not lines:
                width, first_line = len(tokens), number
            elif len(tokens) != width:
                raise ValueError(
                    f"{p}: line {number} has {len(tokens)} columns, expected {width} (as on line {first_line}); "
                    "every point needs the same number of whitespace-separated coordinates"
                )
            try:
                values.extend(map(float, tokens))
            except ValueError:
                column, token = next((j + 1, t) for j, t in enumerate(tokens) if not _is_float(t))
                hint = "; the file looks comma-separated, use spaces or tabs" if "," in token else ""
                raise ValueError(f"{p}: line {number}, column {column}: {token!r} is not a number{hint}") from None
            lines.append(number)
    if not lines:
        raise _empty_error(p)
    data = np.asarray(values, dtype=np.float64).reshape(len(lines), width)
    return validate_points(data, where=str(p), lines=lines)


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# ----- the seed paper's data sets ---------------------------------------------------------------


@dataclass(frozen=True)
class VendoredDataset:
    """A data file shipped in ``overparam_nfs/`` (MIT, see its LICENSE).

    ``log_prob`` is the true log-density in raw coordinates where the generating
    distribution is known, else ``None``.
    """

    name: str
    filename: str
    dim: int
    description: str
    log_prob: Callable[[Tensor], Tensor] | None = None

    @property
    def path(self) -> Path:
        return VENDORED_DIR / self.filename


VENDORED: dict[str, VendoredDataset] = {
    d.name: d
    for d in (
        VendoredDataset("mog1d", "mog1d.txt", 1, "two Gaussians, about 0.5 N(-2.5, 1) + 0.5 N(2.5, 1)"),
        VendoredDataset("beta1d", "beta1d.txt", 1, "three bumps on [-1, 1]"),
        # The file is uniform on the 8 unit squares of [0, 4)^2 whose integer
        # coordinates sum to an even number (1250 points each), so its density is known.
        VendoredDataset(
            "grid",
            "grid-dataset.txt",
            2,
            "checkerboard on [0, 4]^2, uniform on 8 of 16 unit squares",
            log_prob=partial(checkerboard_log_prob, low=0.0, high=4.0),
        ),
        VendoredDataset("mog5d", "mog5d.txt", 5, "multimodal 5-D mixture"),
    )
}


def load_vendored(name: str) -> np.ndarray:
    """Read the shipped data set ``name`` (``mog1d``, ``beta1d``, ``grid``, ``mog5d``).

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv 2106.10535; data from
        github.com/kulinshah98/overparam-NFs, ``datasets/`` (MIT).
    """
    if name not in VENDORED:
        raise ValueError(f"unknown shipped data set {name!r}; choose one of: {', '.join(sorted(VENDORED))}")
    return read_points(VENDORED[name].path)
