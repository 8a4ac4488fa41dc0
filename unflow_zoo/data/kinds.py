r"""The kinds of data a :class:`~unflow_zoo.data.DensityDataModule` serves, one class each.

Every kind answers the same few questions, the :class:`DataKind` protocol, and the data
module holds one kind and asks it, instead of branching on data set names:

- what it serves: ``name`` (for messages), ``event_shape``, ``context_features`` (the width
  :math:`C` of the context :math:`c` of each point, 0 for none);
- how to get it: :meth:`DataKind.prepare` (download what is missing, once per node) and
  :meth:`DataKind.load` (the train/validation/test :class:`Splits`, each points and contexts);
- what is known about it: :attr:`DataKind.has_density` and :meth:`DataKind.log_prob` (the true
  :math:`\log p(x)` or :math:`\log p(x \mid c)` in the kind's own coordinates), ``scalable``
  (whether the module's ``scaling`` applies), ``preprocess`` (images: the pixel map),
  ``in_memory`` (the data exist only in this object, not in the module's arguments);
- which of the module's arguments it ignores (:attr:`DataKind.ignored`, one warning per group)
  and what else it warns about (:meth:`DataKind.notes`).

The kinds:

========================  ===============================================================
:class:`SyntheticData`    a synthetic :class:`~unflow_zoo.data.synthetic.Source` (``moons``, ...)
:class:`ConditionalData`  a :class:`~unflow_zoo.data.conditional.ConditionalSource`: pairs ``(x, c)``
:class:`ShippedData`      a data file of the seed paper shipped with the package (``mog1d``, ...)
:class:`FileData`         the user's file (``dataset="file"``): text, ``.csv``, ``.npy``, ``.npz``
:class:`ArrayData`        arrays given from Python (``from_arrays``, ``from_hf``)
:class:`UCIData`          a UCI benchmark, in its published splits
:class:`DigitsData`       scikit-learn's 8x8 digits (optionally with their labels)
:class:`MNISTData`        MNIST (optionally with its labels)
========================  ===============================================================

The first five are :class:`TabularData`: one pool of points drawn or read whole, shuffled
with the seed and split by the fractions, which is where every tabular split comes from.

(Not to be confused with :class:`~unflow_zoo.data.synthetic.Source`, a *distribution* to draw
points from; :class:`SyntheticData` is the kind that serves one.)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from unflow_zoo.data.conditional import CONDITIONAL_SOURCES, ConditionalSource, get_conditional_source
from unflow_zoo.data.files import VENDORED, peek_table, read_points, read_table, resolve_path
from unflow_zoo.data.images import IMAGE_DATASETS, load_digits, load_mnist
from unflow_zoo.data.preprocess import PixelPreprocess
from unflow_zoo.data.synthetic import SOURCES, Source, get_source
from unflow_zoo.data.validation import validate_points
from unflow_zoo.errors import ConfigError, DataError, DataTypeError

__all__ = [
    "ARRAYS",
    "CONTEXTS",
    "FILE",
    "ArrayData",
    "ConditionalData",
    "DataKind",
    "DigitsData",
    "FileData",
    "ImageData",
    "LoadRequest",
    "MNISTData",
    "ShippedData",
    "Split",
    "Splits",
    "SyntheticData",
    "TabularData",
    "UCIData",
    "arrays_from_hf",
    "dataset_names",
    "make_kind",
    "split_sizes",
    "uci_datasets",
]

#: ``dataset=`` of the user's own file, read from ``path``.
FILE = "file"
#: ``dataset=`` of data given from Python (``DensityDataModule.from_arrays`` / ``from_hf``).
ARRAYS = "arrays"
#: The values of ``DensityDataModule(context=...)``: no context, or the class label of an image set.
CONTEXTS: tuple[str, ...] = ("none", "label")

# The image-only arguments and their defaults: every other kind ignores them (with a warning).
_IMAGE_ONLY: Mapping[str, Any] = {"flatten": False, "dequantize": True, "logit_alpha": None}

_KINDS = (SOURCES, CONDITIONAL_SOURCES, VENDORED, IMAGE_DATASETS, {FILE: None, ARRAYS: None})
if len({name for kind in _KINDS for name in kind}) != sum(len(kind) for kind in _KINDS):  # pragma: no cover
    raise RuntimeError("data set names must be unique across synthetic sources, shipped files, images and 'file'")


def uci_datasets() -> dict[str, int]:
    """``unflow_zoo.data.uci.UCI_DATASETS`` (name -> D), or ``{}`` while that module is absent.

    Imported here rather than at the top so that this module (and the synthetic and
    image sets) work whether or not the UCI loaders are installed.
    """
    try:
        from unflow_zoo.data.uci import UCI_DATASETS
    except ImportError:  # pragma: no cover - shipped with the package
        return {}
    return dict(UCI_DATASETS)


def dataset_names() -> list[str]:
    """Every value ``DensityDataModule(dataset=...)`` accepts (``"arrays"`` through ``from_arrays`` alone)."""
    uci = [name for name in sorted(uci_datasets()) if name not in {*SOURCES, *VENDORED, *IMAGE_DATASETS}]
    return (
        sorted(SOURCES) + sorted(CONDITIONAL_SOURCES) + sorted(VENDORED) + uci + sorted(IMAGE_DATASETS) + [FILE, ARRAYS]
    )


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` for ``n`` points.

    Each held-out size is ``round(n * fraction)``, but at least one point when its
    fraction is positive, so asking for a validation set never silently yields none.

    Raises:
        DataError: nothing would be left to train on.
    """
    n_val = max(round(n * val_fraction), 1) if val_fraction > 0 else 0
    n_test = max(round(n * test_fraction), 1) if test_fraction > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(
            f"{n} points split with val_fraction={val_fraction} and test_fraction={test_fraction} "
            f"leave {n_train} for training; use more points or smaller fractions"
        )
    return n_train, n_val, n_test


