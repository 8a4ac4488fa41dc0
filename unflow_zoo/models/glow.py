"""Glow: actnorm, invertible 1x1 convolutions and affine couplings, multi-scale on images."""

from __future__ import annotations

from typing import Any, Literal

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose, Transform
from unflow_zoo.errors import ConfigError
from unflow_zoo.models import validate as v
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model
from unflow_zoo.transforms.coupling import AffineCoupling, alternating_mask
from unflow_zoo.transforms.glow import ActNorm, InvertibleConv1x1, MultiScaleGlow

__all__ = ["Glow"]


@register_model("glow")
class Glow(FlowModule):
    r"""Glow: steps of flow, each actnorm -> invertible 1x1 convolution -> affine coupling,

    .. math:: y = (x + b) e^{s} \;\to\; y' = W y, \; W = P L (U + \mathrm{diag}\, e^{s_W})
              \;\to\; y''_a = y'_a, \; y''_b = (y'_b + t(y'_a)) \odot \sigma(h(y'_a) + 2),

    with :math:`\log|\det J| = HW \sum_c s_c + HW \sum_c s_{W,c} + \sum \log \sigma(h + 2)`.

    - Images, ``event_shape = (C, H, W)``: the multi-scale architecture of
      :class:`~unflow_zoo.transforms.glow.MultiScaleGlow`: ``levels`` levels of
      squeeze -> ``steps_per_level`` steps -> split, the factored-out half
      modelled by a Gaussian whose mean and log-std a zero-initialised
      convolution computes from the kept half (``split_prior=True``) or by
      :math:`\mathcal N(0, I)`. ``H`` and ``W`` must be divisible by ``2**levels``.
    - Vectors, ``event_shape = (D,)``, ``D >= 2``: ``n_layers`` steps of actnorm
      -> LU linear layer (:class:`~unflow_zoo.transforms.linear.LULinear`,
      random-rotation start) -> :class:`~unflow_zoo.transforms.coupling.AffineCoupling`
      (MLP conditioner of widths ``hidden``, soft-clamped log-scale); no squeeze
      or split.

    Conditional (``context_features > 0``): the coupling networks see the context, concatenated
    to the MLP's input (vectors) or as constant feature maps concatenated to the convolutional
    network's input channels (images); actnorm, the 1x1 convolutions and the split priors do
    not depend on it.

    Actnorm initialises itself from the first training batch (zero mean, unit
    variance per channel); couplings and split priors start as the identity
    (up to the sigmoid's fixed contraction, see
    :class:`~unflow_zoo.transforms.glow.GlowAffineCoupling`).

    Args:
        event_shape: ``(C, H, W)`` or ``(D,)``.
        levels: :math:`L`, number of scales (images).
        steps_per_level: :math:`K`, steps of flow per scale (images).
        hidden_channels: width of each coupling's convolutional network (images).
        split_prior: learn the prior of the factored-out channels (images).
        coupling_scale: ``"sigmoid"`` (official Glow) or ``"clamp"`` (soft clamp) (images).
        n_layers: number of steps (vectors).
        hidden: hidden widths of each coupling's MLP (vectors).
        act: activation of those MLPs (vectors).
        scale_clamp: soft bound on the log-scale (vectors; images with ``coupling_scale="clamp"``).
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options (base, lr, optimizer, ...).

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018, arXiv:1807.03039.
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        levels: int = 2,
        steps_per_level: int = 4,
        hidden_channels: int = 64,
        split_prior: bool = True,
        coupling_scale: Literal["sigmoid", "clamp"] = "sigmoid",
        n_layers: int = 8,
        hidden: list[int] = [64, 64],  # noqa: B006  (jsonargparse needs a literal default)
        act: str = "relu",
        scale_clamp: float = 3.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        hp = self.hparams
        name = "glow"
        scale_clamp = v.optional_positive_float("scale_clamp", hp.scale_clamp, owner=name)
        ctx = self.flow_context_features
        with v.config_errors(name):
            if len(self.event_shape) == 3:
                levels = v.positive_int("levels", hp.levels, owner=name)
                steps_per_level = v.positive_int("steps_per_level", hp.steps_per_level, owner=name)
                hidden_channels = v.positive_int("hidden_channels", hp.hidden_channels, owner=name)
                coupling_scale = v.one_of("coupling_scale", hp.coupling_scale, ("sigmoid", "clamp"), owner=name)
                transform: Transform = MultiScaleGlow(
                    self.event_shape,  # type: ignore[arg-type]
                    levels=levels,
                    steps_per_level=steps_per_level,
                    hidden_channels=hidden_channels,
                    split_prior=hp.split_prior,
                    coupling_scale=coupling_scale,
                    scale_clamp=scale_clamp,
                    context_features=ctx,
                )
            elif len(self.event_shape) == 1:
                d = self.event_shape[0]
                if d < 2:
                    raise ConfigError(
                        f"glow couples halves of a vector and needs event_shape (D,) with D >= 2, got ({d},); "
                        "use maf or nsf for 1-D data"
                    )
                n_layers = v.positive_int("n_layers", hp.n_layers, owner=name)
                hidden = v.positive_ints("hidden", hp.hidden, owner=name)
                v.mlp_activation("act", hp.act, owner=name)
                steps: list[Transform] = []
                for k in range(n_layers):
                    steps += [
                        ActNorm(d),
                        InvertibleConv1x1(d),  # on (B, D) batches exactly an LULinear, rotation start
                        AffineCoupling(
                            alternating_mask(d, k % 2), hidden, hp.act, context_features=ctx, scale_clamp=scale_clamp
                        ),
                    ]
                transform = Compose(steps)
            else:
                raise ConfigError(
                    f"glow works on images, event_shape (C, H, W), or vectors, (D,); got {self.event_shape}; "
                    "flatten the data to (D,) or give images a channel axis"
                )
            return Flow(transform, self.make_base())
