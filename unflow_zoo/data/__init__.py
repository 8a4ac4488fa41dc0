"""Data for density estimation: synthetic sources, files and arrays of points, UCI, images, and the
DensityDataModule that serves them (one :class:`~unflow_zoo.data.kinds.DataKind` per kind of source)."""

from unflow_zoo.data.conditional import (
    CONDITIONAL_SOURCES,
    ConditionalSource,
    conditional_source_names,
    get_conditional_source,
)
from unflow_zoo.data.download import download, extract_tar, sha256_file
from unflow_zoo.data.files import VENDORED, load_vendored, read_points, read_table
from unflow_zoo.data.images import IMAGE_DATASETS, load_digits, load_mnist
from unflow_zoo.data.kinds import DataKind
from unflow_zoo.data.module import DensityDataModule, dataset_names
from unflow_zoo.data.preprocess import PixelPreprocess, dequantize
from unflow_zoo.data.synthetic import SOURCES, GaussianMixture, Source, get_source, source_names
from unflow_zoo.data.uci import UCI_DATASETS, load_uci, uci_split_sizes
from unflow_zoo.data.validation import validate_points

__all__ = [
    "CONDITIONAL_SOURCES",
    "IMAGE_DATASETS",
    "SOURCES",
    "UCI_DATASETS",
    "VENDORED",
    "ConditionalSource",
    "DataKind",
    "DensityDataModule",
    "GaussianMixture",
    "PixelPreprocess",
    "Source",
    "conditional_source_names",
    "dataset_names",
    "dequantize",
    "download",
    "extract_tar",
    "get_conditional_source",
    "get_source",
    "load_digits",
    "load_mnist",
    "load_uci",
    "load_vendored",
    "read_points",
    "read_table",
    "sha256_file",
    "source_names",
    "uci_split_sizes",
    "validate_points",
]
