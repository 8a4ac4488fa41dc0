"""Hostile and careless input: data are validated in the training dtype, standardised without
overflow, and a malformed file either loads or raises the package's own DataError.

The fuzz tests run in two sizes: a few dozen examples each by default (seconds), and
thousands under ``-m slow``.
"""

from __future__ import annotations

import codecs
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unflow_zoo.data import DensityDataModule, read_points, validate_points
from unflow_zoo.data.files import DataFileNotFoundError, peek_dim
from unflow_zoo.data.module import standardize_stats
from unflow_zoo.data.synthetic import Source
from unflow_zoo.errors import DataError, DataTypeError, MissingFileError, UnflowZooError

FAST = settings(max_examples=40, deadline=None, database=None)
SLOW = settings(max_examples=2000, deadline=None, database=None)
F32_MAX = float(np.finfo(np.float32).max)


def write(tmp_path: Path, text: str, name: str = "points.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def normal_rows(n: int = 40, scale: float = 1.0, seed: int = 0) -> list[str]:
    values = np.random.default_rng(seed).normal(size=(n, 2)) * scale
    return [f"{a!r} {b!r}" for a, b in values.tolist()]


class ArraySource(Source):
    """A source that serves a fixed array: how a NumPy array reaches the data module."""

    name, dim = "array", 2

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.array


def module_of(array: np.ndarray, **kwargs) -> DensityDataModule:
    dm = DensityDataModule(dataset="moons", n_samples=len(array), **kwargs)
    dm.source = ArraySource(array)
    return dm


# ----- values that overflow the training dtype ----------------------------------------------


@pytest.mark.parametrize("value", ["1e300", "1e39", "-3.5e38"])
def test_a_value_overflowing_float32_in_a_file_is_refused_naming_line_and_column(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "# x y\n" + "\n".join([*normal_rows(5), f"{value} 0", f"0 {value}"]) + "\n", "big.txt")
    with pytest.raises(DataError) as err:
        read_points(path)
    msg = str(err.value)
    assert "big.txt" in msg and "2 of 7 rows" in msg and "too large for float32" in msg
    assert "line 7, column 1" in msg and "line 8, column 2" in msg
    assert "divide column 1 by 1e" in msg and "float64" in msg  # the fix
    assert isinstance(err.value, ValueError)  # callers catching ValueError still do


def test_float32_max_itself_is_accepted_and_float64_reading_keeps_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, f"{F32_MAX!r} 0\n1 2\n")
    assert read_points(path)[0, 0] == F32_MAX
    big = write(tmp_path, "1e300 0\n1 2\n", "big.txt")
    assert read_points(big, dtype=np.float64)[0, 0] == 1e300


@pytest.mark.parametrize("standardize", [False, True])
def test_the_data_module_refuses_a_file_that_overflows_float32(tmp_path: Path, standardize: bool) -> None:
    path = write(tmp_path, "\n".join([*normal_rows(20), "1e300 0"]) + "\n", "big.txt")
    dm = DensityDataModule(dataset="file", path=str(path), standardize=standardize)
    with pytest.raises(DataError, match=r"big.txt: 1 of 21 rows hold values too large for float32.*line 21, column 1"):
        dm.setup()


@pytest.mark.parametrize("value", [1e300, 1e39])
def test_a_numpy_array_overflowing_float32_is_refused_naming_row_and_column(value: float) -> None:
    array = np.random.default_rng(0).normal(size=(30, 2))
    array[7, 1] = value
    with pytest.raises(DataError, match=r"my array: 1 of 30 rows .* float32.*row index 7, column index 1"):
        validate_points(array, where="my array")
    with pytest.raises(DataError, match=r"moons: 1 of 30 rows hold values too large for float32.*row index 7"):
        module_of(array).setup()
    with pytest.raises(DataError, match="too large for float32"):
        module_of(array, standardize=True).setup()
    validate_points(array, where="my array", dtype=np.float64)  # fine where training is float64


@pytest.mark.parametrize(
    ("array", "kind"),
    [
        (np.array([["1", "2"], ["3", "x"]]), "<U1"),
        (np.array([[1.0, None]], dtype=object), "object"),
        (np.array([[1 + 2j, 0]]), "complex128"),
    ],
)
def test_arrays_of_the_wrong_kind_raise_data_type_error(array: np.ndarray, kind: str) -> None:
    with pytest.raises(DataTypeError, match=f"src: expected real numbers, got an array of dtype {kind}") as err:
        validate_points(array, where="src")
    assert isinstance(err.value, TypeError) and isinstance(err.value, DataError)


