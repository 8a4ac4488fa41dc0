"""unflow-zoo: a PyTorch Lightning model zoo of normalizing flows.

Public API::

    list_models() -> list[str]
    create_model(name, **hparams) -> FlowModule
    load_pretrained(name_or_path, *, revision=None, cache_dir=None, offline=False) -> FlowModule
    list_pretrained() -> list[str]; pretrained_info(name) -> dict
    DensityDataModule(dataset="moons", ...)
    FlowModule, Flow, Transform
"""

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Transform
from unflow_zoo.data import DensityDataModule
from unflow_zoo.models import FlowModule, create_model, list_models
from unflow_zoo.pretrained import list_pretrained, load_pretrained, pretrained_info
from unflow_zoo.version import __version__

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
