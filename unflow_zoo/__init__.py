"""unflow-zoo: a PyTorch Lightning model zoo of normalizing flows.

Public API::

    list_models() -> list[str]
    create_model(name, **hparams) -> FlowModule
    load_pretrained(name_or_path, *, cache_dir=None, offline=False) -> FlowModule
    list_pretrained() -> list[str]; pretrained_info(name) -> dict
    DensityDataModule(dataset="moons", ...)
    FlowModule, Flow, Transform
"""

from importlib import metadata as _metadata

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Transform
from unflow_zoo.data import DensityDataModule
from unflow_zoo.models import FlowModule, create_model, list_models
from unflow_zoo.pretrained import list_pretrained, load_pretrained, pretrained_info

try:
    # one source of truth: the version in pyproject.toml, as installed
    __version__ = _metadata.version("unflow-zoo")
except _metadata.PackageNotFoundError:  # pragma: no cover - a bare source tree on sys.path
    __version__ = "0+unknown"

__all__ = [
    "DensityDataModule",
    "Flow",
    "FlowModule",
    "Transform",
    "__version__",
    "create_model",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "pretrained_info",
]
