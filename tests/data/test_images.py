"""Image loaders: scikit-learn's digits and MNIST from every local format, never the network."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from unflow_zoo.data.images import IMAGE_DATASETS, MNIST_HF_ID, load_digits, load_mnist, read_idx


def tiny_mnist(n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
    }


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding, written out by hand: magic 00 00 TT NN, big-endian uint32 sizes, data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_mnist(folder: Path, images: dict[str, np.ndarray], gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
    for split, (image_name, label_name) in names.items():
        data = idx_bytes(images[split])
        labels = idx_bytes(np.arange(len(images[split]), dtype=np.uint8) % 10)
        if gz:
            (folder / f"{image_name}.gz").write_bytes(gzip.compress(data))
            (folder / f"{label_name}.gz").write_bytes(gzip.compress(labels))
        else:
            (folder / image_name).write_bytes(data)
            (folder / label_name).write_bytes(labels)


def hf_dataset_dict(images: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"image": [Image.fromarray(a, mode="L") for a in arr], "label": [i % 10 for i in range(len(arr))]},
                features=features,
            )
            for split, arr in images.items()
        }
    )


def assert_same(loaded: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> None:
    assert set(loaded) == {"train", "test"}
    for split, arr in images.items():
        assert loaded[split].dtype == np.uint8 and loaded[split].shape == (len(arr), 1, 28, 28)
        np.testing.assert_array_equal(loaded[split][:, 0], arr)


# ----- digits ---------------------------------------------------------------------------------


def test_digits_are_the_bundled_8x8_images_with_17_levels() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    pixels = load_digits()
    assert pixels.dtype == np.uint8 and pixels.shape == (1797, 1, 8, 8)
    assert pixels.min() == 0 and pixels.max() == 16
    assert IMAGE_DATASETS["digits"].levels == 17 and IMAGE_DATASETS["digits"].shape == (1, 8, 8)
    np.testing.assert_array_equal(pixels[:, 0], sklearn_digits().images)


# ----- IDX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.float32, 0x0D)])
def test_read_idx_round_trips_every_type(tmp_path: Path, dtype: type, code: int) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=dtype)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array, code))
    out = read_idx(tmp_path / "a.idx")
    assert out.dtype == np.dtype(dtype) and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_read_idx_refuses_bad_files(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    (tmp_path / "magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "type").write_bytes(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="unknown IDX element type 0x07"):
        read_idx(tmp_path / "type")
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(ValueError, match=r"declares shape \(3, 28, 28\).*probably truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "header").write_bytes(good[:9])
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(tmp_path / "header")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path: Path, gz: bool) -> None:
    images = tiny_mnist()
    write_idx_mnist(tmp_path / "mnist", images, gz=gz)
    assert_same(load_mnist(tmp_path), images)


def test_mnist_idx_of_the_wrong_image_size_is_refused(tmp_path: Path) -> None:
    write_idx_mnist(tmp_path, {"train": np.zeros((4, 8, 8), np.uint8), "test": np.zeros((2, 8, 8), np.uint8)})
    with pytest.raises(ValueError, match=r"must be 28x28, got array shape \(4, 8, 8\)"):
        load_mnist(tmp_path)


# ----- Hugging Face formats ---------------------------------------------------------------------


def test_mnist_from_a_save_to_disk_folder(tmp_path: Path) -> None:
    images = tiny_mnist(seed=1)
    hf_dataset_dict(images).save_to_disk(str(tmp_path / "mnist"))
    assert_same(load_mnist(tmp_path), images)


def test_mnist_from_parquet_files(tmp_path: Path) -> None:
    images = tiny_mnist(seed=2)
    for split, ds in hf_dataset_dict(images).items():
        ds.to_parquet(str(tmp_path / "mnist" / f"{split}-00000-of-00001.parquet"))
    assert_same(load_mnist(tmp_path), images)


def test_mnist_from_the_datasets_cache_without_network(tmp_path: Path) -> None:
    """The arrow files load_dataset leaves in its cache are read directly when download=False."""
    import pyarrow as pa

    images = tiny_mnist(seed=3)
    folder = tmp_path / "huggingface" / MNIST_HF_ID.replace("/", "___") / "mnist" / "0.0.0" / "abc123"
    folder.mkdir(parents=True)
    for split, ds in hf_dataset_dict(images).items():
        table = ds.data.table
        with (
            pa.OSFile(str(folder / f"mnist-{split}.arrow"), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table)
    assert_same(load_mnist(tmp_path), images)


def test_a_saved_dataset_without_an_image_column_is_refused(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"pixels": [[0] * 4]}) for s in ("train", "test")})
    dd.save_to_disk(str(tmp_path))
    with pytest.raises(ValueError, match="expected an 'image' column"):
        load_mnist(tmp_path)


# ----- missing files --------------------------------------------------------------------------


def test_missing_mnist_names_where_it_looked_and_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "nowhere" / "mnist") in message
    assert "train-images-idx3-ubyte" in message and "--data.download true" in message


@pytest.mark.parametrize("module", ["datasets.config", "huggingface_hub.constants"])
def test_download_in_offline_mode_is_refused_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    """Offline mode as the libraries read it (at their import): each one's constant is enough."""
    import importlib

    for name in ("datasets.config", "huggingface_hub.constants"):
        monkeypatch.setattr(importlib.import_module(name), "HF_HUB_OFFLINE", name == module)
    with pytest.raises(FileNotFoundError, match="offline mode is on"):
        load_mnist(tmp_path, download=True)


def test_offline_environment_variables_reach_the_libraries(tmp_path: Path) -> None:
    """End to end, in a fresh process (the libraries read the variables when first imported)."""
    import os
    import subprocess
    import sys

    code = "from unflow_zoo.data.images import load_mnist; import sys; load_mnist(sys.argv[1], download=True)"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_DATASETS_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and "offline mode is on" in done.stderr, done.stderr[-2000:]
