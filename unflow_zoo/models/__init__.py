"""Flow families as LightningModules, and the registry that names them."""

from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import create_model, get_model_class, list_models, register_model

# Importing a family registers it.
from unflow_zoo.models import constrained, ffjord, glow, linear, maf, naf, nsf, realnvp, snf, unconstrained  # noqa: F401  isort: skip

__all__ = ["FlowModule", "create_model", "get_model_class", "list_models", "register_model"]
