r"""Image data sets as integer pixel arrays: scikit-learn's 8x8 digits and MNIST.

Loaders return ``uint8`` arrays of shape ``(N, C, H, W)``; the number of pixel
levels ``L`` of each set is in :data:`IMAGE_DATASETS`. Dequantisation and the
logit transform live in :mod:`unflow_zoo.data.preprocess`; splitting and serving
in :class:`~unflow_zoo.data.DensityDataModule`.

- ``digits``: the 1797 8x8 images bundled with scikit-learn (no download), pixel
  values 0..16, so :math:`L = 17`.
- ``mnist``: 60 000 training and 10 000 test 28x28 images, :math:`L = 256`, from the first
  of these found under ``data_dir`` (or ``data_dir/mnist``, ``data_dir/MNIST/raw``):

  1. the original IDX files ``train-images-idx3-ubyte[.gz]`` and ``t10k-images-idx3-ubyte[.gz]``
     (parsed here with numpy: magic number, dimensions and file size are checked);
  2. a Hugging Face dataset folder written by ``DatasetDict.save_to_disk`` (splits
     ``train`` and ``test``, an ``image`` column);
  3. parquet files ``train-*.parquet`` / ``test-*.parquet`` with an ``image`` column
     (the layout of the Hub repository ``ylecun/mnist``);
  4. the ``datasets`` cache ``data_dir/huggingface`` of an earlier download;

  and, only with ``download=True``, from the Hugging Face Hub (``ylecun/mnist``) into
  that cache. Offline mode (``HF_DATASETS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) refuses
  to download and says so.

References:
    LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
    recognition", Proc. IEEE 1998 (MNIST and its IDX file format).
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository 1998
    (the 8x8 digits bundled with scikit-learn).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unflow_zoo.errors import DataError, MissingDependencyError, MissingFileError

__all__ = [
    "IMAGE_DATASETS",
    "MNIST_HF_ID",
    "ImageSpec",
    "load_digits",
    "load_mnist",
    "read_idx",
]

MNIST_HF_ID = "ylecun/mnist"


@dataclass(frozen=True)
class ImageSpec:
    """Shape ``(C, H, W)`` of one image and number of pixel levels ``L`` (values ``0..L-1``)."""

    shape: tuple[int, int, int]
    levels: int


IMAGE_DATASETS: dict[str, ImageSpec] = {
    "digits": ImageSpec((1, 8, 8), 17),
    "mnist": ImageSpec((1, 28, 28), 256),
}

# The official sizes; local copies of other sizes (a subset, the tests' tiny files) are accepted.
_MNIST_SIZES = {"train": 60000, "test": 10000}
_IDX_NAMES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
# IDX type codes (third byte of the magic number) and their big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----- digits ----------------------------------------------------------------------------------


def load_digits() -> np.ndarray:
    """All 1797 of scikit-learn's bundled 8x8 digits, ``uint8`` ``(1797, 1, 8, 8)``, values 0..16.

    Offline: the data ship with scikit-learn. Split it with the data module's seed.

    References:
        Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository 1998.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency of the test env
        raise MissingDependencyError("dataset='digits' needs scikit-learn: pip install scikit-learn") from err
    images = sklearn_digits().images
    if images.min() < 0 or images.max() > 16 or not np.array_equal(images, np.round(images)):
        raise DataError("scikit-learn's digits are not integers in 0..16; has the bundled file changed?")
    return images.astype(np.uint8)[:, None]


# ----- IDX -------------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (``.gz`` or not) into a numpy array of its declared shape and type.

    Format: a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, 0x08 for
    unsigned bytes; ``NN`` the number of dimensions), ``NN`` big-endian uint32 sizes,
    then the data, row-major.

    Raises:
        DataError: a bad magic number, unknown type, or a file shorter or longer than declared (a ``ValueError``).

    References:
        LeCun et al., "THE MNIST DATABASE of handwritten digits" (the file format section).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; expected 0000TTNN)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX element type 0x{type_code:02x}; expected one of 08 09 0b 0c 0d 0e")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX header declares shape {shape} of {dtype.name} ({expected} bytes in all) "
            f"but the file has {len(raw)} bytes; the download is probably truncated, delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# ----- MNIST -----------------------------------------------------------------------------------


def _candidate_dirs(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "mnist", data_dir / "MNIST" / "raw", data_dir / "MNIST"]