# ----- the protocol ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One split: points ``x`` (``(n, *shape)``) and their contexts ``(n, C)``, None without.

    Attributes:
        x: the points (float64 raw coordinates for tabular data, the served dtype for UCI,
            ``uint8`` pixels for images).
        context: one row per point, or None.
    """

    x: np.ndarray
    context: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Splits:
    """The training, validation and test :class:`Split` (either held-out one may be empty)."""

    train: Split
    val: Split
    test: Split

    def __iter__(self) -> Iterator[Split]:
        return iter((self.train, self.val, self.test))


@dataclass(frozen=True)
class LoadRequest:
    """What the data module asks :meth:`DataKind.load` for: its arguments, resolved.

    Attributes:
        seed: the data module's seed; every kind draws, shuffles and splits with it alone.
        n_samples: how many points a synthetic source draws.
        val_fraction: the share held out for validation (how a kind uses it is its own).
        test_fraction: the share held out for testing.
        dtype: the dtype the points will be served in, which they are validated in.
        data_dir: the folder files are looked for in and downloaded to.
        download: fetch missing files.
    """

    seed: int
    n_samples: int
    val_fraction: float
    test_fraction: float
    dtype: np.dtype
    data_dir: Path
    download: bool


class DataKind(ABC):
    """One kind of data source behind :class:`~unflow_zoo.data.DensityDataModule`.

    A subclass sets ``name`` and ``event_shape`` (known when it is built: nothing is read but
    a file's first row or header) and writes :meth:`load`; the rest has defaults for data
    without a context, a density or downloads.

    Attributes:
        name: what the data are called in messages (a data set name or a file path).
        event_shape: the shape of one served point.
        context_features: the width of the context served with each point; 0 for none.
        scalable: whether the module's ``scaling`` applies (pooled tabular data); the
            published UCI splits and images are served as they come.
        preprocess: images only: the map from dequantised pixels to served data.
        in_memory: the data exist only in this object (given from Python), not in the
            module's arguments, so those arguments cannot rebuild them.
        ignored: groups of ``{argument: default}`` this kind ignores; the module warns, one
            warning per group, about those set to another value.
    """

    name: str
    event_shape: tuple[int, ...]
    context_features: int = 0
    scalable: bool = True
    preprocess: PixelPreprocess | None = None
    in_memory: bool = False
    ignored: tuple[Mapping[str, Any], ...] = (_IMAGE_ONLY,)

    @property
    def has_density(self) -> bool:
        """Whether :meth:`log_prob` knows the true density of the points."""
        return False

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""The true :math:`\log p(x)` (or :math:`\log p(x \mid c)`) of raw points ``x`` ``(n, D)``, float64, ``(n,)``.

        Args:
            x: points in the kind's own (raw, unscaled) coordinates, float64.
            context: their contexts ``(n, C)``, float64, for a conditional kind; else None.

        Raises:
            DataError: the density is unknown (:attr:`has_density` is False).
        """
        raise DataError(f"{self.name}: the true density of these data is unknown")

    def prepare(self, data_dir: Path, download: bool) -> None:
        """Fetch missing files into ``data_dir`` when ``download`` (once per node, before :meth:`load`).

        Args:
            data_dir: the folder to download to.
            download: whether downloading is allowed; without it nothing happens.
        """

    @abstractmethod
    def load(self, request: LoadRequest) -> Splits:
        """Draw or read the data, validate them in ``request.dtype`` and split them.

        Args:
            request: the seed, fractions, dtype and where the files are.

        Returns:
            The three splits; the same request always gives the same splits.
        """

    def notes(self, given: Mapping[str, Any]) -> list[str]:
        """Warnings about how the module's arguments ``given`` are used, beyond :attr:`ignored`.

        Args:
            given: the module's arguments (its ``hparams``).

        Returns:
            The messages, one warning each; none by default.
        """
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, event_shape={self.event_shape})"


