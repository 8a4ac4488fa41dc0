"""The model card of a pretrained folder: ``README.md`` with the Hub's YAML metadata and a readable record.

:func:`~unflow_zoo.pretrained.save_pretrained` writes it next to ``config.json`` and
``model.safetensors``, from the very record it writes to ``config.json``: the family, the data
set, the measured metrics and their split, how the flow was trained, the license, and the two
lines that load it. The metadata (``library_name: unflow-zoo``, ``license``, ``tags``,
``datasets``, the ``model-index`` evaluation results) is rendered by huggingface_hub's
:class:`~huggingface_hub.ModelCardData`, so the Hub indexes the card as it does any other.

The card is documentation, not data: it is not among the sha256-checked files (the
registry's ``files`` and config.json's ``weights.sha256`` cover ``config.json`` and the
weights), loading never reads it, and editing it never invalidates a flow.

References:
    Mitchell et al., "Model Cards for Model Reporting", FAT* 2019 (arXiv 1810.03993);
    the Hub's model card specification (huggingface.co/docs/hub/model-cards) and
    huggingface_hub ``ModelCard`` / ``ModelCardData`` / ``EvalResult``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from unflow_zoo.data.images import MNIST_HF_ID
from unflow_zoo.errors import MissingDependencyError
from unflow_zoo.pretrained.format import CONFIG_FILE, WEIGHTS_FILE

__all__ = [
    "CARD_FILE",
    "HF_DATASET_IDS",
    "PLACEHOLDER_LOAD_LINE",
    "card_data",
    "load_line",
    "render_card",
    "write_card",
]

CARD_FILE = "README.md"
# Data set names of the package that are Hugging Face Hub data sets (the card's ``datasets``
# lists Hub ids only; the others are named in the text and in model-index).
HF_DATASET_IDS = {"mnist": MNIST_HF_ID}
TAGS = ("normalizing-flows", "density-estimation", "pytorch", "lightning")
# Common licence identifiers of the Hub (huggingface.co/docs/hub/repositories-licenses); others become
# ``license: other`` with ``license_name``.
_HUB_LICENSES = frozenset(
    {
        "apache-2.0", "mit", "bsd", "bsd-2-clause", "bsd-3-clause", "isc", "unlicense", "cc0-1.0", "cc-by-4.0",
        "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0", "gpl-2.0", "gpl-3.0", "lgpl-3.0",
        "agpl-3.0", "mpl-2.0", "openrail", "other", "unknown",
    }
)  # fmt: skip
# metric suffix -> (model-index metric type, readable name)
_METRICS = {
    "nll": ("nll", "NLL (nats)"),
    "bpd": ("bits-per-dim", "bits/dim"),
    "kl": ("kl-divergence", "KL to the true density (nats)"),
}
_SPLIT_METRIC = re.compile(r"(train|val|test)_(nll|bpd|kl)")
_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
TASK = "density-estimation"


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (a card never shows NaN or a string as a metric)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _text(value: Any, limit: int = 200) -> str:
    """A short, one-line, table-safe rendering of a recorded value."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dataset(config: dict[str, Any]) -> str | None:
    data = config.get("data")
    args = data.get("init_args") if isinstance(data, dict) else None
    name = args.get("dataset") if isinstance(args, dict) else None
    return name if isinstance(name, str) and name else None


def _split_metrics(metrics: dict[str, Any]) -> list[tuple[str, str, float]]:
    """``(split, metric, value)`` for every finite ``<split>_<nll|bpd|kl>`` in ``metrics``, test first."""
    rows = []
    for key, value in metrics.items():
        match = _SPLIT_METRIC.fullmatch(str(key))
        number = _number(value)
        if match and number is not None:
            rows.append((match.group(1), match.group(2), number))
    order = {"test": 0, "val": 1, "train": 2}
    return sorted(rows, key=lambda r: (order[r[0]], list(_METRICS).index(r[1])))


def _model_name(config: dict[str, Any], repo_id: str | None) -> str:
    if repo_id:
        return repo_id.split("/")[-1]
    family, dataset = str(config.get("family", "flow")), _dataset(config)
    return f"{family}-{dataset}" if dataset else family


