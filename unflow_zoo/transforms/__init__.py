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
from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform
from unflow_zoo.transforms.ode import ConcatSquashConv2d, ConcatSquashLinear, ODENet, ODETransform
from unflow_zoo.transforms.quadrature import Quadrature, quadrature_rule
from unflow_zoo.transforms.relu_integral import relu_net_integral, relu_net_integral_and_value
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
from unflow_zoo.transforms.tanh_sum import tanh_sum

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
    "PaperUnconstrainedTransform",
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
    "relu_net_integral",
    "relu_net_integral_and_value",
    "tanh_sum",
    "glow_step",
    "neural_integral",
    "quadrature_rule",
    "rational_quadratic_spline",
    "rotation_init_",
    "selfnorm_conv_logdet",
    "selfnorm_logdet",
    "soft_clamp",
]
