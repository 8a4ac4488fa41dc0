"""Data for density estimation: synthetic sources, files of points, and the DensityDataModule."""

from unflow_zoo.data.files import VENDORED, load_vendored, read_points
from unflow_zoo.data.module import DensityDataModule, dataset_names
from unflow_zoo.data.synthetic import SOURCES, GaussianMixture, Source, get_source, source_names
from unflow_zoo.data.validation import validate_points

__all__ = [
    "SOURCES",
    "VENDORED",
    "DensityDataModule",
    "GaussianMixture",
    "Source",
    "dataset_names",
    "get_source",
    "load_vendored",
    "read_points",
    "source_names",
    "validate_points",
]