# ----- tabular data: one pool, shuffled and split by the fractions -------------------------------------


class TabularData(DataKind):
    """A pool of points (and contexts) drawn or read whole, then shuffled with the seed and split.

    The seed is spawned into two streams, one to draw the data (:meth:`draw`), one to
    shuffle them, so that changing the fractions re-splits the same points rather than
    drawing new ones; the first ``n_train`` shuffled points train, the next ``n_val``
    validate and the rest test (:func:`split_sizes`).
    """

    @abstractmethod
    def draw(self, rng: np.random.Generator, request: LoadRequest) -> tuple[np.ndarray, np.ndarray | None]:
        """All points ``(n, D)`` and their contexts ``(n, C)`` (None without), validated in ``request.dtype``.

        Args:
            rng: the stream a synthetic source draws from (files ignore it).
            request: the module's request (``n_samples``, ``dtype``, ...).
        """

    def load(self, request: LoadRequest) -> Splits:
        data_seq, split_seq = np.random.SeedSequence(request.seed).spawn(2)
        raw, context = self.draw(np.random.default_rng(data_seq), request)
        raw = np.asarray(raw, dtype=np.float64)
        if raw.shape[1:] != self.event_shape:
            raise DataError(
                f"{self.name}: points have shape {raw.shape[1:]}, but event_shape was {self.event_shape} "
                "when the module was built; did the file change?"
            )
        if (0 if context is None else context.shape[1]) != self.context_features:
            raise DataError(
                f"{self.name}: contexts have {0 if context is None else context.shape[1]} columns, but "
                f"context_features was {self.context_features} when the module was built; did the file change?"
            )
        n_train, n_val, _ = split_sizes(raw.shape[0], request.val_fraction, request.test_fraction)
        order = np.random.default_rng(split_seq).permutation(raw.shape[0])
        raw = raw[order]
        context = None if context is None else np.asarray(context, dtype=np.float64)[order]
        bounds = ((0, n_train), (n_train, n_train + n_val), (n_train + n_val, raw.shape[0]))
        return Splits(*(Split(raw[a:b], None if context is None else context[a:b]) for a, b in bounds))


class SyntheticData(TabularData):
    """``n_samples`` points drawn from a synthetic :class:`~unflow_zoo.data.synthetic.Source`.

    Args:
        name: the source's registered name (``moons``, ``8gaussians``, ``gmm1d``, ...).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        #: The distribution drawn from; replace it to serve another one under the same name.
        self.source: Source = get_source(name)
        self.event_shape = (self.source.dim,)

    @property
    def has_density(self) -> bool:
        return bool(self.source.has_density)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if not self.has_density:
            return super().log_prob(x, context)
        return self.source.log_prob(x)  # type: ignore[return-value]

    def draw(self, rng: np.random.Generator, request: LoadRequest) -> tuple[np.ndarray, np.ndarray | None]:
        return validate_points(self.source.sample(request.n_samples, rng), where=self.name, dtype=request.dtype), None


class ConditionalData(TabularData):
    r"""``n_samples`` pairs :math:`(x, c)` from a :class:`~unflow_zoo.data.conditional.ConditionalSource`,
    whose :math:`\log p(x \mid c)` is known.

    Args:
        name: the source's registered name (``8gaussians-by-label``, ...).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.source: ConditionalSource = get_conditional_source(name)
        self.event_shape = (self.source.dim,)
        self.context_features = self.source.context_dim

    @property
    def has_density(self) -> bool:
        return True

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is None:
            raise DataError(f"{self.name} is conditional: its density needs the context of x")
        return self.source.log_prob(x, context)

    def draw(self, rng: np.random.Generator, request: LoadRequest) -> tuple[np.ndarray, np.ndarray | None]:
        raw, context = self.source.sample(request.n_samples, rng)
        raw = validate_points(raw, where=self.name, dtype=request.dtype)
        return raw, validate_points(context, where=f"{self.name} (context)", dtype=request.dtype)


