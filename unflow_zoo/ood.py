"""Likelihood-based out-of-distribution (outlier) scores of a trained flow.

A flow gives an exact density, so the obvious outlier score is the negative
log-likelihood :math:`-\\log p(x)`. Flows are known to assign *high* likelihood
to some outliers (Nalisnick et al. 2019, "Do deep generative models know what
they don't know?"), so the module also offers the typicality score
:math:`|-\\log p(x) - \\hat H|`, which flags points that are either far less or
far more likely than a typical training point.

- :func:`score`: per-example scores, higher = more outlying;
- :func:`ood_report`: AUROC, AUPR and FPR at 95% TPR of in-distribution vs
  outlier data (torchmetrics; outliers are the positive class), and optionally
  a histogram of the two score distributions;
- :func:`make_outliers`: synthetic outliers (uniform noise, shifted data) for a
  reference data set.

Never imports a family: works on any module with ``log_prob(x)`` (every
FlowModule and every :class:`~unflow_zoo.core.Flow`).

References:
    Nalisnick, Matsukawa, Teh & Lakshminarayanan, "Detecting out-of-distribution
    inputs to deep generative models using typicality", arXiv:1906.02994, 2019.
    Nalisnick, Matsukawa, Teh, Gorur & Lakshminarayanan, "Do deep generative
    models know what they don't know?", ICLR 2019.
    Hendrycks & Gimpel, "A baseline for detecting misclassified and
    out-of-distribution examples in neural networks", ICLR 2017 (AUROC, AUPR,
    FPR at 95% TPR).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryROC

from unflow_zoo.errors import ConfigError, DataError
from unflow_zoo.plots import new_figure

__all__ = ["OUTLIER_KINDS", "SCORE_KINDS", "make_outliers", "ood_metrics", "ood_report", "score"]

SCORE_KINDS = ("likelihood", "typicality")
OUTLIER_KINDS = ("noise", "shift", "invert")


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    ref = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if ref is None and hasattr(model, "buffers"):
        ref = next((b for b in model.buffers() if b.is_floating_point()), None)
    if ref is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return ref.device, ref.dtype


@torch.no_grad()
def _nll(model: Any, x: Tensor, batch_size: int) -> Tensor:
    """``-log p(x)`` per example, in float64 on the CPU, evaluated in eval mode in batches."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if x.ndim < 2:
        raise DataError(f"expected a batch (N, *event_shape), got a tensor of shape {tuple(x.shape)}")
    device, dtype = _model_device_dtype(model)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        out = [-model.log_prob(chunk.to(device, dtype)).double().cpu() for chunk in x.split(batch_size)]
    finally:
        if was_training:
            model.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def score(
    model: Any,
    x: Tensor,
    kind: str = "likelihood",
    *,
    train_nll: float | None = None,
    batch_size: int = 1024,
) -> Tensor:
    r"""Outlier score of every row of ``x``; higher = more outlying.

    - ``likelihood``: :math:`s(x) = -\log p(x)`;
    - ``typicality``: :math:`s(x) = |-\log p(x) - \hat H|` with
      :math:`\hat H` = ``train_nll``, the mean NLL of the training data (an
      estimate of the entropy of the model on typical data). Nalisnick et al.
      test whole batches; this is their test with a batch of one.

    Points outside the model's support get ``+inf``. The model is evaluated in
    eval mode without gradients, in batches of ``batch_size``, on its own device
    and dtype; the scores come back as float64 on the CPU.

    Args:
        model: anything with ``log_prob(x)`` (a FlowModule, a Flow).
        x: ``(N, *event_shape)``.
        kind: ``likelihood`` or ``typicality``.
        train_nll: :math:`\hat H`, required for ``typicality``.
        batch_size: rows per forward pass.

    References:
        Nalisnick, Matsukawa, Teh & Lakshminarayanan, "Detecting
        out-of-distribution inputs to deep generative models using typicality",
        arXiv:1906.02994, 2019.
    """
    if kind not in SCORE_KINDS:
        raise ConfigError(f"unknown score kind {kind!r}; choose one of {list(SCORE_KINDS)}")
    if kind == "typicality" and train_nll is None:
        raise ConfigError(
            "the typicality score needs train_nll, the mean -log p of the training data; "
            "compute it with score(model, train_data).mean()"
        )
    nll = _nll(model, x, batch_size)
    if kind == "likelihood":
        return nll
    return (nll - float(train_nll)).abs()  # type: ignore[arg-type]


