"""Train-step and sampling time of every family and its peers, interleaved.

The ``families`` suite measures each implementation in its own process, one after
the other; on a shared machine the load changes between them, and even CPU time
moves with it (caches, memory bandwidth). Here all implementations of one family
live in one process and take turns: round r times a few train steps of each, then
a draw of samples of each, for ``rounds`` rounds; the medians are compared. The
same builders and data as ``families`` (D = 8 Gaussian mixture; Glow on digits).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch

from benchmarks import families
from benchmarks.harness import Result, machine, mixture, vs_ours

NAME = "interleaved"


def cases(quick: bool, fams: list[str] | None = None) -> list[dict[str, Any]]:
    families._load_optional()
    chosen = fams or [f for f, impls in families.BUILDERS.items() if len(impls) > 1]
    return [
        {"family": f, "dim": 2 if quick else 8, "rounds": 2 if quick else 10, "steps": 2 if quick else 5}
        for f in chosen
    ]


def worker(case: dict[str, Any]) -> Result:
    """One process per family; returns a Result whose ``note`` carries every row as JSON."""
    families._load_optional()
    torch.manual_seed(0)
    builders = families.BUILDERS[case["family"]]
    adapters = {}
    for label, build in builders.items():
        try:
            adapters[label] = build(case["dim"])
        except ImportError as e:  # a peer that is not installed is skipped, and says so
            print(f"  {label}: skipped ({e})", file=sys.stderr)
    data = getattr(next(iter(builders.values())), "data", None)
    draw = data(case["dim"])[0] if data else mixture(case["dim"])[0]
    x = draw(256)
    opts = {k: torch.optim.Adam(a.module.parameters(), lr=1e-3) for k, a in adapters.items()}
    steps: dict[str, list[float]] = {k: [] for k in adapters}
    draws: dict[str, list[float]] = {k: [] for k in adapters}
    n_sample = 200 if case["family"] == "ffjord" else 1000
    for _ in range(case["rounds"]):
        for k, ad in adapters.items():
            t0 = time.process_time()
            for _ in range(case["steps"]):
                opts[k].zero_grad(set_to_none=True)
                (-ad.log_prob(x).mean()).backward()
                opts[k].step()
            steps[k].append(1e3 * (time.process_time() - t0) / case["steps"])
        for k, ad in adapters.items():
            with torch.no_grad():
                t0 = time.process_time()
                try:
                    ad.sample(n_sample)
                    draws[k].append(n_sample / max(time.process_time() - t0, 1e-9))
                except Exception:  # noqa: BLE001  a failed draw is reported, not fatal
                    draws[k].append(float("nan"))
    rows = {k: {"step_ms": statistics.median(steps[k]), "samples_per_s": statistics.median(draws[k])} for k in adapters}
    return Result(case["family"], case["dim"], 0, 0.0, 0.0, 0.0, 0.0, 0, note=json.dumps(rows))


def table(results: list[Result]) -> str:
    lines = [
        "| family | implementation | train step (ms) | x vs ours | samples/s | x vs ours |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for k, v, t, s in vs_ours(json.loads(r.note)):
            lines.append(f"| {r.model} | {k} | {v['step_ms']:.2f} | {t} | {v['samples_per_s']:,.0f} | {s} |")
    return "\n".join(lines)


def report(results: list[Result], seconds: float, command: str) -> str:
    c = results[0].case if results else {}
    return (
        "## Interleaved timing: every family and its peers taking turns in one process\n\n"
        f"Machine: {machine()}. Command: `{command}` ({seconds:.0f} s). {c.get('rounds', '?')} rounds; each round "
        f"times {c.get('steps', '?')} train steps (batch 256) of every implementation, then one draw (1000 samples; "
        "FFJORD 200) of each; medians of process CPU time. Same builders and data as the table above. "
        '"x vs ours" above 1 means unflow-zoo is faster.\n\n' + table(results)
    )
