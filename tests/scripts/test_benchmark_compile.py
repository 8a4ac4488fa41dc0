"""The ``compile`` benchmark suite: its cases, its table, and (slow: a real compile) a quick run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("unflow_zoo_benchmark", ROOT / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
sys.modules["unflow_zoo_benchmark"] = benchmark
spec.loader.exec_module(benchmark)  # puts scripts/ on sys.path, so the suites import as `benchmarks.*`

from benchmarks import compile as compile_suite
from benchmarks import harness

from unflow_zoo.models import list_models


def _result(family: str, **row) -> harness.Result:
    base = {
        "params": 100, "compile_cpu_s": 12.5, "compile_wall_s": 20.0, "eager_ms": 4.0, "compiled_ms": 2.0,
        "sample_compile_s": 3.0, "eager_samples_per_s": 1000.0, "compiled_samples_per_s": 1500.0,
        "max_abs_diff": 2.4e-7, "fallbacks": {}, "warnings": [],
    }  # fmt: skip
    base.update(row)
    return harness.Result(family, 8, 100, base["compiled_ms"], 0, 0, 0, 0, note=json.dumps(base), case={"dim": 8})


def test_the_suite_is_registered_and_covers_every_family():
    assert "compile" in benchmark.CASE_SUITES
    full = [c["family"] for c in compile_suite.cases(False)]
    assert set(list_models()) <= set(full) and "constrained (depth 1)" in full
    assert all(c["dim"] == 8 and c["batch"] == 256 for c in compile_suite.cases(False))
    assert [c["family"] for c in compile_suite.cases(True)] == ["linear"]  # quick: the cheapest compile
    assert [c["family"] for c in compile_suite.cases(True, ["maf", "nsf"])] == ["maf", "nsf"]


def test_the_table_gives_speed_ups_and_names_fallbacks():
    rows = [
        _result("maf"),
        _result("ffjord", eager_ms=300.0, compiled_ms=300.0, eager_samples_per_s=float("nan"),
                fallbacks={"log_prob": "FFJORD's ODE solve cannot be compiled"}),
    ]  # fmt: skip
    text = compile_suite.table(rows)
    maf = next(line for line in text.splitlines() if line.startswith("| maf |"))
    assert "| 12.5 | 4.00 | 2.00 | 2.00x | 1,000 | 1,500 | 1.50x | 2.4e-07 |" in maf
    ffjord = next(line for line in text.splitlines() if line.startswith("| ffjord |"))
    assert "| - | 300.00 | 300.00 | 1.00x | - | - | - |" in ffjord
    assert "log_prob eager: FFJORD's ODE solve cannot be compiled" in ffjord
    assert compile_suite.report(rows, 60, "cmd").startswith("## Compiled training")


@pytest.mark.slow
def test_quick_compile_suite_runs():
    (r,) = benchmark.main(["--suites", "compile", "--quick", "--no-write"])["compile"]
    row = json.loads(r.note)
    assert r.model == "linear" and row["fallbacks"] == {}
    assert row["eager_ms"] > 0 and row["compiled_ms"] > 0 and row["compile_cpu_s"] > 0
    assert row["max_abs_diff"] < 1e-4
