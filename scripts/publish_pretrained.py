"""Train, evaluate and publish the zoo's pretrained flows.

For each entry of :data:`SPECS` this trains the entry's config through
:class:`~unflow_zoo.cli.FlowCLI` (exactly ``unflow-zoo fit --config ...`` with the
entry's overrides), measures the NLL on the held-out test split in raw data
units (the standardisation travels inside the flow), writes
``unflow_zoo/pretrained/checkpoints/<name>/`` (``config.json``, ``model.safetensors`` and
the model card ``README.md``) and updates ``registry.json`` with the sha256 of ``config.json``
and the weights (the card is documentation, not hashed). An entry with several candidate
configs trains each and keeps the one with the lowest *validation* NLL (selecting on the
test split would bias the published test number); every candidate's numbers are recorded.

Usage::

    python scripts/publish_pretrained.py                       # every entry (hours on a CPU: see SPECS)
    python scripts/publish_pretrained.py --only nsf-moons      # one entry
    python scripts/publish_pretrained.py --quick --out /tmp/pt --only constrained-mog1d   # smoke run
    python scripts/publish_pretrained.py --only nsf-moons --push user/nsf-moons   # also upload it to the Hub
    python scripts/publish_pretrained.py --reindex --push user/unflow-zoo-{name}  # upload every folder, no training

Adding a flow is one :class:`Spec` line in :data:`SPECS`. ``--push`` uploads each flow to its own
Hugging Face Hub repo through :func:`unflow_zoo.pretrained.push_to_hub` (one flow per repo: with
several flows, the repo id holds ``{name}``).

References:
    timm's ``push_to_hf_hub`` and torchvision's weight tables: checkpoints published
    with their configuration, provenance and measured accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from unflow_zoo.pretrained.format import CONFIG_FILE, WEIGHTS_FILE, sha256_of
from unflow_zoo.pretrained.registry import CHECKPOINTS_DIR, REGISTRY_FILE
from unflow_zoo.pretrained.resolve import hub_repo_id

# Each FlowCLI run: no logger, no checkpoint files, no figure, no extra test pass (we measure ourselves).
_QUIET = {
    "trainer.logger": "false",
    "trainer.enable_checkpointing": "false",
    "trainer.enable_progress_bar": "false",
    "trainer.enable_model_summary": "false",
    "trainer.accelerator": "cpu",
    "trainer.devices": "1",
    "plot.enabled": "false",
    "test_after_fit": "false",
}
_QUICK = {"trainer.max_epochs": "1", "trainer.limit_train_batches": "3", "trainer.limit_val_batches": "1"}


@dataclass(frozen=True)
class Spec:
    """One published flow: ``name``, candidate ``configs`` (paths under the repository root),
    a one-line ``description`` and CLI ``overrides`` (``{"trainer.max_epochs": 5}``)."""

    name: str
    configs: tuple[str, ...]
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _config_epochs(config: str) -> int:
    """``trainer.max_epochs`` of the config ``config`` (a path under the repository root)."""
    import yaml

    return int(yaml.safe_load((ROOT / config).read_text())["trainer"]["max_epochs"])


def _seed_paper(family: str, data: str) -> Spec:
    """The config's own full budget, no overrides: the published flow is the config's run."""
    config = f"configs/{family}/{data}.yaml"
    return Spec(
        f"{family}-{data}",
        (config,),
        f"{family} flow on the seed paper's {data} data (Shah, Deshpande & Goyal 2022): the paper's setup, "
        f"full budget of the config ({_config_epochs(config)} epochs)",
    )


def _toy(data: str, epochs: int, families: tuple[str, ...] = ("nsf", "maf", "realnvp")) -> Spec:
    which = f"best of {'/'.join(families)} by validation NLL" if len(families) > 1 else families[0]
    return Spec(
        f"best-{data}" if len(families) > 1 else f"{families[0]}-{data}",
        tuple(f"configs/{f}/{data}.yaml" for f in families),
        f"{which} on {data}, {epochs} of the config's 40 epochs",
        {"trainer.max_epochs": epochs},
    )


# The seed-paper entries train their configs' full budgets (200 epochs constrained, 100 unconstrained,
# batch 32): the unconstrained ones (width 6400, 50 quadrature nodes, one network per coordinate for
# grid and mog5d) take hours on a CPU; publish them with --only on a machine that can spare it.
SPECS: list[Spec] = [
    *(_seed_paper(f, d) for f in ("constrained", "unconstrained") for d in ("mog1d", "beta1d", "grid", "mog5d")),
    # nsf had the smallest gap on every toy in docs/toys.md; trained for its full config
    *(_toy(d, 40, ("nsf",)) for d in ("moons", "8gaussians", "checkerboard")),
    Spec(
        "realnvp-digits",
        ("configs/realnvp/digits.yaml",),
        "RealNVP on scikit-learn's 8x8 digits (flattened, dequantised, logit alpha 0.05); bits/dim in pixel space",
    ),
]


def _cli_args(config: str, overrides: dict[str, Any], root_dir: str) -> list[str]:
    args = ["fit", "--config", str(ROOT / config), "--trainer.default_root_dir", root_dir]
    for key, value in {**_QUIET, **overrides}.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def train_and_measure(config: str, overrides: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Fit ``config`` with ``overrides``; return ``(raw-data model, data module, metrics)``.

    The trained module goes through save -> load, so the published numbers are those
    of the very module a user loads (float32 standardisation included).
    """
    import torch

    from unflow_zoo.cli import FlowCLI
    from unflow_zoo.data import DensityDataModule
    from unflow_zoo.models import FlowModule
    from unflow_zoo.pretrained.evaluation import evaluate_split
    from unflow_zoo.pretrained.serialization import load_folder, save_pretrained

    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both args= and sys.argv carry flags
    with tempfile.TemporaryDirectory(prefix="unflow_zoo_publish_") as tmp:
        start = time.perf_counter()
        try:
            cli = FlowCLI(
                FlowModule,
                DensityDataModule,
                subclass_mode_model=True,
                args=_cli_args(config, overrides, tmp),
                save_config_callback=None,
                auto_configure_optimizers=False,
            )
        finally:
            sys.argv = argv
        seconds = time.perf_counter() - start
        model, dm = cli.model.cpu().eval(), cli.datamodule
        save_pretrained(model, Path(tmp) / "m", datamodule=dm)
        loaded = load_folder(Path(tmp) / "m")
    with torch.no_grad():
        metrics: dict[str, Any] = evaluate_split(loaded, dm, "test")
        if dm.val_data is not None and len(dm.val_data) > 0:
            metrics.update(evaluate_split(loaded, dm, "val"))
    metrics.update(
        train_seconds=round(seconds, 1),
        epochs=int(cli.trainer.current_epoch),
        steps=int(cli.trainer.global_step),
        config=config,
        overrides={k: v for k, v in overrides.items()},
    )
    return loaded, dm, metrics


