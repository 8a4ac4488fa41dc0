"""Neural autoregressive flows: stacked autoregressive deep sigmoidal flow layers."""

from __future__ import annotations

from typing import Any, ClassVar

from unflow_zoo.core.flow import Flow
from unflow_zoo.flows.naf import naf
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model

__all__ = ["NeuralAutoregressiveFlow"]


@register_model("naf")
class NeuralAutoregressiveFlow(FlowModule):
    r"""Neural autoregressive flow (NAF-DSF): ``n_layers`` autoregressive deep
    sigmoidal flow layers with the feature order reversed between them. Each
    feature goes through a small monotone neural network whose weights
    ("pseudo-parameters") a MADE computes from the preceding features:

    .. math:: z_i = f_{\theta_i(x_{<i})}(x_i), \qquad
              f(x) = \sigma^{-1}\Big((1 - \delta) \textstyle\sum_{j=1}^{n} w_j\,
                     \sigma(a_j x + b_j) + \delta / 2\Big),

    with :math:`a_j > 0` (softplus), :math:`w` on the simplex (softmax), ``n =
    dsf_units`` and ``dsf_depth`` such maps composed per layer; the log-det
    :math:`\sum_i \log f'(x_i)` is computed in log space. This is the deep
    constrained-monotone counterpart of the seed paper's constrained family
    (``constrained``: a positive-weight monotone network with fixed weights):
    here the monotone network's positive weights are themselves outputs of a
    conditioner.

    Densities take one MADE pass per layer. Sampling inverts each layer by
    bisection, one coordinate at a time (``D`` passes per layer), to one ulp
    of the working precision. The :math:`\delta = 10^{-6}` mixing (from the NAF
    reference code) keeps the logit finite; it makes each layer a bijection of
    :math:`\mathbb{R}` onto :math:`(-L, L)`, :math:`L \approx 14.5`, which
    holds all but :math:`10^{-46}` of a standard normal base.

    A conditional flow (``context_features > 0``) feeds the context to every hidden layer
    of the MADEs, so the pseudo-parameters are :math:`\theta_i(x_{<i}, c)`.

    Args:
        event_shape: ``(D,)``.
        n_layers: number of DSF layers.
        hidden: hidden widths of each MADE.
        dsf_units: :math:`n`, sigmoid units per DSF map.
        dsf_depth: DSF maps composed per layer (1: DSF, as in the paper's experiments).
        act: activation of the MADEs.
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options (base, lr, optimizer, ...).

    References:
        Huang, Krueger, Lacoste & Courville, "Neural Autoregressive Flows", ICML 2018,
        arXiv:1804.00779.
        Germain, Gregor, Murray & Larochelle, "MADE: Masked Autoencoder for
        Distribution Estimation", ICML 2015.
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
    """

    small_hparams: ClassVar[dict[str, Any]] = {"n_layers": 2, "hidden": [16], "dsf_units": 4}
    # bisection inverse: sampling 5000 points to find the grid's bounds is slow, so they are given (2-D)
    check_options: ClassVar[dict[str, Any]] = {"grid_bounds": [(-7.0, 7.0), (-7.0, 7.0)]}
    #: compile=True also compiles sampling: measured 1.97x faster (docs/benchmarks.md, compile suite)
    compile_sampling: ClassVar[bool] = True

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        n_layers: int = 3,
        hidden: list[int] = [64, 64],  # noqa: B006  (jsonargparse needs a literal default)
        dsf_units: int = 16,
        dsf_depth: int = 1,
        act: str = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        """The flow of :func:`unflow_zoo.flows.naf.naf`, the family's Lightning-free builder, from this
        module's hyper-parameters and hooks (see :meth:`~unflow_zoo.models.base.FlowModule.build_with`)."""
        return self.build_with(naf)