def _find_idx(folder: Path, split: str) -> Path | None:
    for name in (_IDX_NAMES[split], _IDX_NAMES[split] + ".gz"):
        if (folder / name).is_file():
            return folder / name
    # torchvision and some mirrors use a dot: train-images.idx3-ubyte
    dotted = _IDX_NAMES[split].replace("-idx3", ".idx3")
    for name in (dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _check_images(images: np.ndarray, split: str, where: str) -> np.ndarray:
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{where}: MNIST {split} images must be 28x28, got array shape {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{where}: the MNIST {split} split holds no images")
    if images.dtype != np.uint8:
        if images.min() < 0 or images.max() > 255 or not np.array_equal(images, np.round(images)):
            raise DataError(f"{where}: MNIST pixels must be integers in 0..255")
        images = images.astype(np.uint8)
    return np.ascontiguousarray(images)[:, None]


def _images_from_hf(split_ds: object, split: str, where: str) -> np.ndarray:
    columns = getattr(split_ds, "column_names", [])
    if "image" not in columns:
        raise DataError(f"{where}: the {split} split has columns {columns}; expected an 'image' column")
    # numpy format decodes the Image feature (PNG bytes or PIL images) to uint8 arrays in one pass.
    images = split_ds.select_columns(["image"]).with_format("numpy")[:]["image"]  # type: ignore[attr-defined]
    if isinstance(images, list) or images.dtype == object:  # images of mixed sizes come back one by one
        images = np.stack([np.asarray(img) for img in images])
    return _check_images(np.asarray(images), split, where)


def _from_idx(folder: Path) -> dict[str, np.ndarray] | None:
    paths = {split: _find_idx(folder, split) for split in _MNIST_SIZES}
    if not all(paths.values()):
        return None
    return {split: _check_images(read_idx(p), split, str(p)) for split, p in paths.items()}  # type: ignore[arg-type]


def _from_saved_dataset(folder: Path) -> dict[str, np.ndarray] | None:
    if not (folder / "dataset_dict.json").is_file():
        return None
    import datasets

    saved = datasets.load_from_disk(str(folder))
    missing = [s for s in _MNIST_SIZES if s not in saved]
    if missing:
        raise DataError(f"{folder}: the saved DatasetDict has splits {list(saved)}; missing {missing}")
    return {split: _images_from_hf(saved[split], split, str(folder)) for split in _MNIST_SIZES}


def _decode_png_column(column: object, split: str, where: str) -> np.ndarray:
    """Pixels of an Arrow column of Hugging Face ``Image`` structs ``{bytes, path}`` (PNG bytes)."""
    import io

    from PIL import Image

    try:
        blobs = column.combine_chunks().field("bytes").to_pylist()  # type: ignore[attr-defined]
    except (AttributeError, KeyError) as err:
        raise DataError(
            f"{where}: the {split} 'image' column is not a Hugging Face Image column ({{bytes, path}} structs)"
        ) from err
    if any(b is None for b in blobs):
        raise DataError(f"{where}: some {split} images have no embedded bytes (only paths); re-export with the bytes")
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in blobs])


def _from_parquet(folder: Path) -> dict[str, np.ndarray] | None:
    files = {split: sorted(folder.glob(f"**/{split}-*.parquet")) for split in _MNIST_SIZES}
    if not all(files.values()):
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {}
    for split, paths in files.items():
        where = str(paths[0].parent)
        tables = []
        for p in paths:
            if "image" not in pq.read_schema(p).names:
                raise DataError(f"{p}: columns {pq.read_schema(p).names}; expected an 'image' column")
            tables.append(pq.read_table(p, columns=["image"]))
        # Read with pyarrow rather than datasets.Dataset.from_parquet, which writes a cache (and
        # lock files) under ~/.cache for every call.
        column = pa.concat_tables(tables).column("image")
        out[split] = _check_images(_decode_png_column(column, split, where), split, where)
    return out


def _from_hf_cache(cache_dir: Path) -> dict[str, np.ndarray] | None:
    # The arrow files that load_dataset left in its cache; read directly, so no network call
    # (not even the Hub's revision check) happens without download=True.
    root = cache_dir / MNIST_HF_ID.replace("/", "___")
    files = {split: sorted(root.glob(f"**/*-{split}*.arrow")) for split in _MNIST_SIZES}
    if not all(files.values()):
        return None
    import datasets

    out = {}
    for split, paths in files.items():
        ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in paths])
        out[split] = _images_from_hf(ds, split, str(root))
    return out


def hf_offline() -> bool:
    """Whether Hugging Face offline mode is on (``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true)."""
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def load_mnist(data_dir: str | Path = "data", *, download: bool = False) -> dict[str, np.ndarray]:
    """MNIST as ``{"train": (60000, 1, 28, 28), "test": (10000, 1, 28, 28)}`` ``uint8`` arrays.

    Looks for local copies first (see the module docstring for the order and formats),
    then downloads ``ylecun/mnist`` from the Hugging Face Hub into
    ``data_dir/huggingface`` when ``download=True``.

    Raises:
        MissingFileError: nothing found locally and ``download=False`` (or offline mode);
            the message names the folders searched and how to get the data (a ``FileNotFoundError``).
        DataError: a file found but malformed (wrong magic number, size or count; a ``ValueError``).

    References:
        LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
        recognition", Proc. IEEE 1998.
    """
    data_dir = Path(data_dir).expanduser()
    folders = [d for d in _candidate_dirs(data_dir) if d.is_dir()]
    for folder in folders:
        for reader in (_from_idx, _from_saved_dataset, _from_parquet):
            found = reader(folder)
            if found is not None:
                return found
    cache_dir = data_dir / "huggingface"
    found = _from_hf_cache(cache_dir)
    if found is not None:
        return found
    searched = ", ".join(str(d) for d in _candidate_dirs(data_dir)) + f", {cache_dir}"
    how = (
        f"looked for {_IDX_NAMES['train']}[.gz] and {_IDX_NAMES['test']}[.gz], a save_to_disk folder "
        f"(dataset_dict.json), train-*/test-*.parquet files, or a datasets cache of {MNIST_HF_ID} in: {searched}"
    )
    if not download:
        raise MissingFileError(
            f"MNIST not found: {how}. Download it from the Hugging Face Hub with `--data.download true` "
            f"(DensityDataModule(dataset='mnist', download=True)), or put the IDX files in {data_dir}"
        )
    if hf_offline():
        raise MissingFileError(
            f"MNIST not found and Hugging Face offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE), "
            f"so it cannot be downloaded: {how}. Unset offline mode or copy the files there"
        )
    import datasets

    dd = datasets.load_dataset(MNIST_HF_ID, cache_dir=str(cache_dir))
    return {split: _images_from_hf(dd[split], split, MNIST_HF_ID) for split in _MNIST_SIZES}
