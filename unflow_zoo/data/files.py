"""Points from text files, and the seed paper's four data sets shipped with the package.

A data file holds one point per line, coordinates separated by whitespace, in
UTF-8 (or UTF-16/32 with a byte-order mark). Blank lines and lines starting with
``#`` are skipped. Every malformed line is reported by its 1-based number (and
column), as a :class:`~unflow_zoo.errors.DataError`, so a bad file can be fixed
in an editor.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike
from torch import Tensor

from unflow_zoo.data.synthetic import checkerboard_log_prob
from unflow_zoo.data.validation import validate_points
from unflow_zoo.errors import ConfigError, DataError, MissingFileError

__all__ = [
    "VENDORED",
    "VENDORED_DIR",
    "DataFileNotFoundError",
    "VendoredDataset",
    "load_vendored",
    "peek_dim",
    "read_points",
    "resolve_path",
]

VENDORED_DIR = Path(__file__).resolve().parent / "overparam_nfs"

_FORMAT = "expected one point per line, coordinates separated by spaces or tabs"


class DataFileNotFoundError(DataError, MissingFileError):
    """A data file is not where it was looked for; the message names every place looked at
    and where to put the file. Also a ``FileNotFoundError``, as raised before."""


def resolve_path(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find a data file: ``path`` as given (absolute, or relative to the working
    directory), then relative to ``data_dir``.

    Raises:
        DataFileNotFoundError: no candidate exists; the message lists every place looked at.
    """
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() or data_dir is None else [p, Path(data_dir).expanduser() / p]
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c.resolve()) + (" (a folder)" if c.is_dir() else "") for c in candidates)
    put = f"put the file at {candidates[-1].resolve()}" if len(candidates) > 1 else "put the file there"
    raise DataFileNotFoundError(
        f"no data file {str(path)!r} (looked at: {looked}); {put}, or pass path= an existing text file "
        "with one point per line (absolute, or relative to the working directory or to data_dir)"
    )


def _empty_error(path: Path) -> DataError:
    return DataError(f"{path} contains no data rows (blank lines and lines starting with '#' are skipped); {_FORMAT}")


