"""What every benchmark suite shares: the measured record, the data with a known
density, a subprocess-per-case runner, ratio tables and the report writer.

Every case runs in a fresh Python process, so one implementation's allocator,
thread pool or import side effects never colour another's numbers, and peak
memory is that process's own.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "scripts" / "benchmark.py"


@dataclass
class Result:
    """One (implementation, case) measurement."""

    model: str
    dim: int
    params: int
    train_step_ms: float
    sample_s: float
    peak_mem_mb: float
    kl_after_budget: float
    budget_steps: int
    note: str = ""
    case: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.case.get("sample_n", 0) / self.sample_s if self.sample_s > 0 else float("nan")


class Adapter:
    """The three things a benchmark needs from any flow implementation."""

    def __init__(self, module: Any, log_prob: Callable, sample: Callable) -> None:
        self.module, self.log_prob, self.sample = module, log_prob, sample


def ours(name: str, dim: int, **hparams: Any) -> Adapter:
    """An unflow-zoo family by registry name, on ``(dim,)`` vectors."""
    from unflow_zoo.models import create_model

    m = create_model(name, event_shape=(dim,), **hparams)
    return Adapter(m, m.log_prob, m.sample)


def zuko_adapter(flow: Any) -> Adapter:
    return Adapter(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


def nflows_adapter(flow: Any) -> Adapter:
    return Adapter(flow, flow.log_prob, flow.sample)


# ----------------------------------------------------------------------------- data
def mixture(dim: int, seed: int = 0):
    """A 4-component Gaussian mixture in ``dim`` dimensions and its exact log-density."""
    import torch

    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(4, dim, generator=g, dtype=torch.float64)
    stds = 0.5 + 0.5 * torch.rand(4, dim, generator=g, dtype=torch.float64)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)

    def sample(n: int):
        k = torch.multinomial(weights, n, replacement=True, generator=g)
        return (means[k] + stds[k] * torch.randn(n, dim, generator=g, dtype=torch.float64)).float()

    def log_prob(x):
        x = x.double()[:, None, :]
        comp = (-0.5 * ((x - means) / stds) ** 2 - torch.log(stds) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(comp + torch.log(weights), dim=1)

    return sample, log_prob


# ----------------------------------------------------------------------------- worker
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def clock() -> float:
    """CPU seconds of this process: with one intra-op thread this equals wall time on an idle
    machine, and unlike wall time it does not grow when other processes share the cores, so
    cases measured minutes apart stay comparable."""
    return time.process_time()


def measure(
    label: str, adapter: Adapter, dim: int, *, batch: int, repeats: int, budget: int, sample_n: int,
    lr: float = 1e-3, data: tuple[Callable, Callable] | None = None,
) -> Result:  # fmt: skip
    """Train-step CPU time (median of ``repeats``, :func:`clock`), peak-RSS growth, NLL gap after ``budget`` Adam
    steps on ``data`` (default: :func:`mixture`; the gap is NLL minus the true entropy), and the
    time to draw ``sample_n`` samples (median of 3 draws). ``data`` may give ``log_prob=None`` for data without a
    known density: the NLL itself is reported then."""
    import torch

    torch.manual_seed(0)
    params = [p for p in adapter.module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    draw, true_log_prob = data or mixture(dim)
    train, test = draw(20000), draw(4000)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = -adapter.log_prob(x).mean()
        loss.backward()
        opt.step()
        return loss

    step(train[:batch])  # warm-up: allocator, lazy init
    rss0 = _rss_mb()
    times = []
    for i in range(repeats):
        x = train[(i * batch) % (len(train) - batch) :][:batch]
        t0 = clock()
        step(x)
        times.append(clock() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    g = torch.Generator().manual_seed(1)
    for _ in range(max(budget - repeats - 1, 0)):
        step(train[torch.randint(0, len(train), (batch,), generator=g)])
    with torch.no_grad():
        nll = -torch.cat([adapter.log_prob(c) for c in test.split(1000)]).double().mean()
        entropy = -true_log_prob(test).mean() if true_log_prob is not None else 0.0
        torch.manual_seed(0)  # the same base draws every run: a row must not depend on the global RNG
        adapter.sample(8)  # warm-up
        draws = []
        for _ in range(3):  # one draw takes ~0.1 s for the fast flows: too short to trust alone
            t0 = clock()
            s = adapter.sample(sample_n)
            draws.append(clock() - t0)
        sample_s = statistics.median(draws)
    note = "" if torch.isfinite(s).all() else "non-finite samples"
    return Result(label, dim, sum(p.numel() for p in params), 1e3 * statistics.median(times), sample_s,
                  max(peak, 0.0), float(nll - entropy), budget, note)  # fmt: skip


#: (suite, implementation, reason) of every case that did not run: reports list them, never silently
SKIPPED: list[tuple[str, str, str]] = []


def _skip(suite: str, case: dict[str, Any], reason: str) -> None:
    print(f"  {suite} {case}: skipped ({reason})", file=sys.stderr)
    SKIPPED.append((suite, str(case.get("impl") or case.get("model") or case), reason))


def skipped_note(suite: str) -> str:
    """A report's closing line naming the cases of ``suite`` that did not run and why ("" if none)."""
    rows = [f"{impl} ({reason})" for s, impl, reason in SKIPPED if s == suite]
    return "\n\nNot run: " + "; ".join(rows) + "." if rows else ""


