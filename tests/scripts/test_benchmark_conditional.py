"""Smoke test of the conditional benchmark suite (scripts/benchmarks/conditional.py): a real, tiny run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("unflow_zoo_benchmark", ROOT / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
sys.modules.setdefault("unflow_zoo_benchmark", benchmark)
spec.loader.exec_module(benchmark)  # puts scripts/ on sys.path, so the suites import as `benchmarks.*`

from benchmarks import conditional


def test_quick_conditional_suite_measures_our_conditional_maf():
    results = benchmark.main(["--suites", "conditional", "--quick", "--no-write"])
    (r,) = results["conditional"]
    rows = json.loads(r.note)
    ours = rows["unflow-zoo maf"]
    # a draw with one context per row returns one finite sample per row (NaN samples/s otherwise)
    assert ours["step_ms"] > 0 and ours["samples_per_s"] > 0 and ours["params"] > 0
    # 20 Adam steps from a standard normal: a finite gap, above 0 up to the estimate's noise
    assert -0.5 < ours["gap"] < 10
    text = conditional.table(results["conditional"])
    assert "| two-moons-sbi | maf | unflow-zoo maf |" in text
    for peer in (k for k in rows if k != "unflow-zoo maf"):  # zuko, where installed, with its ratios
        assert f"| two-moons-sbi | maf | {peer} |" in text and "x |" in text


def test_every_family_has_one_zuko_peer_and_the_full_run_covers_every_task():
    assert set(conditional.BUILDERS) == {"maf", "nsf", "unconstrained"}
    full = conditional.cases(False)
    assert {(c["task"], c["family"]) for c in full} == {(t, f) for t in conditional.TASKS for f in conditional.BUILDERS}
    assert all(len(impls) == 2 for impls in conditional.BUILDERS.values())
