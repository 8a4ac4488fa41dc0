"""Data for density estimation: synthetic sources, files of points, and the DensityDataModule."""

from unflow_zoo.data.download import download, extract_tar, sha256_file
from unflow_zoo.data.files import VENDORED, load_vendored, read_points
from unflow_zoo.data.images import IMAGE_DATASETS, load_digits, load_mnist
from unflow_zoo.data.module import DensityDataModule, dataset_names
from unflow_zoo.data.preprocess import PixelPreprocess, dequantize
from unflow_zoo.data.synthetic import SOURCES, GaussianMixture, Source, get_source, source_names
from unflow_zoo.data.uci import UCI_DATASETS, load_uci, uci_split_sizes
from unflow_zoo.data.validation import validate_points

__all__ = [
    "IMAGE_DATASETS",
    "SOURCES",
    "UCI_DATASETS",
    "VENDORED",
    "DensityDataModule",
    "GaussianMixture",
    "PixelPreprocess",
    "Source",
    "dataset_names",
    "dequantize",
    "download",
    "extract_tar",
    "get_source",
    "load_digits",
    "load_mnist",
    "load_uci",
    "load_vendored",
    "read_points",
    "sha256_file",
    "source_names",
    "uci_split_sizes",
    "validate_points",
]
