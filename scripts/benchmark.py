"""Benchmark unflow-zoo's flows side by side with their peers, as ratios.

First suite (the seed paper's centre): the unconstrained flow in the UMNN-MAF
layout against ``zuko.flows.UNAF`` and the UMNN package's ``UMNNMAFFlow`` at
matched sizes: 3 transforms, MADE conditioner hidden [64, 64], integrand hidden
[64, 64], embedding 16, 32 quadrature nodes, batch 512, D in {2, 8, 43}.

For every (model, D) a fresh subprocess measures

- train step: median wall time of forward + backward + Adam step on a batch;
- sampling: wall time to draw a batch of samples (after a small warm-up);
- peak memory: growth of the process's peak RSS during the timed train steps;
- parameters;
- NLL after a fixed budget of training steps on a Gaussian mixture with known
  density, reported as the KL gap (test NLL minus the true entropy on the same
  points; 0 is perfect).

Usage::

    pip install -e ".[bench]"
    python scripts/benchmark.py                 # full suite, writes docs/benchmarks.md
    python scripts/benchmark.py --quick         # D = 2 only, short budget (a test runs this)
    python scripts/benchmark.py --dims 8 --peers ours zuko --no-write

A peer that is not installed is skipped with a note, never silently.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
MARK_START = "<!-- benchmark:unconstrained:start -->"
MARK_END = "<!-- benchmark:unconstrained:end -->"


@dataclass
class Result:
    model: str
    dim: int
    params: int
    train_step_ms: float
    sample_s: float
    peak_mem_mb: float
    kl_after_budget: float
    budget_steps: int
    note: str = ""


# ----------------------------------------------------------------------------- models
class Adapter:
    """The three things a benchmark needs from any flow implementation."""

    def __init__(self, module: Any, log_prob: Callable, sample: Callable) -> None:
        self.module, self.log_prob, self.sample = module, log_prob, sample


def build_ours(dim: int, nodes: int) -> Adapter:
    import unflow_zoo.models.unconstrained  # noqa: F401  registers the family
    from unflow_zoo.models import create_model

    m = create_model(
        "unconstrained", event_shape=(dim,), n_layers=3, conditioner_hidden=[64, 64], hidden=[64, 64],
        embedding=16, n_nodes=nodes, quadrature="clenshaw-curtis",
    )
    return Adapter(m, m.log_prob, m.sample)


def build_zuko(dim: int, nodes: int) -> Adapter:
    import zuko

    flow = zuko.flows.UNAF(dim, transforms=3, hidden_features=[64, 64], signal=16, network={"hidden_features": [64, 64]})
    # zuko's UNAF integrates with a fixed 32-node Gauss-Legendre rule; --nodes does not reach it.
    return Adapter(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


def build_umnn(dim: int, nodes: int) -> Adapter:
    from UMNN import UMNNMAFFlow

    flow = UMNNMAFFlow(
        nb_flow=3, nb_in=dim, hidden_derivative=[64, 64], hidden_embedding=[64, 64], embedding_s=16,
        nb_steps=nodes, solver="CC", device="cpu",
    )
    import torch

    def sample(n: int):
        return flow.invert(torch.randn(n, dim))

    return Adapter(flow, lambda x: flow.compute_ll(x)[0], sample)


BUILDERS: dict[str, Callable[[int, int], Adapter]] = {"ours": build_ours, "zuko": build_zuko, "umnn": build_umnn}
LABELS = {"ours": "unflow-zoo unconstrained", "zuko": "zuko UNAF", "umnn": "UMNN UMNNMAFFlow"}


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


def worker(name: str, dim: int, batch: int, repeats: int, budget: int, nodes: int, sample_n: int) -> Result:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    ad = BUILDERS[name](dim, nodes)
    params = [p for p in ad.module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    draw, true_log_prob = mixture(dim)
    train, test = draw(20000), draw(4000)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = -ad.log_prob(x).mean()
        loss.backward()
        opt.step()
        return loss

    step(train[:batch])  # warm-up: allocator, lazy init
    rss0 = _rss_mb()
    times = []
    for i in range(repeats):
        x = train[(i * batch) % (len(train) - batch):][:batch]
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    g = torch.Generator().manual_seed(1)
    for _ in range(max(budget - repeats - 1, 0)):
        step(train[torch.randint(0, len(train), (batch,), generator=g)])
    with torch.no_grad():
        nll = -torch.cat([ad.log_prob(c) for c in test.split(1000)]).double().mean()
        entropy = -true_log_prob(test).mean()
        ad.sample(8)  # warm-up
        t0 = time.perf_counter()
        s = ad.sample(sample_n)
        sample_s = time.perf_counter() - t0
    note = "" if torch.isfinite(s).all() else "non-finite samples"
    return Result(LABELS[name], dim, sum(p.numel() for p in params), 1e3 * statistics.median(times), sample_s,
                  max(peak, 0.0), float(nll - entropy), budget, note)


def run_case(name: str, dim: int, args: argparse.Namespace) -> Result | None:
    cmd = [sys.executable, __file__, "--worker", name, str(dim), "--batch", str(args.batch), "--repeats",
           str(args.repeats), "--budget", str(args.budget), "--nodes", str(args.nodes), "--sample-n", str(args.sample_n)]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        print(f"  {name} D={dim}: skipped ({tail[0][:200]})", file=sys.stderr)
        return None
    return Result(**json.loads(proc.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- report
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def table(results: list[Result]) -> str:
    lines = [
        "| model | D | params | train step (ms) | x vs ours | sample (s) | x vs ours | peak mem (MB) | KL after budget (nats) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ours = {r.dim: r for r in results if r.model == LABELS["ours"]}
    for r in sorted(results, key=lambda r: (r.dim, r.model != LABELS["ours"], r.model)):
        base = ours.get(r.dim)
        tr = f"{r.train_step_ms / base.train_step_ms:.1f}x" if base else "-"
        sm = f"{r.sample_s / base.sample_s:.1f}x" if base else "-"
        lines.append(
            f"| {r.model} | {r.dim} | {r.params:,} | {r.train_step_ms:.1f} | {tr} | {r.sample_s:.3f} | {sm} | "
            f"{r.peak_mem_mb:.0f} | {r.kl_after_budget:.3f} |" + (f" {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{MARK_START}\n{body}\n{MARK_END}"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="D = 2 only, short budget")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 8, 43])
    p.add_argument("--peers", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=10, help="timed train steps (median reported)")
    p.add_argument("--budget", type=int, default=300, help="training steps before the NLL is measured")
    p.add_argument("--nodes", type=int, default=32, help="quadrature nodes, the same for every model")
    p.add_argument("--sample-n", type=int, default=512)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "D"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        r = worker(args.worker[0], int(args.worker[1]), args.batch, args.repeats, args.budget, args.nodes, args.sample_n)
        print(json.dumps(asdict(r)))
        return [r]
    if args.quick:
        args.dims, args.repeats, args.budget = [2], 3, 30
    results: list[Result] = []
    t0 = time.time()
    for dim in args.dims:
        for name in args.peers:
            print(f"running {name} D={dim} ...", file=sys.stderr)
            r = run_case(name, dim, args)
            if r is not None:
                results.append(r)
    body = (
        "## Unconstrained flows: unflow-zoo vs zuko UNAF vs UMNN\n\n"
        f"Machine: {machine()}. Command: `python scripts/benchmark.py {' '.join(argv or sys.argv[1:])}` "
        f"({time.time() - t0:.0f} s). Layout: 3 transforms, MADE hidden [64, 64], integrand hidden [64, 64], "
        f"embedding 16, {args.nodes} quadrature nodes, batch {args.batch}; train step = median of {args.repeats}; "
        f"sampling draws {args.sample_n}; KL after {args.budget} Adam steps (lr 1e-3) on a 4-component Gaussian "
        "mixture with known density. \"x vs ours\" = peer time / our time (above 1: we are faster).\n\n"
        + table(results)
    )
    print(body)
    if not args.no_write and not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_section(args.out, body)
    return results


if __name__ == "__main__":
    main()
