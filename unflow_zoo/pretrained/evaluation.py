r"""Held-out metrics of a loaded (raw-data) flow on the split it was trained on.

For data served standardised the loaded module takes raw points, so the test
NLL is :math:`-\frac1N \sum_i \log p(x_i)` over the raw test points
:math:`x_i = s \odot \tilde x_i + m`. Bits per dimension divide by
:math:`D \ln 2`, after moving to the data's own units with the data module's
``pixel_log_det`` where it has one (as :class:`~unflow_zoo.models.FlowModule` does).

A row whose log-density is not finite (NaN, or :math:`-\infty` at a point outside the
flow's support) is counted, never dropped: while any is, the NLL, bits/dim and KL are
:math:`+\infty`, and the result names the first few such rows.

References:
    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density
    Estimation", NeurIPS 2017 (test log-likelihood on held-out splits);
    Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016 (bits/dim).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unflow_zoo.errors import ConfigError
from unflow_zoo.pretrained.preprocessing import RawDataFlow

__all__ = ["evaluate_split", "split_data"]


def split_data(datamodule: Any, split: str = "test") -> Tensor:
    """The served points of ``split`` (``train``, ``val`` or ``test``), after ``setup()``."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    datamodule.setup("test" if split == "test" else "fit")
    data = getattr(datamodule, f"{split}_data", None)
    if data is None:
        loader = getattr(datamodule, f"{split}_dataloader")()
        data = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in loader])
    if len(data) == 0:
        fix = f" (on the command line: --data.{split}_fraction 0.1)" if split != "train" else ""
        raise ConfigError(f"the data module has an empty {split} split; set its {split}_fraction above 0{fix}")
    return data


#: how many offending rows :func:`evaluate_split` names
SHOWN_ROWS = 5


@torch.no_grad()
def evaluate_split(model: Any, datamodule: Any, split: str = "test", batch_size: int = 4096) -> dict[str, Any]:
    """``{"{split}_nll", "{split}_bpd", "{split}_kl" (when the true density is known), "n_{split}",
    "{split}_nonfinite", "{split}_nonfinite_rows" (when it is above zero)}``.

    ``model`` is a flow as :func:`~unflow_zoo.pretrained.load_pretrained` returns it: when it
    carries a standardisation it is given raw points (``datamodule.transform_to_raw``), else served ones.
    ``{split}_nonfinite`` counts the rows whose log-density is NaN or infinite; when there is
    any, ``{split}_nonfinite_rows`` lists the first :data:`SHOWN_ROWS` of them (indices into the
    split) and the NLL, bits/dim and KL are ``inf``, not means over the other rows.
    """
    served = split_data(datamodule, split)
    raw_input = isinstance(model.flow, RawDataFlow)
    to_raw = getattr(datamodule, "transform_to_raw", None)
    if raw_input and not callable(to_raw):
        raise ConfigError(f"{type(datamodule).__name__} cannot map served points to raw ones (no transform_to_raw)")
    pixel_log_det = getattr(datamodule, "pixel_log_det", None)
    true_log_prob = getattr(datamodule, "true_log_prob", None)
    nll_sum = bpd_nll_sum = kl_sum = 0.0
    has_truth = callable(true_log_prob)
    device = next(model.parameters()).device
    nonfinite = 0
    rows: list[int] = []
    start = 0
    for x in served.split(batch_size):
        x = x.to(device)
        inputs = to_raw(x) if raw_input else x
        logp = model.log_prob(inputs).double()
        bad = ~torch.isfinite(logp)
        if bool(bad.any()):
            nonfinite += int(bad.sum())
            rows += [start + int(i) for i in torch.nonzero(bad).flatten()[: SHOWN_ROWS - len(rows)]]
            logp = torch.where(bad, torch.full_like(logp, -math.inf), logp)  # NaN, +inf: counted as no density
        start += len(x)
        nll = -logp
        nll_sum += float(nll.sum())
        data_nll = nll
        if callable(pixel_log_det):
            correction = pixel_log_det(x)
            if correction is not None:
                data_nll = nll - correction.double()
        bpd_nll_sum += float(data_nll.sum())
        if has_truth:
            truth = true_log_prob(x)
            if truth is None:
                has_truth = False
            else:
                # log p_served(x~) = log p_raw(x) + sum log s: the same shift as the model's raw density
                shift = torch.log(datamodule.std).sum().item() if raw_input else 0.0
                kl_sum += float((truth.double() - shift + nll).sum())
    n = len(served)
    dim = math.prod(served.shape[1:])
    out: dict[str, Any] = {
        f"{split}_nll": nll_sum / n,
        f"{split}_bpd": bpd_nll_sum / n / (dim * math.log(2)),
        f"n_{split}": n,
    }
    if has_truth:
        out[f"{split}_kl"] = kl_sum / n
    out[f"{split}_nonfinite"] = nonfinite
    if nonfinite:
        out[f"{split}_nonfinite_rows"] = rows
    return out
