"""How cost grows with batch size B, dimension D and width m.

The overparameterized regime of the seed paper is about width: a one-hidden-layer
monotone net of width m (constrained) or integrand of width m (unconstrained),
so the width sweep goes to m = 3 * 10^4 on the paper's 1-D setting. Batch and
dimension sweeps use MAF (one density pass) and the unconstrained flow (a
quadrature per feature) at their default sizes.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Result, machine, measure, ours

NAME = "scaling"


def cases(quick: bool) -> list[dict[str, Any]]:
    common = {"repeats": 2 if quick else 7, "sample_n": 256}
    out: list[dict[str, Any]] = []
    batches = [64, 512] if quick else [64, 256, 1024, 4096]
    dims = [2, 4] if quick else [2, 8, 32, 64]
    widths = [100, 1000] if quick else [100, 1000, 10000, 30000]
    for family in ("maf", "unconstrained"):
        out += [{"sweep": "batch", "family": family, "dim": 8, "batch": b, **common} for b in batches]
        out += [{"sweep": "D", "family": family, "dim": d, "batch": 256, **common} for d in dims]
    for family in ("constrained", "unconstrained"):
        out += [{"sweep": "width m", "family": family, "dim": 1, "batch": 256, "width": m, **common} for m in widths]
    return out


def worker(case: dict[str, Any]) -> Result:
    hp: dict[str, Any] = {}
    if "width" in case:  # the seed paper's 1-D models
        hp = {"width": case["width"]}
        if case["family"] == "unconstrained":
            hp.update(integrand="paper", n_nodes=50, quadrature="riemann")
    ad = ours(case["family"], case["dim"], **hp)
    return measure(case["family"], ad, case["dim"], batch=case["batch"], repeats=case["repeats"],
                   budget=case["repeats"] + 1, sample_n=case["sample_n"])  # fmt: skip


def table(results: list[Result]) -> str:
    lines = ["| sweep | family | value | D | batch | params | train step (ms) | per sample (us) | peak mem (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        c = r.case
        value = c.get("width") if c["sweep"] == "width m" else c["batch"] if c["sweep"] == "batch" else c["dim"]
        lines.append(
            f"| {c['sweep']} | {c['family']} | {value:,} | {r.dim} | {c['batch']} | {r.params:,} | "
            f"{r.train_step_ms:.1f} | {1e3 * r.train_step_ms / c['batch']:.1f} | {r.peak_mem_mb:.0f} |"
        )
    return "\n".join(lines)


def report(results: list[Result], seconds: float, command: str) -> str:
    return (
        "## Scaling: cost vs batch size, dimension and width\n\n"
        f"Machine: {machine()}. Command: `{command}` ({seconds:.0f} s). Train step = median CPU time (1 thread, robust to other load) of forward + backward "
        "+ Adam step; width sweep on the seed paper's 1-D models (constrained: tanh net of width m; unconstrained: "
        "the paper's integrand of width m, 50-node Riemann rule).\n\n" + table(results)
    )
