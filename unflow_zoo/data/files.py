"""Points from data files, and the seed paper's four data sets shipped with the package.

A data file is read by its suffix (:func:`read_table`, :func:`peek_table`):

- any suffix but the three below: text, one point per line, coordinates separated by
  whitespace, in UTF-8 (or UTF-16/32 with a byte-order mark) (:func:`read_points`);
- ``.csv``: comma-separated values, one point per row; a first row that holds no number is
  a header of column names (:func:`read_csv`);
- ``.npy``: one ``(n, D)`` array of numbers, as ``np.save`` writes it (:func:`read_npy`);
- ``.npz``: an ``np.savez`` archive of one such array, or of ``x`` and optionally ``context``
  (one row per point, the context of a conditional flow) (:func:`read_npz`).

In the text formats blank lines and lines starting with ``#`` are skipped, and every
malformed line is reported by its 1-based number (and column), as a
:class:`~unflow_zoo.errors.DataError`, so a bad file can be fixed in an editor; arrays are
reported by row and column index. NumPy files are read with ``allow_pickle=False``: an
array of Python objects (which only unpickling could read, and unpickling can run code) is
refused, never loaded.
"""

from __future__ import annotations

import codecs
import csv
import os
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike
from torch import Tensor

from unflow_zoo.data.paths import DATA_DIR_HINT
from unflow_zoo.data.synthetic import checkerboard_log_prob
from unflow_zoo.data.validation import validate_points
from unflow_zoo.errors import ConfigError, DataError, DataTypeError, MissingFileError

__all__ = [
    "FILE_FORMATS",
    "VENDORED",
    "VENDORED_DIR",
    "DataFileNotFoundError",
    "Table",
    "TableInfo",
    "VendoredDataset",
    "load_vendored",
    "peek_dim",
    "peek_table",
    "read_csv",
    "read_npy",
    "read_npz",
    "read_points",
    "read_table",
    "resolve_path",
]

VENDORED_DIR = Path(__file__).resolve().parent / "overparam_nfs"

_FORMAT = "expected one point per line, coordinates separated by spaces or tabs"

#: The suffixes read by their own reader (any other file is whitespace-separated text).
FILE_FORMATS: dict[str, str] = {
    ".csv": "comma-separated values, one point per row, optionally under a header row of column names",
    ".npy": "one (n, D) array of numbers, as np.save writes it",
    ".npz": "an np.savez archive of one (n, D) array, or of 'x' and optionally 'context' (one row per point)",
}


class DataFileNotFoundError(DataError, MissingFileError):
    """A data file is not where it was looked for; the message names every place looked at
    and where to put the file. Also a ``FileNotFoundError``, as raised before."""


