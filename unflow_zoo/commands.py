"""The non-Lightning subcommands of ``unflow-zoo``: pretrained flows, sampling, evaluation, export.

    unflow-zoo pretrained list [--markdown]
    unflow-zoo pretrained info NAME
    unflow-zoo sample --pretrained NAME --n 1000 --out samples.npy|samples.png [--seed 0]
    unflow-zoo evaluate --pretrained NAME | --ckpt PATH [--split test] [--data.dataset X ...]
                        [--ood OTHER|noise|shift --ood_figure scores.png]
    unflow-zoo export CKPT OUT
    unflow-zoo study overparam --out DIR [--quick] [--jobs N] [--executor local|slurm|submitit-local]

``evaluate`` measures the NLL (nats) and bits/dim on the split the flow was
trained on (rebuilt from its ``config.json`` or the ckpt's data module
hyper-parameters); ``--data.KEY VALUE`` overrides the data module's arguments.
Bits/dim are in the data's own units: raw units for standardised tabular data
(the standardisation is inside the loaded flow), pixels for images (via the data
module's ``pixel_log_det``, as :class:`~unflow_zoo.models.FlowModule` reports them).

References:
    Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unflow_zoo.studies import overparam

__all__ = ["COMMANDS", "run_command"]

COMMANDS = ("pretrained", "sample", "evaluate", "export", "study")


# ----- helpers ---------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    """A command-line value as YAML reads it (``true``, ``0.1``, ``null``, ``[1, 2]``), else the string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _data_overrides(extra: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``--data.KEY VALUE`` / ``--data.KEY=VALUE`` pairs to ``{KEY: value}``; anything else is an error."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--data."):
            parser.error(f"unrecognised argument {arg!r}; data module arguments are given as --data.KEY VALUE")
        key, eq, value = arg[len("--data.") :].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                parser.error(f"{arg} needs a value")
            value = extra[i + 1]
            i += 1
        out[key] = _parse_value(value)
        i += 1
    return out


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(model, data module or None)`` from ``--pretrained`` or ``--ckpt``, data overrides applied."""
    from unflow_zoo.pretrained import load_pretrained, rebuild_datamodule
    from unflow_zoo.pretrained.convert import model_from_checkpoint
    from unflow_zoo.pretrained.preprocessing import attach_standardization
    from unflow_zoo.pretrained.serialization import CALLER_CHOSEN, data_record, datamodule_args

    overrides = getattr(args, "data_overrides", {})
    if args.pretrained is not None:
        model = load_pretrained(args.pretrained, cache_dir=args.cache_dir, offline=args.offline)
        dm = rebuild_datamodule(model.pretrained_config, **overrides)
        if dm is None and overrides.get("dataset"):
            from unflow_zoo.data import DensityDataModule

            dm = DensityDataModule(**overrides)
        return model, dm
    model, ckpt = model_from_checkpoint(args.ckpt, getattr(args, "family", None))
    from unflow_zoo.data import DensityDataModule

    recorded = {k: v for k, v in dict(ckpt.get("datamodule_hyper_parameters") or {}).items() if k[:1] != "_"}
    dm_hparams = datamodule_args(recorded, str(args.ckpt))
    dm = DensityDataModule(**{**dm_hparams, **overrides}) if dm_hparams or overrides else None
    if dm_hparams:
        # The standardisation the model was trained with is that of the ckpt's own data module
        # (read from where the caller says the data are).
        where = {k: v for k, v in overrides.items() if k in CALLER_CHOSEN}
        _, pre = data_record(DensityDataModule(**{**dm_hparams, **where}))
        if pre["kind"] == "standardize":
            attach_standardization(model, pre["mean"], pre["std"])
    return model, dm


def _raw(model: Any, dm: Any, x: Tensor) -> Tensor:
    """Served points ``x`` as the model takes them: raw units when it carries a standardisation."""
    from unflow_zoo.pretrained.preprocessing import RawDataFlow

    return dm.transform_to_raw(x) if isinstance(model.flow, RawDataFlow) else x


def _fmt(metrics: dict[str, Any]) -> str:
    """One line per metric, ``inf``/``nan`` included; ``{split}_nonfinite`` (shown when above zero)
    names the first rows whose log-density is not finite."""
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict) or key.endswith("_nonfinite_rows"):
            continue
        unit = " nats" if key.endswith(("_nll", "_kl")) else " bits/dim" if key.endswith("_bpd") else ""
        split = key.removeprefix("recorded_").split("_", 1)[0]
        bad = metrics.get(f"{split}_nonfinite", 0) if not key.startswith("recorded_") else 0
        if key.endswith("_nonfinite"):
            if value:
                rows = ", ".join(map(str, metrics.get(f"{split}_nonfinite_rows", [])))
                more = ", ..." if value > len(metrics.get(f"{split}_nonfinite_rows", [])) else ""
                lines.append(f"{key:16s} {value} rows with a non-finite log-density (rows {rows}{more})")
        elif isinstance(value, float) and math.isfinite(value):
            lines.append(f"{key:16s} {value:.6f}{unit}")
        elif isinstance(value, float):
            lines.append(f"{key:16s} {value}{unit}" + (f" ({bad} non-finite rows)" if bad else ""))
        else:
            lines.append(f"{key:16s} {value}")
    return "\n".join(lines)


# ----- pretrained ------------------------------------------------------------------------------------
def cmd_pretrained(args: argparse.Namespace) -> Any:
    from unflow_zoo.pretrained import list_pretrained, markdown_table, pretrained_info

    if args.action == "info":
        if not args.name:
            raise SystemExit("unflow-zoo pretrained info NAME: give a name (see `unflow-zoo pretrained list`)")
        info = pretrained_info(args.name)
        print(json.dumps(info, indent=2))
        return info
    if args.markdown:
        print(markdown_table())
        return list_pretrained()
    rows = [("name", "family", "data set", "test NLL", "description")]
    for name in list_pretrained():
        e = pretrained_info(name)
        nll = e.get("metrics", {}).get("test_nll")
        rows.append((name, e.get("family", "?"), str(e.get("dataset", "?")), f"{nll:.4f}" if nll is not None else "–",
                     e.get("description", "")))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return list_pretrained()


# ----- sample ---------------------------------------------------------------------------------------
def _image_grid(pixels: Tensor, levels: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(pixels.shape[0], 64)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = pixels[k].permute(1, 2, 0).squeeze(-1).clamp(0, levels - 1).numpy() / (levels - 1)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def cmd_sample(args: argparse.Namespace) -> Tensor:
    if args.n < 1:
        raise SystemExit(f"--n must be a positive int, got {args.n}")
    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise SystemExit(f"--out must end in .npy (the samples) or .png (a figure), got {out}")
    model, dm = _load(args)
    torch.manual_seed(args.seed)
    samples = model.sample(args.n)
    out.parent.mkdir(parents=True, exist_ok=True)
    is_image = bool(getattr(dm, "is_image", False))
    if out.suffix == ".npy":
        import numpy as np

        np.save(out, samples.cpu().numpy())
    elif is_image:
        from unflow_zoo.data.images import IMAGE_DATASETS

        spec = IMAGE_DATASETS[dm.hparams.dataset]
        pixels = dm.transform_to_raw(samples).reshape(args.n, *spec.shape)
        _image_grid(pixels.cpu(), spec.levels, out)
    else:
        import matplotlib.pyplot as plt

        from unflow_zoo.plots import plot_density

        data = samples
        if dm is not None:
            dm.setup("test")
            served = dm.test_data if dm.test_data is not None and len(dm.test_data) else dm.train_data
            data = _raw(model, dm, served)
        torch.manual_seed(args.seed)
        fig = plot_density(model, data, n_samples=args.n, title=args.pretrained or str(args.ckpt))
        fig.savefig(out, dpi=110)
        plt.close(fig)
    print(f"wrote {args.n} samples of shape {tuple(samples.shape[1:])} to {out}")
    return samples


# ----- evaluate -------------------------------------------------------------------------------------
def _ood_data(model: Any, dm: Any, other: str, in_raw: Tensor, seed: int) -> Tensor:
    from unflow_zoo.ood import OUTLIER_KINDS, make_outliers

    if other in OUTLIER_KINDS:
        return make_outliers(other, in_raw, seed=seed)
    from unflow_zoo.data import DensityDataModule

    args = {k: v for k, v in dict(dm.hparams).items() if k[:1] != "_"}
    # The other data set in its own raw units: no standardisation of its own.
    other_dm = DensityDataModule(**{**args, "dataset": other, "path": None, "standardize": False, "scaling": None})
    other_dm.setup("test")
    data = other_dm.test_data
    if tuple(data.shape[1:]) != tuple(in_raw.shape[1:]):
        raise SystemExit(
            f"--ood {other}: its points have shape {tuple(data.shape[1:])}, the flow's {tuple(in_raw.shape[1:])}"
        )
    # Tabular: raw points, as the flow takes them. Images: served the same way as the flow's own.
    return data


@torch.no_grad()
def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from unflow_zoo.pretrained import evaluate_split
    from unflow_zoo.pretrained.evaluation import split_data

    model, dm = _load(args)
    if dm is None:
        raise SystemExit(
            "this flow records no data module; name one with --data.dataset NAME (and other --data.KEY VALUE)"
        )
    metrics: dict[str, Any] = evaluate_split(model, dm, args.split)
    recorded = getattr(model, "pretrained_config", {}).get("metrics", {})
    if not args.data_overrides and f"{args.split}_nll" in recorded:
        metrics[f"recorded_{args.split}_nll"] = recorded[f"{args.split}_nll"]
    print(_fmt(metrics))
    if args.ood:
        from unflow_zoo.ood import ood_report

        in_raw = _raw(model, dm, split_data(dm, args.split))
        train_raw = _raw(model, dm, split_data(dm, "train"))
        out_raw = _ood_data(model, dm, args.ood, in_raw, args.seed)
        report = ood_report(model, in_raw, out_raw, train_data=train_raw, figure=args.ood_figure)
        for kind, values in report.items():
            print(f"ood vs {args.ood} ({kind}): " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
        metrics["ood"] = report
    return metrics


# ----- export ---------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> Path:
    from unflow_zoo.pretrained import export_checkpoint

    out = export_checkpoint(args.ckpt, args.out, family=args.family, description=args.description)
    print(f"wrote {out}")
    return out


# ----- parser ---------------------------------------------------------------------------------------
def _source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", metavar="NAME", help="a pretrained name, folder, .zip, URL or hf://user/repo")
    src.add_argument("--ckpt", metavar="PATH", help="a Lightning .ckpt (read with weights_only=True)")
    p.add_argument("--family", default=None, help="the ckpt's family when it does not name its class")
    p.add_argument("--cache_dir", default=None, help="cache folder (default $UNFLOW_ZOO_CACHE or ~/.cache/unflow_zoo)")
    p.add_argument("--offline", action="store_true", help="never use the network")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and synthetic outliers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unflow-zoo", description="pretrained flows: list, sample, evaluate, export")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrained", help="list the published flows or show one")
    p.add_argument("action", choices=("list", "info"))
    p.add_argument("name", nargs="?", help="for info: the name")
    p.add_argument("--markdown", action="store_true", help="list as the README's markdown table")
    p.set_defaults(func=cmd_pretrained)

    p = sub.add_parser("sample", help="draw samples: .npy array or .png figure")
    _source_args(p)
    p.add_argument("--n", type=int, default=1000, help="number of samples")
    p.add_argument("--out", required=True, help="file.npy (the samples, raw units) or file.png (a figure)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="NLL and bits/dim on the recorded split; --data.KEY VALUE overrides")
    _source_args(p)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--ood", default=None, help="outlier scores against a data set name, or noise / shift")
    p.add_argument("--ood_figure", default=None, help="save the histogram of outlier scores here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="convert a Lightning .ckpt into a pretrained folder (or .zip)")
    p.add_argument("ckpt", help="the .ckpt (read with weights_only=True: pickled code is refused)")
    p.add_argument("out", help="the folder, or a path ending in .zip")
    p.add_argument("--family", default=None, help="the family when the ckpt does not name its class")
    p.add_argument("--description", default="", help="one line for the listing")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("study", help="the package's experiments: `study overparam` (the seed paper's width sweep)")
    studies = p.add_subparsers(dest="study", required=True)
    q = studies.add_parser("overparam", help="constrained vs unconstrained flows as the width grows (resumable)")
    overparam.add_arguments(q)
    q.set_defaults(func=overparam.main)
    return parser


def run_command(argv: list[str]) -> Any:
    """Run ``unflow-zoo <command> ...`` for a command in :data:`COMMANDS`; returns what it computed."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "evaluate":
        args.data_overrides = _data_overrides(extra, parser)
    elif extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    if getattr(args, "ood_figure", None) and not args.ood:
        parser.error("--ood_figure needs --ood")
    return args.func(args)
