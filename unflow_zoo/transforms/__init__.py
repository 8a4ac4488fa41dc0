"""Bijections, one file per kind."""

from unflow_zoo.transforms.affine import Affine, soft_clamp
from unflow_zoo.transforms.autoregressive import MaskedAffineAutoregressive
from unflow_zoo.transforms.coupling import AffineCoupling, alternating_mask

__all__ = ["Affine", "AffineCoupling", "MaskedAffineAutoregressive", "alternating_mask", "soft_clamp"]
