"""Glow: actnorm, invertible 1x1 convolutions and affine couplings, multi-scale on images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose, Transform
from unflow_zoo.errors import ConfigError
from unflow_zoo.flows import validate as v
from unflow_zoo.flows.common import BaseSpec, conditioner_context, finish_flow, shape_of
from unflow_zoo.flows.registry import register_flow
from unflow_zoo.transforms.coupling import AffineCoupling, alternating_mask
from unflow_zoo.transforms.glow import ActNorm, InvertibleConv1x1, MultiScaleGlow

__all__ = ["glow"]


@register_flow("glow")
def glow(
    event_shape: Any,
    *,
    levels: int = 2,
    steps_per_level: int = 4,
    hidden_channels: int = 64,
    split_prior: bool = True,
    coupling_scale: str = "sigmoid",
    n_layers: int = 8,
    hidden: Sequence[int] = (64, 64),
    act: str = "relu",
    scale_clamp: float = 3.0,
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""Glow: steps of actnorm -> invertible 1x1 convolution -> affine coupling; on images
    ``(C, H, W)`` the multi-scale architecture, on vectors ``(D,)`` a plain stack (see
    :class:`~unflow_zoo.models.glow.Glow`).

    Args:
        event_shape: ``(C, H, W)`` or ``(D,)`` with ``D >= 2``.
        levels: :math:`L`, number of scales (images).
        steps_per_level: :math:`K`, steps of flow per scale (images).
        hidden_channels: width of each coupling's convolutional network (images).
        split_prior: learn the prior of the factored-out channels (images).
        coupling_scale: ``"sigmoid"`` (official Glow) or ``"clamp"`` (soft clamp) (images).
        n_layers: number of steps (vectors).
        hidden: hidden widths of each coupling's MLP (vectors).
        act: activation of those MLPs (vectors).
        scale_clamp: soft bound on the log-scale (vectors; images with ``coupling_scale="clamp"``).
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018, arXiv:1807.03039.
    """
    name = "glow"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    scale_clamp = v.optional_positive_float("scale_clamp", scale_clamp, owner=name)
    with v.config_errors(name):
        if len(shape) == 3:
            levels = v.positive_int("levels", levels, owner=name)
            steps_per_level = v.positive_int("steps_per_level", steps_per_level, owner=name)
            hidden_channels = v.positive_int("hidden_channels", hidden_channels, owner=name)
            coupling_scale = v.one_of("coupling_scale", coupling_scale, ("sigmoid", "clamp"), owner=name)
            transform: Transform = MultiScaleGlow(
                shape,  # type: ignore[arg-type]
                levels=levels,
                steps_per_level=steps_per_level,
                hidden_channels=hidden_channels,
                split_prior=split_prior,
                coupling_scale=coupling_scale,
                scale_clamp=scale_clamp,
                context_features=ctx,
            )
        elif len(shape) == 1:
            d = shape[0]
            if d < 2:
                raise ConfigError(
                    f"glow couples halves of a vector and needs event_shape (D,) with D >= 2, got ({d},); "
                    "use maf or nsf for 1-D data"
                )
            n_layers = v.positive_int("n_layers", n_layers, owner=name)
            hidden = v.positive_ints("hidden", hidden, owner=name)
            v.mlp_activation("act", act, owner=name)
            steps: list[Transform] = []
            for k in range(n_layers):
                steps += [
                    ActNorm(d),
                    InvertibleConv1x1(d),  # on (B, D) batches exactly an LULinear, rotation start
                    AffineCoupling(
                        alternating_mask(d, k % 2), hidden, act, context_features=ctx, scale_clamp=scale_clamp
                    ),
                ]
            transform = Compose(steps)
        else:
            raise ConfigError(
                f"glow works on images, event_shape (C, H, W), or vectors, (D,); got {shape}; "
                "flatten the data to (D,) or give images a channel axis"
            )
        return finish_flow(transform, base, shape, context_features, context_embedding)