def run_case(suite: str, case: dict[str, Any], timeout: float = 3600, threads: int = 1) -> Result | None:
    """Run ``suite``'s worker on ``case`` in a fresh process; ``None`` (with the reason on
    stderr) when the implementation is missing or fails."""
    cmd = [sys.executable, str(DRIVER), "--threads", str(threads), "--worker", suite, json.dumps(case)]
    env = dict(
        os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'scripts'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        _skip(suite, case, f"timed out after {timeout:.0f} s")
        return None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        _skip(suite, case, tail[0][:300])
        return None
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["case"] = case
    return Result(**data)


def emit(result: Result) -> None:
    """A worker's last stdout line: the result as JSON."""
    payload = asdict(result)
    payload.pop("case", None)
    print(json.dumps(payload))


# ----------------------------------------------------------------------------- report
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def vs_ours(rows: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, float], str, str]]:
    """``(label, row, step ratio, sampling ratio)`` for rows keyed by implementation, ours first: the
    step ratio is peer / ours over ``step_ms``, the sampling one ours / peer over ``samples_per_s``
    (above 1: unflow-zoo is faster); ``-`` on our own row."""
    ours = next((v for k, v in rows.items() if k.startswith("unflow-zoo")), None)
    out = []
    for k, v in sorted(rows.items(), key=lambda kv: not kv[0].startswith("unflow-zoo")):
        mine = k.startswith("unflow-zoo") or ours is None
        t = "-" if mine else ratio(v["step_ms"], ours["step_ms"])
        s = "-" if mine else ratio(ours["samples_per_s"], v["samples_per_s"])
        out.append((k, v, t, s))
    return out


def ratio(value: float, reference: float | None) -> str:
    if reference is None or not reference > 0 or not math.isfinite(value):
        return "-"
    return f"{value / reference:.2f}x"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- benchmark:NAME:start/end -->`` in ``path``."""
    start, end = f"<!-- benchmark:{name}:start -->", f"<!-- benchmark:{name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


# ----------------------------------------------------------------------------- CLI runs
def run_cli(config: Path, overrides: list[str] | None = None, require: str = "test_nll") -> dict[str, float]:
    """``unflow-zoo fit --config CONFIG [overrides]`` in a fresh process with one intra-op
    thread, exactly as a user runs it; returns the test metrics it prints plus wall seconds.

    Raises:
        RuntimeError: the run failed, or printed no ``require`` metric.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "unflow_zoo.cli", "fit", "--config", str(config),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", tmp, "--plot.enabled", "false", *(overrides or []),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=ROOT)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{proc.stderr[-3000:]}")
    pattern = r"^(test_\w+)\s+(-?[\d.]+)$"
    metrics = {m.group(1): float(m.group(2)) for m in re.finditer(pattern, proc.stdout, re.MULTILINE)}
    if require not in metrics:
        raise RuntimeError(f"{config}: no {require} in the output:\n{proc.stdout[-2000:]}")
    return {**metrics, "seconds": seconds}
