r"""Unconstrained flows: integrals of positive, unconstrained networks (UMNN, the paper's UNF)."""

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
    is_exponential,
    shape_of,
    stack_with_permutations,
    vector_features,
)
from unflow_zoo.flows.registry import register_flow
from unflow_zoo.nn.integrand import INTEGRAND_ACTIVATIONS
from unflow_zoo.transforms.integral import PER_FEATURE_HIDDEN, SHARED_HIDDEN, UnconstrainedMonotoneTransform
from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform
from unflow_zoo.transforms.positive import PHI_NAMES
from unflow_zoo.transforms.quadrature import QUADRATURE_RULES

__all__ = ["LAYOUTS", "unconstrained"]

LAYOUTS = ("umnn-maf", "paper")


@register_flow("unconstrained")
def unconstrained(
    event_shape: Any,
    *,
    integrand: str = "mlp",
    width: int = 256,
    hidden: Sequence[int] | None = None,
    activation: str = "leaky_relu",
    embedding: int = 16,
    conditioner_hidden: Sequence[int] = (64, 64),
    n_layers: int = 3,
    quadrature: str = "clenshaw-curtis",
    n_nodes: int = 32,
    phi: str = "elu",
    lower_limit: float | Sequence[float] | None = None,
    std_a: float = 0.25,
    init: str = "gaussian-sqrt-m",
    train_top: bool = False,
    min_slope: float = 1e-3,
    permutation: str = "reverse",
    layout: str = "umnn-maf",
    integrand_per_feature: bool = False,
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""Unconstrained monotone flow: ``n_layers`` integral transforms
    :math:`y_i = \beta_i + \int_{x_0}^{x_i} \phi(N(t; h_i)) + \epsilon\, dt` with the feature
    order permuted between them (see :class:`~unflow_zoo.models.unconstrained.UnconstrainedFlow`
    for the two layouts and the paper's settings).

    With an exponential base every layer has :math:`\beta = 0` (the image is non-negative).

    Args:
        event_shape: ``(D,)``.
        integrand: ``"mlp"`` (UMNN) or ``"paper"`` (one hidden layer, fixed top layer).
        width: :math:`m`, hidden width of the paper integrand.
        hidden: hidden widths of the MLP integrand (``None``: ``[64, 64]``, or ``[96, 96]`` with
            ``integrand_per_feature``).
        activation: hidden activation of the MLP integrand.
        embedding: size of the embedding :math:`h_i` the MADE feeds the integrand.
        conditioner_hidden: hidden widths of each MADE.
        n_layers: number of transforms in the stack.
        quadrature: ``clenshaw-curtis``, ``gauss-legendre`` or ``riemann``.
        n_nodes: :math:`K`, quadrature nodes per integral.
        phi: positive function: ``elu`` (ELU + 1), ``softplus`` or ``exp``.
        lower_limit: :math:`x_0` of the first layer (``None``: 0); for ``layout="paper"``
            also a list of :math:`D` floats, one per coordinate.
        std_a: standard deviation of the paper integrand's fixed top layer.
        init: the paper integrand's initialisation, ``gaussian-sqrt-m`` or ``gaussian-std``.
        train_top: also train the paper integrand's top layer.
        min_slope: :math:`\epsilon`, a floor on the derivative (0: the papers' exact parametrisation).
        permutation: ``reverse`` or ``random`` (seeded) feature order between layers.
        layout: ``umnn-maf`` (a shared integrand on a MADE embedding) or ``paper`` (the seed
            paper's per-coordinate networks).
        integrand_per_feature: in the ``umnn-maf`` layout, one MLP integrand per feature
            (zuko's UNAF layout: ``D`` times the integrand's parameters, batched into one
            matmul per layer) instead of one shared by the features; needs ``integrand="mlp"``.
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        | Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019,
          arXiv:1908.05164.
        | Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
          Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
    """
    name = "unconstrained"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    layout = v.one_of("layout", layout, LAYOUTS, owner=name)
    integrand = v.one_of("integrand", integrand, ("mlp", "paper"), owner=name)
    n_layers = v.positive_int("n_layers", n_layers, owner=name)
    quadrature = v.one_of("quadrature", quadrature, QUADRATURE_RULES, owner=name)
    # Clenshaw-Curtis always evaluates both end points
    fewest = 2 if quadrature == "clenshaw-curtis" else 1
    n_nodes = v.integer("n_nodes", n_nodes, minimum=fewest, owner=name, fix="pass e.g. n_nodes=32")
    phi = v.one_of("phi", phi, PHI_NAMES, owner=name)
    min_slope = v.non_negative_float("min_slope", min_slope, owner=name, fix="pass 0 or a small floor, e.g. 1e-3")
    permutation = v.one_of("permutation", permutation, ("reverse", "random"), owner=name)
    if hidden is None:
        hidden = PER_FEATURE_HIDDEN if integrand_per_feature is True else SHARED_HIDDEN
    if not isinstance(integrand_per_feature, bool):
        raise ConfigError(
            f"{name} needs integrand_per_feature true or false, got integrand_per_feature={integrand_per_feature!r}"
        )
    if integrand_per_feature and (layout != "umnn-maf" or integrand != "mlp"):
        raise ConfigError(
            f"{name} with integrand_per_feature=True stacks one MLP integrand per feature on the MADE embedding: it "
            f"needs layout='umnn-maf' and integrand='mlp', got layout={layout!r}, integrand={integrand!r} "
            "(layout='paper' already has one network per coordinate)"
        )
    paper_width = checked_hidden = checked_act = checked_embedding = checked_conditioner = None
    if integrand == "paper":
        paper_width = v.positive_int("width", width, owner=name)
        v.non_negative_float("std_a", std_a, owner=name, fix="pass e.g. std_a=0.25")
        v.one_of("init", init, ("gaussian-sqrt-m", "gaussian-std"), owner=name)
    if layout == "umnn-maf":
        checked_embedding = v.non_negative_int("embedding", embedding, owner=name)
        checked_conditioner = v.positive_ints("conditioner_hidden", conditioner_hidden, owner=name)
        if integrand == "mlp":
            checked_hidden = v.positive_ints("hidden", hidden, owner=name, allow_empty=False)
            checked_act = v.one_of("activation", activation, INTEGRAND_ACTIVATIONS, owner=name)
    lower = lower_limit
    per_coordinate = isinstance(lower, Sequence) and not isinstance(lower, str)
    if per_coordinate:
        lower = [v.in_range("lower_limit", x, owner=name) for x in lower]  # type: ignore[union-attr]
    elif lower is not None:
        lower = v.in_range("lower_limit", lower, owner=name, fix="pass the data minimum, or lower_limit=None")
    with v.config_errors(name):
        d = vector_features(shape, owner=name)
        if layout == "paper":
            if integrand != "paper":
                raise ConfigError(
                    f"layout='paper' is the seed paper's per-coordinate one-hidden-layer networks; it needs "
                    f"integrand='paper' (got {integrand!r}), or use layout='umnn-maf' for the MLP integrand"
                )
            first = lower if per_coordinate else lower if lower is not None else 0.0

            def paper_layer(k: int) -> PaperUnconstrainedTransform:
                return PaperUnconstrainedTransform(
                    d,
                    paper_width,
                    std_a=std_a,
                    init=init,
                    train_top=train_top,
                    quadrature=quadrature,
                    n_nodes=n_nodes,
                    phi=phi,
                    min_slope=min_slope,
                    # no offset in any layer; later ones integrate from 0, as in the UMNN-MAF layout
                    lower_limit=first if k == 0 else 0.0,
                    context_features=ctx,
                )

            transform = stack_with_permutations(paper_layer, n_layers, d, permutation)
            return finish_flow(transform, base, shape, context_features, context_embedding)
        if per_coordinate:
            raise ConfigError(
                f"a per-coordinate lower_limit ({lower}) needs layout='paper'; the UMNN-MAF layout "
                "integrates every coordinate from one float: pass a single float"
            )
        # A non-negative image for the exponential base: beta = 0 in every layer; the first
        # integrates from the lower limit, the others from 0, so x >= x0 <=> y >= 0 all the way.
        exponential = is_exponential(base)
        if ctx and exponential and checked_embedding == 0:
            raise ConfigError(
                f"unconstrained with context_features={context_features} feeds the context through the MADE "
                "embedding h_i(x_<i, c) of the integrand, but embedding=0 with base='exponential' (no offset "
                "beta) leaves the MADE nothing to compute: pass embedding >= 1 (e.g. embedding=16), or "
                "layout='paper' (the context shifts its hidden biases)"
            )
        first = lower if lower is not None else 0.0
        transform = stack_with_permutations(
            lambda k: UnconstrainedMonotoneTransform(
                d,
                integrand,
                width=width,
                hidden=checked_hidden if checked_hidden is not None else hidden,
                act=checked_act if checked_act is not None else activation,
                embedding=checked_embedding,
                conditioner_hidden=checked_conditioner,
                quadrature=quadrature,
                n_nodes=n_nodes,
                phi=phi,
                lower_limit=first if k == 0 else 0.0,
                offset=not exponential,
                min_slope=min_slope,
                std_a=std_a,
                init=init,
                train_top=train_top,
                context_features=ctx,
                integrand_per_feature=integrand_per_feature,
            ),
            n_layers,
            d,
            permutation,
        )
        return finish_flow(transform, base, shape, context_features, context_embedding)
