"""Conditioner and integrand networks."""

from unflow_zoo.nn.integrand import Integrand, MLPIntegrand, PaperIntegrand, make_integrand
from unflow_zoo.nn.made import MADE, MaskedLinear
from unflow_zoo.nn.mlp import MLP, activation

__all__ = ["MADE", "MLP", "Integrand", "MLPIntegrand", "MaskedLinear", "PaperIntegrand", "activation", "make_integrand"]