class ShippedData(TabularData):
    """A data file of the seed paper shipped with the package (:data:`~unflow_zoo.data.files.VENDORED`), all rows.

    Args:
        name: ``mog1d``, ``beta1d``, ``grid`` or ``mog5d``.
    """

    def __init__(self, name: str) -> None:
        spec = VENDORED[name]
        self.name = name
        #: The shipped file.
        self.file: Path = spec.path
        self.event_shape = (spec.dim,)
        self._log_prob = spec.log_prob

    @property
    def has_density(self) -> bool:
        return self._log_prob is not None

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self._log_prob is None:
            return super().log_prob(x, context)
        return self._log_prob(x)

    def draw(self, rng: np.random.Generator, request: LoadRequest) -> tuple[np.ndarray, np.ndarray | None]:
        return read_points(self.file, dtype=request.dtype), None  # validates, naming lines and columns


class FileData(TabularData):
    r"""The user's data file, all rows, read by its suffix (:func:`~unflow_zoo.data.files.read_table`):
    whitespace-separated text, ``.csv`` (an optional header row of names), ``.npy``, or ``.npz``
    (one array, or ``x`` and optionally ``context``).

    Args:
        path: the file: absolute, or relative to the working directory (tried first) or to ``data_dir``.
        data_dir: the folder a relative ``path`` is looked up in second.
        context_columns: columns of the file that are the context :math:`c` of
            :math:`p(x \mid c)`, by 0-based index or, for a ``.csv`` with a header, by name;
            the other columns are :math:`x`. Not for an ``.npz`` that holds its own ``context``.

    Raises:
        DataFileNotFoundError: no such file (the message says where it looked).
        DataError: the file's first row or header already shows it cannot be read.
        ConfigError: ``context_columns`` that are not distinct columns of the file, name no
            column of its header, or leave no column for :math:`x`.
    """

    def __init__(self, path: str, data_dir: Path, context_columns: Sequence[int | str] | None = None) -> None:
        #: The file, as found.
        self.file: Path = resolve_path(path, data_dir)
        self.name = str(self.file)
        info = peek_table(self.file)  # only the first row or the headers: event_shape must not cost a full read
        self.header = info.columns
        if context_columns and info.context_width:
            raise ConfigError(
                f"{self.file} holds its own 'context' array; context_columns={list(context_columns)} would take "
                "another context from the columns of 'x': drop context_columns, or save 'x' alone"
            )
        self._given_columns = list(context_columns or [])
        self.context_columns: list[int] = self._columns(info.width) if self._given_columns else []
        self.event_shape = (info.width - len(self.context_columns),)
        self.context_features = info.context_width or len(self.context_columns)

    def _columns(self, width: int) -> list[int]:
        """``context_columns`` as indices, checked against a file of ``width`` columns."""
        given = self._given_columns
        header = self.header
        cols: list[Any] = []
        for c in given:
            if isinstance(c, str):
                if header is None:
                    raise ConfigError(
                        f"context_columns names the column {c!r}, but {self.file} has no header row of column "
                        "names (a .csv file's first row, when it holds no number); give 0-based column indices"
                    )
                if header.count(c) != 1:
                    raise ConfigError(
                        f"context_columns names the column {c!r}, which "
                        + ("appears more than once in" if c in header else "is not in")
                        + f" the header of {self.file} (columns: {', '.join(map(repr, header))})"
                    )
                cols.append(header.index(c))
            else:
                cols.append(c)
        bad = [c for c in cols if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < width]
        if bad or len(set(cols)) != len(cols):
            names = f" (or names from its header: {', '.join(map(repr, header))})" if header else ""
            raise ConfigError(
                f"context_columns must be distinct column indices in [0, {width}){names} of {self.file}, got {given}"
            )
        if len(cols) >= width:
            raise ConfigError(f"context_columns {given} leave no data column of the {width} in {self.file}")
        return cols

    def draw(self, rng: np.random.Generator, request: LoadRequest) -> tuple[np.ndarray, np.ndarray | None]:
        table = read_table(self.file, dtype=request.dtype)  # validates, naming lines (or rows) and columns
        raw, context = table.x, table.context
        if self.context_columns:
            cols = self._columns(raw.shape[1])
            keep = [c for c in range(raw.shape[1]) if c not in cols]
            raw, context = raw[:, keep], raw[:, cols]
        return raw, context


