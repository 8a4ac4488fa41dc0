"""Linear flow: the Gaussian baseline as a flow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose
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
from unflow_zoo.transforms.affine import ConditionalAffine
from unflow_zoo.transforms.linear import LULinear

__all__ = ["linear"]


@register_flow("linear")
def linear(
    event_shape: Any,
    *,
    n_layers: int = 1,
    context_hidden: Sequence[int] = (64,),
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""Affine flow :math:`z = W x + b` with :math:`W` in LU form, ``n_layers`` of them with the
    feature order reversed between consecutive ones; a conditional flow adds
    :math:`z \mapsto e^{s(c)} \odot z + t(c)` (see :class:`~unflow_zoo.models.linear.LinearFlow`).

    Args:
        event_shape: ``(D,)``.
        n_layers: number of LU-linear layers.
        context_hidden: hidden widths of the context MLP of a conditional flow (ignored
            without a context).
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Liao & He, "Jacobian Determinant of Normalizing Flows", arXiv:2102.06539, 2021.
    """
    name = "linear"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    n_layers = v.positive_int("n_layers", n_layers, owner=name)
    with v.config_errors(name):
        d = vector_features(shape, owner=name)
        transform = stack_with_permutations(lambda k: LULinear(d), n_layers, d)
        if ctx:
            hidden = v.positive_ints("context_hidden", context_hidden, owner=name)
            transform = Compose([*transform.transforms, ConditionalAffine(d, ctx, hidden)])
        return finish_flow(transform, base, shape, context_features, context_embedding)
