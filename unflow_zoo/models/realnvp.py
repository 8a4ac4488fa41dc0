"""RealNVP: alternating affine couplings."""

from __future__ import annotations

from typing import Any, ClassVar

from unflow_zoo.core.flow import Flow
from unflow_zoo.flows.realnvp import realnvp
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model

__all__ = ["RealNVP"]


@register_model("realnvp")
class RealNVP(FlowModule):
    r"""RealNVP for vectors: ``n_layers`` affine couplings whose masks alternate
    between even and odd features,

    .. math:: y_B = x_B \odot e^{s(x_A)} + t(x_A).

    A conditional flow (``context_features > 0``) concatenates the context to each coupling
    MLP's input (and the gate's): :math:`s(x_A, c)`, :math:`t(x_A, c)`.

    Args:
        event_shape: ``(D,)`` with ``D >= 2``.
        n_layers: number of coupling layers.
        hidden: hidden widths of each coupling's MLP.
        act: activation of the MLPs.
        scale_clamp: soft bound on the log-scale (``None``: unbounded).
        gate: use InFlow's gated coupling,
            :math:`y_B = e^{g\,s(x_A)} \odot x_B + g\,t(x_A)`, with a data-dependent gate
            :math:`g = \operatorname{sigmoid}(a(x_A)) \in (0, 1)` per layer (exact log-det
            :math:`g \sum s`; see :class:`~unflow_zoo.transforms.gated.GatedAffineCoupling`,
            whose ``set_gate`` fixes the gate, e.g. to 0 for suspected outliers at test time).
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options (base, lr, optimizer, ...).

    References:
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
        Kumar et al., "InFlow: Robust outlier detection utilizing Normalizing Flows",
        arXiv:2106.12894, 2021 (``gate=True``).
    """

    small_hparams: ClassVar[dict[str, Any]] = {"n_layers": 2, "hidden": [16]}

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        n_layers: int = 8,
        hidden: list[int] = [64, 64],  # noqa: B006  (jsonargparse needs a literal default)
        act: str = "relu",
        scale_clamp: float | None = 3.0,
        gate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        """The flow of :func:`unflow_zoo.flows.realnvp.realnvp`, the family's Lightning-free builder, from this
        module's hyper-parameters and hooks (see :meth:`~unflow_zoo.models.base.FlowModule.build_with`)."""
        return self.build_with(realnvp)
