"""Constrained flows: the seed paper's monotone tanh networks with positive weights."""

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
from unflow_zoo.transforms.monotone import INITS, POSITIVITY, ConstrainedMonotone

__all__ = ["constrained"]


@register_flow("constrained")
def constrained(
    event_shape: Any,
    *,
    width: int = 100,
    depth: int = 1,
    positivity: str = "clamp",
    init: str = "standard-normal",
    std_a: float = 0.005,
    eps: float = 1e-6,
    linear_term: float = 0.01,
    train_layers: Sequence[str] = ("W", "b", "a"),
    n_layers: int = 1,
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""Constrained normalizing flow (the seed paper's "CNF"):
    :math:`f(x) = \sum_r a_r\, c \tanh(w_r x + b_r) + \alpha x` with :math:`a, w \ge \epsilon`,
    block autoregressive for ``D > 1`` (see :class:`~unflow_zoo.models.constrained.ConstrainedFlow`).

    With ``positivity="clamp"`` the weights stay positive only if every optimizer step is
    followed by :meth:`~unflow_zoo.transforms.monotone.ConstrainedMonotone.project_` on every
    block (``FlowModule`` does it; a plain torch training loop must too).

    Args:
        event_shape: ``(D,)``.
        width: m, hidden units per feature and layer.
        depth: hidden layers per block (1: the paper; > 1: B-NAF).
        positivity: ``"clamp"`` (projected SGD), ``"softplus"``, ``"exp"`` or ``"square"``.
        init: ``"standard-normal"`` or ``"sqrt-m"``.
        std_a: initial scale of the output weights, a = |N(0, std_a^2)|.
        eps: lower bound of the positive weights a and w.
        linear_term: alpha >= 0, fixed slope added to every coordinate (0: paper-exact).
        train_layers: groups that train, a subset of ``["W", "b", "a"]``.
        n_layers: number of constrained blocks, reverse permutations between them.
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
    """
    name = "constrained"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    width = v.positive_int("width", width, owner=name)
    depth = v.positive_int("depth", depth, owner=name)
    positivity = v.one_of("positivity", positivity, POSITIVITY, owner=name)
    init = v.one_of("init", init, INITS, owner=name)
    std_a = v.positive_float("std_a", std_a, owner=name)
    eps = v.positive_float("eps", eps, owner=name, fix="pass a small positive number, e.g. eps=1e-6")
    linear_term = v.non_negative_float(
        "linear_term",
        linear_term,
        owner=name,
        fix="pass 0 (the paper's bounded map) or a small slope, e.g. 0.01",
    )
    n_layers = v.positive_int("n_layers", n_layers, owner=name)
    with v.config_errors(name):
        d = vector_features(shape, owner=name)
        transform = stack_with_permutations(
            lambda k: ConstrainedMonotone(
                d,
                width=width,
                depth=depth,
                positivity=positivity,
                init=init,
                std_a=std_a,
                eps=eps,
                linear_term=linear_term,
                train_layers=tuple(train_layers),  # names checked by the transform
                context_features=ctx,
            ),
            n_layers,
            d,
        )
        return finish_flow(transform, base, shape, context_features, context_embedding)
