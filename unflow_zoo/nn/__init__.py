"""Conditioner networks."""

from unflow_zoo.nn.made import MADE, MaskedLinear
from unflow_zoo.nn.mlp import MLP, activation

__all__ = ["MADE", "MLP", "MaskedLinear", "activation"]