def test_ragged_nested_lists_raise_data_error() -> None:
    with pytest.raises(DataError, match="src: expected points as an"):
        validate_points([[1.0, 2.0], [3.0]], where="src")


def test_float64_serving_trains_on_data_beyond_float32(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join(normal_rows(50, scale=1e300)) + "\n")
    dm = DensityDataModule(dataset="file", path=str(path), standardize=True, dtype="float64")
    dm.setup()
    assert dm.train_data.dtype == torch.float64 and dm.dtype == torch.float64
    assert torch.isfinite(dm.train_data).all() and torch.isfinite(dm.std).all()
    torch.testing.assert_close(dm.train_data.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(dm.train_data.std(0, unbiased=False), torch.ones(2, dtype=torch.float64))


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'float16'"):
        DensityDataModule(dtype="float16")


# ----- standardisation without overflow ---------------------------------------------------------


@pytest.mark.parametrize("scale", [1e30, 1e38])
def test_standardizing_a_column_near_float32s_limit_gives_finite_unit_data(tmp_path: Path, scale: float) -> None:
    values = np.random.default_rng(1).normal(size=(200, 2))
    values[:, 0] = np.clip(values[:, 0] * scale, -F32_MAX, F32_MAX)
    path = write(tmp_path, "\n".join(f"{a!r} {b!r}" for a, b in values.tolist()) + "\n")
    dm = DensityDataModule(dataset="file", path=str(path), standardize=True)
    dm.setup()
    served = torch.cat([dm.train_data, dm.val_data, dm.test_data])
    assert served.dtype == torch.float32 and torch.isfinite(served).all()
    train = dm.train_data.double()
    torch.testing.assert_close(train.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5, rtol=0)


def test_standardize_stats_cannot_overflow_and_constant_columns_get_one() -> None:
    x = np.random.default_rng(3).normal(size=(64, 3))
    x[:, 0] *= 1e300
    x[:, 2] = 7.3e200  # constant
    with np.errstate(over="ignore"):
        assert x[:, 0].std() == np.inf  # the plain variance overflows
    mean, std = standardize_stats(x)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert math.isclose(std[0], np.std(x[:, 0] / 1e300) * 1e300, rel_tol=1e-12)
    assert math.isclose(std[1], np.std(x[:, 1]), rel_tol=1e-12)
    assert std[2] == 1.0 and mean[2] == 7.3e200
    z = (x - mean) / std
    np.testing.assert_allclose(z[:, :2].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, :2].std(0), 1.0, rtol=1e-12)


def test_ball_scaling_of_float64_data_beyond_float32_is_finite(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join(normal_rows(50, scale=1e200)) + "\n")
    dm = DensityDataModule(dataset="file", path=str(path), scaling="ball", dtype="float64")
    dm.setup()
    assert torch.isfinite(dm.std).all()
    assert float(dm.train_data.norm(dim=1).max()) == pytest.approx(0.5)


def test_unscaled_values_too_large_for_the_base_density_warn(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join(normal_rows(50, scale=1e25)) + "\n")
    with pytest.warns(UserWarning, match=r"squares them, which overflows torch.float32.*scaling='standardize'"):
        DensityDataModule(dataset="file", path=str(path)).setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DensityDataModule(dataset="file", path=str(path), standardize=True).setup()


# ----- malformed files, case by case ------------------------------------------------------------

