"""Neural autoregressive flows: stacked autoregressive deep sigmoidal flow layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unflow_zoo.core.flow import Flow
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
from unflow_zoo.transforms.sigmoidal import DSFAutoregressive

__all__ = ["naf"]


@register_flow("naf")
def naf(
    event_shape: Any,
    *,
    n_layers: int = 3,
    hidden: Sequence[int] = (64, 64),
    dsf_units: int = 16,
    dsf_depth: int = 1,
    act: str = "relu",
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""Neural autoregressive flow (NAF-DSF): ``n_layers`` autoregressive deep sigmoidal flow
    layers with the feature order reversed between them (see
    :class:`~unflow_zoo.models.naf.NeuralAutoregressiveFlow`).

    Args:
        event_shape: ``(D,)``.
        n_layers: number of DSF layers.
        hidden: hidden widths of each MADE.
        dsf_units: :math:`n`, sigmoid units per DSF map.
        dsf_depth: DSF maps composed per layer.
        act: activation of the MADEs.
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Huang, Krueger, Lacoste & Courville, "Neural Autoregressive Flows", ICML 2018,
        arXiv:1804.00779.
    """
    name = "naf"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    n_layers = v.positive_int("n_layers", n_layers, owner=name)
    hidden = v.positive_ints("hidden", hidden, owner=name)
    units = v.positive_int("dsf_units", dsf_units, owner=name)
    depth = v.positive_int("dsf_depth", dsf_depth, owner=name)
    v.mlp_activation("act", act, owner=name)
    with v.config_errors(name):
        d = vector_features(shape, owner=name)

        def make(k: int) -> DSFAutoregressive:
            return DSFAutoregressive(d, hidden, units, depth, act, context_features=ctx)

        return finish_flow(stack_with_permutations(make, n_layers, d), base, shape, context_features, context_embedding)
