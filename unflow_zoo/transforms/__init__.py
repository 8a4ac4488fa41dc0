"""Bijections, one file per kind."""

from unflow_zoo.transforms.affine import Affine, ConditionalAffine, soft_clamp
from unflow_zoo.transforms.autoregressive import (
    MaskedAffineAutoregressive,
    MaskedAutoregressive,
    autoregressive_inverse,
)
from unflow_zoo.transforms.coupling import AffineCoupling, Coupling, alternating_mask
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
from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform
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
from unflow_zoo.transforms.sigmoidal import DSFAutoregressive, DSFMap
from unflow_zoo.transforms.spline import RQSAutoregressive, RQSCoupling, RQSMap, rational_quadratic_spline
from unflow_zoo.transforms.tanh_sum import tanh_sum
from unflow_zoo.transforms.univariate import AffineMap, InverseMap, Univariate

__all__ = [
    "ActNorm",
    "Affine",
    "AffineCoupling",
    "AffineMap",
    "ConcatSquashConv2d",
    "ConcatSquashLinear",
    "ConditionalAffine",
    "ConstrainedMonotone",
    "ConstrainedMonotone1d",
    "Coupling",
    "DSFAutoregressive",
    "DSFMap",
    "GatedAffineCoupling",
    "GlowAffineCoupling",
    "InverseMap",
    "InvertibleConv1x1",
    "LULinear",
    "LeakyReLU",
    "MaskedAffineAutoregressive",
    "MaskedAutoregressive",
    "MultiScaleGlow",
    "ODENet",
    "ODETransform",
    "PaperUnconstrainedTransform",
    "Quadrature",
    "RQSAutoregressive",
    "RQSCoupling",
    "RQSMap",
    "SelfNormConv",
    "SelfNormLinear",
    "SmoothLeakyReLU",
    "SplitPrior",
    "Squeeze",
    "UnconstrainedMonotoneTransform",
    "Univariate",
    "alternating_mask",
    "autoregressive_inverse",
    "glow_step",
    "neural_integral",
    "quadrature_rule",
    "rational_quadratic_spline",
    "relu_net_integral",
    "relu_net_integral_and_value",
    "rotation_init_",
    "selfnorm_conv_logdet",
    "selfnorm_logdet",
    "soft_clamp",
    "tanh_sum",
]
