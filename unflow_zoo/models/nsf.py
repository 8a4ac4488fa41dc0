"""Neural spline flows: stacked rational-quadratic spline layers."""

from __future__ import annotations

from typing import Any, Literal

from unflow_zoo.core.flow import Flow
from unflow_zoo.errors import ConfigError
from unflow_zoo.models import validate as v
from unflow_zoo.models.base import FlowModule, stack_with_permutations
from unflow_zoo.models.registry import register_model
from unflow_zoo.transforms.coupling import alternating_mask
from unflow_zoo.transforms.spline import RQSAutoregressive, RQSCoupling

__all__ = ["NeuralSplineFlow"]

MAX_BINS = 999


@register_model("nsf")
class NeuralSplineFlow(FlowModule):
    r"""Neural spline flow: ``n_layers`` rational-quadratic spline layers with the
    feature order reversed between them. Each feature goes through a monotone
    spline with ``bins`` bins on :math:`[-B, B]` (identity outside), whose
    parameters a network computes from other features:

    .. math:: z_i = g_{\theta_i}(x_i), \qquad
              \theta_i = \begin{cases} \mathrm{MADE}(x_{<i}) & \text{autoregressive (RQ-NSF (AR))} \\
                                       \mathrm{MLP}(x_A) & \text{coupling (RQ-NSF (C))} \end{cases}

    where in bin :math:`k`, with :math:`\xi = (x - x^{(k)}) / w_k` and :math:`s_k = h_k / w_k`,

    .. math:: g(x) = y^{(k)} + \frac{h_k [s_k \xi^2 + \delta^{(k)} \xi (1-\xi)]}
                                    {s_k + [\delta^{(k+1)} + \delta^{(k)} - 2 s_k] \xi (1-\xi)}.

    The autoregressive variant evaluates densities in one pass per layer and
    samples in ``D`` passes per layer; the coupling variant does both in one
    pass but needs ``D >= 2``. Every layer starts as the identity. Both
    directions are exact up to floating point. A conditional flow (``context_features > 0``)
    feeds the context to every conditioner: :math:`\theta_i(x_{<i}, c)` (every MADE hidden
    layer) or :math:`\theta_i(x_A, c)` (concatenated to the MLP's input).

    Args:
        event_shape: ``(D,)``.
        variant: ``"autoregressive"`` (MADE conditioners) or ``"coupling"``
            (MLP conditioners on alternating halves).
        n_layers: number of spline layers.
        hidden: hidden widths of each conditioner.
        bins: :math:`K`, spline bins per feature.
        tail_bound: :math:`B`; data (and intermediate features) outside
            :math:`[-B, B]` pass through a layer unchanged, so standardise the data
            or pick :math:`B` to cover it.
        act: activation of the conditioners.
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options (base, lr, optimizer, ...).

    References:
        Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019,
        arXiv:1906.04032.
        Gregory & Delbourgo, "Piecewise rational quadratic interpolation to monotonic
        data", IMA Journal of Numerical Analysis, 1982.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        variant: Literal["coupling", "autoregressive"] = "autoregressive",
        n_layers: int = 4,
        hidden: list[int] = [64, 64],  # noqa: B006  (jsonargparse needs a literal default)
        bins: int = 8,
        tail_bound: float = 4.0,
        act: str = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        hp = self.hparams
        name = "nsf"
        variant = v.one_of("variant", hp.variant, ("autoregressive", "coupling"), owner=name)
        n_layers = v.positive_int("n_layers", hp.n_layers, owner=name)
        hidden = v.positive_ints("hidden", hp.hidden, owner=name)
        # every bin is at least 1/1000 of [-B, B] (spline_knots' min_size), so at most 999 of them
        bins = v.integer("bins", hp.bins, minimum=1, maximum=MAX_BINS, owner=name)
        tail_bound = v.positive_float("tail_bound", hp.tail_bound, owner=name)
        v.mlp_activation("act", hp.act, owner=name)
        with v.config_errors(name):
            d = self.vector_features()
            ctx = self.flow_context_features
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
                    return RQSCoupling(alternating_mask(d, parity), hidden, bins, tail_bound, hp.act, ctx)

            else:

                def make(k: int) -> RQSAutoregressive:  # type: ignore[misc]
                    return RQSAutoregressive(d, hidden, bins, tail_bound, hp.act, ctx)

            return Flow(stack_with_permutations(make, n_layers, d), self.make_base())