def _license(config: dict[str, Any]) -> tuple[str, str | None]:
    """``(license id for the Hub, license_name or None)``."""
    raw = str(config.get("license") or "unknown").strip()
    hub = raw.lower()
    return (hub, None) if hub in _HUB_LICENSES else ("other", re.sub(r"[^a-z0-9.-]+", "-", hub).strip("-") or None)


def card_data(config: dict[str, Any], repo_id: str | None = None) -> Any:
    """The card's YAML metadata, as huggingface_hub's ``ModelCardData``.

    Args:
        config: the ``config.json`` record of the flow.
        repo_id: the Hub repo it is (to be) published as; names the model in ``model-index``.

    Returns:
        A :class:`huggingface_hub.ModelCardData`: ``library_name``, ``license``, ``tags``,
        ``datasets`` (Hub data set ids only), and the split metrics as ``model-index`` results.

    Raises:
        MissingDependencyError: huggingface_hub is not installed.
    """
    try:
        from huggingface_hub import EvalResult, ModelCardData
    except ImportError:  # pragma: no cover - a core dependency
        raise MissingDependencyError("model cards need huggingface_hub: pip install huggingface_hub") from None
    family = str(config.get("family", "custom"))
    dataset = _dataset(config)
    hub_dataset = HF_DATASET_IDS.get(dataset or "") or (dataset if dataset and "/" in dataset else None)
    license_id, license_name = _license(config)
    name = _model_name(config, repo_id)
    results = [
        EvalResult(
            task_type=TASK,
            task_name="Density estimation",
            dataset_type=hub_dataset or dataset,
            dataset_name=dataset,
            dataset_split=_SPLIT_NAMES[split],
            metric_type=_METRICS[metric][0],
            metric_name=f"{_SPLIT_NAMES[split]} {_METRICS[metric][1]}",
            metric_value=value,
        )
        for split, metric, value in (_split_metrics(_metrics(config)) if dataset else [])
    ]
    return ModelCardData(
        library_name="unflow-zoo",
        license=license_id,
        license_name=license_name,
        tags=[*TAGS[:2], family, *TAGS[2:]],
        datasets=[hub_dataset] if hub_dataset else None,
        model_name=name if results else None,
        eval_results=results or None,
    )


def _metrics(config: dict[str, Any]) -> dict[str, Any]:
    metrics = config.get("metrics")
    return metrics if isinstance(metrics, dict) else {}


# The load line of a card written before the flow had a repo; push_to_hub fills in the repo id.
PLACEHOLDER_LOAD_LINE = (
    'flow = unflow_zoo.load_pretrained("user/repo")  # the Hub repo this folder is pushed to, or the folder\'s path'
)


def load_line(repo_id: str | None) -> str:
    """The card's line that loads the flow: from ``repo_id``, or the placeholder when it is not known yet.

    Args:
        repo_id: the Hub repo, ``owner/name``, or ``None``.

    Returns:
        One line of Python.
    """
    return f'flow = unflow_zoo.load_pretrained("{repo_id}")' if repo_id else PLACEHOLDER_LOAD_LINE


def _snippet(repo_id: str | None) -> str:
    return (
        "```python\n"
        "import unflow_zoo\n\n"
        f"{load_line(repo_id)}\n"
        "x = flow.sample(1000)       # samples in the data's raw units\n"
        "log_p = flow.log_prob(x)    # log-density (nats), the standardisation included\n"
        "```"
    )


