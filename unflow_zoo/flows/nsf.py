"""Neural spline flows: stacked rational-quadratic spline layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.errors import ConfigError
from unflow_zoo.flows import validate as v
from unflow_zoo.flows.common import (
    BaseSpec,
    conditioner_context,
    finish_flow,
    shape_of,
    stack_with_permutations,
    vector_features,
)
from unflow_zoo.flows.registry import register_flow
from unflow_zoo.transforms.coupling import alternating_mask
from unflow_zoo.transforms.spline import RQSAutoregressive, RQSCoupling

__all__ = ["MAX_BINS", "nsf"]

#: every bin is at least 1/1000 of [-B, B] (spline_knots' min_size), so at most 999 of them
MAX_BINS = 999


@register_flow("nsf")
def nsf(
    event_shape: Any,
    *,
    variant: str = "autoregressive",
    n_layers: int = 4,
    hidden: Sequence[int] = (64, 64),
    bins: int = 8,
    tail_bound: float = 4.0,
    act: str = "relu",
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""Neural spline flow: ``n_layers`` rational-quadratic spline layers with the feature order
    reversed between them (see :class:`~unflow_zoo.models.nsf.NeuralSplineFlow`).

    Args:
        event_shape: ``(D,)``.
        variant: ``"autoregressive"`` (MADE conditioners) or ``"coupling"`` (MLP conditioners on
            alternating halves, ``D >= 2``).
        n_layers: number of spline layers.
        hidden: hidden widths of each conditioner.
        bins: :math:`K`, spline bins per feature, at most 999.
        tail_bound: :math:`B`; outside :math:`[-B, B]` a layer is the identity.
        act: activation of the conditioners.
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019,
        arXiv:1906.04032.
    """
    name = "nsf"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    variant = v.one_of("variant", variant, ("autoregressive", "coupling"), owner=name)
    n_layers = v.positive_int("n_layers", n_layers, owner=name)
    hidden = v.positive_ints("hidden", hidden, owner=name)
    bins = v.integer("bins", bins, minimum=1, maximum=MAX_BINS, owner=name)
    tail_bound = v.positive_float("tail_bound", tail_bound, owner=name)
    v.mlp_activation("act", act, owner=name)
    with v.config_errors(name):
        d = vector_features(shape, owner=name)
        if variant == "coupling":
            if d < 2:
                raise ConfigError(
                    f"nsf variant='coupling' splits a vector in halves and needs event_shape (D,) with D >= 2, "
                    f"got ({d},); use variant='autoregressive' for 1-D data"
                )

            def make(k: int) -> RQSCoupling:
                # For even D the reversal between layers already swaps the even and odd halves
                # (alternating the mask as well would undo it); for odd D it does not.
                parity = k % 2 if d % 2 else 0
                return RQSCoupling(alternating_mask(d, parity), hidden, bins, tail_bound, act, ctx)

        else:

            def make(k: int) -> RQSAutoregressive:  # type: ignore[misc]
                return RQSAutoregressive(d, hidden, bins, tail_bound, act, ctx)

        return finish_flow(stack_with_permutations(make, n_layers, d), base, shape, context_features, context_embedding)
