r"""Image data sets as integer pixel arrays: scikit-learn's 8x8 digits and MNIST.

Loaders return ``uint8`` arrays of shape ``(N, C, H, W)`` and, with ``labels=True``, the
class of each image too (``int64`` in ``0..9``, read from the same copy as the images); the
number of pixel levels ``L`` and of classes of each set are in :data:`IMAGE_DATASETS`. Dequantisation and the
logit transform live in :mod:`unflow_zoo.data.preprocess`; splitting and serving
in :class:`~unflow_zoo.data.DensityDataModule`.

- ``digits``: the 1797 8x8 images bundled with scikit-learn (no download), pixel
  values 0..16, so :math:`L = 17`.
- ``mnist``: 60 000 training and 10 000 test 28x28 images, :math:`L = 256`, from the first
  of these found under ``data_dir`` (or ``data_dir/mnist``, ``data_dir/MNIST/raw``; by default
  the user's cache, see :func:`~unflow_zoo.data.paths.default_data_dir`):

  1. the original IDX files ``train-images-idx3-ubyte[.gz]`` and ``t10k-images-idx3-ubyte[.gz]``
     (parsed here with numpy: magic number, dimensions and file size are checked), with
     ``train-labels-idx1-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` next to them for the labels;
  2. a Hugging Face dataset folder written by ``DatasetDict.save_to_disk`` (splits
     ``train`` and ``test``, an ``image`` column and, for the labels, a ``label`` column);
  3. parquet files ``train-*.parquet`` / ``test-*.parquet`` with an ``image`` (and ``label``) column
     (the layout of the Hub repository ``ylecun/mnist``);
  4. the ``datasets`` cache ``data_dir/huggingface`` of an earlier download;

  and, only with ``download=True``, from the Hugging Face Hub (``ylecun/mnist``) into
  that cache. Offline mode (``HF_DATASETS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``, as ``datasets``
  and ``huggingface_hub`` read them) refuses to download and says so.

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

from unflow_zoo.data.files import DataFileNotFoundError
from unflow_zoo.data.paths import DATA_DIR_HINT, resolve_data_dir
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
    """Shape ``(C, H, W)`` of one image, number of pixel levels ``L`` (values ``0..L-1``) and of
    classes (labels ``0..classes-1``)."""

    shape: tuple[int, int, int]
    levels: int
    classes: int = 10


IMAGE_DATASETS: dict[str, ImageSpec] = {
    "digits": ImageSpec((1, 8, 8), 17),
    "mnist": ImageSpec((1, 28, 28), 256),
}

# The official sizes; local copies of other sizes (a subset, the tests' tiny files) are accepted.
_MNIST_SIZES = {"train": 60000, "test": 10000}
_IDX_NAMES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
_IDX_LABEL_NAMES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
# IDX type codes (third byte of the magic number) and their big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----- digits ----------------------------------------------------------------------------------


def load_digits(labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """All 1797 of scikit-learn's bundled 8x8 digits, ``uint8`` ``(1797, 1, 8, 8)``, values 0..16.

    Offline: the data ship with scikit-learn. Split it with the data module's seed.

    Args:
        labels: also return the digit each image shows (scikit-learn's ``target``).

    Returns:
        The images; with ``labels=True``, ``(images, labels)``, the labels ``int64`` ``(1797,)``
        in ``0..9``, row for row.

    Raises:
        DataError: the bundled data are not what they were (pixels outside 0..16, labels
            outside 0..9 or not one per image).

    References:
        Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository 1998.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency of the test env
        raise MissingDependencyError("dataset='digits' needs scikit-learn: pip install scikit-learn") from err
    bunch = sklearn_digits()
    images = bunch.images
    if images.min() < 0 or images.max() > 16 or not np.array_equal(images, np.round(images)):
        raise DataError("scikit-learn's digits are not integers in 0..16; has the bundled file changed?")
    pixels = images.astype(np.uint8)[:, None]
    if not labels:
        return pixels
    return pixels, _check_labels(bunch.target, len(pixels), "digits", "scikit-learn's digits", classes=10)


def _check_labels(labels: object, n: int, split: str, where: str, classes: int = 10) -> np.ndarray:
    """``labels`` as ``int64`` ``(n,)``, checked to be one integer in ``0..classes-1`` per image."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(
            f"{where}: {n} {split} images but labels of shape {labels.shape}; the labels must be one integer per "
            "image, from the same copy of the data set as the images"
        )
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: the {split} labels must be integers in 0..{classes - 1}, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"{where}: the {split} labels must be integers in 0..{classes - 1}, got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.astype(np.int64)


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


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    # torchvision and some mirrors use a dot: train-images.idx3-ubyte, train-labels.idx1-ubyte
    dotted = stem.replace("-idx", ".idx")
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


# A split as the readers return it: the images, and their labels when asked for (else None).
_Split = tuple[np.ndarray, "np.ndarray | None"]


def _split_from_hf(split_ds: object, split: str, where: str, labels: bool) -> _Split:
    columns = getattr(split_ds, "column_names", [])
    if "image" not in columns:
        raise DataError(f"{where}: the {split} split has columns {columns}; expected an 'image' column")
    if labels and "label" not in columns:
        raise DataError(
            f"{where}: the {split} split has columns {columns}; the labels (context='label') need a 'label' column"
        )
    # numpy format decodes the Image feature (PNG bytes or PIL images) to uint8 arrays in one pass.
    images = split_ds.select_columns(["image"]).with_format("numpy")[:]["image"]  # type: ignore[attr-defined]
    if isinstance(images, list) or images.dtype == object:  # images of mixed sizes come back one by one
        images = np.stack([np.asarray(img) for img in images])
    images = _check_images(np.asarray(images), split, where)
    if not labels:
        return images, None
    values = split_ds.select_columns(["label"]).with_format("numpy")[:]["label"]  # type: ignore[attr-defined]
    return images, _check_labels(values, len(images), f"MNIST {split}", where)


def _from_idx(folder: Path, labels: bool) -> dict[str, _Split] | None:
    paths = {split: _find_idx(folder, _IDX_NAMES[split]) for split in _MNIST_SIZES}
    if not all(paths.values()):
        return None
    out: dict[str, _Split] = {}
    for split, p in paths.items():
        images = _check_images(read_idx(p), split, str(p))  # type: ignore[arg-type]
        if not labels:
            out[split] = (images, None)
            continue
        label_path = _find_idx(folder, _IDX_LABEL_NAMES[split])
        if label_path is None:
            raise DataFileNotFoundError(
                f"{folder}: found the MNIST {split} images ({p.name}) but not their labels "  # type: ignore[union-attr]
                f"({_IDX_LABEL_NAMES[split]}[.gz]), which context='label' needs; put the label file next to the "
                "images (from the same download)"
            )
        out[split] = (images, _check_labels(read_idx(label_path), len(images), f"MNIST {split}", str(label_path)))
    return out


def _from_saved_dataset(folder: Path, labels: bool) -> dict[str, _Split] | None:
    if not (folder / "dataset_dict.json").is_file():
        return None
    import datasets

    saved = datasets.load_from_disk(str(folder))
    missing = [s for s in _MNIST_SIZES if s not in saved]
    if missing:
        raise DataError(f"{folder}: the saved DatasetDict has splits {list(saved)}; missing {missing}")
    return {split: _split_from_hf(saved[split], split, str(folder), labels) for split in _MNIST_SIZES}


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


def _from_parquet(folder: Path, labels: bool) -> dict[str, _Split] | None:
    files = {split: sorted(folder.glob(f"**/{split}-*.parquet")) for split in _MNIST_SIZES}
    if not all(files.values()):
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = ["image", "label"] if labels else ["image"]
    out: dict[str, _Split] = {}
    for split, paths in files.items():
        where = str(paths[0].parent)
        tables = []
        for p in paths:
            names = pq.read_schema(p).names
            if "image" not in names:
                raise DataError(f"{p}: columns {names}; expected an 'image' column")
            if labels and "label" not in names:
                raise DataError(f"{p}: columns {names}; the labels (context='label') need a 'label' column")
            tables.append(pq.read_table(p, columns=columns))
        # Read with pyarrow rather than datasets.Dataset.from_parquet, which writes a cache (and
        # lock files) under ~/.cache for every call.
        table = pa.concat_tables(tables)
        images = _check_images(_decode_png_column(table.column("image"), split, where), split, where)
        label_values = (
            _check_labels(table.column("label").to_numpy(), len(images), f"MNIST {split}", where) if labels else None
        )
        out[split] = (images, label_values)
    return out


def _from_hf_cache(cache_dir: Path, labels: bool) -> dict[str, _Split] | None:
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
        out[split] = _split_from_hf(ds, split, str(root), labels)
    return out


def hf_offline() -> bool:
    """Whether Hugging Face offline mode is on, read the way ``datasets`` and ``huggingface_hub`` read it.

    ``datasets.config.HF_HUB_OFFLINE`` is ``HF_DATASETS_OFFLINE`` where that is set, else the
    Hub's setting; ``huggingface_hub.constants.HF_HUB_OFFLINE`` is ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``), on which the Hub client refuses every request. Asking the two
    libraries rather than parsing the variables here means the answer is the one
    ``datasets.load_dataset`` would act on; like theirs, it is fixed when they are first
    imported (set the variables before that, or patch the constants in a test).

    Returns:
        True when either library is in offline mode.
    """
    import datasets.config
    from huggingface_hub import constants

    return bool(datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE)


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None, *, download: bool = False, labels: bool = False
) -> dict[str, np.ndarray] | dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST as ``{"train": (60000, 1, 28, 28), "test": (10000, 1, 28, 28)}`` ``uint8`` arrays.

    Looks for local copies first (see the module docstring for the order and formats),
    then downloads ``ylecun/mnist`` from the Hugging Face Hub into
    ``data_dir/huggingface`` when ``download=True``.

    Args:
        data_dir: the folder to look in and download to; None: the user's cache
            (:func:`~unflow_zoo.data.paths.default_data_dir`).
        download: fetch ``ylecun/mnist`` from the Hub when no local copy is found.
        labels: also return each image's digit, from the same copy as the images (the IDX
            label files next to the IDX images, else the ``label`` column).

    Returns:
        ``{"train": ..., "test": ...}``, ``uint8`` arrays ``(N, 1, 28, 28)``; with ``labels=True``
        each value is ``(images, labels)``, the labels ``int64`` ``(N,)`` in ``0..9``.

    Raises:
        MissingFileError: nothing found locally and ``download=False`` (or offline mode);
            the message names the folders searched and how to get the data (a ``FileNotFoundError``);
            with ``labels=True``, also IDX images found without their label files.
        DataError: a file found but malformed (wrong magic number, size or count; labels that
            are not one digit per image; a ``ValueError``).

    References:
        LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
        recognition", Proc. IEEE 1998.
    """
    data_dir = resolve_data_dir(data_dir)
    folders = [d for d in _candidate_dirs(data_dir) if d.is_dir()]
    for folder in folders:
        for reader in (_from_idx, _from_saved_dataset, _from_parquet):
            found = reader(folder, labels)
            if found is not None:
                return _returned(found, labels)
    cache_dir = data_dir / "huggingface"
    found = _from_hf_cache(cache_dir, labels)
    if found is not None:
        return _returned(found, labels)
    searched = ", ".join(str(d) for d in _candidate_dirs(data_dir)) + f", {cache_dir}"
    how = (
        f"looked for {_IDX_NAMES['train']}[.gz] and {_IDX_NAMES['test']}[.gz], a save_to_disk folder "
        f"(dataset_dict.json), train-*/test-*.parquet files, or a datasets cache of {MNIST_HF_ID} in: {searched}"
    )
    if not download:
        raise MissingFileError(
            f"MNIST not found: {how}. Download it from the Hugging Face Hub with `--data.download true` "
            f"(DensityDataModule(dataset='mnist', download=True)), or put the IDX files in {data_dir} "
            f"({DATA_DIR_HINT})"
        )
    if hf_offline():
        raise MissingFileError(
            f"MNIST not found and Hugging Face offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE), "
            f"so it cannot be downloaded: {how}. Unset offline mode or copy the files there ({DATA_DIR_HINT})"
        )
    import datasets

    dd = datasets.load_dataset(MNIST_HF_ID, cache_dir=str(cache_dir))
    return _returned({split: _split_from_hf(dd[split], split, MNIST_HF_ID, labels) for split in _MNIST_SIZES}, labels)


def _returned(
    found: dict[str, _Split], labels: bool
) -> dict[str, np.ndarray] | dict[str, tuple[np.ndarray, np.ndarray]]:
    """The readers' splits as :func:`load_mnist` returns them: the images alone, or ``(images, labels)``."""
    if labels:
        return {split: (images, lab) for split, (images, lab) in found.items()}  # type: ignore[misc]
    return {split: images for split, (images, _) in found.items()}
