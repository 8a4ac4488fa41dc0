"""Smoke test of scripts/benchmark.py: a real (tiny) run of our model, and the report writer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("unflow_zoo_benchmark", ROOT / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
sys.modules["unflow_zoo_benchmark"] = benchmark  # dataclasses look their module up while the file executes
spec.loader.exec_module(benchmark)


def test_quick_run_of_our_flow():
    results = benchmark.main(["--quick", "--peers", "ours", "--no-write", "--sample-n", "64", "--batch", "128"])
    assert len(results) == 1
    r = results[0]
    assert r.model == "unflow-zoo unconstrained" and r.dim == 2 and r.params > 0
    assert r.train_step_ms > 0 and r.sample_s > 0 and r.note == ""
    # 30 Adam steps from a standard normal already close part of the gap on the 2-D mixture
    assert 0 <= r.kl_after_budget < 3.0


def test_report_section_is_replaced_not_duplicated(tmp_path):
    r = benchmark.Result("unflow-zoo unconstrained", 2, 10, 2.0, 0.5, 1.0, 0.1, 5)
    peer = benchmark.Result("zuko UNAF", 2, 10, 10.0, 5.0, 1.0, 0.2, 5)
    table = benchmark.table([peer, r])
    assert "| zuko UNAF | 2 | 10 | 10.0 | 5.0x | 5.000 | 10.0x |" in table
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\nintro\n")
    benchmark.write_section(out, "first")
    benchmark.write_section(out, "second")
    text = out.read_text()
    assert "intro" in text and "second" in text and "first" not in text
    assert text.count(benchmark.MARK_START) == 1
