"""The math of flows, free of Lightning: transforms, bases and the Flow."""

from unflow_zoo.core.distributions import (
    BaseDistribution,
    CopulaBase,
    DiagNormal,
    StandardExponential,
    StandardNormal,
    make_base,
)
from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose, InputOutsideDomain, Inverse, Permutation, Transform

__all__ = [
    "BaseDistribution",
    "Compose",
    "CopulaBase",
    "DiagNormal",
    "Flow",
    "InputOutsideDomain",
    "Inverse",
    "Permutation",
    "StandardExponential",
    "StandardNormal",
    "Transform",
    "make_base",
]