def publish(spec: Spec, out: Path, quick: bool = False) -> dict[str, Any]:
    """Train ``spec``'s candidates, write the best to ``out/<name>/``; return its registry entry."""
    from unflow_zoo.pretrained.serialization import save_pretrained

    overrides = {**spec.overrides, **(_QUICK if quick else {})}
    runs = []
    for config in spec.configs:
        model, dm, metrics = train_and_measure(config, overrides)
        print(f"{spec.name}: {config}: {json.dumps({k: v for k, v in metrics.items() if k != 'overrides'})}")
        runs.append((model, dm, metrics))
    key = "val_nll" if all("val_nll" in r[2] for r in runs) else "test_nll"
    model, dm, metrics = min(runs, key=lambda r: r[2][key] if math.isfinite(r[2][key]) else math.inf)
    if len(runs) > 1:
        metrics["selected_by"] = key
        metrics["candidates"] = {r[2]["config"]: {k: r[2].get(k) for k in ("val_nll", "test_nll")} for r in runs}
    description = spec.description + (" (quick smoke run, not a real checkpoint)" if quick else "")
    if len(runs) > 1:
        description += f": {model.registry_name}"
    folder = out / spec.name
    if folder.exists():
        shutil.rmtree(folder)
    save_pretrained(model, folder, datamodule=dm, metrics=metrics, description=description)
    return registry_entry(folder)


