"""Compiled training: every family's train step eager vs under ``compile=True`` (torch.compile).

Each family gets the model of the ``families`` suite (same builders, the same D = 8 Gaussian
mixture, Glow on 8x8 digits; ``unconstrained`` and ``snf``, which have suites of their own, get
the sizes of those suites), built twice with the same weights: once eager, once with
``compile=True``. In one process the two take turns: round r times ``steps`` Adam steps
(batch 256) of each, and the medians of process CPU time are compared, so that load from other
processes on a shared machine moves both alike. Before timing, ``warmup`` steps of the compiled
model compile it (its first step's CPU time is the "compile" column; inductor compiles in this
process, one thread, so that CPU time is all of it; its caches off, so it is a cold compile). Sampling is timed the same way, compiled
through the same switch a family turns on with ``compile_sampling``, wherever its log-density
compiles. ``|d log p|`` is the largest difference between the two models' log-densities on 1000
held-out points at the same weights (float32 rounding: compiled kernels fuse and reorder sums).
A family whose log-density falls back to eager (``compile_unsupported`` or a compiler error at
the first call) says why in the note, and its speed-up is 1 by construction.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import families
from benchmarks.harness import Adapter, Result, machine, mixture, ours
from unflow_zoo.errors import InverseError

NAME = "compile"
#: families without a row in the families suite: the sizes of their own suites
EXTRA: dict[str, Callable[[int], Adapter]] = {
    "unconstrained": lambda d: ours(
        "unconstrained", d, n_layers=3, conditioner_hidden=[64, 64], hidden=[64, 64], embedding=16, n_nodes=32
    ),
    "snf": lambda d: ours("snf", d, n_layers=2),
}
#: the constrained family at the paper's depth 1 (a fused C kernel: compile falls back) beside the B-NAF row
VARIANTS: dict[str, Callable[[int], Adapter]] = {
    "constrained (depth 1)": lambda d: ours(
        "constrained", d, width=64, depth=1, n_layers=families.DEPTH["constrained"]
    ),
}
SAMPLE_N = 1000


def _builders() -> dict[str, Callable[[int], Adapter]]:
    families._load_optional()
    out: dict[str, Callable[[int], Adapter]] = {}
    for family, impls in families.BUILDERS.items():
        label = next((k for k in impls if k.startswith("unflow-zoo")), None)
        if label is not None:
            out[family] = impls[label]
    out.update(EXTRA)
    out.update(VARIANTS)
    return out


def cases(quick: bool, fams: list[str] | None = None, dim: int = 8) -> list[dict[str, Any]]:
    from unflow_zoo.models import list_models

    builders = _builders()
    chosen = fams or (["linear"] if quick else [*list_models(), *VARIANTS])
    common = {"dim": 2 if quick else dim, "batch": 256, "warmup": 3, "rounds": 2 if quick else 7}
    out = []
    for family in chosen:
        if family not in builders:
            print(f"[compile] {family}: no builder, skipped", file=sys.stderr)
            continue
        steps = 1 if family == "ffjord" else (2 if quick else 5)  # an adaptive ODE solve per step: seconds
        out.append({"family": family, "steps": steps, **common})
    return out


def _median_ms(fn: Callable[[], Any], times: list[float], reps: int) -> None:
    t0 = time.process_time()
    for _ in range(reps):
        fn()
    times.append(1e3 * (time.process_time() - t0) / reps)


def worker(case: dict[str, Any]) -> Result:
    """One process per family; a Result whose ``note`` carries the row as JSON."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1  # compile in this process, so its CPU time is the compile time
    inductor_config.fx_graph_cache = False  # a cold compile every run, as a user's first one
    functorch_config.enable_autograd_cache = False
    build = _builders()[case["family"]]
    data = getattr(build, "data", None)
    draw = data(case["dim"])[0] if data else mixture(case["dim"])[0]
    torch.manual_seed(0)
    eager = build(case["dim"]).module
    hparams = {k: v for k, v in dict(eager.hparams).items() if not str(k).startswith("_")}
    compiled = type(eager)(**{**hparams, "compile": True})
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_sampling = True  # measured here for every family whose log-density compiles
    params = sum(p.numel() for p in eager.parameters() if p.requires_grad)
    held_out = draw(1000)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diff = float((eager.log_prob(held_out) - compiled.log_prob(held_out)).abs().max())
    train = draw(256 * 16)
    batches = train.split(case["batch"])
    models = {"eager": eager, "compiled": compiled}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    step_no = {"eager": 0, "compiled": 0}

    def step(k: str) -> None:
        m, opt = models[k], opts[k]
        x = batches[step_no[k] % len(batches)]
        step_no[k] += 1
        opt.zero_grad(set_to_none=True)
        (-m.log_prob(x).mean() + m.regularization()).backward()
        opt.step()

    with warnings.catch_warnings(record=True) as more:
        warnings.simplefilter("always")
        t0, w0 = time.process_time(), time.perf_counter()
        step("compiled")
        compile_cpu, compile_wall = time.process_time() - t0, time.perf_counter() - w0
        for _ in range(case["warmup"] - 1):  # a second compile (glow's actnorm flips its flag), allocator
            step("compiled")
        for _ in range(case["warmup"]):
            step("eager")
        fallbacks = dict(compiled.compile_fallbacks)
        steps: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(case["rounds"]):
            for k in models:
                _median_ms(lambda k=k: step(k), steps[k], case["steps"])
        draws: dict[str, list[float]] = {k: [] for k in models}
        sample_compile = float("nan")
        try_sampling = "log_prob" not in fallbacks and case["family"] != "ffjord"
        sample_error = None
        if try_sampling:
            try:
                with torch.no_grad():
                    eager.sample(SAMPLE_N)  # whether the eager model can sample these weights at all
            except InverseError as e:  # a barely trained model: say so in the row, keep the step times
                sample_error = f"sampling not measured: the eager model raises {type(e).__name__} after these steps"
                try_sampling = False
        if try_sampling:
            with torch.no_grad():
                t0 = time.process_time()
                compiled.sample(SAMPLE_N)
                compiled.sample(SAMPLE_N)  # n fixed: no second compile after this one
                sample_compile = time.process_time() - t0
                fallbacks.update(compiled.compile_fallbacks)
                for _ in range(max(case["rounds"] // 2, 2)):
                    for k, m in models.items():
                        t0 = time.process_time()
                        m.sample(SAMPLE_N)
                        draws[k].append(SAMPLE_N / max(time.process_time() - t0, 1e-9))
    caught.extend(more)
    reasons = sorted({str(w.message) for w in caught if w.category.__name__ == "CompileFallbackWarning"})
    row = {
        "params": params,
        "compile_cpu_s": compile_cpu,
        "compile_wall_s": compile_wall,
        "eager_ms": statistics.median(steps["eager"]),
        "compiled_ms": statistics.median(steps["compiled"]),
        "sample_compile_s": sample_compile,
        "eager_samples_per_s": statistics.median(draws["eager"]) if draws["eager"] else float("nan"),
        "compiled_samples_per_s": statistics.median(draws["compiled"]) if draws["compiled"] else float("nan"),
        "max_abs_diff": diff,
        "fallbacks": fallbacks,
        "warnings": reasons,
        "sample_error": sample_error,
    }
    return Result(case["family"], case["dim"], params, row["compiled_ms"], 0.0, 0.0, 0.0, 0, note=json.dumps(row))


def _x(num: float, den: float) -> str:
    return f"{num / den:.2f}x" if den > 0 and math.isfinite(num) and math.isfinite(den) else "-"


def table(results: list[Result]) -> str:
    lines = [
        (
            "| family | D | params | compile (s CPU) | eager step (ms) | compiled step (ms) | speed-up | "
            "eager samples/s | compiled samples/s | sampling speed-up | max abs diff log p | note |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        row = json.loads(r.note)
        fb = row.get("fallbacks", {})
        parts = [f"{part} eager: {why}" for part, why in fb.items()]
        if row.get("sample_error"):
            parts.append(row["sample_error"])
        note = "; ".join(parts)
        compiled_lp = "log_prob" not in fb
        comp = f"{row['compile_cpu_s']:.1f}" if compiled_lp else "-"
        es, cs = row["eager_samples_per_s"], row["compiled_samples_per_s"]
        if math.isnan(es):  # not measured: the log-density does not compile
            sampling = ("-", "-", "-")
        elif "sample" in fb:
            sampling = (f"{es:,.0f}", "-", "-")
        else:
            sampling = (f"{es:,.0f}", f"{cs:,.0f}", _x(cs, es))
        lines.append(
            f"| {r.model} | {r.dim} | {row['params']:,} | {comp} | {row['eager_ms']:.2f} | {row['compiled_ms']:.2f} | "
            f"{_x(row['eager_ms'], row['compiled_ms'])} | {sampling[0]} | {sampling[1]} | {sampling[2]} | "
            f"{row['max_abs_diff']:.1e} | {note} |"
        )
    return "\n".join(lines)


def report(results: list[Result], seconds: float, command: str) -> str:
    c = results[0].case if results else {}
    return (
        "## Compiled training: `compile: true` against eager, per family\n\n"
        f"Machine: {machine()}. Command: `{command}` ({seconds:.0f} s). The families suite's models (D = "
        f"{c.get('dim', '?')} Gaussian mixture; Glow on 8x8 digits; unconstrained: 3 layers, hidden [64, 64], "
        "32 nodes; snf: 2 layers), eager and `compile=True` with the same weights taking turns in one process: "
        f"{c.get('rounds', '?')} rounds of {c.get('steps', '?')} Adam steps (batch {c.get('batch', '?')}) each "
        "(FFJORD 1), medians of process CPU time (the machine is shared; CPU time, not wall time). Compile = CPU "
        "seconds of the first compiled step (inductor in-process, one compile thread; the backward graph "
        "included). Sampling: 1000 draws, compiled for the measurement wherever the log-density compiles "
        "(a family ships it on only where it helps: `compile_sampling`). Speed-up = eager time / compiled "
        "time, above 1 means compiled is faster. Max abs diff log p: compiled vs eager on 1000 held-out "
        "points at the same weights.\n\n" + table(results)
    )