def _finite_scores(scores: Tensor) -> Tensor:
    """Replace non-finite scores by finite ones that keep the ranking (for histograms): ``+inf``
    and NaN (a density that could not be evaluated) go above every finite score, ``-inf`` below."""
    s = scores.double()
    finite = s[torch.isfinite(s)]
    hi = float(finite.max()) if finite.numel() else 0.0
    lo = float(finite.min()) if finite.numel() else 0.0
    span = max(hi - lo, 1.0)
    return torch.nan_to_num(s, nan=hi + 2 * span, posinf=hi + span, neginf=lo - span)


def _ranks01(scores: Tensor) -> Tensor:
    """Scores mapped to ``[0, 1]`` by their dense rank, keeping order and ties exactly.

    torchmetrics treats binary predictions outside ``[0, 1]`` as logits and applies a
    sigmoid, which saturates (NLLs of 40 and 60 would tie at 1.0); every metric here
    depends on the ranking only, so ranks lose nothing. NaN ranks with ``+inf``, above
    every finite score (a density that cannot be evaluated is suspicious).
    """
    s = torch.nan_to_num(scores.double(), nan=float("inf"))
    uniq, inverse = torch.unique(s, return_inverse=True)
    return inverse.double() / max(uniq.numel() - 1, 1)


def ood_metrics(in_scores: Tensor, out_scores: Tensor) -> dict[str, float]:
    r"""Detection metrics of scores that should be higher on outliers (the positive class).

    - ``auroc``: area under the ROC curve, :math:`P(s_{out} > s_{in}) + \tfrac12 P(s_{out} = s_{in})`;
    - ``aupr``: average precision with outliers as positives,
      :math:`\sum_k (R_k - R_{k-1}) P_k`;
    - ``fpr95``: the smallest false-positive rate (fraction of in-distribution
      points flagged) among thresholds that flag at least 95% of the outliers.

    All three come from torchmetrics (BinaryAUROC, BinaryAveragePrecision, BinaryROC).

    References:
        Hendrycks & Gimpel, "A baseline for detecting misclassified and
        out-of-distribution examples in neural networks", ICLR 2017.
    """
    in_scores, out_scores = in_scores.reshape(-1), out_scores.reshape(-1)
    if in_scores.numel() == 0 or out_scores.numel() == 0:
        raise DataError(
            f"need at least one in-distribution and one outlier score, got {in_scores.numel()} and {out_scores.numel()}"
        )
    scores = _ranks01(torch.cat([in_scores, out_scores]))
    target = torch.cat(
        [torch.zeros(in_scores.numel(), dtype=torch.long), torch.ones(out_scores.numel(), dtype=torch.long)]
    )
    # thresholds=None: exact curves from every distinct score, not a binned approximation
    auroc = BinaryAUROC(thresholds=None)(scores, target)
    aupr = BinaryAveragePrecision(thresholds=None)(scores, target)
    fpr, tpr, _ = BinaryROC(thresholds=None)(scores, target)
    fpr95 = fpr[tpr >= 0.95 - 1e-12].min()
    return {"auroc": float(auroc), "aupr": float(aupr), "fpr95": float(fpr95)}


