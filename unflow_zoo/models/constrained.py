"""Constrained flows: the seed paper's monotone tanh networks with positive weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from torch import Tensor

from unflow_zoo.core.flow import Flow
from unflow_zoo.flows.constrained import constrained
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model
from unflow_zoo.transforms.monotone import PARAMETER_GROUPS, ConstrainedMonotone

__all__ = ["ConstrainedFlow"]


@register_model("constrained")
class ConstrainedFlow(FlowModule):
    r"""Constrained normalizing flow (the seed paper's "CNF"; never called ``cnf`` here, where
    CNF means *continuous* flow).

    In one dimension, with a standard normal base,

    .. math::

        f(x) = \sum_{r=1}^m a_r\, c \tanh(w_r x + b_r) + \alpha x, \qquad a_r, w_r \ge \epsilon,

        \log p(x) = \log \mathcal N(f(x); 0, 1) + \log f'(x),

    trained by maximum likelihood; for ``D > 1`` the network is block
    autoregressive (B-NAF) and ``depth > 1`` stacks hidden layers. ``n_layers``
    such blocks are composed with the feature order reversed between them (the
    paper uses one). See :class:`~unflow_zoo.transforms.monotone.ConstrainedMonotone`
    for the positivity modes, the two initialisations and the bisection inverse.

    The linear term :math:`\alpha x` (``linear_term``, fixed, not trained) is this
    package's one departure from the paper: the pure tanh sum maps onto a bounded
    interval, so its density integrates to :math:`P_Z(f(\mathbb R)) < 1` and most
    base samples have no preimage. The default :math:`\alpha = 0.01` (in units of
    the standardised data) is small next to the slope of a fitted map in the bulk
    of the data (order 1), yet makes ``f`` onto, the density normalised and
    sampling well defined; ``linear_term=0`` gives the paper-exact, sub-normalised
    model (whose ``sample`` raises ``InputOutsideDomain`` for base draws outside
    the image).

    Conditional (``context_features > 0``, not in the paper): the context shifts the biases
    of each block's first hidden layer, :math:`b(c) = b + V c` with :math:`V` zero at
    initialisation; the map stays increasing in every :math:`x_i` for every :math:`c` (see
    :class:`~unflow_zoo.transforms.monotone.ConstrainedMonotone`).

    Defaults follow the official code (``CNF/main.py``): width ``m = 100``,
    ``std_a = 0.005``, projected SGD with ``eps = 1e-6`` ("clamp-zero"),
    ``standard-normal`` initialisation. Its optimiser (SGD, lr 5e-4, batch 32,
    data standardised per coordinate) is set by the configs; the module keeps
    :class:`~unflow_zoo.models.base.FlowModule`'s optimiser defaults. With
    ``positivity="clamp"``, FlowModule's ``optimizer_step`` calls
    :meth:`ConstrainedMonotone.project_` after every step.

    Args:
        event_shape: ``(D,)``.
        width: m, hidden units per feature and layer.
        depth: hidden layers per block (1: the paper; > 1: B-NAF).
        positivity: ``"clamp"`` (projected SGD), ``"softplus"``, ``"exp"`` or ``"square"``.
        init: ``"standard-normal"`` (w, b ~ N(0, 1), c = 1/sqrt(m)) or ``"sqrt-m"``
            (w, b ~ N(0, 1/m), c = 1); w taken in absolute value.
        std_a: initial scale of the output weights, a = |N(0, std_a^2)|.
        eps: lower bound of the positive weights a and w.
        linear_term: alpha >= 0, fixed slope added to every coordinate (0: paper-exact).
        train_layers: groups that train, a subset of ``["W", "b", "a"]`` (the paper's
            ``train_last_layer=False`` is ``["W", "b"]``).
        n_layers: number of constrained blocks, reverse permutations between them.
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options (base, lr, optimizer, ...).

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (code:
        github.com/kulinshah98/overparam-NFs, CNF/).
        De Cao, Titov & Aziz, "Block Neural Autoregressive Flow", UAI 2019.
    """

    small_hparams: ClassVar[dict[str, Any]] = {"width": 8}
    # the linear term's slope 0.01 spreads the tails over hundreds of units: no small grid holds them
    check_options: ClassVar[dict[str, Any]] = {"check_grid": False}

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        width: int = 100,
        depth: int = 1,
        positivity: Literal["clamp", "softplus", "exp", "square"] = "clamp",
        init: Literal["standard-normal", "sqrt-m"] = "standard-normal",
        std_a: float = 0.005,
        eps: float = 1e-6,
        linear_term: float = 0.01,
        train_layers: Sequence[str] = ("W", "b", "a"),
        n_layers: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        """The flow of :func:`unflow_zoo.flows.constrained.constrained`, the family's Lightning-free builder, from this
        module's hyper-parameters and hooks (see :meth:`~unflow_zoo.models.base.FlowModule.build_with`)."""
        return self.build_with(constrained)

    def compile_unsupported(self) -> str | None:
        # measured (scripts/benchmarks/compile.py): depth 1 runs the fused C kernel, which torch.compile
        # cannot trace; its plain-torch twin graph-breaks at the saturated-rows check (nonzero) and ran
        # several times slower compiled than eager. depth > 1 (the log-space path) compiles.
        if self.hparams.get("depth", 1) == 1:
            return (
                "the one-hidden-layer map (depth=1) is a fused C kernel that torch.compile cannot trace, and "
                "compiling its plain-torch version is slower than eager (depth > 1 compiles)"
            )
        return None

    @property
    def blocks(self) -> list[ConstrainedMonotone]:
        """The constrained blocks of the flow, in order (data -> noise)."""
        return [m for m in self.flow.transform.modules() if isinstance(m, ConstrainedMonotone)]

    def parameter_groups(self, effective: bool = False) -> dict[str, list[Tensor]]:
        """Parameters by group over all blocks: ``"W"`` hidden weights, ``"b"`` biases,
        ``"a"`` output weights; raw ``nn.Parameter`` objects unless ``effective``
        (see :meth:`ConstrainedMonotone.parameter_groups`)."""
        groups: dict[str, list[Tensor]] = {g: [] for g in PARAMETER_GROUPS}
        for block in self.blocks:
            for g, params in block.parameter_groups(effective).items():
                groups[g].extend(params)
        return groups
