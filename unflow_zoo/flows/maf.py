"""MAF: stacked masked affine autoregressive layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose
from unflow_zoo.flows import validate as v
from unflow_zoo.flows.common import BaseSpec, conditioner_context, finish_flow, shape_of, vector_features
from unflow_zoo.flows.registry import register_flow
from unflow_zoo.transforms.autoregressive import MaskedAffineAutoregressive

__all__ = ["maf"]


@register_flow("maf")
def maf(
    event_shape: Any,
    *,
    n_layers: int = 5,
    hidden: Sequence[int] = (64, 64),
    act: str = "relu",
    scale_clamp: float | None = 3.0,
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""Masked autoregressive flow: ``n_layers`` MADE-affine layers whose autoregressive order is
    reversed from one to the next, :math:`z_i = (x_i - \mu_i(x_{<i}))\, e^{-\alpha_i(x_{<i})}`
    (see :class:`~unflow_zoo.models.maf.MaskedAutoregressiveFlow`).

    Args:
        event_shape: ``(D,)``.
        n_layers: number of MADE layers.
        hidden: hidden widths of each MADE.
        act: activation.
        scale_clamp: soft bound on the log-scale (``None``: unbounded).
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for
        Density Estimation", NeurIPS 2017.
    """
    name = "maf"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    n_layers, hidden, scale_clamp = v.affine_stack(n_layers, hidden, act, scale_clamp, owner=name)
    with v.config_errors(name):
        d = vector_features(shape, owner=name)
        # The autoregressive order alternates inside the MADEs instead of permuting the data between
        # layers: the same family of densities, without an index-select (and its backward) per layer.
        reverse = list(range(d - 1, -1, -1))
        layers = [
            MaskedAffineAutoregressive(
                d, hidden, act, context_features=ctx, scale_clamp=scale_clamp, order=reverse if k % 2 else None
            )
            for k in range(n_layers)
        ]
        return finish_flow(Compose(layers), base, shape, context_features, context_embedding)
