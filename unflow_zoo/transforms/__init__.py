"""Bijections, one file per kind."""

from unflow_zoo.transforms.affine import Affine, soft_clamp
from unflow_zoo.transforms.autoregressive import MaskedAffineAutoregressive
from unflow_zoo.transforms.coupling import AffineCoupling, alternating_mask
from unflow_zoo.transforms.integral import UnconstrainedMonotoneTransform, neural_integral
from unflow_zoo.transforms.linear import LULinear
from unflow_zoo.transforms.monotone import ConstrainedMonotone, ConstrainedMonotone1d
from unflow_zoo.transforms.quadrature import Quadrature, quadrature_rule
from unflow_zoo.transforms.sigmoidal import DSFAutoregressive
from unflow_zoo.transforms.spline import RQSAutoregressive, RQSCoupling, rational_quadratic_spline

__all__ = [
    "Affine",
    "AffineCoupling",
    "ConstrainedMonotone",
    "ConstrainedMonotone1d",
    "DSFAutoregressive",
    "LULinear",
    "MaskedAffineAutoregressive",
    "Quadrature",
    "RQSAutoregressive",
    "RQSCoupling",
    "UnconstrainedMonotoneTransform",
    "alternating_mask",
    "neural_integral",
    "quadrature_rule",
    "rational_quadratic_spline",
    "soft_clamp",
]
