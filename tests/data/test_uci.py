"""UCI benchmarks: the published split arithmetic and each MAF preprocessing step, on small files
the tests write in the archive's own formats (.npy, a pandas DataFrame pickle, HEPMASS csv, HDF5)."""

from __future__ import annotations

import io
import os
import pickle
import sys
import tarfile
import types
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from unflow_zoo.data import uci
from unflow_zoo.data.download import ChecksumError, sha256_file
from unflow_zoo.data.uci import (
    CACHE_VERSION,
    UCI_DATASETS,
    UCIArchive,
    load_uci,
    preprocess_gas,
    preprocess_hepmass,
    preprocess_miniboone,
    preprocess_power,
    read_pandas_pickle,
    uci_split_sizes,
)


# ----- published sizes ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "raw_rows", "published"),
    [
        # POWER: the UCI household power file has 2,075,259 rows, 25,979 of them with missing values;
        # data.npy holds the other 2,075,259 - 25,979 = 2,049,280.
        ("power", 2_049_280, (1_659_917, 184_435, 204_928)),
        # GAS: ethylene_CO.pickle is the published .sample(frac=0.25) of the 4,208,261 rows of the UCI
        # ethylene/CO file: round(0.25 * 4,208,261) = 1,052,065 = 852,174 + 94,685 + 105,206.
        ("gas", 1_052_065, (852_174, 94_685, 105_206)),
        # HEPMASS: label-1 rows of 1000_train.csv = 315,123 + 35,013 = 350,136 (the validation set is
        # int(0.1 * 350,136) = 35,013 of them); label-1 rows of 1000_test.csv = 174,987, all test.
        ("hepmass", (350_136, 174_987), (315_123, 35_013, 174_987)),
        # MINIBOONE: data.npy (outliers already removed when the archive was made; the published
        # loader removes nothing) has 36,488 = 29,556 + 3,284 + 3,648 rows.
        ("miniboone", 36_488, (29_556, 3_284, 3_648)),
        # BSDS300: the HDF5 file stores the three splits; the loader keeps them as they are.
        ("bsds300", (1_000_000, 50_000, 250_000), (1_000_000, 50_000, 250_000)),
    ],
)
def test_split_sizes_reproduce_the_published_ones(name, raw_rows, published):
    assert uci_split_sizes(name, raw_rows) == published


def test_split_sizes_reject_bad_input():
    with pytest.raises(ValueError, match="unknown UCI data set"):
        uci_split_sizes("mnist", 10)
    with pytest.raises(TypeError, match="1000_train.csv"):
        uci_split_sizes("hepmass", 100)
    with pytest.raises(TypeError, match="row count"):
        uci_split_sizes("power", (1, 2))
    with pytest.raises(ValueError, match="too few"):
        uci_split_sizes("miniboone", 10)  # 1 test row, int(0.1 * 9) = 0 validation rows
    assert uci_split_sizes("miniboone", 11) == (9, 1, 1)  # the smallest table the published slicing handles
    assert uci_split_sizes("miniboone", 20) == (17, 1, 2)  # int(0.1 * 18) = 1


def test_uci_datasets_dims():
    assert UCI_DATASETS == {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}


# ----- fixture files in the archive's formats --------------------------------------------------------
def _write_power(root: Path, n: int = 240, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, 8)) * np.array([1.0, 0.2, 5.0, 3.0, 1.0, 2.0, 4.0, 1.0]) + 10
    raw[:, 7] = np.arange(n)  # "time": the published noise for it is 0
    (root / "power").mkdir(parents=True, exist_ok=True)
    np.save(root / "power" / "data.npy", raw)
    return raw


def _write_miniboone(root: Path, n: int = 150, d: int = 5, seed: int = 1) -> np.ndarray:
    raw = np.random.default_rng(seed).normal(size=(n, d)) * np.arange(1, d + 1) + np.arange(d)
    (root / "miniboone").mkdir(parents=True, exist_ok=True)
    np.save(root / "miniboone" / "data.npy", raw)
    return raw


