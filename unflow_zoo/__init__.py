"""unflow-zoo: a PyTorch Lightning model zoo of normalizing flows.

Public API::

    list_models() -> list[str]
    create_model(name, **hparams) -> FlowModule
    list_flows() -> list[str]
    create_flow(name, **hparams) -> Flow           # the family's plain torch flow (unflow_zoo.flows.build)
    load_pretrained(name_or_path, *, revision=None, cache_dir=None, offline=False) -> FlowModule
    load_flow(name_or_path, *, revision=None, cache_dir=None, offline=False) -> Flow
    list_pretrained() -> list[str]; pretrained_info(name) -> dict
    DensityDataModule(dataset="moons", ...)
    FlowModule, Flow, Transform
"""

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Transform
from unflow_zoo.data import DensityDataModule
from unflow_zoo.flows import build as create_flow
from unflow_zoo.flows import list_flows
from unflow_zoo.models import FlowModule, create_model, list_models
from unflow_zoo.pretrained import list_pretrained, load_flow, load_pretrained, pretrained_info
from unflow_zoo.version import __version__

__all__ = [
    "DensityDataModule",
    "Flow",
    "FlowModule",
    "Transform",
    "__version__",
    "create_flow",
    "create_model",
    "list_flows",
    "list_models",
    "list_pretrained",
    "load_flow",
    "load_pretrained",
    "pretrained_info",
]
