"""Glow: actnorm, invertible 1x1 convolutions and affine couplings, multi-scale on images."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from unflow_zoo.core.flow import Flow
from unflow_zoo.flows.glow import glow
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model

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

    small_hparams: ClassVar[dict[str, Any]] = {
        "n_layers": 2,  # vectors
        "hidden": [16],
        "levels": 2,  # images
        "steps_per_level": 1,
        "hidden_channels": 8,
    }
    #: compile=True also compiles sampling: measured 1.67x faster (docs/benchmarks.md, compile suite)
    compile_sampling: ClassVar[bool] = True

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
        """The flow of :func:`unflow_zoo.flows.glow.glow`, the family's Lightning-free builder, from this
        module's hyper-parameters and hooks (see :meth:`~unflow_zoo.models.base.FlowModule.build_with`)."""
        return self.build_with(glow)
