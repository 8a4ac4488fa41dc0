"""The user's data beyond text files: .npy, .npz and .csv files, arrays and tensors from Python, and
Hugging Face datasets; round trips with and without a context, and malformed inputs refused clearly."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unflow_zoo.data import DensityDataModule
from unflow_zoo.data.files import peek_table, read_csv, read_npy, read_npz, read_table
from unflow_zoo.errors import ConfigError, DataError, DataTypeError, FormatError

SPLITS = ("train", "val", "test")


def points(n: int = 60, d: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def served(dm: DensityDataModule, what: str = "data") -> torch.Tensor:
    dm.setup()
    return torch.cat([getattr(dm, f"{s}_{what}") for s in SPLITS])


def sorted_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    a = np.asarray(x)
    return a[np.lexsort(a.T[::-1])]


def assert_same_rows(dm: DensityDataModule, x: np.ndarray, context: np.ndarray | None = None) -> None:
    """Every point is served once, with its own context (float64 served: exactly)."""
    got = served(dm).numpy()
    if context is None:
        np.testing.assert_array_equal(sorted_rows(got), sorted_rows(x))
        return
    pairs = np.concatenate([got, served(dm, "context").numpy()], axis=1)
    np.testing.assert_array_equal(sorted_rows(pairs), sorted_rows(np.concatenate([x, context], axis=1)))


# ----- .npy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
def test_npy_round_trip(tmp_path: Path, dtype: type) -> None:
    x = (points() * 10).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    dm = DensityDataModule("file", path=str(tmp_path / "x.npy"), dtype="float64")
    assert dm.event_shape == (3,) and dm.context_features == 0 and dm.train_data is None
    assert_same_rows(dm, x.astype(np.float64))
    assert peek_table(tmp_path / "x.npy").width == 3 and read_npy(tmp_path / "x.npy").dtype == np.float64


def test_npy_with_context_columns_and_the_same_split_as_the_text_file(tmp_path: Path) -> None:
    x = np.round(points(d=4), 6)
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.txt", x, fmt="%.6f")
    a = DensityDataModule("file", path=str(tmp_path / "x.npy"), context_columns=[3, 1], seed=4, dtype="float64")
    b = DensityDataModule("file", path=str(tmp_path / "x.txt"), context_columns=[3, 1], seed=4, dtype="float64")
    assert a.event_shape == (2,) and a.context_features == 2
    a.setup(), b.setup()
    for s in SPLITS:  # the same points in the same order, whichever the format
        torch.testing.assert_close(getattr(a, f"{s}_data"), getattr(b, f"{s}_data"), rtol=0, atol=0)
        torch.testing.assert_close(getattr(a, f"{s}_context"), getattr(b, f"{s}_context"), rtol=0, atol=0)
    assert_same_rows(a, x[:, [0, 2]], x[:, [3, 1]])


def test_np_load_is_only_ever_called_without_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    real = np.load

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    np.save(tmp_path / "x.npy", points())
    np.savez(tmp_path / "x.npz", x=points(), context=points(d=1))
    for name in ("x.npy", "x.npz"):
        DensityDataModule("file", path=str(tmp_path / name)).setup()
    assert calls and all(call.get("allow_pickle") is False for call in calls)


def test_an_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([[1.0, None], [2.0, 3.0]], dtype=object), allow_pickle=True)
    with pytest.raises(DataTypeError, match=r"objects.npy: holds Python objects \(dtype object\).*never unpickles"):
        DensityDataModule("file", path=str(tmp_path / "objects.npy"))
    with pytest.raises(DataTypeError, match="never unpickles"):
        read_npy(tmp_path / "objects.npy")


def test_a_pickle_named_npy_is_refused_and_never_loaded(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.npy"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(DataError, match=r"evil.npy: not a NumPy .npy array \(it starts like a pickle"):
        DensityDataModule("file", path=str(path))
    with pytest.raises(DataError, match="never unpickles"):
        read_table(path)


@pytest.mark.parametrize(
    ("array", "error", "message"),
    [
        (np.zeros(5), DataError, r"expected an array of shape \(n, D\).*got shape \(5,\).*x\[:, None\]"),
        (np.zeros((2, 3, 4)), DataError, r"got shape \(2, 3, 4\)"),
        (np.zeros((0, 2)), DataError, "at least one point"),
        (np.array([["1", "2"]]), DataTypeError, "dtype <U1, not real numbers"),
        (np.zeros((3, 2), dtype=complex), DataTypeError, "dtype complex128"),
        (np.zeros(3, dtype=[("a", "f8"), ("b", "f8")]), DataTypeError, "a structured array"),
    ],
)
def test_npy_of_the_wrong_shape_or_kind_is_refused_when_the_module_is_built(
    tmp_path: Path, array: np.ndarray, error: type, message: str
) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(error, match=message):
        DensityDataModule("file", path=str(tmp_path / "bad.npy"))


def test_a_truncated_npy_is_a_data_error(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", points(1000))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[: len(raw) // 2])
    dm = DensityDataModule("file", path=str(tmp_path / "x.npy"))  # the header is intact
    with pytest.raises(DataError, match="cannot read the array.*truncated"):
        dm.setup()


def test_nan_and_overflow_in_an_npy_name_row_and_column(tmp_path: Path) -> None:
    x = points(30, 2)
    x[7, 1] = 1e39
    np.save(tmp_path / "big.npy", x)
    with pytest.raises(DataError, match=r"big.npy: 1 of 30 rows hold values too large for float32.*row index 7, col"):
        DensityDataModule("file", path=str(tmp_path / "big.npy")).setup()
    DensityDataModule("file", path=str(tmp_path / "big.npy"), dtype="float64").setup()  # fine in float64
    x[7, 1], x[12, 0] = 0.0, np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"nan.npy: 1 of 30 rows contain NaN or inf, at row indices 12"):
        DensityDataModule("file", path=str(tmp_path / "nan.npy")).setup()


# ----- .npz ---------------------------------------------------------------------------------------


def test_npz_of_one_array_whatever_its_name(tmp_path: Path) -> None:
    x = points()
    np.savez(tmp_path / "one.npz", x)  # stored as arr_0
    np.savez_compressed(tmp_path / "named.npz", points=x)
    for name in ("one.npz", "named.npz"):
        dm = DensityDataModule("file", path=str(tmp_path / name), dtype="float64")
        assert dm.event_shape == (3,) and dm.context_features == 0
        assert_same_rows(dm, x)


def test_npz_with_x_and_context_serves_pairs(tmp_path: Path) -> None:
    x, c = points(), points(d=2, seed=1)
    np.savez(tmp_path / "pairs.npz", x=x, context=c)
    dm = DensityDataModule("file", path=str(tmp_path / "pairs.npz"), dtype="float64", standardize=True)
    assert dm.event_shape == (3,) and dm.context_features == 2
    dm.setup()
    xb, cb = next(iter(dm.train_dataloader()))
    assert xb.shape[1:] == (3,) and cb.shape[1:] == (2,)
    raw = torch.cat([dm.transform_to_raw(getattr(dm, f"{s}_data")) for s in SPLITS]).numpy()
    pairs = np.concatenate([raw, served(dm, "context").numpy()], axis=1)  # contexts raw, x standardised
    np.testing.assert_allclose(sorted_rows(pairs), sorted_rows(np.concatenate([x, c], 1)), rtol=1e-12, atol=1e-12)
    x_read, c_read = read_npz(tmp_path / "pairs.npz")
    np.testing.assert_array_equal(x_read, x) and np.testing.assert_array_equal(c_read, c)
    np.savez(tmp_path / "x_only.npz", x=x)
    assert read_npz(tmp_path / "x_only.npz")[1] is None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 2)), "y": np.zeros((4, 1))}, r"holds arrays 'x', 'y'; expected one array, or 'x'"),
        ({"a": np.zeros((4, 2)), "context": np.zeros((4, 1))}, "expected one array, or 'x'"),
        ({"x": np.zeros((4, 2)), "context": np.zeros((3, 1))}, "'x' has 4 rows but 'context' has 3"),
        ({"x": np.zeros((4, 2)), "context": np.zeros(4)}, r"\(array 'context'\): expected an array of shape \(n, D\)"),
        ({}, "holds no arrays"),
    ],
)
def test_npz_with_the_wrong_arrays_is_refused(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        DensityDataModule("file", path=str(tmp_path / "bad.npz"))


def test_npz_holding_objects_or_not_a_zip_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "objects.npz", x=np.array([[1, None]], dtype=object))
    with pytest.raises(DataTypeError, match=r"\(array 'x'\): holds Python objects.*never unpickles"):
        DensityDataModule("file", path=str(tmp_path / "objects.npz"))
    with (tmp_path / "npy.npz").open("wb") as fh:  # an .npy under the .npz suffix
        np.save(fh, points())
    with pytest.raises(DataError, match="not a NumPy .npz archive"):
        DensityDataModule("file", path=str(tmp_path / "npy.npz"))


def test_npz_nan_in_the_context_names_the_array(tmp_path: Path) -> None:
    c = points(d=1)
    c[3, 0] = np.inf
    np.savez(tmp_path / "pairs.npz", x=points(), context=c)
    with pytest.raises(DataError, match=r"pairs.npz \(array 'context'\): 1 of 60 rows contain NaN or inf, at row ind"):
        DensityDataModule("file", path=str(tmp_path / "pairs.npz")).setup()


def test_context_columns_and_an_npz_context_are_one_or_the_other(tmp_path: Path) -> None:
    np.savez(tmp_path / "pairs.npz", x=points(), context=points(d=1))
    with pytest.raises(ConfigError, match="holds its own 'context' array"):
        DensityDataModule("file", path=str(tmp_path / "pairs.npz"), context_columns=[0])


# ----- .csv ---------------------------------------------------------------------------------------


def write_csv(path: Path, x: np.ndarray, header: list[str] | None = None) -> Path:
    rows = [",".join(header)] if header else []
    rows += [",".join(repr(float(v)) for v in row) for row in x]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_with_a_header_and_context_columns_by_name_and_index(tmp_path: Path) -> None:
    x = points(d=4)
    path = write_csv(tmp_path / "t.csv", x, ["a", "b", "theta", "d"])
    dm = DensityDataModule("file", path=str(path), context_columns=["theta", 0], dtype="float64")
    assert dm.event_shape == (2,) and dm.context_features == 2 and dm.kind.header == ("a", "b", "theta", "d")
    assert_same_rows(dm, x[:, [1, 3]], x[:, [2, 0]])
    data, header = read_csv(path, dtype=np.float64)
    np.testing.assert_array_equal(data, x) and header == ("a", "b", "theta", "d")


def test_csv_without_a_header_quoted_fields_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('# my points\n1, 2 ,3\n\n"4",5,6\r\n7,8,9\n', encoding="utf-8")
    data, header = read_csv(path)
    assert header is None
    np.testing.assert_array_equal(data, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    dm = DensityDataModule("file", path=str(path), context_columns=[2], val_fraction=0.0, test_fraction=0.0)
    assert dm.event_shape == (2,) and served(dm).shape == (3, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3\n", r"line 3 has 1 values, expected 2 \(as on line 1\)"),
        ("1,2\n3,\n", "line 2, column 2: empty value"),
        ("1,2\n3,x\n", "line 2, column 2: 'x' is not a number"),
        ("1;2\n3;4\n", "line 1, column 1: '1;2' is not a number; the file looks semicolon-separated"),
        ("1 2\n3 4\n", "looks whitespace-separated: name it .txt"),
        ("x,1\n2,3\n", "a header row .* must hold no number at all"),
        ("a,b\n", "no data rows below its header"),
        ("# nothing\n", "no data rows"),
        ("a,b\n1,2\nnan,3\n", r"1 of 2 rows contain NaN or inf, at lines 3"),
        ("a,b\n1,2\n3,1e39\n", r"too large for float32.*line 3, column 2"),
    ],
)
def test_malformed_csv_names_the_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        DensityDataModule("file", path=str(path)).setup()
    assert "bad.csv" in str(err.value)


def test_csv_context_column_names_are_checked_against_the_header(tmp_path: Path) -> None:
    headed = write_csv(tmp_path / "h.csv", points(d=3), ["a", "b", "a"])
    with pytest.raises(ConfigError, match=r"'zeta', which is not in the header.*columns: 'a', 'b', 'a'"):
        DensityDataModule("file", path=str(headed), context_columns=["zeta"])
    with pytest.raises(ConfigError, match="appears more than once"):
        DensityDataModule("file", path=str(headed), context_columns=["a"])
    with pytest.raises(ConfigError, match=r"distinct column indices in \[0, 3\) \(or names from its header"):
        DensityDataModule("file", path=str(headed), context_columns=["b", 1])
    bare = write_csv(tmp_path / "bare.csv", points(d=3))
    with pytest.raises(ConfigError, match="has no header row of column names"):
        DensityDataModule("file", path=str(bare), context_columns=["b"])
    np.savetxt(tmp_path / "p.txt", points(d=3))
    with pytest.raises(ConfigError, match="has no header row"):
        DensityDataModule("file", path=str(tmp_path / "p.txt"), context_columns=["b"])


def test_a_text_file_is_still_read_as_text_whatever_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "p.dat"
    path.write_text("1 2\n3 4\n", encoding="utf-8")
    np.testing.assert_array_equal(read_table(path).x, [[1, 2], [3, 4]])
    assert peek_table(path).width == 2


# ----- arrays and tensors from Python ------------------------------------------------------------


@pytest.mark.parametrize("as_tensor", [False, True])
def test_from_arrays_serves_the_points_split_like_a_file(tmp_path: Path, as_tensor: bool) -> None:
    x = np.round(points(d=2), 6)
    np.save(tmp_path / "x.npy", x)
    given = torch.from_numpy(x) if as_tensor else x
    dm = DensityDataModule.from_arrays(given, seed=3, batch_size=16, dtype="float64")
    assert dm.event_shape == (2,) and dm.context_features == 0 and dm.hparams.dataset == "arrays"
    assert dm.in_memory and dm.data_name == "arrays"
    as_file = DensityDataModule("file", path=str(tmp_path / "x.npy"), seed=3, dtype="float64")
    dm.setup(), as_file.setup()
    for s in SPLITS:
        torch.testing.assert_close(getattr(dm, f"{s}_data"), getattr(as_file, f"{s}_data"), rtol=0, atol=0)
    assert [len(b[0]) for b in dm.train_dataloader()] == [16, 16, 16]
    assert set(dm.hparams) == set(inspect.signature(DensityDataModule.__init__).parameters) - {"self"}


def test_from_arrays_with_a_context_and_scaling(tmp_path: Path) -> None:
    x, c = points(), points(d=1, seed=2)
    dm = DensityDataModule.from_arrays(x, c, standardize=True, dtype="float64", name="my sims")
    assert dm.context_features == 1 and repr(dm).startswith("DensityDataModule(dataset='my sims'")
    dm.setup()
    xb, cb = next(iter(dm.train_dataloader()))
    assert xb.shape == (48, 3) and cb.shape == (48, 1)
    raw = torch.cat([dm.transform_to_raw(getattr(dm, f"{s}_data")) for s in SPLITS]).numpy()
    pairs = np.concatenate([raw, served(dm, "context").numpy()], 1)
    np.testing.assert_allclose(sorted_rows(pairs), sorted_rows(np.concatenate([x, c], 1)), rtol=1e-12, atol=1e-12)


def test_from_arrays_copies_the_arrays() -> None:
    x = points()
    dm = DensityDataModule.from_arrays(x, dtype="float64")
    x[:] = 0.0
    assert float(served(dm).abs().sum()) > 0


@pytest.mark.parametrize(
    ("x", "context", "error", "message"),
    [
        (np.array([[1.0, None]], dtype=object), None, DataTypeError, r"arrays \(x\): expected real numbers.*object"),
        (np.zeros(5), None, DataError, r"arrays \(x\): expected points as an array of shape \(n, D\)"),
        (np.zeros((5, 2)), np.zeros((4, 1)), DataError, "x has 5 rows but the context has 4"),
        (np.zeros((5, 2)), np.zeros(5), DataError, r"arrays \(context\): expected points as an array of shape"),
        (np.array([[0.0, 1.0], [np.nan, 2.0]]), None, DataError, r"arrays \(x\): 1 of 2 rows .* row indices 1"),
        (np.array([[0.0, 1e39]]), None, DataError, r"too large for float32.*row index 0, column index 1"),
        (np.zeros((2, 2)), np.array([[np.inf], [0.0]]), DataError, r"arrays \(context\): 1 of 2 rows"),
    ],
)
def test_from_arrays_refuses_malformed_arrays(x: np.ndarray, context: np.ndarray | None, error: type, message: str):
    with pytest.raises(error, match=message):
        DensityDataModule.from_arrays(x, context)


def test_from_arrays_validates_in_the_served_dtype() -> None:
    big = np.array([[0.0, 1e39], [1.0, 2.0]])
    assert DensityDataModule.from_arrays(big, dtype="float64", val_fraction=0, test_fraction=0).event_shape == (2,)


@pytest.mark.parametrize("arg", ["dataset", "path", "context_columns"])
def test_from_arrays_refuses_the_arguments_that_name_other_data(arg: str) -> None:
    with pytest.raises(ConfigError, match=f"from_arrays takes no {arg}="):
        DensityDataModule.from_arrays(points(), **{arg: "moons"})


def test_array_data_are_not_in_the_recorded_arguments() -> None:
    """What a checkpoint or a pretrained flow records of an arrays module: its arguments, not its data;
    rebuilding from that record says how to get the data back."""
    from unflow_zoo.pretrained.serialization import data_record, rebuild_datamodule

    dm = DensityDataModule.from_arrays(points(), standardize=True)
    data, preprocessing = data_record(dm)
    assert data["init_args"]["dataset"] == "arrays" and preprocessing["kind"] == "standardize"
    assert not any(isinstance(v, (list, np.ndarray)) and len(v) == 60 for v in data["init_args"].values())
    with pytest.raises(FormatError, match=r"from_arrays.*not among the module's arguments.*dataset='file'"):
        rebuild_datamodule({"data": data})
    with pytest.raises(ConfigError, match="data given from Python"):
        DensityDataModule(**{k: v for k, v in dict(dm.hparams).items() if not k.startswith("_")})


# ----- Hugging Face datasets ----------------------------------------------------------------------


def hf_table(n: int = 40):  # type: ignore[no-untyped-def]
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(5)
    return datasets.Dataset.from_dict(
        {
            "a": rng.normal(size=n),
            "pair": rng.normal(size=(n, 2)).tolist(),
            "label": rng.integers(0, 3, size=n),
            "note": ["x"] * n,
        }
    )


def test_from_hf_round_trip_with_and_without_a_context() -> None:
    ds = hf_table()
    x = np.concatenate([np.asarray(ds["a"])[:, None], np.asarray(ds["pair"])], axis=1)
    dm = DensityDataModule.from_hf(ds, columns=["a", "pair"], dtype="float64")
    assert dm.event_shape == (3,) and dm.context_features == 0 and dm.hparams.dataset == "arrays"
    assert_same_rows(dm, x)
    pairs = DensityDataModule.from_hf(ds, columns=["a", "pair"], context_columns=["label"], dtype="float64")
    assert pairs.context_features == 1 and "columns 'a', 'pair'" in pairs.data_name
    assert_same_rows(pairs, x, np.asarray(ds["label"], dtype=np.float64)[:, None])
    subset = ds.shuffle(seed=1).select(range(10))  # an indices mapping over the table: its rows, in its order
    np.testing.assert_array_equal(
        DensityDataModule.from_hf(subset, columns=["a"], val_fraction=0, test_fraction=0).kind.x[:, 0],
        np.asarray(subset["a"]),
    )


def test_from_hf_refuses_what_is_not_a_table_of_numbers() -> None:
    datasets = pytest.importorskip("datasets")
    ds = hf_table()
    with pytest.raises(DataTypeError, match="column 'note' holds string values, not numbers"):
        DensityDataModule.from_hf(ds, context_columns=["label"])  # every other column, the strings too
    with pytest.raises(ConfigError, match=r"columns names 'b', which the dataset does not have.*'a', 'pair'"):
        DensityDataModule.from_hf(ds, columns=["a", "b"])
    with pytest.raises(ConfigError, match="named twice"):
        DensityDataModule.from_hf(ds, columns=["a", "label"], context_columns=["label"])
    with pytest.raises(DataTypeError, match=r"one split, a datasets.Dataset.*dataset\['train'\]"):
        DensityDataModule.from_hf(datasets.DatasetDict({"train": ds}), columns=["a"])
    with pytest.raises(DataTypeError, match="takes a datasets.Dataset, got dict"):
        DensityDataModule.from_hf({"a": [1.0]}, columns=["a"])
    ragged = datasets.Dataset.from_dict({"v": [[1.0, 2.0], [3.0]]})
    with pytest.raises(DataError, match="column 'v' holds sequences of varying length"):
        DensityDataModule.from_hf(ragged)
    holes = datasets.Dataset.from_dict({"a": [1.0, None, 3.0], "b": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"1 of 3 rows contain NaN or inf, at row indices 1"):
        DensityDataModule.from_hf(holes)


# ----- fuzzing: any bytes either load or raise the package's DataError ------------------------------

FUZZ = settings(max_examples=40, deadline=None, database=None)
csv_lines = st.lists(
    st.one_of(
        st.sampled_from([b"a,b\n", b"1,2\n", b"3.5 , -4e-1\r\n", b"# c\n", b"\n", b'"5","6"\n', b"7;8\n", b"1,,2\n"]),
        st.binary(max_size=6),
    ),
    max_size=8,
).map(b"".join)


@FUZZ
@given(raw=csv_lines)
def test_any_csv_bytes_load_or_raise_data_error(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("csv") / "f.csv"
    path.write_bytes(raw)
    try:
        data, header = read_csv(path)
    except DataError as e:
        assert str(path) in str(e)
        return
    assert data.ndim == 2 and data.shape[0] >= 1 and np.isfinite(data).all()
    assert peek_table(path).width == data.shape[1] and (header is None or len(header) == data.shape[1])


@FUZZ
@given(cut=st.integers(0, 200), noise=st.binary(max_size=40))
def test_any_damaged_npy_or_npz_raises_data_error(tmp_path_factory: pytest.TempPathFactory, cut: int, noise: bytes):
    folder = tmp_path_factory.mktemp("np")
    np.save(folder / "x.npy", np.arange(12.0).reshape(6, 2))
    np.savez(folder / "x.npz", x=np.arange(12.0).reshape(6, 2), context=np.ones((6, 1)))
    for name in ("x.npy", "x.npz"):
        raw = (folder / name).read_bytes()
        (folder / name).write_bytes(raw[:cut] + noise + raw[cut + len(noise) :])
        try:
            table = read_table(folder / name)
        except DataError:
            continue
        assert table.x.ndim == 2 and np.isfinite(table.x).all()