def resolve_path(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find a data file: ``path`` as given (absolute, or relative to the working
    directory), then relative to ``data_dir``.

    Args:
        path: the file the user named.
        data_dir: the folder to try second for a relative ``path`` (the data module passes its
            ``data_dir``, by default the user's cache, see :mod:`unflow_zoo.data.paths`); None
            tries the working directory alone.

    Returns:
        The first candidate that is a file.

    Raises:
        DataFileNotFoundError: no candidate exists; the message lists every place looked at
            and how the default ``data_dir`` is chosen.
    """
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() or data_dir is None else [p, Path(data_dir).expanduser() / p]
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c.resolve()) + (" (a folder)" if c.is_dir() else "") for c in candidates)
    put = f"put the file at {candidates[-1].resolve()}" if len(candidates) > 1 else "put the file there"
    raise DataFileNotFoundError(
        f"no data file {str(path)!r} (looked at: {looked}); {put}, or pass path= an existing data file "
        "(text with one point per line, .csv, .npy or .npz; absolute, or relative to the working directory "
        "or to data_dir)" + (f" ({DATA_DIR_HINT})" if len(candidates) > 1 else "")
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
        f"is {path.name} a binary file (.pt, a spreadsheet; NumPy files are read as such only when named "
        f".npy or .npz) or in another encoding? Save the points as plain UTF-8 text, {_FORMAT}, or as .npy/.npz"
    )


def _data_lines(path: Path, split: Callable[[str], list[str]] | None = None) -> Iterator[tuple[int, list[str]]]:
    """``(1-based line number, tokens)`` of every data line of ``path``: blank lines and
    comments skipped; Unix, Windows or old Mac line endings.

    Args:
        path: the file.
        split: how a data line becomes tokens; None: at whitespace.

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
                yield number, (tokens if split is None else split(line))
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
    p = _existing(path, f"the path of an existing text file, {_FORMAT}")
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


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path, or a :class:`DataFileNotFoundError` saying where it is not."""
    p = Path(path)
    if not p.is_file():
        where = f"{str(p.resolve())!r}" + (", which is a folder" if p.is_dir() else "")
        raise DataFileNotFoundError(f"no data file at {where}; put the file there or pass {what}")
    return p


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# ----- CSV ----------------------------------------------------------------------------------------


def _csv_fields(line: str) -> list[str]:
    try:
        return [field.strip() for field in next(csv.reader([line]))]
    except csv.Error as e:  # a field beyond the csv module's size limit
        return [f"<{e}>"]  # not a number: reported by line and column like any other


def _csv_value_error(path: Path, number: int, column: int, field: str, first_row: bool) -> DataError:
    """The error for a CSV field that is not a number: names the line and column."""
    if not field:
        return DataError(f"{path}: line {number}, column {column}: empty value; fill it in or remove the row")
    if ";" in field:
        hint = "; the file looks semicolon-separated, but a .csv file is read comma-separated"
    elif len(field.split()) > 1:
        hint = "; the file looks whitespace-separated: name it .txt to read it so"
    elif first_row:
        hint = "; a header row (column names) must hold no number at all"
    else:
        hint = ""
    return DataError(f"{path}: line {number}, column {column}: {field[:40]!r} is not a number{hint}")


def _numbers(field: str) -> bool:
    """Whether ``field`` is a number, or numbers run together by another separator (``1;2``, ``1 2``)."""
    return bool(field) and all(map(_is_float, field.replace(";", " ").split()))


def _csv_header(fields: list[str]) -> bool:
    """Whether a first row is a header: none of its fields is a number (an empty one is not)."""
    return not any(map(_numbers, fields))


def read_csv(path: str | os.PathLike[str], dtype: DTypeLike = np.float32) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Read a comma-separated file of points into an ``(n, D)`` float64 array, and its header.

    One point per row, values separated by commas (quoted fields allowed, spaces around a value
    ignored). A first row in which no field is a number is a header of column names. Blank
    lines and lines starting with ``#`` are skipped; encodings and line endings as :func:`read_points`.

    Args:
        path: the file.
        dtype: the dtype the points will be trained in (float32 by default): values finite
            in float64 but not in ``dtype`` are refused. The array returned is float64.

    Returns:
        ``(points, header)``: the header's column names, or None when the file has none.

    Raises:
        DataFileNotFoundError: ``path`` does not exist (also a ``FileNotFoundError``).
        DataError: no data rows; a row with another number of values than the header or the
            first row (names the line and both counts); an empty value or one that is not a
            number (names the line and column); NaN or inf (names the lines); a value that
            overflows ``dtype`` (names the line and column).
    """
    p = _existing(path, "the path of an existing .csv file, one point per row")
    header: tuple[str, ...] | None = None
    values: list[float] = []
    lines: list[int] = []
    width, first_line = 0, 0
    for number, fields in _data_lines(p, _csv_fields):
        if not first_line:
            width, first_line = len(fields), number
            if _csv_header(fields):
                header = tuple(fields)
                continue
        elif len(fields) != width:
            raise DataError(
                f"{p}: line {number} has {len(fields)} values, expected {width} (as on line {first_line}); "
                "every row needs the same number of comma-separated values"
            )
        for column, field in enumerate(fields, start=1):
            try:
                values.append(float(field))
            except ValueError:
                raise _csv_value_error(p, number, column, field, first_row=not lines and header is None) from None
        lines.append(number)
    if not lines:
        raise DataError(
            f"{p} contains no data rows"
            + (" below its header" if header is not None else "")
            + " (blank lines and lines starting with '#' are skipped); expected one point per row, values "
            "separated by commas"
        )
    data = np.asarray(values, dtype=np.float64).reshape(len(lines), width)
    return validate_points(data, where=str(p), lines=lines, dtype=dtype), header


def _peek_csv(path: Path) -> TableInfo:
    header: tuple[str, ...] | None = None
    for number, fields in _data_lines(path, _csv_fields):
        if header is None and _csv_header(fields):
            header = tuple(fields)
            continue
        if header is not None and len(fields) != len(header):
            raise DataError(
                f"{path}: line {number} has {len(fields)} values but the header has {len(header)} column names"
            )
        for column, field in enumerate(fields, start=1):
            if not (field and _is_float(field)):
                raise _csv_value_error(path, number, column, field, first_row=header is None)
        return TableInfo(len(fields), columns=header)
    raise DataError(
        f"{path} contains no data rows"
        + (" below its header" if header is not None else "")
        + " (blank lines and lines starting with '#' are skipped); expected one point per row, values separated "
        "by commas"
    )


# ----- NumPy files ----------------------------------------------------------------------------------

# What NumPy and zipfile raise on damaged bytes (a truncated or corrupted file, a header that is
# not a dict literal, a bad CRC or deflate stream); all of them become the package's DataError.
_DAMAGED = (
    ValueError,
    OSError,
    EOFError,
    SyntaxError,
    struct.error,
    tokenize.TokenError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,  # a zip compression method that zipfile does not know
    RuntimeError,  # an encrypted zip member
)

_NO_PICKLE = (
    "unflow-zoo never unpickles a data file (unpickling can run code): save an array of numbers, "
    "e.g. np.save(path, np.asarray(x, dtype=np.float64))"
)


def _npy_header(fh: object, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of the ``.npy`` stream ``fh``, reading nothing else."""
    fmt = np.lib.format
    head = fh.peek(2)[:2] if hasattr(fh, "peek") else b""  # type: ignore[attr-defined]
    try:
        version = fmt.read_magic(fh)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(fh)
    except _DAMAGED as e:
        what = "it starts like a pickle, which is not read" if head[:1] == b"\x80" else f"{e}"
        raise DataError(f"{where}: not a NumPy .npy array ({what}); " + _NO_PICKLE) from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _check_array(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """Refuse, from its header alone, an array that cannot be points: objects, non-numbers, not ``(n, D)``."""
    if dtype.hasobject:
        raise DataTypeError(
            f"{where}: holds Python objects (dtype {dtype}), which only unpickling could read; " + _NO_PICKLE
        )
    if dtype.kind not in "biuf":
        what = "a structured array" if dtype.kind == "V" else f"values of dtype {dtype}"
        raise DataTypeError(
            f"{where}: holds {what}, not real numbers; save the points as one array of numbers, one point per row"
        )
    if len(shape) != 2:
        hint = "; for n points of one coordinate save x[:, None] (shape (n, 1))" if len(shape) == 1 else ""
        raise DataError(f"{where}: expected an array of shape (n, D), one point per row, got shape {shape}{hint}")
    if 0 in shape:
        raise DataError(f"{where}: expected at least one point with at least one coordinate, got shape {shape}")


def _np_load_error(where: str, e: Exception) -> DataError:
    return DataError(f"{where}: cannot read the array ({e}); the file is probably truncated or damaged, save it again")


def read_npy(path: str | os.PathLike[str], dtype: DTypeLike = np.float32) -> np.ndarray:
    """Read a ``.npy`` file of points, one ``(n, D)`` array of numbers, into a float64 array.

    Read with ``np.load(..., allow_pickle=False)``, after its header has been checked: an
    array of Python objects, or a pickle under the ``.npy`` suffix, is refused, never loaded.

    Args:
        path: the file.
        dtype: the dtype the points will be trained in: values finite in float64 but not in
            ``dtype`` are refused. The array returned is float64.

    Raises:
        DataFileNotFoundError: ``path`` does not exist (also a ``FileNotFoundError``).
        DataTypeError: the array holds objects, strings, complex numbers or records.
        DataError: not a ``.npy`` file; not of shape ``(n, D)`` with ``n, D >= 1``; truncated;
            a row holds NaN or inf, or a value overflows ``dtype`` (names the row and column index).
    """
    p = _existing(path, "the path of an existing .npy file")
    with p.open("rb") as fh:
        shape, array_dtype = _npy_header(fh, str(p))
    _check_array(shape, array_dtype, str(p))
    try:
        array = np.load(p, allow_pickle=False)
    except _DAMAGED as e:
        raise _np_load_error(str(p), e) from None
    return np.asarray(validate_points(array, where=str(p), dtype=dtype), dtype=np.float64)


def _npz_arrays(path: Path) -> tuple[str, str | None, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """The keys of the points and of the context (None) of the archive ``path``, and every array's
    shape and dtype, from the headers alone; refuses what :func:`read_npz` cannot serve."""
    try:
        archive = zipfile.ZipFile(path)
    except _DAMAGED as e:
        raise DataError(f"{path}: not a NumPy .npz archive ({e}); write it with np.savez(path, x=x)") from None
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with archive:
        for member in archive.namelist():
            key = member.removesuffix(".npy")
            try:
                with archive.open(member) as fh:
                    headers[key] = _npy_header(fh, f"{path} (member {member!r})")
            except DataError:
                raise
            except _DAMAGED as e:
                raise _np_load_error(f"{path} (member {member!r})", e) from None
    keys = list(headers)
    if len(keys) == 1:
        x_key, context_key = keys[0], None
    elif "x" in headers and set(keys) <= {"x", "context"}:
        x_key, context_key = "x", ("context" if "context" in headers else None)
    else:
        raise DataError(
            f"{path}: holds {'no arrays' if not keys else 'arrays ' + ', '.join(map(repr, keys))}; expected one "
            "array, or 'x' (the points) and optionally 'context' (one row per point): np.savez(path, x=x, context=c)"
        )
    for key in (x_key, context_key):
        if key is not None:
            _check_array(*headers[key], f"{path} (array {key!r})")
    if context_key is not None and headers[context_key][0][0] != headers[x_key][0][0]:
        raise DataError(
            f"{path}: 'x' has {headers[x_key][0][0]} rows but 'context' has {headers[context_key][0][0]}; "
            "the context needs one row per point"
        )
    return x_key, context_key, headers


def read_npz(path: str | os.PathLike[str], dtype: DTypeLike = np.float32) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an ``.npz`` archive of points: one ``(n, D)`` array, or ``x`` and optionally ``context``.

    Args:
        path: the file, as ``np.savez(path, x)`` or ``np.savez(path, x=x, context=c)`` writes it
            (``np.savez_compressed`` too); ``context`` is ``(n, C)``, one row per point.
        dtype: the dtype the points will be trained in; both arrays are validated in it.

    Returns:
        ``(x, context)`` in float64, ``context`` None when the archive has none.

    Raises:
        DataFileNotFoundError: ``path`` does not exist (also a ``FileNotFoundError``).
        DataTypeError: an array holds objects (refused, never unpickled), strings, complex numbers or records.
        DataError: not an ``.npz`` archive; other keys than the above; an array not ``(n, D)``;
            a context with another number of rows; NaN, inf or overflow (names the array, row and column index).
    """
    p = _existing(path, "the path of an existing .npz file")
    x_key, context_key, _ = _npz_arrays(p)
    try:
        with np.load(p, allow_pickle=False) as archive:
            x = archive[x_key]
            context = archive[context_key] if context_key is not None else None
    except _DAMAGED as e:
        raise _np_load_error(str(p), e) from None
    x = np.asarray(validate_points(x, where=f"{p} (array {x_key!r})", dtype=dtype), dtype=np.float64)
    if context is not None:
        context = np.asarray(validate_points(context, where=f"{p} (array 'context')", dtype=dtype), dtype=np.float64)
    return x, context


# ----- any data file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableInfo:
    """What a data file holds, known from its first row or its array headers, without reading the rest.

    Attributes:
        width: the number of columns of the points (context columns included, before
            ``context_columns`` takes them out).
        columns: the column names of a CSV header; None without one.
        context_width: the columns of an ``.npz`` archive's ``context`` array; 0 without one.
    """

    width: int
    columns: tuple[str, ...] | None = None
    context_width: int = 0


@dataclass(frozen=True)
class Table:
    """The contents of a data file, validated, in float64.

    Attributes:
        x: the points ``(n, width)``.
        context: an ``.npz`` archive's ``context`` ``(n, C)``; None for the other formats.
        columns: the column names of a CSV header; None without one.
    """

    x: np.ndarray
    context: np.ndarray | None = None
    columns: tuple[str, ...] | None = None


def _format(path: Path) -> str:
    return path.suffix.lower() if path.suffix.lower() in FILE_FORMATS else ".txt"


def peek_table(path: str | os.PathLike[str]) -> TableInfo:
    """The shape of the data in ``path`` (see :class:`TableInfo`) from its first row or headers alone.

    Raises:
        DataError: the file is not of the format its suffix says, or its first row or header
            already shows that it cannot be read (see :func:`read_table`).
    """
    p = Path(path)
    fmt = _format(p)
    if fmt == ".npy":
        _existing(p, "the path of an existing .npy file")
        with p.open("rb") as fh:
            shape, dtype = _npy_header(fh, str(p))
        _check_array(shape, dtype, str(p))
        return TableInfo(shape[1])
    if fmt == ".npz":
        x_key, context_key, headers = _npz_arrays(_existing(p, "the path of an existing .npz file"))
        return TableInfo(headers[x_key][0][1], context_width=headers[context_key][0][1] if context_key else 0)
    if fmt == ".csv":
        return _peek_csv(p)
    return TableInfo(peek_dim(p))


def read_table(path: str | os.PathLike[str], dtype: DTypeLike = np.float32) -> Table:
    """Read the data file ``path`` by its suffix: ``.csv`` (:func:`read_csv`), ``.npy``
    (:func:`read_npy`), ``.npz`` (:func:`read_npz`), else text (:func:`read_points`).

    Args:
        path: the file.
        dtype: the dtype the points will be trained in; values that overflow it are refused.

    Returns:
        The points (and an ``.npz`` context, a CSV header), float64, validated.

    Raises:
        DataFileNotFoundError: ``path`` does not exist.
        DataError: anything the format's reader refuses; every message names the file and
            the line (text) or row index (arrays) and column.
    """
    p = Path(path)
    fmt = _format(p)
    if fmt == ".npy":
        return Table(read_npy(p, dtype))
    if fmt == ".npz":
        x, context = read_npz(p, dtype)
        return Table(x, context)
    if fmt == ".csv":
        x, header = read_csv(p, dtype)
        return Table(x, columns=header)
    return Table(read_points(p, dtype))


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
