"""Every family on scikit-learn's 8x8 digits, side by side with zuko's MAF and NSF.

Each family runs its shipped ``configs/<family>/digits.yaml`` through
``unflow-zoo fit`` (as a user would) and reports test bits/dim in pixel space
(17 levels; dequantised; logit alpha 0.05; every preprocessing log-det
accounted). zuko's MAF and NSF train on the very same served data (the same
DensityDataModule split, batch size, learning rate, epochs and layer sizes as
our ``maf`` and ``nsf`` digits configs) with a plain Adam loop, and are scored
with the same pixel-space accounting.

Usage::

    python scripts/benchmarks/digits.py --write          # every family + zuko (tens of minutes)
    python scripts/benchmarks/digits.py --quick          # 1 family, a few batches (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import yaml

from benchmarks.harness import machine, run_cli, write_section

OUT = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "digits.json"  # every row measured so far; a partial rerun updates its own rows
# Continuous flows solve an ODE per step: their run is cut to this many epochs (said in the table).
EPOCH_CAP = {"ffjord": 10}


def digits_configs() -> dict[str, Path]:
    return {p.parent.name: p for p in sorted((ROOT / "configs").glob("*/digits.yaml"))}


def run_family(family: str, config: Path, quick: bool) -> dict[str, Any]:
    overrides: list[str] = []
    epochs = yaml.safe_load(config.read_text())["trainer"].get("max_epochs")
    if quick:
        overrides = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"]
        epochs = 1
    elif family in EPOCH_CAP:
        epochs = EPOCH_CAP[family]
        overrides = ["--trainer.max_epochs", str(epochs)]
    r = run_cli(config, overrides, require="test_bpd")
    return {"model": f"unflow-zoo {family}", "epochs": epochs, **r}


def run_zuko(kind: str, config: Path, quick: bool) -> dict[str, Any]:
    """zuko's ``MAF`` or ``NSF`` with the sizes and training budget of our ``config``."""
    import torch
    import zuko

    from unflow_zoo.data import DensityDataModule

    torch.set_num_threads(1)  # as our runs (OMP_NUM_THREADS=1 in run_cli)
    cfg = yaml.safe_load(config.read_text())
    hp, data = cfg["model"]["init_args"], cfg["data"]
    epochs = 1 if quick else cfg["trainer"]["max_epochs"]
    torch.manual_seed(cfg.get("seed_everything", 0))
    dm = DensityDataModule(**data)
    dm.setup()
    d = dm.event_shape[0]
    if kind == "MAF":
        flow = zuko.flows.MAF(d, transforms=hp["n_layers"], hidden_features=hp["hidden"])
    else:
        flow = zuko.flows.NSF(d, bins=hp.get("bins", 8), transforms=hp["n_layers"], hidden_features=hp["hidden"])
    opt = torch.optim.Adam(flow.parameters(), lr=hp["lr"])
    loader = dm.train_dataloader()
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if hp.get("scheduler") == "cosine" else None
    start = time.perf_counter()
    for _ in range(epochs):
        for i, (x,) in enumerate(loader):
            if quick and i >= 3:
                break
            loss = -flow().log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x = dm.test_data
        nll = -flow().log_prob(x).double()
        pixel_nll = nll - dm.pixel_log_det(x).double()
    return {
        "model": f"zuko {kind}",
        "epochs": epochs,
        "test_nll": float(nll.mean()),
        "test_bpd": float(pixel_nll.mean() / (d * math.log(2))),
        "seconds": seconds,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | epochs | test NLL (nats, served) | test bits/dim (pixels) | wall (s) |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["test_bpd"]):
        lines.append(
            f"| {r['model']} | {r['epochs']} | {r['test_nll']:.2f} | {r['test_bpd']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="*", default=None, help="default: every family with a digits config")
    p.add_argument("--no-zuko", action="store_true")
    p.add_argument("--quick", action="store_true", help="one family, 1 epoch of 3 batches")
    p.add_argument("--write", action="store_true", help=f"write the table into {OUT.relative_to(ROOT)}")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as every run here (run_cli sets OMP_NUM_THREADS=1); machine() reports it
    configs = digits_configs()
    families = args.families or (["maf"] if args.quick else list(configs))
    rows = []
    for family in families:
        try:
            rows.append(run_family(family, configs[family], args.quick))
        except (RuntimeError, KeyError) as e:
            print(f"[digits] {family} skipped: {e}", file=sys.stderr)
            continue
        print(f"[digits] {rows[-1]}", file=sys.stderr)
    if not args.no_zuko:
        for kind, family in (("MAF", "maf"), ("NSF", "nsf")):
            if args.quick and kind == "NSF":
                continue
            try:
                rows.append(run_zuko(kind, configs[family], args.quick))
            except ImportError as e:
                print(f"[digits] zuko {kind} skipped: {e}", file=sys.stderr)
    if args.write and not args.quick:
        merged = {r["model"]: r for r in json.loads(RESULTS.read_text())} if RESULTS.exists() else {}
        merged.update({r["model"]: r for r in rows})
        rows = list(merged.values())
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    body = (
        "## Every family on 8x8 digits, with zuko's MAF and NSF\n\n"
        f"Machine: {machine()} (wall times are of a shared, busy machine; rows may come from separate runs, "
        "merged through docs/digits.json). "
        "Command: `python scripts/benchmarks/digits.py --write`. Each family runs `configs/<family>/digits.yaml` "
        "(1437/180/180 split, dequantised, logit alpha 0.05); bits/dim are in pixel space (17 levels), so "
        "log2(17) = 4.09 is the uniform distribution. zuko's MAF and NSF use our maf / nsf configs' layers, "
        "widths, batch, learning rate, schedule and epochs on the same split. "
        + f"FFJORD is cut to {EPOCH_CAP['ffjord']} epochs. "
        + "\n\n"
        + table(rows)
    )
    print(body)
    if args.write and not args.quick:
        write_section(OUT, "digits", body)
    return rows


if __name__ == "__main__":
    main()
