"""MAF: stacked masked affine autoregressive layers."""

from __future__ import annotations

from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose
from unflow_zoo.models import validate as v
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model
from unflow_zoo.transforms.autoregressive import MaskedAffineAutoregressive

__all__ = ["MaskedAutoregressiveFlow"]


@register_model("maf")
class MaskedAutoregressiveFlow(FlowModule):
    r"""Masked autoregressive flow: ``n_layers`` MADE-affine layers whose
    autoregressive order is reversed from one to the next,

    .. math:: z_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}.

    Density evaluation is one pass per layer; sampling needs ``D`` passes per layer. A
    conditional flow (``context_features > 0``) feeds the context to every hidden layer of
    every MADE: :math:`\mu_i(x_{<i}, c)`, :math:`\alpha_i(x_{<i}, c)`.

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
        name = "maf"
        n_layers, hidden, scale_clamp = v.affine_stack(hp, owner=name)
        with v.config_errors(name):
            d = self.vector_features()
            # The autoregressive order alternates inside the MADEs instead of permuting the data between
            # layers: the same family of densities, without an index-select (and its backward) per layer.
            reverse = list(range(d - 1, -1, -1))
            ctx = self.flow_context_features
            layers = [
                MaskedAffineAutoregressive(
                    d, hidden, hp.act, context_features=ctx, scale_clamp=scale_clamp, order=reverse if k % 2 else None
                )
                for k in range(n_layers)
            ]
            return Flow(Compose(layers), self.make_base())
