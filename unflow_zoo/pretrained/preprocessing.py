r"""Data preprocessing carried inside a loaded flow, so that ``log_prob`` takes raw data.

A flow trained on standardised data :math:`\tilde x = (x - m)/s` models
:math:`q(\tilde x)`. The density of the raw point follows by the change of variables

.. math:: \log p(x) = \log q\big((x - m)/s\big) - \textstyle\sum_d \log s_d ,

which is exactly a flow whose first layer is the fixed affine map
:class:`~unflow_zoo.transforms.affine.Affine` ``(m, s)``. Samples come back in raw
units through its inverse :math:`x = s \odot \tilde x + m`.

References:
    Papamakarios, Nalisnick, Rezende, Mohamed & Lakshminarayanan, "Normalizing
    Flows for Probabilistic Modeling and Inference", JMLR 2021, sec. 2.1 (change of variables).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose
from unflow_zoo.errors import DataError, DataTypeError
from unflow_zoo.transforms.affine import Affine

__all__ = ["RawDataFlow", "attach_standardization", "served_flow", "served_state_dict", "standardized_flow"]


class RawDataFlow(Flow):
    r"""A flow over served coordinates behind a fixed standardisation, so it evaluates raw data.

    ``transform = Compose([Affine(m, s), inner.transform])`` and ``base = inner.base``:
    :math:`\log p(x) = \log q((x-m)/s) - \sum_d \log s_d`. The trained weights are not
    copied; :meth:`served` gives the flow over served coordinates back.
    """

    def __init__(self, inner: Flow, mean: Tensor, std: Tensor) -> None:
        super().__init__(Compose([Affine(mean, std), inner.transform]), inner.base)

    @property
    def standardization(self) -> Affine:
        return self.transform[0]  # type: ignore[return-value]

    def served(self) -> Flow:
        """The flow over served (standardised) coordinates, sharing this one's modules."""
        return Flow(self.transform[1], self.base)


def standardized_flow(flow: Flow, mean: Any, std: Any) -> RawDataFlow:
    """``flow`` behind the standardisation ``(mean, std)``: a :class:`RawDataFlow` over raw data.

    Args:
        flow: a flow over standardised coordinates.
        mean: the per-coordinate means :math:`m`, ``prod(event_shape)`` numbers.
        std: the per-coordinate scales :math:`s`, as many positive numbers.

    Returns:
        The flow over raw data; it shares ``flow``'s modules.

    Raises:
        DataError: a non-finite mean or a scale that is not positive and finite.
        DataTypeError: ``flow`` carries a standardisation already.
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(flow.event_shape)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(flow.event_shape)
    if not torch.isfinite(std_t).all() or (std_t <= 0).any() or not torch.isfinite(mean_t).all():
        raise DataError(f"standardisation needs finite means and positive finite stds, got mean={mean}, std={std}")
    if isinstance(flow, RawDataFlow):
        raise DataTypeError("this flow already carries a standardisation; attach one only to a flow over served data")
    return RawDataFlow(flow, mean_t, std_t)


def attach_standardization(model: Any, mean: Any, std: Any) -> None:
    """Put the standardisation ``(mean, std)`` in front of ``model.flow`` in place."""
    model.flow = standardized_flow(model.flow, mean, std)


def served_flow(model: Any) -> Flow:
    """``model``'s flow over the coordinates it was trained on (its own flow if it has no preprocessing);
    ``model`` may be a family's module or a :class:`~unflow_zoo.core.flow.Flow` itself."""
    flow = model if isinstance(model, Flow) else model.flow
    return flow.served() if isinstance(flow, RawDataFlow) else flow


def served_state_dict(model: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``model.state_dict()`` as the bare family would have it, and the preprocessing it carried.

    A module loaded with :func:`attach_standardization` stores its trained weights under
    ``flow.transform.transforms.1.`` and the affine map under ``flow.transform.transforms.0.``;
    the keys are mapped back so that saving a loaded flow round-trips.
    """
    state = model.state_dict()
    if not isinstance(model.flow, RawDataFlow):
        return state, {"kind": "none"}
    affine = model.flow.standardization
    pre, inner = "flow.transform.transforms.0.", "flow.transform.transforms.1."
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(pre):
            continue
        out["flow.transform." + key[len(inner) :] if key.startswith(inner) else key] = value
    record = {
        "kind": "standardize",
        "mean": affine.loc.reshape(-1).tolist(),
        "std": affine.scale.reshape(-1).tolist(),
    }
    return out, record
