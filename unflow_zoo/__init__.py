"""unflow-zoo: a PyTorch Lightning model zoo of normalizing flows.

Public API::

    list_models() -> list[str]
    create_model(name, **hparams) -> FlowModule
    DensityDataModule(dataset="moons", ...)
    FlowModule, Flow, Transform
"""

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Transform
from unflow_zoo.data import DensityDataModule
from unflow_zoo.models import FlowModule, create_model, list_models

__version__ = "0.1.0"

__all__ = ["DensityDataModule", "Flow", "FlowModule", "Transform", "__version__", "create_model", "list_models"]