def _encoding(path: Path) -> str:
    """The text encoding of ``path``: UTF-8, or UTF-16/32 when the file starts with their byte-order mark."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"  # UTF-8, skipping a byte-order mark if there is one


def _binary_hint(path: Path) -> str:
    return (
        f"is {path.name} a binary file (.npy, .pt, a spreadsheet) or in another encoding? "
        f"Save the points as plain UTF-8 text, {_FORMAT}"
    )


def _data_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(1-based line number, tokens)`` of every data line of ``path``: blank lines and
    comments skipped; Unix, Windows or old Mac line endings.

    Raises:
        DataError: the file cannot be read, or a data line is not text (bytes that are not
            UTF-8, NUL characters); names the line.
    """
    encoding = _encoding(path)
    number = 0
    try:
        # surrogateescape: a stray byte decodes to a lone surrogate instead of failing the whole
        # file, so a comment in Latin-1 is harmless and a data line can be named.
        with path.open(encoding=encoding, errors="surrogateescape", newline=None) as fh:
            for number, line in enumerate(fh, start=1):
                tokens = line.split()
                if not tokens or tokens[0].startswith("#"):
                    continue
                if "\x00" in line or not _is_text(line):
                    raise _not_text(path, number, line, encoding)
                yield number, tokens
    except UnicodeDecodeError as e:  # UTF-16/32 cut mid-character: not something surrogateescape can pass
        raise DataError(
            f"{path}: not valid {encoding} text after line {number} ({e.reason}); {_binary_hint(path)}"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None


def _is_text(line: str) -> bool:
    """Whether ``line`` decoded without stray bytes (which surrogateescape turned into lone surrogates)."""
    if line.isascii():
        return True
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_text(path: Path, number: int, line: str, encoding: str) -> DataError:
    k = next(k for k, ch in enumerate(line) if ch == "\x00" or "\udc80" <= ch <= "\udcff")
    what = "a NUL character" if line[k] == "\x00" else f"byte 0x{ord(line[k]) - 0xDC00:02x}"
    return DataError(
        f"{path}: line {number}, character {k + 1}: {what} is not {encoding.removesuffix('-sig')} text; "
        + _binary_hint(path)
    )


def _token_error(path: Path, number: int, tokens: list[str], header_possible: bool) -> DataError:
    """The error for a data line with a token that is not a number: names the line and column."""
    column, token = next((j + 1, t) for j, t in enumerate(tokens) if not _is_float(t))
    sep = next((c for c in ",;|" if c in token), None)
    if sep is not None:
        name = {",": "comma", ";": "semicolon", "|": "pipe"}[sep]
        hint = f"; the file looks {name}-separated, use spaces or tabs between coordinates"
    elif header_possible and not any(_is_float(t) for t in tokens):
        hint = "; if this line is a header of column names, start it with '#' to make it a comment"
    else:
        hint = ""
    return DataError(f"{path}: line {number}, column {column}: {token[:40]!r} is not a number{hint}")


def peek_dim(path: str | os.PathLike[str]) -> int:
    """Number of columns on the first data line of ``path``, without reading the rest.

    Raises:
        DataError: the file has no data rows, or its first data line is not numbers.
    """
    p = Path(path)
    for number, tokens in _data_lines(p):
        if not all(map(_is_float, tokens)):
            raise _token_error(p, number, tokens, header_possible=True)
        return len(tokens)
    raise _empty_error(p)


def read_points(path: str | os.PathLike[str], dtype: DTypeLike = np.float32) -> np.ndarray:
    """Read a text file of points into an ``(n, D)`` float64 array.

    One point per line, coordinates separated by spaces or tabs; blank lines and lines
    starting with ``#`` are skipped. UTF-8 (with or without a byte-order mark), or
    UTF-16/32 with one; Unix, Windows or old Mac line endings.

    Args:
        path: the file.
        dtype: the dtype the points will be trained in (float32 by default): values finite
            in float64 but not in ``dtype`` are refused. The array returned is float64.

    Raises:
        DataFileNotFoundError: ``path`` does not exist (also a ``FileNotFoundError``).
        DataError: the file has no data rows; a row has a different number of
            columns than the first (names the line, the expected and the found
            count); a token is not a number (names the line and column); a line is
            not text; a row holds NaN or inf (names the lines); a value overflows
            ``dtype`` (names the line and column).
    """
    p = Path(path)
    if not p.is_file():
        where = f"{str(p.resolve())!r}" + (", which is a folder" if p.is_dir() else "")
        raise DataFileNotFoundError(
            f"no data file at {where}; put the file there or pass the path of an existing text file, {_FORMAT}"
        )
    # One flat list of floats, not a list per row: fewer objects for the garbage collector to scan.
    values: list[float] = []
    lines: list[int] = []
    width, first_line = 0, 0
    for number, tokens in _data_lines(p):
        if not lines:
            width, first_line = len(tokens), number
        elif len(tokens) != width:
            raise DataError(
                f"{p}: line {number} has {len(tokens)} columns, expected {width} (as on line {first_line}); "
                "every point needs the same number of whitespace-separated coordinates"
            )
        try:
            values.extend(map(float, tokens))
        except ValueError:
            raise _token_error(p, number, tokens, header_possible=not lines) from None
        lines.append(number)
    if not lines:
        raise _empty_error(p)
    data = np.asarray(values, dtype=np.float64).reshape(len(lines), width)
    return validate_points(data, where=str(p), lines=lines, dtype=dtype)


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
        raise ConfigError(f"unknown shipped data set {name!r}; choose one of: {', '.join(sorted(VENDORED))}")
    return read_points(VENDORED[name].path)