class ArrayData(TabularData):
    """Points (and contexts) given from Python: NumPy arrays, torch tensors, anything ``np.asarray`` takes.

    Validated when built (the dtype is known then), and copied, so that later changes to the
    caller's arrays do not change the data set. The data are not in the data module's
    arguments (``in_memory``): saving its ``hparams`` does not save them.

    Args:
        x: the points, ``(n, D)``.
        context: their contexts, ``(n, C)``, one row per point; None for none.
        name: what the data are called in messages.
        dtype: the dtype the points will be served in, which they are validated in.

    Raises:
        DataTypeError: an array of objects, strings or complex numbers.
        DataError: not ``(n, D)``; a context with another number of rows; NaN, inf, or values
            that overflow ``dtype`` (the message names the row and column index).
    """

    in_memory = True

    def __init__(self, x: Any, context: Any = None, *, name: str = ARRAYS, dtype: np.dtype | type = np.float32) -> None:
        self.name = name
        self.x = np.array(validate_points(x, where=f"{name} (x)", dtype=dtype), dtype=np.float64)
        self.context: np.ndarray | None = None
        if context is not None:
            self.context = np.array(validate_points(context, where=f"{name} (context)", dtype=dtype), dtype=np.float64)
            if self.context.shape[0] != self.x.shape[0]:
                raise DataError(
                    f"{name}: x has {self.x.shape[0]} rows but the context has {self.context.shape[0]}; "
                    "the context needs one row per point"
                )
        self.event_shape = (int(self.x.shape[1]),)
        self.context_features = 0 if self.context is None else int(self.context.shape[1])

    def draw(self, rng: np.random.Generator, request: LoadRequest) -> tuple[np.ndarray, np.ndarray | None]:
        return self.x, self.context


