r"""The five UCI density-estimation benchmarks of MAF, preprocessed exactly as published.

POWER (D=6), GAS (8), HEPMASS (21), MINIBOONE (43) and BSDS300 (63) as used by
MAF, NAF, NSF, FFJORD, UMNN and most tabular flow papers since: the files of the
archive on Zenodo (record 1161203) put through the published loaders
(``datasets/{power,gas,hepmass,miniboone,bsds300}.py`` of github.com/gpapamak/maf),
step for step, so that NLLs are comparable with the literature:

- POWER: shuffle with ``RandomState(42)``, drop columns 3 and 1, add uniform noise
  (gap 0.001, voltage 0.01, sub-meterings 1, time 0) from the same stream; the last
  10% is test, the last 10% of the rest validation; normalise with the mean and
  (population) std of train+validation.
- GAS: drop ``Meth``, ``Eth``, ``Time``; while some column has Pearson correlation
  above 0.98 with another, drop the first such column; normalise with the whole
  table's mean and sample std (pandas); split the tail as for POWER (no shuffle).
- HEPMASS: keep label-1 rows of ``1000_train.csv``/``1000_test.csv``, drop the label
  (and the test file's extra last column); normalise with the training file's mean
  and sample std (pandas); drop every feature whose *smallest* value occurs more
  than 5 times in the training file; the last 10% of training is validation.
- MINIBOONE: split the tail as for POWER; normalise with train+validation statistics.
- BSDS300: the stored ``train``/``validation``/``test`` sets, unchanged.

Everything is computed in float64 and returned as float32 (as the published
``Data`` classes do). The preprocessed arrays are cached in
``data_dir/unflow_zoo_cache/<name>.npz``.

The GAS file is a pickled pandas DataFrame. Unpickling runs whatever code the
file names, so :func:`read_pandas_pickle` never hands it to ``pickle.load`` or
``pandas.read_pickle``: a restricted unpickler resolves only NumPy's array and
dtype constructors and replaces every pandas/pyarrow class the format uses by an
inert record, from which the column names and values are rebuilt; any other
global (``os.system``, ``builtins.eval``, ...) is refused before it is called.

References:
    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density
    Estimation", NeurIPS 2017, arXiv 1705.07057; code: github.com/gpapamak/maf,
    ``datasets/*.py``; data: doi:10.5281/zenodo.1161203.
"""

from __future__ import annotations

import _compat_pickle  # the Python 2 -> 3 module renames pickle itself applies
import io
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unflow_zoo.data.download import ChecksumError, extract_tar, file_digest
from unflow_zoo.data.download import download as download_file
from unflow_zoo.data.files import DataFileNotFoundError
from unflow_zoo.data.paths import DATA_DIR_HINT, resolve_data_dir
from unflow_zoo.errors import ConfigError, DataError
from unflow_zoo.extras import require

__all__ = [
    "CACHE_VERSION",
    "UCI_ARCHIVE",
    "UCI_DATASETS",
    "UCI_FILES",
    "UCIArchive",
    "load_uci",
    "preprocess_gas",
    "preprocess_hepmass",
    "preprocess_miniboone",
    "preprocess_power",
    "read_pandas_pickle",
    "uci_split_sizes",
]

#: name -> dimension D of the preprocessed data (as published).
UCI_DATASETS: dict[str, int] = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}

#: name -> the files its loader reads, relative to the archive's ``data/`` folder.
UCI_FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}

#: Bump when any preprocessing changes: caches written under another version are recomputed.
CACHE_VERSION = "maf-2017/unflow-zoo-1"
_CACHE_DIR = "unflow_zoo_cache"

Splits = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class UCIArchive:
    """Where the published archive lives and how to verify it.

    Zenodo lists only an MD5 for this file, so ``sha256`` is None and
    :func:`~unflow_zoo.data.download.download` verifies the MD5; set ``sha256``
    to pin it as well.
    """

    url: str
    filename: str = "data.tar.gz"
    sha256: str | None = None
    md5: str | None = None
    size: str = ""


