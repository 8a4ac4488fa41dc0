"""RealNVP: alternating affine couplings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose
from unflow_zoo.errors import ConfigError
from unflow_zoo.flows import validate as v
from unflow_zoo.flows.common import BaseSpec, conditioner_context, finish_flow, shape_of, vector_features
from unflow_zoo.flows.registry import register_flow
from unflow_zoo.transforms.coupling import AffineCoupling, alternating_mask
from unflow_zoo.transforms.gated import GatedAffineCoupling

__all__ = ["realnvp"]


@register_flow("realnvp")
def realnvp(
    event_shape: Any,
    *,
    n_layers: int = 8,
    hidden: Sequence[int] = (64, 64),
    act: str = "relu",
    scale_clamp: float | None = 3.0,
    gate: bool = False,
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""RealNVP for vectors: ``n_layers`` affine couplings whose masks alternate between even and
    odd features, :math:`y_B = x_B \odot e^{s(x_A)} + t(x_A)` (see :class:`~unflow_zoo.models.realnvp.RealNVP`).

    Args:
        event_shape: ``(D,)`` with ``D >= 2``.
        n_layers: number of coupling layers.
        hidden: hidden widths of each coupling's MLP.
        act: activation of the MLPs.
        scale_clamp: soft bound on the log-scale (``None``: unbounded).
        gate: InFlow's gated coupling (:class:`~unflow_zoo.transforms.gated.GatedAffineCoupling`).
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """
    name = "realnvp"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    n_layers, hidden, scale_clamp = v.affine_stack(n_layers, hidden, act, scale_clamp, owner=name)
    with v.config_errors(name):
        d = vector_features(shape, owner=name)
        if d < 2:
            raise ConfigError(
                f"realnvp couples halves of a vector and needs event_shape (D,) with D >= 2, got ({d},); "
                "use maf or nsf for 1-D data"
            )
        coupling = GatedAffineCoupling if gate else AffineCoupling
        layers = [
            coupling(alternating_mask(d, k % 2), hidden, act, context_features=ctx, scale_clamp=scale_clamp)
            for k in range(n_layers)
        ]
        return finish_flow(Compose(layers), base, shape, context_features, context_embedding)