def registry_entry(folder: Path) -> dict[str, Any]:
    """The registry entry of a published folder, from its ``config.json`` and the files' sha256."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    metrics = config.get("metrics", {})
    return {
        "family": config["family"],
        "dataset": ((config.get("data") or {}).get("init_args") or {}).get("dataset"),
        "description": config.get("description", ""),
        "license": config.get("license", "MIT"),
        "metrics": {k: metrics[k] for k in ("test_nll", "test_bpd", "test_kl", "n_test") if k in metrics},
        "files": {name: sha256_of(folder / name) for name in (CONFIG_FILE, WEIGHTS_FILE)},
    }


def update_registry(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {"format_version": 1, "flows": {}}
    data.setdefault("flows", {}).update(entries)
    data["flows"] = dict(sorted(data["flows"].items()))
    path.write_text(json.dumps(data, indent=2) + "\n")


def push_folders(
    target: str, folders: list[Path], *, revision: str | None = None, private: bool | None = None
) -> dict[str, Any]:
    """Upload each folder to its own Hub repo, ``target`` with ``{name}`` replaced by the folder's name.

    Args:
        target: ``owner/name`` or ``hf://owner/name``, holding ``{name}`` when there are several folders.
        folders: pretrained folders (``<out>/<name>/``).
        revision: the branch to commit to (default ``main``).
        private: create new repos private.

    Returns:
        ``repo id -> CommitInfo`` of each upload.
    """
    from unflow_zoo.pretrained.hub import push_to_hub

    if "{name}" not in target and len(folders) > 1:
        raise SystemExit(
            f"--push {target}: one flow per repo, so with {len(folders)} flows put {{name}} in the repo id"
        )
    pushed = {}
    for folder in folders:
        repo_id = target.removeprefix("hf://").replace("{name}", folder.name)
        pushed[repo_id] = push_to_hub(folder, repo_id, revision=revision, private=private)
        print(f"pushed {folder} to https://huggingface.co/{repo_id}")
    return pushed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="publish only these entries")
    parser.add_argument("--out", type=Path, default=CHECKPOINTS_DIR, help="folder for <name>/ (default: packaged)")
    parser.add_argument(
        "--registry", type=Path, default=None, help="registry.json to update (default: the packaged one, or OUT's)"
    )
    parser.add_argument("--quick", action="store_true", help="1 epoch of 3 batches: a smoke run for the tests")
    parser.add_argument(
        "--push",
        metavar="USER/REPO",
        help="also upload each flow to its own Hub repo (user/repo or hf://user/repo; {name}: the flow's name)",
    )
    parser.add_argument("--revision", default=None, help="with --push: the branch to commit to (default main)")
    parser.add_argument("--private", action="store_true", default=None, help="with --push: create new repos private")
    parser.add_argument("--list", action="store_true", help="print the entries and exit")
    parser.add_argument(
        "--reindex", action="store_true", help="rebuild the registry from the folders in OUT (no training) and exit"
    )
    args = parser.parse_args(argv)
    if args.push is not None and hub_repo_id(args.push.removeprefix("hf://").replace("{name}", "x")) is None:
        parser.error(f"--push takes a Hub repo id user/repo (or hf://user/repo, {{name}} allowed), got {args.push!r}")
    names = [s.name for s in SPECS]
    for name in args.only or []:
        if name not in names:
            parser.error(f"unknown entry {name!r}; entries: {', '.join(names)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    import torch

    args = parse_args(argv)
    if args.list:
        for s in SPECS:
            print(f"{s.name:28s} {', '.join(s.configs)}  {s.overrides}")
        return {}
    torch.set_num_threads(1)  # small models: one thread is as fast, and friendlier to a shared machine
    out: Path = args.out
    registry = args.registry or (REGISTRY_FILE if out.resolve() == CHECKPOINTS_DIR.resolve() else out / "registry.json")
    out.mkdir(parents=True, exist_ok=True)
    if args.reindex:
        entries = {p.name: registry_entry(p) for p in sorted(out.iterdir()) if (p / CONFIG_FILE).is_file()}
        registry.write_text(json.dumps({"format_version": 1, "flows": entries}, indent=2) + "\n")
        print(f"registry {registry}: {len(entries)} flows")
        if args.push:
            names = [n for n in entries if not args.only or n in args.only]
            push_folders(args.push, [out / n for n in names], revision=args.revision, private=args.private)
        return entries
    selected = [spec for spec in SPECS if not args.only or spec.name in args.only]
    if args.push and "{name}" not in args.push and len(selected) > 1:  # before hours of training, not after
        raise SystemExit(f"--push {args.push}: one flow per repo, so with {len(selected)} flows put {{name}} in it")
    entries: dict[str, dict[str, Any]] = {}
    for spec in selected:
        entries[spec.name] = publish(spec, out, quick=args.quick)
        update_registry(registry, {spec.name: entries[spec.name]})  # after each: a crash keeps what is done
    total = sum((out / n / f).stat().st_size for n in entries for f in (CONFIG_FILE, WEIGHTS_FILE))
    print(f"wrote {len(entries)} flows to {out} ({total / 1e6:.2f} MB), registry {registry}")
    if args.push:
        push_folders(args.push, [out / n for n in entries], revision=args.revision, private=args.private)
    return entries


if __name__ == "__main__":
    main()
