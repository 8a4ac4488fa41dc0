"""Benchmark unflow-zoo's flows side by side with their peers, as ratios.

Suites (one file each under scripts/benchmarks/):

- ``unconstrained``: the seed paper's centre, our UMNN-MAF layout vs zuko UNAF
  and the UMNN package, D in {2, 8, 43};
- ``families``: every family vs its closest peer (zuko, nflows, normflows) at
  matched size: train-step time, samples per second, peak memory, parameters,
  NLL gap after a fixed budget;
- ``interleaved``: the same implementations taking turns in one process, the
  load-robust timing comparison;
- ``scaling``: cost vs batch size, D and width m (to m = 3e4);
- ``compile``: every family's train step (and sampling) eager vs ``compile=True``, compile time,
  speed-up, and the largest log-density difference;
- ``paper_models``: the seed paper's two models, one SGD step against the official code
  (its per-node loops, written out from its published code), D = 1 and 5, and ensembles;
- ``snf``: self-normalizing vs exact log-det gradients at D = 64, 256, 784;
- ``copula``: Gaussian vs copula base on heavy-tailed data (NLL, tail quantiles);
- ``digits``: every family on 8x8 digits (test bits/dim) beside zuko MAF and NSF.

Every measured case runs in a fresh process. Each suite's table replaces its
own section of docs/benchmarks.md (between ``<!-- benchmark:NAME:start/end -->``).

Usage::

    pip install -e ".[bench]"
    python scripts/benchmark.py                              # every suite, writes docs/benchmarks.md
    python scripts/benchmark.py --suites families --families maf nsf
    python scripts/benchmark.py --quick --no-write           # seconds per suite (a test runs this)

A peer that is not installed is skipped with a note, never silently.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Result, emit, run_case, skipped_note, write_section

#: measured here, one process per case
CASE_SUITES = ("unconstrained", "families", "interleaved", "conditional", "scaling", "compile")
SCRIPT_SUITES = ("paper_models", "snf", "copula", "digits")  # self-contained scripts with their own main(argv)
SUITES = CASE_SUITES + SCRIPT_SUITES
OUT = ROOT / "docs" / "benchmarks.md"


def run_suite(name: str, args: argparse.Namespace, command: str) -> list[Result]:
    suite = importlib.import_module(f"benchmarks.{name}")
    if name == "unconstrained":
        cases = suite.cases(args.quick, args.dims, args.peers)
    elif name == "families":
        cases = suite.cases(args.quick, args.families, args.dim)
    elif name == "interleaved":
        cases = suite.cases(args.quick, args.families)
    elif name == "compile":
        cases = suite.cases(args.quick, args.families, args.dim)
    else:
        cases = suite.cases(args.quick)
    results, t0 = [], time.time()
    for case in cases:
        print(f"[{name}] {case}", file=sys.stderr)
        r = run_case(name, case, timeout=args.timeout, threads=args.threads)
        if r is not None:
            results.append(r)
    # a peer that is not installed (normflows for the Glow rows, say) is named in the table's note
    body = suite.report(results, time.time() - t0, command) + skipped_note(name)
    print(body)
    if not args.no_write and not args.quick:
        write_section(args.out, name, body)
    return results


def main(argv: list[str] | None = None) -> dict[str, list[Result]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    p.add_argument("--quick", action="store_true", help="tiny sizes and budgets: a smoke run")
    p.add_argument("--families", nargs="*", default=None, help="families/compile suites: which families (default all)")
    p.add_argument("--dim", type=int, default=8, help="families/compile suites: D of the tabular cases")
    p.add_argument("--dims", type=int, nargs="+", default=None, help="unconstrained suite: D values")
    p.add_argument("--peers", nargs="+", default=None, help="unconstrained suite: ours zuko umnn")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per case (0: torch default)")
    p.add_argument("--worker", nargs=2, metavar=("SUITE", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    # One intra-op thread for every implementation: equal footing, and timings that do not
    # collapse when other processes share the cores (--threads 0 keeps torch's default). Set in
    # the driver too, so the report's machine line states it.
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.worker:
        suite = importlib.import_module(f"benchmarks.{args.worker[0]}")
        # seeded before the suite builds its model: a row (its initialisation, hence its NLL and whether
        # its samples invert) must be a function of the case, not of the process
        torch.manual_seed(0)
        emit(suite.worker(json.loads(args.worker[1])))
        return {}
    command = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, list[Result]] = {}
    for name in args.suites:
        if name in SCRIPT_SUITES:
            try:
                module = importlib.import_module(f"benchmarks.{name}")
            except ImportError as e:
                print(f"[{name}] skipped: {e}", file=sys.stderr)
                continue
            flags = ["--quick"] if args.quick else ([] if args.no_write else ["--write"])
            module.main(flags)
            continue
        results[name] = run_suite(name, args, command)
    return results


if __name__ == "__main__":
    main()
