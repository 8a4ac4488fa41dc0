"""Bijections, one file per kind."""

from unflow_zoo.transforms.affine import Affine, soft_clamp
from unflow_zoo.transforms.autoregressive import MaskedAffineAutoregressive
from unflow_zoo.transforms.coupling import AffineCoupling, alternating_mask
from unflow_zoo.transforms.gated import GatedAffineCoupling
from unflow_zoo.transforms.glow import (
    ActNorm,
    GlowAffineCoupling,
    InvertibleConv1x1,
    MultiScaleGlow,
    SplitPrior,
    Squeeze,
    glow_step,
    rotation_init_,
)
from unflow_zoo.transforms.integral import UnconstrainedMonotoneTransform, neural_integral
from unflow_zoo.transforms.linear import LULinear
from unflow_zoo.transforms.monotone import ConstrainedMonotone, ConstrainedMonotone1d
from unflow_zoo.transforms.ode import ConcatSquashConv2d, ConcatSquashLinear, ODENet, ODETransform
from unflow_zoo.transforms.quadrature import Quadrature, quadrature_rule
from unflow_zoo.transforms.selfnorm import (
    LeakyReLU,
    SelfNormConv,
    SelfNormLinear,
    SmoothLeakyReLU,
    selfnorm_conv_logdet,
    selfnorm_logdet,
)
from unflow_zoo.transforms.sigmoidal import DSFAutoregressive
from unflow_zoo.transforms.spline import RQSAutoregressive, RQSCoupling, rational_quadratic_spline

__all__ = [
    "ActNorm",
    "Affine",
    "AffineCoupling",
    "ConcatSquashConv2d",
    "ConcatSquashLinear",
    "ConstrainedMonotone",
    "ConstrainedMonotone1d",
    "DSFAutoregressive",
    "GatedAffineCoupling",
    "GlowAffineCoupling",
    "InvertibleConv1x1",
    "LULinear",
    "LeakyReLU",
    "MaskedAffineAutoregressive",
    "MultiScaleGlow",
    "ODENet",
    "ODETransform",
    "Quadrature",
    "RQSAutoregressive",
    "RQSCoupling",
    "SelfNormConv",
    "SelfNormLinear",
    "SmoothLeakyReLU",
    "SplitPrior",
    "Squeeze",
    "UnconstrainedMonotoneTransform",
    "alternating_mask",
    "glow_step",
    "neural_integral",
    "quadrature_rule",
    "rational_quadratic_spline",
    "rotation_init_",
    "selfnorm_conv_logdet",
    "selfnorm_logdet",
    "soft_clamp",
]
