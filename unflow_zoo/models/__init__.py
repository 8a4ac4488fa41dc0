"""Flow families as LightningModules, and the registry that names them."""

from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import create_model, get_model_class, list_models, register_model

# Importing a family registers it.
from unflow_zoo.models import constrained, linear, maf, naf, nsf, realnvp, unconstrained  # noqa: E402,F401  isort: skip

__all__ = ["FlowModule", "create_model", "get_model_class", "list_models", "register_model"]
