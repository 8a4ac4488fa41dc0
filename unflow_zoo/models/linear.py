"""Linear flow: the Gaussian baseline as a trainable flow family."""

from __future__ import annotations

from typing import Any, ClassVar

from unflow_zoo.core.flow import Flow
from unflow_zoo.flows.linear import linear
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model

__all__ = ["LinearFlow"]


@register_model("linear")
class LinearFlow(FlowModule):
    r"""Affine flow :math:`z = W x + b` onto the base, with :math:`W` in LU form
    (:class:`~unflow_zoo.transforms.linear.LULinear`, ``n_layers`` of them with the
    feature order reversed between consecutive ones).

    With the standard normal base the model is the Gaussian
    :math:`\mathcal N(-W^{-1} b,\ (W^\top W)^{-1})`, so its maximum-likelihood
    optimum is the Gaussian fit to the training data, and its mean training NLL
    is bounded below by

    .. math:: \mathrm{NLL}^* = \tfrac12 \textstyle\sum_i \log(2\pi e\, \lambda_i),

    :math:`\lambda_i` the eigenvalues of the ML data covariance
    (:func:`unflow_zoo.metrics.gaussian_nll`). One layer already reaches it (a
    composition of affine maps is affine); more layers only change the
    optimisation path. Use it as the baseline any non-linear flow must beat: the
    gap of a flow's NLL to NLL* is what its non-linearity buys (Liao & He 2021).

    Conditional (``context_features > 0``): a
    :class:`~unflow_zoo.transforms.affine.ConditionalAffine` layer follows the LU stack,
    :math:`z = e^{s(c)} \odot (W x + b) + t(c)` with :math:`(s, t)` an MLP of the context
    (widths ``context_hidden``, last layer zero at initialisation), so that
    :math:`x \mid c` is a Gaussian whose mean and scales depend on :math:`c`: the
    conditional baseline (``context_hidden=[]``: log-scale and shift affine in :math:`c`,
    heteroscedastic linear-Gaussian regression).

    Args:
        event_shape: ``(D,)``.
        n_layers: number of LU-linear layers.
        context_hidden: hidden widths of the context MLP of a conditional flow (ignored
            without a context).
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options.

    References:
        Liao & He, "Jacobian Determinant of Normalizing Flows", arXiv:2102.06539, 2021.
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018 (the LU parametrisation).
    """

    small_hparams: ClassVar[dict[str, Any]] = {"n_layers": 2, "context_hidden": [16]}

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        n_layers: int = 1,
        context_hidden: list[int] = [64],  # noqa: B006  (jsonargparse needs a literal default)
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        """The flow of :func:`unflow_zoo.flows.linear.linear`, the family's Lightning-free builder, from this
        module's hyper-parameters and hooks (see :meth:`~unflow_zoo.models.base.FlowModule.build_with`)."""
        return self.build_with(linear)