EXPECTED = np.array([[1.0, 2.0], [3.5, -0.25], [5.0, 6.0]])
TEXT = "# x y\n1 2\n3.5 -0.25\n\n5 6\n"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(codecs.BOM_UTF8 + TEXT.encode(), id="utf-8 BOM"),
        pytest.param(TEXT.replace("\n", "\r\n").encode(), id="windows line endings"),
        pytest.param(TEXT.replace("\n", "\r").encode(), id="old mac line endings"),
        pytest.param(TEXT.replace(" ", "\t").encode(), id="tabs"),
        pytest.param(TEXT.encode("utf-16"), id="utf-16 with BOM"),
        pytest.param(TEXT.encode("utf-32"), id="utf-32 with BOM"),
        pytest.param(("# température (°C)\n" + TEXT).encode("latin-1"), id="latin-1 comment"),
        pytest.param(b"1 2\n3.5 -0.25\n5 6", id="no final newline"),
    ],
)
def test_files_in_other_encodings_and_layouts_load(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "points.txt"
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_points(path), EXPECTED)
    assert peek_dim(path) == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b"x y\n1 2\n", r"line 1, column 1: 'x' is not a number; if this line is a header", id="header"),
        pytest.param(b"1,2\n3,4\n", r"line 1, column 1: '1,2' is not a number; the file looks comma", id="commas"),
        pytest.param(b"1;2\n3;4\n", "semicolon-separated", id="semicolons"),
        pytest.param(b"1 2\n3 4 5\n", "line 2 has 3 columns, expected 2", id="ragged"),
        pytest.param(b"1 2\n3 4\n5 6 # note\n", r"line 3 has 4 columns", id="trailing comment"),
        pytest.param(
            b"1 2\n3 \xe9\n",
            r"line 2, character 3: byte 0xe9 is not utf-8 text; is points.txt a bin",
            id="latin-1 data",
        ),
        pytest.param(b"1 2\n3\x004\n", "line 2, character 2: a NUL character", id="NUL"),
        pytest.param("1 2\n3 4\n".encode("utf-16-le"), "a NUL character", id="utf-16 without BOM"),
        pytest.param(
            codecs.BOM_UTF16_LE + "1 2\n3 4\n".encode("utf-16-le") + b"5", "not valid utf-16", id="cut utf-16"
        ),
        pytest.param(b"", "no data rows", id="empty"),
        pytest.param(b"\xef\xbb\xbf\r\n# c\r\n", "no data rows", id="only a BOM and a comment"),
        pytest.param(b"1 2\n1e400 0\n", r"rows contain NaN or inf, at lines 2; .*1e400", id="beyond float64"),
    ],
)
def test_malformed_files_raise_data_error_naming_the_file_and_line(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "points.txt"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=message) as err:
        read_points(path)
    assert str(path) in str(err.value)


def test_a_numpy_binary_file_is_refused_as_not_text(tmp_path: Path) -> None:
    path = tmp_path / "points.txt"
    with path.open("wb") as fh:
        np.save(fh, np.random.default_rng(0).normal(size=(50, 2)))
    with pytest.raises(DataError, match="points.txt: line 1, character 1: byte 0x93 is not utf-8 text"):
        read_points(path)
    with pytest.raises(DataError, match="byte 0x93"):
        DensityDataModule(dataset="file", path=str(path))  # already at construction (peek_dim)


def test_a_header_is_refused_when_the_module_is_built(tmp_path: Path) -> None:
    path = write(tmp_path, "x y\n1 2\n")
    with pytest.raises(DataError, match="header"):
        DensityDataModule(dataset="file", path=str(path))


def test_a_missing_file_is_a_data_error_saying_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="put the file there") as err:
        read_points(tmp_path / "nope.txt")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, DataError)
    assert isinstance(err.value, MissingFileError)
    with pytest.raises(DataFileNotFoundError, match=f"put the file at {tmp_path.resolve() / 'nope.txt'}"):
        DensityDataModule(dataset="file", path="nope.txt", data_dir=str(tmp_path))
    with pytest.raises(DataFileNotFoundError, match="which is a folder"):
        read_points(tmp_path)


# ----- fuzzing ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz") / "points.txt"


def load_or_data_error(path: Path) -> np.ndarray | None:
    """``read_points(path)``, checked to be a finite float32-representable ``(n, D)`` array
    agreeing with ``peek_dim``; None when it raised DataError. Any other exception fails."""
    try:
        data = read_points(path)
    except DataError as e:
        assert isinstance(e, UnflowZooError) and str(e)
        return None
    assert isinstance(data, np.ndarray) and data.dtype == np.float64 and data.ndim == 2
    assert data.shape[0] >= 1 and data.shape[1] >= 1
    assert np.isfinite(data).all() and np.isfinite(data.astype(np.float32)).all()
    assert peek_dim(path) == data.shape[1]
    return data


floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(allow_nan=True, allow_infinity=True),  # some NaN/inf, some beyond float32
)
separators = st.sampled_from([" ", "\t", "  ", " \t "])
newlines = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def ragged_files(draw: st.DrawFn) -> tuple[str, list[list[float]]]:
    rows = draw(st.lists(st.lists(floats, min_size=1, max_size=4), min_size=1, max_size=8))
    sep, nl = draw(separators), draw(newlines)
    return nl.join(sep.join(repr(v) for v in row) for row in rows) + draw(st.sampled_from(["", nl])), rows