def _training_lines(config: dict[str, Any]) -> list[str]:
    metrics, hparams = _metrics(config), config.get("hparams")
    hparams = hparams if isinstance(hparams, dict) else {}
    lines = []
    dataset = _dataset(config)
    if dataset == "file":
        lines.append("- data: the user's own file (not shipped with the flow)")
    elif dataset:
        hub = HF_DATASET_IDS.get(dataset)
        lines.append(
            f"- data: `{_text(dataset)}`" + (f" ([{hub}](https://huggingface.co/datasets/{hub}))" if hub else "")
        )
    data = config.get("data")
    args = data.get("init_args") if isinstance(data, dict) else None
    if isinstance(args, dict):
        shown = [
            k for k in ("n_samples", "seed", "val_fraction", "test_fraction", "batch_size") if args.get(k) is not None
        ]
        if shown:
            lines.append("- data module: " + ", ".join(f"{k} {_text(args[k])}" for k in shown))
    pre = config.get("preprocessing")
    if isinstance(pre, dict) and pre.get("kind") not in (None, "none"):
        lines.append(f"- preprocessing: {_text(pre['kind'])} (inside the loaded flow: it takes raw data)")
    budget = [f"{k} {_text(metrics[k])}" for k in ("epochs", "steps") if _number(metrics.get(k)) is not None]
    if _number(metrics.get("train_seconds")) is not None:
        budget.append(f"{metrics['train_seconds']:.0f} s")
    if budget:
        lines.append("- training: " + ", ".join(budget))
    if hparams.get("optimizer") is not None:
        opt = [f"`{_text(hparams['optimizer'])}`"]
        opt += [f"{k.replace('_', ' ')} {_text(hparams[k])}" for k in ("lr", "weight_decay") if k in hparams]
        if hparams.get("scheduler") not in (None, "none"):
            opt.append(f"scheduler `{_text(hparams['scheduler'])}`")
        lines.append("- optimizer: " + ", ".join(opt))
    if metrics.get("config"):
        overrides = metrics.get("overrides")
        extra = (
            " with " + ", ".join(f"`{_text(k)}={_text(v)}`" for k, v in overrides.items())
            if isinstance(overrides, dict) and overrides
            else ""
        )
        lines.append(f"- config: `{_text(metrics['config'])}`{extra}")
    if metrics.get("selected_by"):
        lines.append(f"- selected among candidates by {_text(metrics['selected_by'])}")
    return lines


def render_card(config: dict[str, Any], repo_id: str | None = None) -> str:
    """The ``README.md`` of a pretrained flow: YAML front matter and the card's text.

    Deterministic (no dates, no paths): the same record always gives the same card.

    Args:
        config: the ``config.json`` record of the flow.
        repo_id: the Hub repo in the load snippet; ``None`` writes the placeholder ``user/repo``.

    Returns:
        The card's text.
    """
    from huggingface_hub import ModelCard

    family = _text(config.get("family", "custom"))
    name = _model_name(config, repo_id)
    description = _text(config.get("description") or "", limit=2000)
    metrics = _metrics(config)
    parts = [f"# {_text(name)}", ""]
    if description:
        parts += [description, ""]
    parts += [
        (
            f"A normalizing flow of the **{family}** family, for density estimation and sampling, published with "
            f"unflow-zoo {_text(config.get('package_version', '?'))}. The weights are safetensors (never a "
            f"pickle); `{CONFIG_FILE}` holds the hyper-parameters, the data's standardisation and the sha256 of "
            f"`{WEIGHTS_FILE}`, which `load_pretrained` checks before loading anything."
        ),
        "",
        "## Use",
        "",
        _snippet(repo_id),
        "",
    ]
    rows = _split_metrics(metrics)
    if rows:
        parts += ["## Evaluation", "", "| split | metric | value |", "|---|---|---|"]
        parts += [f"| {_SPLIT_NAMES[s]} | {_METRICS[m][1]} | {v:.4f} |" for s, m, v in rows]
        sizes = [f"{_text(metrics[k])} {_SPLIT_NAMES[k[2:]]}" for k in ("n_test", "n_val") if _number(metrics.get(k))]
        held_out = f" (points: {', '.join(sizes)})" if sizes else ""
        parts += ["", f"Measured on the held-out split(s) of the recorded data module{held_out}.", ""]
    training = _training_lines(config)
    if training:
        parts += ["## Training", "", *training, ""]
    license_id, license_name = _license(config)
    parts += ["## License", "", _text(config.get("license") or license_name or license_id), ""]
    card = ModelCard(f"---\n{card_data(config, repo_id).to_yaml()}\n---\n\n" + "\n".join(parts))
    return str(card)


def write_card(folder: str | Path, config: dict[str, Any], repo_id: str | None = None) -> Path:
    """Write :func:`render_card` as ``folder/README.md``.

    Args:
        folder: the pretrained folder.
        config: its ``config.json`` record.
        repo_id: the Hub repo for the load snippet (``None``: a placeholder).

    Returns:
        The card's path.
    """
    path = Path(folder) / CARD_FILE
    path.write_text(render_card(config, repo_id), encoding="utf-8")
    return path