def _gas_frame(n: int = 2000, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, y, d, noise = rng.normal(size=(4, n))
    # corr(a, b) ~ 0.995, corr(b, c) ~ 0.989, corr(a, c) ~ 0.970: a chain, so only one column at a time
    # may go. The published loop drops a (first with count > 1), then b; it keeps c and d.
    return pd.DataFrame(
        {
            "Time": np.arange(n, dtype=float),
            "Meth": rng.uniform(size=n),
            "Eth": rng.uniform(size=n),
            "a": x,
            "b": x + 0.1 * y,
            "c": x + 0.25 * y,
            "d": 3.0 * d + 0.01 * noise + 7.0,
        }
    )


def _write_gas(root: Path, frame: pd.DataFrame) -> None:
    (root / "gas").mkdir(parents=True, exist_ok=True)
    frame.to_pickle(root / "gas" / "ethylene_CO.pickle")


N_FEATURES = 27  # HEPMASS: f0..f26; 1000_test.csv has one more column at the end (the published "messed up")


def _hepmass_frames(seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def part(n_pos: int, n_neg: int) -> np.ndarray:
        features = rng.normal(size=(n_pos + n_neg, N_FEATURES)) * 2.0 + 1.0
        features[:, 3] = np.where(rng.uniform(size=n_pos + n_neg) < 0.5, -10.0, rng.normal(size=n_pos + n_neg))
        features[:, 8] = rng.normal(size=n_pos + n_neg)
        features[:6, 8] = 50.0  # repeated 6 times, but it is the maximum: the published rule keeps it
        features[:, 20] = rng.integers(0, 3, size=n_pos + n_neg)  # discrete: minimum 0 repeats
        labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        features[n_pos:] += 100.0  # background rows would wreck the statistics if they were kept
        order = rng.permutation(n_pos + n_neg)
        return np.column_stack([labels, features])[order]

    header = ["# label"] + [f"f{i}" for i in range(N_FEATURES)]
    train = pd.DataFrame(part(300, 250), columns=header)
    test_values = part(80, 60)
    test = pd.DataFrame(np.column_stack([test_values, np.full(len(test_values), 1000.0)]), columns=[*header, "mass"])
    return train, test


def _write_hepmass(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    train, test = _hepmass_frames()
    (root / "hepmass").mkdir(parents=True, exist_ok=True)
    for frame, name in ((train, "1000_train.csv"), (test, "1000_test.csv")):
        frame.to_csv(root / "hepmass" / name, index=False, float_format="%.6f")
    return pd.read_csv(root / "hepmass" / "1000_train.csv"), pd.read_csv(root / "hepmass" / "1000_test.csv")


def _write_bsds300(root: Path, seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = {"train": 50, "validation": 7, "test": 11}
    splits = {k: rng.uniform(-0.5, 0.5, size=(n, 63)).astype(np.float32) for k, n in sizes.items()}
    (root / "BSDS300").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for key, value in splits.items():
            f.create_dataset(key, data=value)
    return splits


def _assert_standardized(parts: list[np.ndarray], ddof: int) -> None:
    both = np.vstack(parts).astype(np.float64)
    np.testing.assert_allclose(both.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(both.std(axis=0, ddof=ddof), 1.0, rtol=1e-5)


# ----- POWER ----------------------------------------------------------------------------------------
def _power_reference(raw: np.ndarray) -> tuple[np.ndarray, ...]:
    """The published datasets/power.py, transcribed line by line."""
    rng = np.random.RandomState(42)
    data = raw.copy()
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    n_test = int(0.1 * data.shape[0])
    data_test = data[-n_test:]
    data = data[0:-n_test]
    n_validate = int(0.1 * data.shape[0])
    data_validate = data[-n_validate:]
    data_train = data[0:-n_validate]
    both = np.vstack((data_train, data_validate))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return tuple(((x - mu) / s).astype(np.float32) for x in (data_train, data_validate, data_test))


def test_power_matches_the_published_loader(tmp_path):
    raw = _write_power(tmp_path)
    train, val, test = load_uci("power", tmp_path, cache=False)
    for got, want in zip((train, val, test), _power_reference(raw), strict=True):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert (len(train), len(val), len(test)) == uci_split_sizes("power", len(raw)) == (195, 21, 24)
    assert train.shape[1] == UCI_DATASETS["power"]
    _assert_standardized([train, val], ddof=0)


def test_power_drops_columns_1_and_3_and_keeps_the_others(tmp_path):
    raw = _write_power(tmp_path)
    base = preprocess_power(raw)
    garbage = raw.copy()
    garbage[:, [1, 3]] = np.random.default_rng(9).normal(size=(len(raw), 2)) * 1e3
    for a, b in zip(base, preprocess_power(garbage), strict=True):
        np.testing.assert_array_equal(a, b)  # columns 1 and 3 have no influence
    for kept, out_col in ((0, 0), (2, 1), (4, 2), (5, 3), (6, 4), (7, 5)):
        changed = raw.copy()
        changed[:, kept] += np.linspace(0.0, 3.0, len(raw)) ** 2  # not affine: survives the normalisation
        assert not np.array_equal(preprocess_power(changed)[0][:, out_col], base[0][:, out_col])


def test_power_noise_is_deterministic_and_from_randomstate_42(tmp_path):
    raw = np.zeros((120, 8))
    raw[:, 7] = np.arange(120.0)
    first, again = preprocess_power(raw), preprocess_power(raw)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.array_equal(raw[:, 7], np.arange(120.0))  # the caller's array is not shuffled in place
    # With zero data the pre-normalisation columns are exactly the noise: rebuild it from the stream.
    rng = np.random.RandomState(42)
    order = np.arange(120)
    rng.shuffle(order)
    voltage, gap, sm = 0.01 * rng.rand(120, 1), 0.001 * rng.rand(120, 1), rng.rand(120, 3)
    noisy = np.hstack([gap, voltage, sm, order[:, None].astype(float)])  # time: shuffled, no noise
    n_train, n_val, _ = uci_split_sizes("power", 120)
    stats = noisy[: n_train + n_val]
    expected = ((noisy - stats.mean(0)) / stats.std(0)).astype(np.float32)
    np.testing.assert_allclose(np.vstack(first), expected, rtol=0, atol=1e-6)
    assert 0.0 <= gap.min() and gap.max() < 0.001 and voltage.max() < 0.01  # the published scales


# ----- MINIBOONE --------------------------------------------------------------------------------------
def test_miniboone_splits_the_tail_and_normalises_with_train_and_validation(tmp_path):
    raw = _write_miniboone(tmp_path)
    train, val, test = load_uci("miniboone", tmp_path, cache=False)
    n_train, n_val, n_test = uci_split_sizes("miniboone", len(raw))
    assert (len(train), len(val), len(test)) == (n_train, n_val, n_test) == (122, 13, 15)
    stats = raw[: n_train + n_val]  # no shuffle: test is the last rows, validation the ones before
    expected = (raw - stats.mean(0)) / stats.std(0)
    np.testing.assert_allclose(np.vstack([train, val, test]), expected, rtol=1e-6, atol=1e-6)
    _assert_standardized([train, val], ddof=0)
    assert abs(float(test.mean())) > 1e-4  # the test split is not normalised with its own statistics


def test_miniboone_rejects_a_constant_column():
    raw = np.random.default_rng(0).normal(size=(50, 3))
    raw[:, 1] = 4.0
    with pytest.raises(ValueError, match=r"columns \[1\]"):
        preprocess_miniboone(raw)


# ----- GAS --------------------------------------------------------------------------------------------
def test_gas_drops_columns_then_correlated_ones_one_at_a_time(tmp_path):
    frame = _gas_frame()
    corr = frame[["a", "b", "c"]].corr().to_numpy()
    assert corr[0, 1] > 0.98 and corr[1, 2] > 0.98 and corr[0, 2] < 0.98  # the chain the test relies on
    _write_gas(tmp_path, frame)
    train, val, test = load_uci("gas", tmp_path, cache=False)
    kept = frame[["c", "d"]]
    expected = ((kept - kept.mean()) / kept.std()).to_numpy()  # whole-table mean and sample std
    np.testing.assert_allclose(np.vstack([train, val, test]), expected, rtol=1e-6, atol=1e-6)
    assert (len(train), len(val), len(test)) == uci_split_sizes("gas", len(frame)) == (1620, 180, 200)
    _assert_standardized([train, val, test], ddof=1)


def test_gas_requires_the_published_columns():
    with pytest.raises(ValueError, match="Meth, Eth and Time"):
        preprocess_gas(pd.DataFrame({"Time": [1.0], "x": [2.0]}))


def test_gas_reader_handles_old_style_pickles(tmp_path):
    frame = _gas_frame(n=40)
    frame.index = np.random.default_rng(0).permutation(40)  # as after the published .sample(frac=0.25)
    frame.columns = pd.Index(list(frame.columns), dtype=object)  # 2017 pandas: object-dtype column names
    for protocol in (0, 2, 5):
        path = tmp_path / f"p{protocol}.pickle"
        frame.to_pickle(path, protocol=protocol)
        got = read_pandas_pickle(path)
        assert list(got.columns) == list(frame.columns)
        np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())


# A module standing in for pandas 0.20 (Python 2 era): DataFrame and BlockManager pickled through
# __getstate__, with the "0.14.1" block layout. Its name starts with "pandas." as the real ones did.
_LEGACY = "pandas._unflow_zoo_legacy_test"


def _legacy_module() -> types.ModuleType:
    mod = types.ModuleType(_LEGACY)

    def _new_Index(cls, d):
        raise AssertionError("never called: the reader must not run pandas code")

    class Index:
        def __init__(self, data):
            self.data = data

        def __reduce__(self):
            return (_new_Index, (type(self), {"data": self.data, "name": None}), None)

    class BlockManager:
        def __init__(self, columns, n, blocks):
            self.state = (
                [Index(columns), Index(np.arange(n))],
                [b for b, _ in blocks],
                [Index(np.asarray(columns, dtype=object)[locs]) for _, locs in blocks],
                {
                    "0.14.1": {
                        "axes": [Index(columns), Index(np.arange(n))],
                        "blocks": [{"values": b, "mgr_locs": locs} for b, locs in blocks],
                    }
                },
            )

        def __getstate__(self):
            return self.state

    class DataFrame:
        def __init__(self, mgr):
            self.mgr = mgr

        def __getstate__(self):
            return {"_data": self.mgr, "_typ": "dataframe", "_metadata": []}

    for obj in (_new_Index, Index, BlockManager, DataFrame):
        obj.__module__ = _LEGACY
        obj.__qualname__ = obj.__name__
        setattr(mod, obj.__name__, obj)
    return mod


def test_gas_reader_handles_the_pandas_0_20_block_layout(tmp_path, monkeypatch):
    mod = _legacy_module()
    monkeypatch.setitem(sys.modules, _LEGACY, mod)
    columns = np.array(["Time", "Meth", "Eth", "s1", "s2"], dtype=object)
    values = np.random.default_rng(5).normal(size=(6, 5))
    # Two blocks, placed out of order (a slice and an index array), stored transposed as pandas does.
    blocks = [(values[:, [0, 3, 4]].T.copy(), np.array([0, 3, 4])), (values[:, 1:3].T.copy(), slice(1, 3, 1))]
    path = tmp_path / "legacy.pickle"
    path.write_bytes(pickle.dumps(mod.DataFrame(mod.BlockManager(columns, 6, blocks)), protocol=2))
    monkeypatch.delitem(sys.modules, _LEGACY)  # the reader must not need the classes
    got = read_pandas_pickle(path)
    assert list(got.columns) == list(columns)
    np.testing.assert_array_equal(got.to_numpy(), values)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_gas_reader_refuses_a_pickle_with_a_payload(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        read_pandas_pickle(bad)
    assert not marker.exists()
    # The same payload hidden inside a genuine DataFrame pickle (in its attrs) is refused as well.
    frame = _gas_frame(n=12)
    frame.attrs["note"] = _Payload(marker)
    _write_gas(tmp_path, frame)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_uci("gas", tmp_path, cache=False)
    assert not marker.exists()


def test_gas_reader_refuses_object_arrays_from_raw_buffers(tmp_path):
    frame = pd.DataFrame({"Meth": ["x", "y"]}, dtype=object)
    path = tmp_path / "strings.pickle"
    frame.to_pickle(path)
    with pytest.raises((ValueError, pickle.UnpicklingError)):
        read_pandas_pickle(path)


# ----- HEPMASS ----------------------------------------------------------------------------------------
def test_hepmass_filters_labels_normalises_and_drops_near_discrete_features(tmp_path):
    train_csv, test_csv = _write_hepmass(tmp_path)
    assert (tmp_path / "hepmass" / "1000_train.csv").read_text().startswith("# label,f0,f1,")
    train, val, test = load_uci("hepmass", tmp_path, cache=False)

    pos_train = train_csv[train_csv["# label"] == 1].iloc[:, 1:].to_numpy()
    pos_test = test_csv[test_csv["# label"] == 1].iloc[:, 1:-1].to_numpy()  # label and the extra last column
    assert pos_train.shape == (300, N_FEATURES) and pos_test.shape == (80, N_FEATURES)
    # f3 (minimum -10 repeated) and f20 (integers, minimum 0 repeated) go; f8 repeats its maximum and stays.
    keep = [i for i in range(N_FEATURES) if i not in (3, 20)]
    mu, s = pos_train.mean(0), pos_train.std(0, ddof=1)
    np.testing.assert_allclose(np.vstack([train, val]), ((pos_train - mu) / s)[:, keep], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(test, ((pos_test - mu) / s)[:, keep], rtol=1e-6, atol=1e-6)
    assert (len(train), len(val), len(test)) == uci_split_sizes("hepmass", (300, 80)) == (270, 30, 80)
    _assert_standardized([train, val], ddof=1)
    assert np.abs(test).max() < 10  # no background row (shifted by 100) got through


def test_hepmass_rejects_mismatched_headers():
    train, test = _hepmass_frames()
    test = test.rename(columns={"f5": "g5"})
    with pytest.raises(ValueError, match=r"\['f5'\]"):
        preprocess_hepmass(train, test)


# ----- BSDS300 ----------------------------------------------------------------------------------------
def test_bsds300_reads_the_stored_splits(tmp_path):
    splits = _write_bsds300(tmp_path)
    got = load_uci("BSDS300", tmp_path, cache=False)  # any case
    for part, key in zip(got, ("train", "validation", "test"), strict=True):
        assert part.dtype == np.float32
        np.testing.assert_array_equal(part, splits[key])


# ----- files, archive, cache --------------------------------------------------------------------------
def test_missing_files_error_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_uci("hepmass", tmp_path)
    message = str(err.value)
    for needle in (
        str(tmp_path / "hepmass" / "1000_train.csv"),
        str(tmp_path / "data"),
        "data.download: true",
        "--data.download true",
        "download=True",
        "zenodo.org/records/1161203",
    ):
        assert needle in message
    assert not (tmp_path / "unflow_zoo_cache").exists()


def test_local_copy_in_data_dir_or_its_data_folder(tmp_path):
    raw = _write_miniboone(tmp_path / "data")  # as the archive extracts
    nested = load_uci("miniboone", tmp_path, cache=False)
    raw2 = _write_miniboone(tmp_path / "flat")
    flat = load_uci("miniboone", tmp_path / "flat", cache=False)
    assert np.array_equal(raw, raw2)
    for a, b in zip(nested, flat, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cache_makes_the_second_load_independent_of_the_raw_files(tmp_path):
    _write_miniboone(tmp_path)
    first = load_uci("miniboone", tmp_path)
    assert (tmp_path / "unflow_zoo_cache" / "miniboone.npz").is_file()
    (tmp_path / "miniboone" / "data.npy").unlink()
    second = load_uci("miniboone", tmp_path)
    for a, b in zip(first, second, strict=True):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert not any(p.name.endswith(".part") for p in (tmp_path / "unflow_zoo_cache").iterdir())


def _tamper(cache_file: Path, **changes) -> dict[str, np.ndarray]:
    with np.load(cache_file) as z:
        content = {k: z[k] for k in z.files}
    np.savez(cache_file, **{**content, **changes})
    return content


def test_the_cache_is_used_only_for_its_version_and_raw_files(tmp_path):
    raw = _write_miniboone(tmp_path, seed=1)
    truth = load_uci("miniboone", tmp_path)
    cache_file = tmp_path / "unflow_zoo_cache" / "miniboone.npz"
    marked = np.full_like(truth[0], 7.0)
    _tamper(cache_file, train=marked)
    np.testing.assert_array_equal(load_uci("miniboone", tmp_path)[0], marked)  # same version and files: cached
    _tamper(cache_file, version=np.array("maf-2017/unflow-zoo-0"))
    np.testing.assert_array_equal(load_uci("miniboone", tmp_path)[0], truth[0])  # stale version: recomputed
    with np.load(cache_file) as z:
        assert str(z["version"]) == CACHE_VERSION
    _tamper(cache_file, train=marked)
    np.save(tmp_path / "miniboone" / "data.npy", raw[::-1].copy())  # new raw file: recomputed
    fresh = load_uci("miniboone", tmp_path)
    np.testing.assert_array_equal(fresh[0], preprocess_miniboone(raw[::-1])[0])


def _archive(tmp_path: Path) -> Path:
    staging = tmp_path / "staging"
    raw = _write_miniboone(staging / "data")
    np.save(tmp_path / "expected.npy", raw)
    path = tmp_path / "data.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging / "data", arcname="data")
        extra = b"not needed"
        info = tarfile.TarInfo("data/cifar10/data_batch_1")
        info.size = len(extra)
        tar.addfile(info, io.BytesIO(extra))
    return path


def test_load_with_download_fetches_verifies_and_extracts_only_what_it_needs(tmp_path):
    archive_file = _archive(tmp_path)
    data_dir = tmp_path / "data_dir"
    archive = UCIArchive(url=archive_file.as_uri(), sha256=sha256_file(archive_file))
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_uci("miniboone", data_dir, archive=archive)
    train, val, test = load_uci("miniboone", data_dir, download=True, archive=archive, progress=False)
    raw = np.load(tmp_path / "expected.npy")
    assert len(train) + len(val) + len(test) == len(raw)
    assert (data_dir / "data" / "miniboone" / "data.npy").is_file()
    assert not (data_dir / "data" / "cifar10").exists()  # only the requested data set is extracted
    assert (data_dir / "data.tar.gz").is_file()  # kept, so other sets need no second download


def test_load_with_download_refuses_a_wrong_checksum(tmp_path):
    archive_file = _archive(tmp_path)
    data_dir = tmp_path / "data_dir"
    archive = UCIArchive(url=archive_file.as_uri(), md5="0" * 32)
    with pytest.raises(ChecksumError, match="expected 0{32} but got"):
        load_uci("miniboone", data_dir, download=True, archive=archive, progress=False)
    assert list(data_dir.iterdir()) == []  # no archive, no extracted files, no cache


def test_published_archive_constants():
    assert uci.UCI_ARCHIVE.url == "https://zenodo.org/records/1161203/files/data.tar.gz"
    assert uci.UCI_ARCHIVE.md5 == "9b9c9b0375315ad270eba4ce80c093ab"


@pytest.mark.slow
def test_power_at_the_published_size_gives_the_published_splits(tmp_path):
    # 2,049,280 rows of stand-in data through the whole loader (about 10 s, 1 GB): the published sizes
    # come out of load_uci itself, not only out of the split arithmetic.
    rng = np.random.default_rng(0)
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", rng.normal(size=(2_049_280, 8)))
    train, val, test = load_uci("power", tmp_path, progress=False)
    assert (len(train), len(val), len(test)) == (1_659_917, 184_435, 204_928)
    assert train.shape[1] == val.shape[1] == test.shape[1] == UCI_DATASETS["power"]
    _assert_standardized([train, val], ddof=0)