def check_ragged(text: str, rows: list[list[float]], path: Path) -> None:
    path.write_bytes(text.encode())
    data = load_or_data_error(path)
    ragged = any(len(r) != len(rows[0]) for r in rows)
    with np.errstate(over="ignore"):
        unusable = not all(np.isfinite(np.asarray(r, dtype=np.float64).astype(np.float32)).all() for r in rows)
    if ragged or unusable:  # NaN, inf, or beyond float32
        assert data is None
    else:
        assert data is not None
        np.testing.assert_array_equal(data, np.array(rows))


@FAST
@given(case=ragged_files())
def test_fuzz_ragged_rows_load_exactly_or_raise_data_error(case: tuple[str, list[list[float]]], scratch: Path) -> None:
    check_ragged(*case, scratch)


@pytest.mark.slow
@SLOW
@given(case=ragged_files())
def test_fuzz_ragged_rows_long(case: tuple[str, list[list[float]]], scratch: Path) -> None:
    check_ragged(*case, scratch)


numbers = st.floats().map(repr)
tokens = st.one_of(
    numbers,
    numbers,  # twice: half the tokens are numbers, so that some files load
    st.sampled_from(
        ["nan", "-inf", "1e39", "1e400", "1,5", "#", "abc", "0x1f", "1_000", "\uff11", "\ufeff1", "+", ".", "e5", "٣"]
    ),
    st.text(alphabet="0123456789.eE+-,;#xn \t\x00\x0b\x0c\x1c\x85\xa0\u2028", max_size=8),
)


@st.composite
def token_files(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.lists(tokens, max_size=5), min_size=0, max_size=8))
    sep, nl = draw(separators), draw(newlines)
    return nl.join(sep.join(line) for line in lines)


def check_tokens(text: str, path: Path) -> None:
    path.write_bytes(text.encode())
    load_or_data_error(path)


@FAST
@given(text=token_files())
def test_fuzz_random_tokens_load_or_raise_data_error(text: str, scratch: Path) -> None:
    check_tokens(text, scratch)


@pytest.mark.slow
@SLOW
@given(text=token_files())
def test_fuzz_random_tokens_long(text: str, scratch: Path) -> None:
    check_tokens(text, scratch)


boms = st.sampled_from(
    [b"", b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE]
)
raw_files = st.one_of(
    st.tuples(boms, st.binary(max_size=200)).map(b"".join),
    # numbers with a few stray bytes: mostly text, so the parser gets past the first line
    st.lists(st.one_of(st.sampled_from([b"1 2\n", b"3.5\t4\r\n", b"# c\n", b"\n"]), st.binary(max_size=3))).map(
        b"".join
    ),
)


@FAST
@given(raw=raw_files)
def test_fuzz_random_bytes_load_or_raise_data_error(raw: bytes, scratch: Path) -> None:
    scratch.write_bytes(raw)
    load_or_data_error(scratch)


@pytest.mark.slow
@SLOW
@given(raw=raw_files)
def test_fuzz_random_bytes_long(raw: bytes, scratch: Path) -> None:
    scratch.write_bytes(raw)
    load_or_data_error(scratch)


@st.composite
def encoded_files(draw: st.DrawFn) -> tuple[bytes, np.ndarray | None]:
    """A valid file of points with a comment in any text, in a random encoding: loads exactly when the
    encoding is one read_points knows (UTF-8, or UTF-16/32 with a BOM); otherwise load or DataError."""
    values = draw(
        st.lists(
            st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=2, max_size=2),
            min_size=1,
            max_size=5,
        )
    )
    comment = draw(st.text(max_size=20).map(lambda t: t.replace("\n", " ").replace("\r", " ")))
    nl = draw(newlines)
    text = f"# {comment}{nl}" + nl.join(f"{a!r} {b!r}" for a, b in values) + nl
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1", "cp1252", "utf-16-le"]))
    exact = encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-32")
    return text.encode(encoding, errors="replace"), (np.array(values) if exact else None)


def check_encoded(raw: bytes, expected: np.ndarray | None, path: Path) -> None:
    path.write_bytes(raw)
    data = load_or_data_error(path)
    if expected is not None:
        assert data is not None
        np.testing.assert_array_equal(data, expected)


@FAST
@given(case=encoded_files())
def test_fuzz_encodings_load_exactly_or_raise_data_error(case: tuple[bytes, np.ndarray | None], scratch: Path) -> None:
    check_encoded(*case, scratch)


@pytest.mark.slow
@SLOW
@given(case=encoded_files())
def test_fuzz_encodings_long(case: tuple[bytes, np.ndarray | None], scratch: Path) -> None:
    check_encoded(*case, scratch)
