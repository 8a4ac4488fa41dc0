"""MAF: stacked masked affine autoregressive layers."""

from __future__ import annotations

from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.models.base import FlowModule, stack_with_permutations
from unflow_zoo.models.registry import register_model
from unflow_zoo.transforms.autoregressive import MaskedAffineAutoregressive

__all__ = ["MaskedAutoregressiveFlow"]


@register_model("maf")
class MaskedAutoregressiveFlow(FlowModule):
    r"""Masked autoregressive flow: ``n_layers`` MADE-affine layers with the
    feature order reversed between them,

    .. math:: z_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}.

    Density evaluation is one pass per layer; sampling needs ``D`` passes per layer.

    Args:
        event_shape: ``(D,)``.
        n_layers: number of MADE layers.
        hidden: hidden widths of each MADE.
        act: activation.
        scale_clamp: soft bound on the log-scale (``None``: unbounded).
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options.

    References:
        Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for
        Density Estimation", NeurIPS 2017.
        Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        n_layers: int = 5,
        hidden: list[int] = [64, 64],  # noqa: B006
        act: str = "relu",
        scale_clamp: float | None = 3.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        hp = self.hparams
        d = self.vector_features()
        transform = stack_with_permutations(
            lambda k: MaskedAffineAutoregressive(d, hp.hidden, hp.act, scale_clamp=hp.scale_clamp), hp.n_layers, d
        )
        return Flow(transform, self.make_base())