#: The archive of Papamakarios et al. (mnist and cifar10 are in it too; only the UCI folders are extracted).
UCI_ARCHIVE = UCIArchive(
    url="https://zenodo.org/records/1161203/files/data.tar.gz",
    md5="9b9c9b0375315ad270eba4ce80c093ab",  # Zenodo's checksum for the file ("md5:..."), record 1161203
    size="about 860 MB",
)


# ----- split arithmetic ---------------------------------------------------------------------------
def _tail_sizes(n: int, name: str) -> tuple[int, int, int]:
    # The published code: N_test = int(0.1*N) from the end, then N_validate = int(0.1*(N - N_test))
    # from the end of the rest. The float product (not n // 10) is what they computed.
    n_test = int(0.1 * n)
    n_val = int(0.1 * (n - n_test))
    if n_test < 1 or n_val < 1:
        # data[-0:] is the whole array: the published slicing silently breaks below this size.
        raise DataError(f"{name}: {n} rows are too few for the published 10%/10% split; need at least 11")
    return n - n_test - n_val, n_val, n_test


def uci_split_sizes(name: str, n_raw_rows: int | tuple[int, ...]) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` the published loader produces from the raw row counts.

    - ``power``, ``gas``, ``miniboone``: ``n_raw_rows`` is the number of rows of the
      file; :math:`n_\\text{test} = \\lfloor 0.1 N \\rfloor`,
      :math:`n_\\text{val} = \\lfloor 0.1 (N - n_\\text{test}) \\rfloor`.
    - ``hepmass``: ``(label-1 rows of 1000_train.csv, label-1 rows of 1000_test.csv)``;
      the validation set is the last :math:`\\lfloor 0.1 N_\\text{train} \\rfloor` training rows.
    - ``bsds300``: ``(rows of train, validation, test)`` in the HDF5 file, used as they are.

    References:
        Papamakarios et al., NeurIPS 2017; github.com/gpapamak/maf ``datasets/*.py``.
    """
    name = _check_name(name)
    if name in ("power", "gas", "miniboone"):
        if not isinstance(n_raw_rows, int | np.integer):
            raise TypeError(f"{name}: n_raw_rows must be the file's row count (an int), got {n_raw_rows!r}")
        return _tail_sizes(int(n_raw_rows), name)
    expected = 2 if name == "hepmass" else 3
    if not isinstance(n_raw_rows, tuple) or len(n_raw_rows) != expected:
        what = (
            "(label-1 rows in 1000_train.csv, label-1 rows in 1000_test.csv)"
            if name == "hepmass"
            else "(rows in train, validation, test)"
        )
        raise TypeError(f"{name}: n_raw_rows must be a tuple {what}, got {n_raw_rows!r}")
    if name == "bsds300":
        return tuple(int(n) for n in n_raw_rows)  # type: ignore[return-value]
    n_train_file, n_test = (int(n) for n in n_raw_rows)
    n_val = int(n_train_file * 0.1)
    if n_val < 1:
        raise DataError(f"hepmass: {n_train_file} training rows are too few for a 10% validation split")
    return n_train_file - n_val, n_val, n_test


def _split_tail(data: np.ndarray, n_val: int, n_test: int) -> Splits:
    rest = data[:-n_test]
    return rest[:-n_val], rest[-n_val:], data[-n_test:]


def _standardize_with(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> Splits:
    # Published POWER/MINIBOONE: mean and numpy's (population, ddof=0) std of train+validation.
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero std is reported by _finish, by column
        return (train - mu) / s, (val - mu) / s, (test - mu) / s


def _finish(name: str, splits: Splits) -> Splits:
    out = tuple(np.ascontiguousarray(part, dtype=np.float32) for part in splits)
    for part, split in zip(out, ("train", "validation", "test"), strict=True):
        bad = ~np.isfinite(part).all(axis=0)
        if bad.any():
            raise DataError(
                f"{name}: the preprocessed {split} split has NaN/inf in columns {np.flatnonzero(bad).tolist()} "
                "(a constant column has no std to divide by); the input file is not the published one"
            )
    return out  # type: ignore[return-value]


# ----- the published preprocessing, one function per data set ------------------------------------------
def preprocess_power(raw: np.ndarray) -> Splits:
    r"""POWER as published: shuffle, drop columns, add noise, split, normalise.

    With ``rng = RandomState(42)``: ``rng.shuffle`` the rows; delete column 3
    (global intensity) and then column 1 (global reactive power); draw, in this
    order, voltage noise :math:`0.01\,U(0,1)`, gap noise :math:`0.001\,U(0,1)`,
    sub-metering noise :math:`U(0,1)^3` and add ``(gap, voltage, sm1..3, 0 for time)``
    to the six remaining columns; split the tail (test 10%, validation 10% of the
    rest); normalise with the mean and population std of train+validation.

    Args:
        raw: ``data.npy``, shape ``(N, 8)``; not modified.

    References:
        github.com/gpapamak/maf ``datasets/power.py``.
    """
    data = np.array(raw, dtype=np.float64)  # a copy: the shuffle is in place
    if data.ndim != 2 or data.shape[1] != 8:
        raise DataError(f"power: expected data.npy of shape (N, 8), got {data.shape}")
    rng = np.random.RandomState(42)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    # The draw order (voltage before gap) is the published one; the stack order differs on purpose.
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    _, n_val, n_test = uci_split_sizes("power", n)
    return _finish("power", _standardize_with(*_split_tail(data, n_val, n_test)))


def preprocess_miniboone(raw: np.ndarray) -> Splits:
    """MINIBOONE as published: split the tail, normalise with train+validation statistics.

    ``data.npy`` already had the outliers and the discrete features removed when
    the archive was made; the published loader does nothing else.

    References:
        github.com/gpapamak/maf ``datasets/miniboone.py``.
    """
    data = np.asarray(raw, dtype=np.float64)
    if data.ndim != 2:
        raise DataError(f"miniboone: expected a 2-D data.npy, got shape {data.shape}")
    _, n_val, n_test = uci_split_sizes("miniboone", data.shape[0])
    return _finish("miniboone", _standardize_with(*_split_tail(data, n_val, n_test)))


def _correlation_numbers(frame) -> np.ndarray:
    # Published get_correlation_numbers: per column, how many columns (itself included) correlate > 0.98.
    return (frame.corr() > 0.98).to_numpy().sum(axis=1)


def preprocess_gas(frame) -> Splits:
    r"""GAS as published: drop columns, drop correlated columns one at a time, normalise, split.

    Drops ``Meth``, ``Eth`` and ``Time``; then, while some column has Pearson
    correlation :math:`> 0.98` with another, drops the *first* such column and
    recomputes the correlations; normalises every column with the whole table's
    mean and sample std (:math:`n-1`, pandas' default); splits the tail without
    shuffling (test 10%, validation 10% of the rest).

    Args:
        frame: the ``pandas.DataFrame`` of ``ethylene_CO.pickle``.

    References:
        github.com/gpapamak/maf ``datasets/gas.py``.
    """
    missing = [c for c in ("Meth", "Eth", "Time") if c not in frame.columns]
    if missing:
        raise DataError(f"gas: expected columns Meth, Eth and Time; {missing} not in {list(frame.columns)}")
    data = frame.drop(columns=["Meth", "Eth", "Time"])
    counts = _correlation_numbers(data)
    while np.any(counts > 1):
        data = data.drop(columns=data.columns[np.flatnonzero(counts > 1)[0]])
        counts = _correlation_numbers(data)
    data = (data - data.mean()) / data.std()
    values = data.to_numpy(dtype=np.float64)
    _, n_val, n_test = uci_split_sizes("gas", values.shape[0])
    return _finish("gas", _split_tail(values, n_val, n_test))


def preprocess_hepmass(train_frame, test_frame) -> Splits:
    r"""HEPMASS as published: positive rows, normalise, drop near-discrete features, split.

    Keeps the rows whose first column (the label) is 1 and drops that column; drops
    the test file's last column (the published "because the data set is messed up":
    ``1000_test.csv`` has one column more than ``1000_train.csv``); normalises both
    with the training file's mean and sample std (pandas); drops each feature whose
    smallest value occurs more than 5 times among the training rows (the published
    ``Counter``: it sorts the values and takes the first count, which is the count of
    the minimum, not of the most frequent value); the last
    :math:`\lfloor 0.1 N \rfloor` training rows are the validation set.

    Args:
        train_frame, test_frame: ``pandas.read_csv(..., index_col=False)`` of
            ``1000_train.csv`` and ``1000_test.csv``.

    References:
        github.com/gpapamak/maf ``datasets/hepmass.py``.
    """
    train = train_frame[train_frame[train_frame.columns[0]] == 1]
    train = train.drop(columns=train.columns[0])
    test = test_frame[test_frame[test_frame.columns[0]] == 1]
    test = test.drop(columns=test.columns[0])
    test = test.drop(columns=test.columns[-1])
    # The published (test - mu) / s aligns the test columns to the training ones by name. Check the
    # names first and take them in the training order, so a header that differs fails here instead of
    # silently adding NaN columns or permuting the features.
    absent = [c for c in train.columns if c not in test.columns]
    if absent:
        raise DataError(
            f"hepmass: columns {absent} of 1000_train.csv are not in 1000_test.csv (after dropping its label "
            "and last column); the files are not the published ones"
        )
    mu, s = train.mean(), train.std()
    train = (train - mu) / s
    test = (test - mu) / s
    train_values = train.to_numpy(dtype=np.float64)
    test_values = test[list(train.columns)].to_numpy(dtype=np.float64)
    # Counter(feature) sorted by value, first count = occurrences of the minimum (exact float equality).
    keep = [i for i, feature in enumerate(train_values.T) if np.count_nonzero(feature == feature.min()) <= 5]
    train_values, test_values = train_values[:, keep], test_values[:, keep]
    n_train, _, _ = uci_split_sizes("hepmass", (train_values.shape[0], test_values.shape[0]))
    return _finish("hepmass", (train_values[:n_train], train_values[n_train:], test_values))


# ----- a pickle reader that runs no code from the file -----------------------------------------------
class _Record:
    """Inert stand-in for a pandas/pyarrow class or function named in a pickle.

    Calling it (pickle's REDUCE/NEWOBJ) or restoring its state (BUILD) only
    stores the arguments; nothing of pandas runs.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @classmethod
    def named(cls, suffix: str) -> bool:
        return cls.qualname.rsplit(".", 1)[-1] == suffix


def _is(obj: Any, *names: str) -> bool:
    return isinstance(obj, _Record) and any(type(obj).named(n) for n in names)


# Every class or function a DataFrame pickle of pandas 0.20 to 3.x names (module paths moved between versions).
_PANDAS_NAMES = frozenset(
    {
        "DataFrame", "BlockManager", "_new_Index", "Index", "RangeIndex", "Int64Index", "UInt64Index",
        "Float64Index", "_unpickle_block", "new_block", "ArrowStringArray", "ArrowStringArrayNumpySemantics",
        "StringDtype",
    }
)  # fmt: skip
_PYARROW_NAMES = frozenset({"_restore_array", "type_for_alias", "py_buffer", "chunked_array"})

_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it
_NP_SCALAR = np.float64(0).__reduce__()[0]


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild an array of type {subtype!r}; only numpy.ndarray")
    return _NP_RECONSTRUCT(subtype, shape, dtype)


def _np_frombuffer(buf: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing a raw buffer of dtype {dtype!r}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, _Record)) or base is not object:
        raise pickle.UnpicklingError(f"refusing copyreg._reconstructor({cls!r}, {base!r})")
    return cls.__new__(cls)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "slice"): slice,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),  # Python 3 bytes in protocol 2
}
for _module in (
    "numpy",
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
):
    _SAFE_GLOBALS.update(
        {
            (_module, "ndarray"): np.ndarray,
            (_module, "dtype"): np.dtype,
            (_module, "_reconstruct"): _np_reconstruct,
            (_module, "scalar"): _NP_SCALAR,
            (_module, "_frombuffer"): _np_frombuffer,
        }
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_SAFE_GLOBALS` and inert :class:`_Record` stand-ins; refuses the rest."""

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, encoding="latin1")  # latin1: what NumPy needs for Python 2 array data
        self._records: dict[tuple[str, str], type[_Record]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (copy_reg, __builtin__) as pickle.Unpickler maps them for protocol < 3; the
        # keys are Python 2 names only, so mapping regardless of the protocol changes nothing else.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        root = module.split(".", 1)[0]
        if (root == "pandas" and name in _PANDAS_NAMES) or (root == "pyarrow" and name in _PYARROW_NAMES):
            key = (module, name)
            if key not in self._records:
                self._records[key] = type(name, (_Record,), {"qualname": f"{module}.{name}"})
            return self._records[key]
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: this reader only rebuilds pandas DataFrames of numbers "
            "(a pickle can run any code it names, so nothing else is resolved)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id: not a pandas.to_pickle file")


def _arrow_buffer(buf: Any) -> bytes | None:
    if buf is None:
        return None
    if _is(buf, "py_buffer") and len(buf.args) == 1 and isinstance(buf.args[0], bytes | bytearray):
        return bytes(buf.args[0])
    raise DataError(f"unexpected pyarrow buffer {buf!r}")


def _arrow_strings(array: Any) -> list[str | None]:
    """Strings of a pickled ``pyarrow`` (large_)string Array or ChunkedArray, bounds-checked."""
    if _is(array, "chunked_array"):
        chunks = array.args[0] if array.args else []
        return [s for chunk in chunks for s in _arrow_strings(chunk)]
    if not (_is(array, "_restore_array") and len(array.args) == 1 and len(array.args[0]) == 7):
        raise DataError(f"unexpected pyarrow array {array!r}")
    arrow_type, length, _, offset, buffers, _, _ = array.args[0]
    alias = arrow_type.args[0] if _is(arrow_type, "type_for_alias") and arrow_type.args else None
    width = {"string": np.int32, "utf8": np.int32, "large_string": np.int64, "large_utf8": np.int64}.get(alias)
    if width is None or len(buffers) != 3:
        raise DataError(f"column names of pyarrow type {alias!r} are not supported; expected strings")
    validity, offsets_raw, data = (_arrow_buffer(b) for b in buffers)
    offsets = np.frombuffer(offsets_raw or b"", dtype=width)
    data = data or b""
    if len(offsets) < offset + length + 1:
        raise DataError("corrupt pyarrow string array: too few offsets")
    offsets = offsets[offset : offset + length + 1]
    if np.any(np.diff(offsets) < 0) or offsets[0] < 0 or offsets[-1] > len(data):
        raise DataError("corrupt pyarrow string array: offsets out of bounds")
    bits = None if validity is None else np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
    out: list[str | None] = []
    for i in range(length):
        if bits is not None and not bits[offset + i]:
            out.append(None)
        else:
            out.append(data[offsets[i] : offsets[i + 1]].decode("utf-8"))
    return out


def _array_values(data: Any) -> list[Any] | np.ndarray:
    if isinstance(data, np.ndarray):
        return data
    if _is(data, "ArrowStringArray", "ArrowStringArrayNumpySemantics") and isinstance(data.state, dict):
        return _arrow_strings(data.state.get("_pa_array"))
    raise DataError(f"unsupported index data {data!r}")


def _index_values(index: Any) -> list[Any] | np.ndarray:
    if isinstance(index, np.ndarray):
        return index
    if _is(index, "_new_Index") and len(index.args) == 2 and isinstance(index.args[1], dict):
        cls, attrs = index.args
        if isinstance(cls, type) and issubclass(cls, _Record) and cls.named("RangeIndex"):
            return np.arange(attrs.get("start", 0), attrs["stop"], attrs.get("step", 1))
        return _array_values(attrs["data"])
    raise DataError(f"unsupported pandas index {index!r}")


def _manager_blocks(mgr: Any) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """``(axes, [(values, placement), ...])`` of a pickled BlockManager, whichever pandas wrote it."""
    if not _is(mgr, "BlockManager"):
        raise DataError(f"expected a pandas BlockManager, got {mgr!r}")
    if mgr.state is None and len(mgr.args) == 2:  # pandas 3: BlockManager((blocks...), [axes])
        blocks = []
        for block in mgr.args[0]:
            if not (_is(block, "_unpickle_block", "new_block") and len(block.args) >= 2):
                raise DataError(f"unexpected pandas block {block!r}")
            blocks.append((block.args[0], block.args[1]))
        return list(mgr.args[1]), blocks
    state = mgr.state
    if isinstance(state, tuple) and len(state) == 4 and isinstance(state[3], dict) and "0.14.1" in state[3]:
        extra = state[3]["0.14.1"]  # pandas 0.14.1 to 2.x __getstate__
        return list(extra["axes"]), [(b["values"], b["mgr_locs"]) for b in extra["blocks"]]
    if isinstance(state, tuple) and len(state) >= 3:  # pandas 0.13: blocks placed by their item names
        axes, values, items = state[0], state[1], state[2]
        columns = list(_index_values(axes[0]))
        return list(axes), [
            (v, np.array([columns.index(c) for c in _index_values(it)])) for v, it in zip(values, items, strict=True)
        ]
    raise DataError("unsupported pandas BlockManager layout")


def _decode_frame(obj: Any) -> tuple[list[Any], np.ndarray]:
    if not (_is(obj, "DataFrame") and isinstance(obj.state, dict)):
        raise DataError(f"expected a pickled pandas DataFrame, found {type(obj).__name__}")
    mgr = obj.state.get("_mgr", obj.state.get("_data"))
    axes, blocks = _manager_blocks(mgr)
    columns = list(_index_values(axes[0]))
    n_rows = len(_index_values(axes[1]))
    values = np.full((n_rows, len(columns)), np.nan)
    filled = np.zeros(len(columns), dtype=bool)
    for block, placement in blocks:
        if not isinstance(block, np.ndarray) or block.dtype.kind not in "fiub":
            raise DataError(f"only numeric columns are supported, found a block of {type(block).__name__}")
        block = block.reshape(1, -1) if block.ndim == 1 else block
        where = np.arange(len(columns))[placement] if isinstance(placement, slice) else np.asarray(placement)
        where = np.atleast_1d(where).astype(np.intp)
        if block.shape != (len(where), n_rows) or where.min(initial=0) < 0 or where.max(initial=0) >= len(columns):
            raise DataError(f"a block of shape {block.shape} does not fit {n_rows} rows x {len(columns)} columns")
        values[:, where] = block.T
        filled[where] = True
    if not filled.all():
        raise DataError(f"no values for columns {[c for c, f in zip(columns, filled, strict=True) if not f]}")
    return columns, values


def read_pandas_pickle(path: str | os.PathLike[str]):
    """Read a ``pandas.to_pickle`` DataFrame of numbers without running code from the file.

    A restricted unpickler resolves only NumPy's ``ndarray``/``dtype`` rebuilders
    (refusing object-dtype raw buffers), ``slice`` and ``copyreg._reconstructor``
    (for inert records only); the pandas and pyarrow classes of the DataFrame
    format (pandas 0.20 to 3.x, Python 2 or 3) become inert records that store
    their arguments, from which the column names and the float64 values are
    rebuilt here. Any other global, such as ``os.system`` in a crafted
    ``__reduce__``, raises before it is called; this is why it is safe to read a
    downloaded file, where ``pandas.read_pickle`` is not.

    Returns:
        A ``pandas.DataFrame`` (float64 columns, default row index).

    Raises:
        pickle.UnpicklingError: the file names anything outside that list.
        DataError: a DataFrame layout this reader does not know, or non-numeric columns.
    """
    import pandas as pd

    with open(path, "rb") as fh:
        obj = _RestrictedUnpickler(fh).load()
    columns, values = _decode_frame(obj)
    return pd.DataFrame(values, columns=pd.Index(columns, dtype=object))


# ----- files ------------------------------------------------------------------------------------------
def _check_name(name: str) -> str:
    key = name.lower()
    if key not in UCI_DATASETS:
        raise ConfigError(f"unknown UCI data set {name!r}; choose one of: {', '.join(UCI_DATASETS)}")
    return key


def _roots(data_dir: Path) -> list[Path]:
    # The archive unpacks to data/<set>/...; a local copy may also sit directly in data_dir.
    return [data_dir, data_dir / "data"]


def _find_files(name: str, data_dir: Path) -> list[Path] | None:
    for root in _roots(data_dir):
        paths = [root / rel for rel in UCI_FILES[name]]
        if all(p.is_file() for p in paths):
            return paths
    return None


def _missing_message(name: str, data_dir: Path, archive: UCIArchive) -> str:
    roots = _roots(data_dir)
    missing = [str(root / rel) for root in roots[:1] for rel in UCI_FILES[name] if not (root / rel).is_file()]
    return (
        f"{name}: missing {', '.join(missing)} (looked in {roots[0]} and {roots[1]}). Fetch the published "
        f"archive ({archive.url}, {archive.size or 'large'}) by setting `data.download: true` in the config, "
        f"`--data.download true` on the command line, or load_uci({name!r}, {str(data_dir)!r}, download=True); "
        f"or download it yourself and extract it into {data_dir} (`tar xzf data.tar.gz -C {data_dir}` gives "
        f"{roots[1] / UCI_FILES[name][0]}); {DATA_DIR_HINT}"
    )


def _fetch(name: str, data_dir: Path, archive: UCIArchive, allow_download: bool, progress: bool) -> list[Path]:
    local = data_dir / archive.filename
    if allow_download:
        download_file(archive.url, local, archive.sha256, md5=archive.md5, progress=progress)
    elif local.is_file():  # a copy of the archive is already here: verify it, no network needed
        for algorithm in ("sha256", "md5"):
            expected = getattr(archive, algorithm)
            if expected and file_digest(local, algorithm) != expected:
                raise ChecksumError(
                    f"{local}: {algorithm} mismatch, expected {expected} but got {file_digest(local, algorithm)}; "
                    "delete it and load with download=True"
                )
    else:
        raise DataFileNotFoundError(_missing_message(name, data_dir, archive))
    folders = sorted({rel.split("/", 1)[0] for rel in UCI_FILES[name]})
    extract_tar(local, data_dir, members=[p for f in folders for p in (f"data/{f}", f)])
    files = _find_files(name, data_dir)
    if files is None:
        raise DataFileNotFoundError(
            f"{local} did not contain {', '.join(UCI_FILES[name])}; is it the published archive?"
        )
    return files


def _read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path, index_col=False)  # index_col=False as published: the rows end oddly


def _read_bsds300(path: Path) -> Splits:
    h5py = require("h5py", "uci", "reading BSDS300 (an HDF5 file)")

    with h5py.File(path, "r") as f:
        missing = [k for k in ("train", "validation", "test") if k not in f]
        if missing:
            raise DataError(f"{path}: expected datasets train, validation and test; missing {missing}")
        return _finish("bsds300", (f["train"][:], f["validation"][:], f["test"][:]))


_LOADERS: dict[str, Callable[[list[Path]], Splits]] = {
    "power": lambda files: preprocess_power(np.load(files[0], allow_pickle=False)),
    "gas": lambda files: preprocess_gas(read_pandas_pickle(files[0])),
    "hepmass": lambda files: preprocess_hepmass(_read_csv(files[0]), _read_csv(files[1])),
    "miniboone": lambda files: preprocess_miniboone(np.load(files[0], allow_pickle=False)),
    "bsds300": lambda files: _read_bsds300(files[0]),
}


# ----- cache ------------------------------------------------------------------------------------------
def _cache_path(name: str, data_dir: Path) -> Path:
    return data_dir / _CACHE_DIR / f"{name}.npz"


def _signature(files: list[Path] | None) -> str | None:
    """Size and modification time of the raw files, or None when they are gone."""
    if files is None:
        return None
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _read_cache(path: Path, signature: str | None) -> Splits | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["version"]) != CACHE_VERSION:
                return None  # written by another preprocessing version: recompute
            if signature is not None and str(z["source"]) != signature:
                return None  # the raw files changed since (a cache without raw files is still used)
            return z["train"], z["val"], z["test"]
    except (OSError, ValueError, KeyError):  # truncated or foreign file: recompute and overwrite
        return None


def _write_cache(path: Path, splits: Splits, signature: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                train=splits[0],
                val=splits[1],
                test=splits[2],
                version=np.array(CACHE_VERSION),
                source=np.array(signature or ""),
            )
        os.replace(tmp, path)  # atomic: a reader sees the old cache, the new one, or none
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_uci(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    archive: UCIArchive | None = None,
    cache: bool = True,
    progress: bool = True,
) -> Splits:
    """``(train, val, test)`` float32 arrays of a UCI benchmark, preprocessed exactly as in MAF.

    Looks for the archive's files in ``data_dir`` and ``data_dir/data`` (see
    :data:`UCI_FILES`); if absent, extracts them from ``data_dir/data.tar.gz``
    when that file is there (verified), or downloads the archive there first
    when ``download=True``. The result is cached in
    ``data_dir/unflow_zoo_cache/<name>.npz``, tagged with :data:`CACHE_VERSION`
    and the raw files' sizes and modification times, so later calls read neither
    the raw files nor pandas; a cache of another version, or of raw files that
    have changed since, is recomputed (one whose raw files were deleted is used).

    Args:
        name: ``power``, ``gas``, ``hepmass``, ``miniboone`` or ``bsds300`` (any case).
        data_dir: the folder holding (or to receive) the data; None: the user's cache
            (:func:`~unflow_zoo.data.paths.default_data_dir`).
        download: fetch the archive (:data:`UCI_ARCHIVE`) when the files are missing.
        archive: another archive location and checksum (a mirror, or a test's file:// URL).
        cache: read and write the preprocessed cache.
        progress: show a progress bar while downloading.

    Raises:
        DataFileNotFoundError: the files are missing and ``download=False`` (also a
            ``FileNotFoundError``); the message names the missing file, the folders
            searched and how to fetch it.
        ChecksumError: the downloaded or local archive does not match its checksum.
        ConfigError: unknown ``name`` (a ``ValueError``).
        DataError: a file that is not in the published format (a ``ValueError``).

    References:
        Papamakarios et al., NeurIPS 2017; github.com/gpapamak/maf ``datasets/*.py``.
    """
    name = _check_name(name)
    data_dir = resolve_data_dir(data_dir)
    cache_file = _cache_path(name, data_dir)
    files = _find_files(name, data_dir)
    if cache and (cached := _read_cache(cache_file, _signature(files))) is not None:
        return cached
    files = files or _fetch(name, data_dir, archive or UCI_ARCHIVE, download, progress)
    splits = _LOADERS[name](files)
    if cache:
        _write_cache(cache_file, splits, _signature(files))
    return splits