def ood_report(
    model: Any,
    in_data: Tensor,
    out_data: Tensor,
    *,
    train_data: Tensor | None = None,
    figure: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """How well the model's scores separate ``in_data`` from ``out_data``.

    Returns ``{"likelihood": {"auroc", "aupr", "fpr95"}}``, plus the same for
    ``"typicality"`` when ``train_data`` is given (its mean NLL is the
    :math:`\\hat H` of :func:`score`). Outliers are the positive class; see
    :func:`ood_metrics` for the definitions. With ``figure``, a histogram of the
    in-distribution and outlier scores (one panel per score kind) is saved
    there (any format matplotlib knows from the suffix).
    """
    if tuple(in_data.shape[1:]) != tuple(out_data.shape[1:]):
        raise DataError(
            f"in_data and out_data must hold events of the same shape, got {tuple(in_data.shape[1:])} "
            f"and {tuple(out_data.shape[1:])}"
        )
    in_nll, out_nll = score(model, in_data), score(model, out_data)
    scores = {"likelihood": (in_nll, out_nll)}
    if train_data is not None:
        train_nll = score(model, train_data)
        finite = train_nll[torch.isfinite(train_nll)]
        if finite.numel() == 0:
            raise DataError("the model gives no training point a finite log-density; cannot estimate H_train")
        h = float(finite.mean())
        scores["typicality"] = ((in_nll - h).abs(), (out_nll - h).abs())
    report = {kind: ood_metrics(s_in, s_out) for kind, (s_in, s_out) in scores.items()}
    if figure is not None:
        _plot_scores(scores, report, Path(figure))
    return report


def _plot_scores(scores: dict[str, tuple[Tensor, Tensor]], report: dict[str, dict[str, float]], path: Path) -> None:
    fig, axes = new_figure((5 * len(scores), 3.5), ncols=len(scores))
    for ax, (kind, (s_in, s_out)) in zip(axes[0], scores.items()):
        both = _finite_scores(torch.cat([s_in, s_out]))
        s_in, s_out = both[: s_in.numel()], both[s_in.numel() :]
        lo, hi = float(both.min()), float(both.max())
        bins = torch.linspace(lo, hi if hi > lo else lo + 1.0, 61).numpy()
        ax.hist(s_in.numpy(), bins=bins, alpha=0.5, density=True, label="in-distribution")
        ax.hist(s_out.numpy(), bins=bins, alpha=0.5, density=True, label="outliers")
        m = report[kind]
        ax.set_title(f"{kind}: AUROC {m['auroc']:.3f}, FPR95 {m['fpr95']:.3f}")
        ax.set_xlabel("-log p(x)" if kind == "likelihood" else "|-log p(x) - H_train|")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def make_outliers(kind: str, reference: Tensor, seed: int = 0) -> Tensor:
    """Synthetic outliers with the shape, dtype and device of ``reference`` ``(N, *event_shape)``.

    - ``noise``: independent uniform noise over the reference's per-feature
      range, :math:`x'_j \\sim U[\\min_n x_{nj}, \\max_n x_{nj}]` (seeded by ``seed``);
    - ``shift``: the reference moved off its support. Images ``(N, C, H, W)``
      are rolled (cyclically) by 3 pixels down and 3 right, which keeps the
      pixel histogram but breaks the spatial structure; vectors ``(N, D)`` get
      2 standard deviations added to every feature,
      :math:`x' = x + 2\\sigma` (per-feature std of the reference);
    - ``invert``: every feature mirrored inside its range,
      :math:`x'_j = \\min_n x_{nj} + \\max_n x_{nj} - x_j` (for images, the
      photographic negative).
    """
    if kind not in OUTLIER_KINDS:
        raise ConfigError(f"unknown outlier kind {kind!r}; choose one of {list(OUTLIER_KINDS)}")
    if reference.ndim < 2 or reference.shape[0] < 2:
        raise DataError(f"reference must be a batch (N, *event_shape) with N >= 2, got shape {tuple(reference.shape)}")
    ref = reference.detach()
    lo, hi = ref.min(dim=0).values, ref.max(dim=0).values
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        u = torch.rand(ref.shape, generator=gen, dtype=torch.float64).to(ref.device, ref.dtype)
        return lo + (hi - lo) * u
    if kind == "invert":
        return lo + hi - ref
    if ref.ndim == 4:
        return torch.roll(ref, shifts=(3, 3), dims=(2, 3))
    if ref.ndim == 2:
        return ref + 2.0 * ref.std(dim=0)
    raise DataError(
        f"'shift' outliers are defined for vectors (N, D) and images (N, C, H, W), got shape {tuple(ref.shape)}"
    )
