"""The non-Lightning subcommands of ``unflow-zoo``: pretrained flows, sampling, evaluation, export.

    unflow-zoo pretrained list [--markdown]
    unflow-zoo pretrained info NAME
    unflow-zoo pretrained push FOLDER_OR_NAME REPO_ID [--revision R] [--private]
    unflow-zoo sample --pretrained NAME --n 1000 --out samples.npy|samples.png [--seed 0] [--data.KEY VALUE ...]
    unflow-zoo evaluate --pretrained NAME | --ckpt PATH [--split test] [--data.KEY VALUE ...]
                        [--ood OTHER|noise|shift --ood_figure scores.png]
    unflow-zoo export CKPT OUT
    unflow-zoo study overparam --out DIR [--quick] [--jobs N] [--executor local|slurm|submitit-local]

``evaluate`` measures the NLL (nats) and bits/dim on the split the flow was
trained on (rebuilt from its ``config.json`` or the ckpt's data module
hyper-parameters); ``--data.KEY VALUE`` overrides those of the data module's
arguments it names (typed and checked as :class:`~unflow_zoo.data.DensityDataModule`
declares them, and listed by ``--help``), e.g. ``--data.data_dir DIR`` for where the
data are.
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

from unflow_zoo.errors import ConfigError
from unflow_zoo.pretrained.hub import add_push_arguments, push_command
from unflow_zoo.studies import overparam

__all__ = ["COMMANDS", "run_command"]

COMMANDS = ("pretrained", "sample", "evaluate", "export", "study")


# ----- helpers ---------------------------------------------------------------------------------------
# Why argparse at the top and jsonargparse only for ``--data.*``: the subcommands are plain argparse
# (``study overparam`` adds its options to an argparse parser, and a new subcommand is one
# ``sub.add_parser`` away), while the data module's arguments are jsonargparse's job already: it reads
# DensityDataModule's signature and docstring (as LightningCLI does for ``fit``), so every ``--data.KEY``
# is typed (``0.2`` a float, ``true`` a bool, ``null`` None, a Literal checked against its values) and
# documented without a hand-kept copy. A parse with ``defaults=False`` returns only the keys given, which
# then override the recorded ones; range checks stay where they always were, in DensityDataModule itself
# (and in ``datamodule_args`` for what a file records).
def _data_parser(prog: str) -> Any:
    """The jsonargparse parser of the ``--data.*`` group of a subcommand that loads a flow."""
    from jsonargparse import ArgumentParser

    from unflow_zoo.data import DensityDataModule

    # usage=SUPPRESS: its help is appended to the subcommand's own, whose usage line comes first;
    # exit_on_error=False: its errors are reported by the subcommand's parser, with that usage.
    parser = ArgumentParser(prog=prog, usage=argparse.SUPPRESS, add_help=False, exit_on_error=False)
    parser.add_class_arguments(DensityDataModule, "data", as_group=True, fail_untyped=True)
    group = parser.groups["data"]
    group.title = "data module (--data.KEY VALUE)"
    group.description = (
        "Override the arguments of the DensityDataModule the flow records (only the keys given; the others "
        "keep their recorded values; the defaults below apply where nothing is recorded). Where the data are "
        "and whether to download them are always yours to choose: data_dir, path, download, num_workers."
    )
    return parser


def _data_overrides(extra: list[str], command: argparse.ArgumentParser) -> dict[str, Any]:
    """``--data.KEY VALUE`` / ``--data.KEY=VALUE`` arguments to ``{KEY: value}``, typed by jsonargparse.

    Args:
        extra: the arguments the subcommand's argparse parser did not recognise.
        command: that parser, which reports errors (with its usage).

    Returns:
        The keys given and their values; ``{}`` when none.

    Raises:
        SystemExit: an unknown argument or key, or a value of the wrong type (status 2, after
            printing which one and what was expected).
    """
    if not extra:
        return {}
    from jsonargparse import ArgumentError

    try:
        namespace = _data_parser(command.prog).parse_args(extra, defaults=False)
    except ArgumentError as e:
        command.error(f"{' '.join(str(e).split())}; see --help for the --data.KEY arguments")
    return dict(namespace.as_dict().get("data") or {})


class _CommandParser(argparse.ArgumentParser):
    """An argparse (sub)command parser that can take the typed ``--data.*`` group.

    ``takes_data`` is set by :func:`_data_args`; ``--help`` then also lists every ``--data.KEY``
    (built only when asked for, so ``pretrained list`` never introspects the data module).
    """

    takes_data = False

    def format_help(self) -> str:
        text = super().format_help()
        return text + "\n" + _data_parser(self.prog).format_help() if self.takes_data else text


def _data_args(p: _CommandParser) -> None:
    """Let subcommand ``p`` take ``--data.KEY VALUE`` overrides (parsed by :func:`_data_overrides`)."""
    p.takes_data = True
    p.set_defaults(data_overrides={}, data_command=p)


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
    context = _parse_context(args.context, model)
    torch.manual_seed(args.seed)
    samples = model.sample(args.n, context, temperature=args.temperature)
    out.parent.mkdir(parents=True, exist_ok=True)
    is_image = bool(getattr(dm, "is_image", False))
    if context is not None and out.suffix == ".png" and not is_image:
        from unflow_zoo.plots import plot_conditional_density

        data, data_context = _conditional_data(model, dm)
        contexts = context.reshape(-1, context.shape[-1]).cpu()
        torch.manual_seed(args.seed)
        fig = plot_conditional_density(
            model, data, data_context, contexts, n_samples=args.n, title=args.pretrained or str(args.ckpt)
        )
        fig.savefig(out, dpi=110)
        print(f"wrote p(x | c) for {len(contexts)} contexts to {out}")
        return samples
    if context is not None and is_image:
        samples = samples.reshape(-1, *samples.shape[samples.ndim - len(model.event_shape) :])
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


def _parse_context(spec: str | None, model: Any) -> Tensor | None:
    """``--context``: a JSON row ``[1, 0, 0, 0]`` or list of rows, or a ``.npy`` file of rows
    (read without pickle), as a tensor in the model's dtype; None without."""
    if spec is None:
        return None
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if spec.endswith(".npy"):
        import numpy as np

        try:
            values = np.load(spec, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--context {spec}: not a readable .npy array of numbers ({e})") from None
    else:
        try:
            values = json.loads(spec)
        except json.JSONDecodeError:
            raise ConfigError(
                f"--context {spec!r}: give a JSON row such as '[1, 0, 0, 0]', a list of rows, or a .npy file"
            ) from None
    try:
        context = torch.as_tensor(values, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"--context {spec!r}: expected numbers, a row or a list of rows of equal length") from None
    if context.ndim not in (1, 2):
        raise ConfigError(f"--context must be one row (C,) or rows (B, C), got shape {tuple(context.shape)}")
    return context


def _conditional_data(model: Any, dm: Any) -> tuple[Tensor, Tensor]:
    """Raw points and their contexts of the recorded split, for the figure (empty without a data module)."""
    if dm is None or not getattr(dm, "context_features", 0):
        width = int(model.hparams.get("context_features", 0))
        return torch.zeros(0, *model.event_shape), torch.zeros(0, width)
    dm.setup("test")
    use_test = dm.test_data is not None and len(dm.test_data)
    served, context = (dm.test_data, dm.test_context) if use_test else (dm.train_data, dm.train_context)
    return _raw(model, dm, served), context


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
def _source_args(p: _CommandParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", metavar="NAME", help="a pretrained name, folder, .zip, URL or hf://user/repo")
    src.add_argument("--ckpt", metavar="PATH", help="a Lightning .ckpt (read with weights_only=True)")
    p.add_argument("--family", default=None, help="the ckpt's family when it does not name its class")
    p.add_argument("--cache_dir", default=None, help="cache folder (default $UNFLOW_ZOO_CACHE or ~/.cache/unflow_zoo)")
    p.add_argument("--offline", action="store_true", help="never use the network")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and synthetic outliers")
    _data_args(p)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`; a subcommand that loads a flow takes ``--data.*`` too.

    Returns:
        An argparse parser whose subcommands set ``func`` (what to run) and, where they take
        ``--data.KEY VALUE`` overrides, ``data_overrides`` (filled in by :func:`run_command`).
    """
    parser = _CommandParser(prog="unflow-zoo", description="pretrained flows: list, sample, evaluate, export")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    p = sub.add_parser("pretrained", help="list the published flows, show one, or push one to the Hugging Face Hub")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="the published flows")
    q.add_argument("--markdown", action="store_true", help="list as the README's markdown table")
    q.set_defaults(func=cmd_pretrained, name=None)
    q = actions.add_parser("info", help="one flow's registry entry")
    q.add_argument("name", nargs="?", help="the name")
    q.set_defaults(func=cmd_pretrained, markdown=False)
    q = actions.add_parser("push", help="upload a folder, .zip or name to its own Hugging Face Hub repo")
    add_push_arguments(q)
    q.set_defaults(func=push_command)

    p = sub.add_parser("sample", help="draw samples: .npy array or .png figure")
    _source_args(p)
    p.add_argument("--n", type=int, default=1000, help="number of samples")
    p.add_argument("--out", required=True, help="file.npy (the samples, raw units) or file.png (a figure)")
    p.add_argument(
        "--context",
        default=None,
        help="conditional flows: a JSON row '[1, 0, 0, 0]', a list of rows, or a .npy file of rows; "
        "samples are (n, B, D) for B rows, and the .png shows p(x | c) for each row",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the base draw (1: the model)")
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
    """Run ``unflow-zoo <command> ...`` for a command in :data:`COMMANDS`.

    Args:
        argv: the arguments after ``unflow-zoo``.

    Returns:
        What the command computed (the samples, the metrics, the exported path, ...).

    Raises:
        SystemExit: bad arguments (status 2, with the usage), or a command's own refusal.
    """
    parser = build_parser()
    # argparse leaves what it does not know (the --data.* arguments, with their values) in `extra`.
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "data_overrides"):
        args.data_overrides = _data_overrides(extra, args.data_command)
    elif extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    if getattr(args, "ood_figure", None) and not args.ood:
        parser.error("--ood_figure needs --ood")
    return args.func(args)