def arrays_from_hf(
    dataset: Any,
    columns: Sequence[str] | None = None,
    context_columns: Sequence[str] | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Points (and contexts) from columns of a Hugging Face ``datasets.Dataset``.

    Each column holds one number per row, or a fixed-length sequence of numbers (which gives
    as many coordinates); the columns are concatenated in the order given.

    Args:
        dataset: a ``datasets.Dataset`` (one split: ``dataset_dict["train"]``).
        columns: the columns of :math:`x`; None: every column not in ``context_columns``.
        context_columns: the columns of the context :math:`c`; None for none.
        name: what the data are called in messages; None: the dataset's name, else
            ``"Hugging Face dataset"``.

    Returns:
        ``(x, context, name)``: ``x`` ``(n, D)``, ``context`` ``(n, C)`` or None, as NumPy
        arrays of the columns' dtypes, not yet validated.

    Raises:
        DataTypeError: not a ``datasets.Dataset``; a column of strings, images or other
            values that are not numbers.
        ConfigError: a column name that the dataset does not have, or one named twice.
        DataError: a column of sequences of varying length, or of nested sequences.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        raise DataTypeError(
            f"from_hf takes one split, a datasets.Dataset, got a DatasetDict with splits {list(dataset)}; "
            "pass one, e.g. dataset['train'] (the data module splits it by val_fraction and test_fraction)"
        )
    if not isinstance(dataset, datasets.Dataset):
        raise DataTypeError(
            f"from_hf takes a datasets.Dataset, got {type(dataset).__name__}"
            + ("; materialise a streaming dataset first" if isinstance(dataset, datasets.IterableDataset) else "")
        )
    info_name = getattr(getattr(dataset, "info", None), "dataset_name", None)
    name = name or (f"{info_name} (Hugging Face)" if info_name else "Hugging Face dataset")
    available = list(dataset.column_names)
    context_columns = list(context_columns or [])
    columns = [c for c in available if c not in context_columns] if columns is None else list(columns)
    for role, names in (("columns", columns), ("context_columns", context_columns)):
        unknown = [c for c in names if c not in available]
        if unknown:
            raise ConfigError(
                f"{name}: {role} names {', '.join(map(repr, unknown))}, which the dataset does not have "
                f"(its columns: {', '.join(map(repr, available))})"
            )
    twice = sorted({c for c in columns + context_columns if (columns + context_columns).count(c) > 1})
    if twice:
        raise ConfigError(
            f"{name}: the column(s) {', '.join(map(repr, twice))} are named twice in columns/context_columns"
        )
    if not columns:
        raise ConfigError(f"{name}: no column left for the points x; name them with columns=[...]")

    def stack(names: list[str]) -> np.ndarray:
        # Arrow, not with_format("numpy"), which casts float64 columns to float32.
        import pyarrow as pa

        table = dataset.select_columns(names).with_format("arrow")[:]
        parts = []
        for c in names:
            column = table.column(c).combine_chunks()
            kind = column.type
            if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
                lengths = column.value_lengths().to_numpy(zero_copy_only=False)
                if column.null_count or len(set(lengths.tolist())) > 1:
                    raise DataError(
                        f"{name}: column {c!r} holds sequences of varying length (or missing ones); from_hf takes "
                        "columns of numbers, or of sequences of numbers of one length"
                    )
                width = int(lengths[0]) if len(lengths) else 0
                column, kind = column.flatten(), kind.value_type
            else:
                width = 1
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
                raise DataTypeError(
                    f"{name}: column {c!r} holds {kind} values, not numbers; leave it out with columns=[...], or "
                    "convert it first (dataset.cast_column, dataset.map)"
                )
            values = column.to_numpy(zero_copy_only=False)  # missing values: NaN, which validation names
            parts.append(np.asarray(values).reshape(len(table), width))
        return np.concatenate(parts, axis=1)

    x = stack(columns)
    context = stack(context_columns) if context_columns else None
    return x, context, f"{name} (columns {', '.join(map(repr, columns))})"


# ----- UCI: the published splits ----------------------------------------------------------------------


class UCIData(DataKind):
    """A UCI benchmark (``power``, ``gas``, ``hepmass``, ``miniboone``, ``bsds300``) in its published
    train/validation/test splits, MAF-normalised (:func:`unflow_zoo.data.uci.load_uci`).

    Args:
        name: the benchmark.
        dim: its number of columns (``UCI_DATASETS[name]``).
    """

    scalable = False
    ignored = (
        {"val_fraction": 0.1, "test_fraction": 0.1, "standardize": False, "scaling": None, "n_samples": 20000},
        _IMAGE_ONLY,
    )

    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.event_shape = (dim,)

    def prepare(self, data_dir: Path, download: bool) -> None:
        if download:
            from unflow_zoo.data.uci import load_uci  # lazily: see uci_datasets

            load_uci(self.name, data_dir, download=True)

    def load(self, request: LoadRequest) -> Splits:
        from unflow_zoo.data.uci import load_uci  # lazily: see uci_datasets

        parts = load_uci(self.name, request.data_dir, download=request.download)
        served = []
        for split, part in zip(("train", "validation", "test"), parts, strict=True):
            part = validate_points(part, where=f"{self.name} ({split} split)", dtype=request.dtype)
            if part.shape[1:] != self.event_shape:
                raise DataError(
                    f"{self.name}: the {split} split has {part.shape[1]} columns, expected {self.event_shape[0]} "
                    "(UCI_DATASETS); is the local copy from another version of the archive?"
                )
            served.append(Split(np.ascontiguousarray(part, dtype=request.dtype)))
        return Splits(*served)


# ----- images -----------------------------------------------------------------------------------------


class ImageData(DataKind):
    r"""An image set as integer pixels :math:`k` with :math:`L` levels, served by the module as
    :math:`g(k + u)` (:class:`~unflow_zoo.data.preprocess.PixelPreprocess`); optionally with each
    image's class as a one-hot context :math:`c` (``labels=True``), for :math:`p(x \mid c)`.

    Args:
        name: the image set (``digits``, ``mnist``).
        flatten: serve ``(C*H*W,)`` vectors instead of ``(C, H, W)`` images.
        dequantize: whether the module adds :math:`U[0,1)` noise to the pixels; ``logit_alpha=0`` needs it.
        logit_alpha: :math:`\alpha` of the logit transform, or None for :math:`y/L - 1/2`.
        labels: serve the one-hot class label (``classes`` wide) with each image.

    Raises:
        ConfigError: ``logit_alpha=0`` without dequantisation (pixel 0 would map to -inf), or a
            ``logit_alpha`` outside ``[0, 1/2)``.
    """

    scalable = False
    ignored: tuple[Mapping[str, Any], ...] = (
        {"standardize": False, "scaling": None, "n_samples": 20000, "dtype": "float32"},
    )

    def __init__(
        self,
        name: str,
        *,
        flatten: bool = False,
        dequantize: bool = True,
        logit_alpha: float | None = None,
        labels: bool = False,
    ) -> None:
        spec = IMAGE_DATASETS[name]
        if not dequantize and logit_alpha == 0.0:
            raise ConfigError(
                "logit_alpha=0 without dequantisation maps pixel 0 to -inf; "
                "set dequantize=True or a positive logit_alpha"
            )
        self.name = name
        self.spec = spec
        self.labels = labels
        self.preprocess = PixelPreprocess(spec.levels, logit_alpha)
        self.event_shape = (math.prod(spec.shape),) if flatten else spec.shape
        self.context_features = spec.classes if labels else 0

    def one_hot(self, labels: np.ndarray) -> np.ndarray:
        """``float32`` ``(n, classes)`` one-hot rows of integer ``labels`` ``(n,)``."""
        return np.eye(self.spec.classes, dtype=np.float32)[labels]

    def _splits(self, parts: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> Splits:
        out = []
        for pixels, labels in parts:
            if pixels.shape[1:] != self.spec.shape:  # pragma: no cover - the loaders check this already
                raise DataError(f"{self.name}: images of shape {pixels.shape[1:]}, expected {self.spec.shape}")
            out.append(Split(pixels, None if labels is None else self.one_hot(labels)))
        return Splits(*out)


class DigitsData(ImageData):
    """scikit-learn's 1797 8x8 digits (:math:`L = 17`, offline), shuffled with the seed and split by
    ``val_fraction`` / ``test_fraction`` (defaults: 1437 / 180 / 180); labels from scikit-learn's ``target``."""

    def __init__(self, name: str = "digits", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)

    def load(self, request: LoadRequest) -> Splits:
        split_seq = np.random.SeedSequence(request.seed).spawn(2)[1]
        if self.labels:
            pixels, labels = load_digits(labels=True)
        else:
            pixels, labels = load_digits(), None
        n_train, n_val, _ = split_sizes(pixels.shape[0], request.val_fraction, request.test_fraction)
        order = np.random.default_rng(split_seq).permutation(pixels.shape[0])
        pixels = pixels[order]
        labels = None if labels is None else labels[order]
        bounds = ((0, n_train), (n_train, n_train + n_val), (n_train + n_val, pixels.shape[0]))
        return self._splits([(pixels[a:b], None if labels is None else labels[a:b]) for a, b in bounds])


class MNISTData(ImageData):
    """MNIST (:math:`L = 256`): the official 10 000 test images test; with ``val_fraction > 0`` the
    last sixth of the official training set validates (MAF's 50k/10k/10k), else all 60 000 train.

    Args:
        name: ``"mnist"``.
        loader: the function that finds (and downloads) MNIST, called as
            ``loader(data_dir, download=..., labels=...)``; :func:`~unflow_zoo.data.images.load_mnist`.
        **kwargs: the arguments of :class:`ImageData`.
    """

    ignored = (*ImageData.ignored, {"test_fraction": 0.1})

    def __init__(self, name: str = "mnist", *, loader: Callable[..., Any] = load_mnist, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.loader = loader

    def notes(self, given: Mapping[str, Any]) -> list[str]:
        val_fraction = given.get("val_fraction", 0.1)
        if val_fraction in (0.0, 0.1):
            return []
        note = (
            f"dataset='mnist' validates on the last 10 000 training images (MAF's 50k/10k split) "
            f"whenever val_fraction > 0; val_fraction={val_fraction} is used only as on/off"
        )
        return [note]

    def prepare(self, data_dir: Path, download: bool) -> None:
        if download:
            self.loader(data_dir, download=True)

    def load(self, request: LoadRequest) -> Splits:
        if self.labels:
            found = self.loader(request.data_dir, download=request.download, labels=True)
            (train, train_labels), (test, test_labels) = found["train"], found["test"]
        else:
            found = self.loader(request.data_dir, download=request.download)
            (train, train_labels), (test, test_labels) = (found["train"], None), (found["test"], None)
        # MAF's convention: the last sixth (10 000 of 60 000) of the official training set validates.
        n_val = max(train.shape[0] // 6, 1) if request.val_fraction > 0 else 0
        if train.shape[0] - n_val < 1:
            raise DataError(f"MNIST: {train.shape[0]} training images leave none to train on after validation")
        cut = train.shape[0] - n_val
        return self._splits(
            [
                (train[:cut], None if train_labels is None else train_labels[:cut]),
                (train[cut:], None if train_labels is None else train_labels[cut:]),
                (test, test_labels),
            ]
        )


_IMAGE_KINDS: dict[str, type[ImageData]] = {"digits": DigitsData, "mnist": MNISTData}


# ----- choosing the kind ------------------------------------------------------------------------------


def make_kind(
    dataset: str,
    *,
    path: str | None = None,
    data_dir: Path,
    context_columns: Sequence[int | str] | None = None,
    context: str = "none",
    flatten: bool = False,
    dequantize: bool = True,
    logit_alpha: float | None = None,
    arrays: tuple[Any, Any, str] | None = None,
    dtype: np.dtype | type = np.float32,
    mnist_loader: Callable[..., Any] = load_mnist,
) -> DataKind:
    r"""The :class:`DataKind` that serves ``dataset``: the one place where a name picks a class.

    Args:
        dataset: a name from :func:`dataset_names`.
        path: ``dataset="file"``: the file.
        data_dir: where a relative ``path`` is looked up second.
        context_columns: ``dataset="file"``: the columns that are the context (checked by the
            data module for the other kinds, which refuse them).
        context: ``"label"``: an image set serves each image's one-hot class as its context.
        flatten: images: serve vectors.
        dequantize: images: add uniform noise.
        logit_alpha: images: the logit transform's :math:`\alpha`, or None.
        arrays: ``dataset="arrays"``: ``(x, context, name)`` given from Python.
        dtype: the served dtype, which arrays given from Python are validated in when built.
        mnist_loader: the function :class:`MNISTData` finds MNIST with.

    Raises:
        ConfigError: ``dataset="file"`` without ``path``; ``dataset="arrays"`` without arrays
            (it is built by ``DensityDataModule.from_arrays``); ``context="label"`` for a data
            set without labels; or what the kind itself refuses.
    """
    labels = context == "label"
    if labels and dataset not in IMAGE_DATASETS:
        raise ConfigError(
            f"context='label' serves the class label of an image set ({', '.join(sorted(IMAGE_DATASETS))}) as the "
            f"context; dataset={dataset!r} has no labels"
            + (" (it serves its own context)" if dataset in CONDITIONAL_SOURCES else "")
        )
    if dataset in SOURCES:
        return SyntheticData(dataset)
    if dataset in CONDITIONAL_SOURCES:
        return ConditionalData(dataset)
    if dataset in VENDORED:
        return ShippedData(dataset)
    if dataset in IMAGE_DATASETS:
        extra: dict[str, Any] = {"loader": mnist_loader} if _IMAGE_KINDS[dataset] is MNISTData else {}
        return _IMAGE_KINDS[dataset](
            dataset, flatten=flatten, dequantize=dequantize, logit_alpha=logit_alpha, labels=labels, **extra
        )
    if dataset == FILE:
        if path is None:
            raise ConfigError(
                "dataset='file' needs path=: a data file (text with one point per line, .csv, .npy or .npz)"
            )
        return FileData(path, data_dir, context_columns)
    if dataset == ARRAYS:
        if arrays is None:
            raise ConfigError(
                "dataset='arrays' is data given from Python: build the module with DensityDataModule.from_arrays(x, "
                "context) or DensityDataModule.from_hf(dataset, columns=...). Those data are not among the module's "
                "arguments, so a recorded configuration (a checkpoint, a pretrained flow) cannot rebuild them: pass "
                "the module you built, or save the arrays (np.save / np.savez(path, x=x, context=c)) and use "
                "dataset='file', path=..."
            )
        x, ctx, name = arrays
        return ArrayData(x, ctx, name=name, dtype=dtype)
    uci = uci_datasets()
    if dataset in uci:
        return UCIData(dataset, uci[dataset])
    raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(dataset_names())}")
