"""Self-normalizing flows: time per training step, learned-inverse gradient vs exact log-det gradient.

The same architecture (``snf``: two self-normalizing layers with a smooth leaky
ReLU between them, the paper's "FC 2L"; or two 3x3 convolutions on ``1 x s x s``
images) is trained three ways, batch 128, Adam, one thread:

- ``SNF``: the paper's training, log-det gradient :math:`R^\\top` and no
  log-determinant at all (``train_logdet="skip"``, the authors' code), plus the
  reconstruction penalty: :math:`O(D^2)` per layer;
- ``SNF + logged NLL``: the same gradient, plus the exact log-det *value* (one LU
  per layer, no inverse) so that the logged training NLL is the true one
  (``train_logdet="exact"``, the zoo's default);
- ``exact``: the exact gradient through ``torch.linalg.slogdet`` (LU plus the
  inverse in the backward pass, :math:`O(D^3)`), no reconstruction penalty; for
  convolutions the dense :math:`D \\times D` matrix is built every step.

A step is forward + loss (+ reconstruction) + backward + Adam step; the median
over ``--repeats`` timed steps after two warm-up steps is reported, with the
parameters that get gradients (the exact model never uses :math:`R`).

Usage::

    python scripts/benchmarks/snf.py            # D = 64, 256, 784 (+ conv 16x16, 28x28), prints the table
    python scripts/benchmarks/snf.py --write    # and writes it into docs/benchmarks.md
    python scripts/benchmarks/snf.py --quick    # tiny sizes, a smoke run (a test runs this)

References:
    Keller, Peters, Jaini, Hoogeboom, Forré & Welling, "Self Normalizing Flows",
    ICML 2021, arXiv:2011.07248.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch

from benchmarks.harness import write_section

NAME = "snf"
OUT = ROOT / "docs" / "benchmarks.md"
VARIANTS = {
    "SNF": {"train_logdet": "skip"},
    "SNF + logged NLL": {"train_logdet": "exact"},
    "exact": {"exact_gradient": True, "recon_weight": 0.0},
}


@dataclass
class Row:
    layer: str  # "fc" or "conv"
    dim: int
    variant: str
    params: int
    step_ms: float


def build(layer: str, dim: int, variant: str) -> torch.nn.Module:
    from unflow_zoo.models.snf import SelfNormalizingFlow

    if layer == "fc":
        shape: tuple[int, ...] = (dim,)
        kwargs: dict = {"n_layers": 2}
    else:
        side = round(dim**0.5)
        shape, kwargs = (1, side, side), {"n_layers": 2, "n_blocks": 1, "kernel_size": 3}
    return SelfNormalizingFlow(event_shape=shape, **kwargs, **VARIANTS[variant])


def time_steps(model: torch.nn.Module, batch: int, repeats: int, seed: int = 0) -> tuple[float, int]:
    """Median milliseconds of a training step, and the number of parameters that get gradients."""
    torch.manual_seed(seed)
    model.train()
    x = torch.randn(batch, *model.event_shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).mean() + model.regularization()
        loss.backward()
        opt.step()

    step()
    step()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), used


def table(rows: list[Row]) -> str:
    exact = {(r.layer, r.dim): r.step_ms for r in rows if r.variant == "exact"}
    lines = [
        "| layer | D | training | params | step (ms) | exact / this |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = exact.get((r.layer, r.dim))
        ratio = f"{ref / r.step_ms:.2f}x" if ref else "n/a"
        lines.append(f"| {r.layer} | {r.dim} | {r.variant} | {r.params:,} | {r.step_ms:.2f} | {ratio} |")
    return "\n".join(lines)


def report(rows: list[Row], args: argparse.Namespace, seconds: float) -> str:
    cpu = platform.processor() or platform.machine()
    head = (
        "## Self-normalizing flows: learned-inverse vs exact log-det gradient\n\n"
        f"Machine: {cpu}, {os.cpu_count()} cores ({args.note}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread. Command: "
        f"`python scripts/benchmarks/snf.py{' --quick' if args.quick else ''} --repeats {args.repeats}` "
        f"({seconds:.0f} s). Model: `snf`, 2 self-normalizing layers (FC: D x D; conv: 3x3 on 1 x s x s, "
        f"D = s^2) with a smooth leaky ReLU between; batch {args.batch}; median of {args.repeats} "
        'Adam steps (forward, loss, reconstruction, backward, update). "exact / this" = the exact-gradient '
        "step time over this row's (above 1: faster than exact).\n"
    )
    return head + "\n" + table(rows)


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and 3 repeats: a smoke run in seconds")
    p.add_argument("--write", action="store_true", help="write the table into --out")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--dims", type=int, nargs="+", default=None, help="FC sizes D (default 64 256 784)")
    p.add_argument("--conv-sides", type=int, nargs="+", default=None, help="conv image sides (default 16 28)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=None, help="timed steps per case (default 15; quick 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="shared with other jobs, busy", help="machine load, for the report")
    args = p.parse_args(argv)
    dims = args.dims or ([8, 16] if args.quick else [64, 256, 784])
    sides = args.conv_sides or ([4] if args.quick else [16, 28])
    args.repeats = args.repeats or (3 if args.quick else 15)
    torch.set_num_threads(args.threads)

    t0 = time.time()
    rows = []
    cases = [("fc", d) for d in dims] + [("conv", s * s) for s in sides]
    for layer, dim in cases:
        for variant in VARIANTS:
            ms, params = time_steps(build(layer, dim, variant), args.batch, args.repeats)
            rows.append(Row(layer, dim, variant, params, ms))
            print(f"{layer} D={dim} {variant}: {ms:.2f} ms/step, {params:,} params", flush=True)
    body = report(rows, args, time.time() - t0)
    print(body)
    if args.write:
        write_section(args.out, NAME, body)
    return rows


if __name__ == "__main__":
    main()
