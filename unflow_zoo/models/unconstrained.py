r"""Unconstrained flows: integrals of positive, unconstrained networks (UMNN, the paper's UNF)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch import Tensor

from unflow_zoo.core.flow import Flow
from unflow_zoo.flows.unconstrained import unconstrained
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model
from unflow_zoo.transforms.integral import UnconstrainedMonotoneTransform
from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform

__all__ = ["UnconstrainedFlow"]

PARAMETER_GROUPS = ("W", "b", "a")


@register_model("unconstrained")
class UnconstrainedFlow(FlowModule):
    r"""Unconstrained monotone flow: ``n_layers`` UMNN-MAF transforms with the
    feature order permuted between them; each maps coordinate :math:`i` by

    .. math::

        y_i = \beta_i(x_{<i}) + \int_{x_0}^{x_i} \phi\big(N(t; h_i(x_{<i}))\big) + \epsilon\; dt,
        \qquad
        \log p(x) = \log p_Z(y) + \sum_i \log\big(\phi(N(x_i; h_i)) + \epsilon\big),

    with :math:`\phi = \mathrm{ELU} + 1 > 0` (so :math:`y_i` increases in :math:`x_i`
    whatever the weights of :math:`N`), :math:`(h_i, \beta_i)` from a MADE, the
    integral a ``n_nodes``-point quadrature with a Leibniz-rule backward, and a
    numerical (Newton-bisection, tolerance ``1e-6``) inverse for sampling; see
    :class:`~unflow_zoo.transforms.integral.UnconstrainedMonotoneTransform`.

    The integrand :math:`N` is either UMNN's MLP (``integrand="mlp"``, widths
    ``hidden``) or the seed paper's one-hidden-layer net of width :math:`m` =
    ``width`` with a fixed random top layer, :math:`N(t) = a^\top
    \mathrm{ReLU}(W[h, t] + b)` (``integrand="paper"``); :meth:`parameter_groups`
    returns its ``W``, ``b`` and ``a`` so that
    :class:`~unflow_zoo.callbacks.WeightMovementCallback` can track
    :math:`\|W_t - W_0\|` against ``width``.

    Base distribution: with ``base="exponential"`` (the paper's UNF) every layer has
    :math:`\beta = 0` and the first integrates from :math:`x_0` = ``lower_limit``
    (set it to the data minimum; ``None`` means 0), so the image is non-negative on
    :math:`x \ge x_0`; data with a coordinate below :math:`x_0` gets
    ``log_prob = -inf``. With ``normal``/``diag-normal`` bases :math:`\beta` is learned
    and ``lower_limit`` only moves the origin of the first layer's integrals.

    Layout: ``layout="umnn-maf"`` (the default) is the above, one integrand shared by
    the coordinates and fed a MADE embedding :math:`h_i(x_{<i})`. ``layout="paper"`` is
    the seed paper's own D-dimensional UNF (its ``UNF/utils.py``): one width-:math:`m`
    network per coordinate fed the raw :math:`[x_{<i}, t]`,

    .. math::

        y_i = \int_{x_{0,i}}^{x_i} \phi\big(s\, a_i^\top \mathrm{ReLU}(W_i x_{<i} + w_i t + b_i)\big) + \epsilon\; dt,

    with no offset :math:`\beta` for any base; see
    :class:`~unflow_zoo.transforms.paper_integral.PaperUnconstrainedTransform`. It needs
    ``integrand="paper"`` and reads the paper integrand's hyper-parameters ``width``,
    ``std_a``, ``init`` and ``train_top``; ``embedding``, ``conditioner_hidden``,
    ``hidden`` and ``activation`` are ignored. Its ``lower_limit`` may be a list of
    :math:`D` floats, the per-coordinate data minimum of the official code. The paper's
    2-D UNF is::

        UnconstrainedFlow(event_shape=(2,), layout="paper", integrand="paper", width=6400, n_layers=1,
                          base="exponential", lower_limit=x.min(0).values.tolist(), min_slope=0.0,
                          quadrature="riemann", n_nodes=50, optimizer="sgd", lr=0.005)

    Conditional (``context_features > 0``): in the UMNN-MAF layout the context enters the
    MADE, :math:`(h_i, \beta_i)(x_{<i}, c)` (also in 1-D, where the unconditional flow's
    conditioner is a learned constant), so it needs ``embedding >= 1`` or an offset (a
    normal base); in the paper layout it shifts every coordinate network's hidden biases,
    :math:`b_i(c) = b_i + V_i c`, :math:`V` zero at initialisation (see
    :class:`~unflow_zoo.transforms.paper_integral.PaperUnconstrainedTransform`).

    The defaults are UMNN's (MLP integrand ``[64, 64]`` with leaky ReLU, embedding 16,
    MADE ``[64, 64]``, 3 layers, Clenshaw-Curtis quadrature with 32 nodes); they train
    well on the 2-D toys, and the learned densities integrate to 1 within 1e-4 there.
    The paper's 1-D UNF is::

        UnconstrainedFlow(event_shape=(1,), integrand="paper", width=6400, n_layers=1, embedding=0,
                          base="exponential", lower_limit=float(x.min()),
                          quadrature="riemann", n_nodes=50, optimizer="sgd", lr=0.005)

    Args:
        event_shape: ``(D,)``.
        integrand: ``"mlp"`` (UMNN) or ``"paper"`` (one hidden layer, fixed top layer).
        width: :math:`m`, hidden width of the paper integrand.
        hidden: hidden widths of the MLP integrand (``None``: ``[64, 64]``, UMNN's; ``[96, 96]`` with
            ``integrand_per_feature``, see there).
        activation: hidden activation of the MLP integrand: ``leaky_relu`` (UMNN's; the
            cheapest on CPU, and the best of these on the 2-D toys in short runs), ``elu``
            (zuko's), ``tanh`` (smooth and bounded: spectrally accurate quadrature and
            linear tails), ``silu``, ``relu``.
        embedding: size of the embedding :math:`h_i` the MADE feeds the integrand.
        conditioner_hidden: hidden widths of each MADE.
        n_layers: number of transforms in the stack.
        quadrature: ``clenshaw-curtis``, ``gauss-legendre`` or ``riemann`` (the paper's right sum).
        n_nodes: :math:`K`, quadrature nodes per integral.
        phi: positive function: ``elu`` (ELU + 1), ``softplus`` or ``exp``.
        lower_limit: :math:`x_0` of the first layer (``None``: 0); for ``layout="paper"``
            also a list of :math:`D` floats, one per coordinate.
        std_a: standard deviation of the paper integrand's fixed top layer.
        init: the paper integrand's initialisation, ``gaussian-sqrt-m`` (:math:`W, b \sim
            \mathcal N(0, 1/m)`) or ``gaussian-std`` (:math:`\mathcal N(0, 1)`, output scaled by
            :math:`1/\sqrt m`).
        train_top: also train the paper integrand's top layer :math:`a`.
        min_slope: :math:`\epsilon`, a floor on the derivative that makes every layer map
            onto all of :math:`\mathbb R` (0: the papers' exact parametrisation).
        permutation: ``reverse`` or ``random`` (seeded) feature order between layers.
        layout: ``umnn-maf`` (a shared integrand on a MADE embedding) or ``paper`` (the seed
            paper's per-coordinate networks on the raw :math:`x_{<i}`), see above.
        integrand_per_feature: in the UMNN-MAF layout, one MLP integrand :math:`N_i` per
            coordinate (zuko's UNAF layout) instead of one shared :math:`N`: ``D`` times the
            integrand's parameters at about the same cost per step (the ``D`` networks run as
            one batched matmul per layer); the capacity that high-dimensional data needs (see
            docs/benchmarks.md, D = 43). Its default integrand is wider, ``hidden=[96, 96]``: at
            D = 43 zuko's own [64, 64] trails zuko's UNAF after 100 Adam steps, [96, 96] is ahead
            and still ~2.5x faster per step. Needs ``integrand="mlp"``; ``False`` (the default)
            keeps UMNN's shared integrand and every existing checkpoint.
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options (``base``, ``lr``, ...).

    References:
        | Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019,
          arXiv:1908.05164.
        | Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
          Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
        | Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density
          Estimation", NeurIPS 2017.
    """

    # ``width`` is the paper integrand's (integrand="paper"); the MLP integrand ignores it
    small_hparams: ClassVar[dict[str, Any]] = {
        "n_layers": 2,
        "hidden": [16],
        "embedding": 4,
        "conditioner_hidden": [16],
        "n_nodes": 16,
        "width": 16,
    }
    check_options: ClassVar[dict[str, Any]] = {"inverse_atol": 1e-5}  # a numerical inverse (safeguarded Newton)

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        integrand: Literal["mlp", "paper"] = "mlp",
        width: int = 256,
        hidden: list[int] | None = None,
        activation: Literal["leaky_relu", "elu", "relu", "silu", "tanh"] = "leaky_relu",
        embedding: int = 16,
        conditioner_hidden: list[int] = [64, 64],  # noqa: B006
        n_layers: int = 3,
        quadrature: Literal["clenshaw-curtis", "gauss-legendre", "riemann"] = "clenshaw-curtis",
        n_nodes: int = 32,
        phi: Literal["elu", "softplus", "exp"] = "elu",
        lower_limit: float | list[float] | None = None,
        std_a: float = 0.25,
        init: Literal["gaussian-sqrt-m", "gaussian-std"] = "gaussian-sqrt-m",
        train_top: bool = False,
        min_slope: float = 1e-3,
        permutation: Literal["reverse", "random"] = "reverse",
        layout: Literal["umnn-maf", "paper"] = "umnn-maf",
        integrand_per_feature: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        """The flow of :func:`unflow_zoo.flows.unconstrained.unconstrained`, the family's Lightning-free
        builder, from this module's hyper-parameters and hooks (see
        :meth:`~unflow_zoo.models.base.FlowModule.build_with`)."""
        return self.build_with(unconstrained)

    @property
    def transforms(self) -> list[UnconstrainedMonotoneTransform | PaperUnconstrainedTransform]:
        """The integral transforms of the stack, data side first."""
        kinds = (UnconstrainedMonotoneTransform, PaperUnconstrainedTransform)
        return [t for t in self.flow.transform.modules() if isinstance(t, kinds)]

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        """Integrand tensors of every layer: ``"W"`` hidden weights, ``"b"`` hidden biases,
        ``"a"`` top layer (a fixed buffer for the paper integrand unless ``train_top``)."""
        groups: dict[str, list[Tensor]] = {g: [] for g in PARAMETER_GROUPS}
        for t in self.transforms:
            for g, tensors in t.parameter_groups().items():
                groups[g].extend(tensors)
        return groups
