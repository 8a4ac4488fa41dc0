"""Smoke test of scripts/benchmarks/snf.py: a real (tiny) timing run and the report section it writes."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("unflow_zoo_benchmark_snf", ROOT / "scripts/benchmarks/snf.py")
snf_bench = importlib.util.module_from_spec(spec)
sys.modules["unflow_zoo_benchmark_snf"] = snf_bench  # dataclasses look their module up while the file executes
spec.loader.exec_module(snf_bench)


def test_quick_run_writes_its_section_only(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nintro\n\n<!-- benchmark:other:start -->\nkeep me\n<!-- benchmark:other:end -->\n")
    rows = snf_bench.main(["--quick", "--write", "--out", str(out), "--dims", "6", "--batch", "16"])
    assert [(r.layer, r.dim, r.variant) for r in rows] == [
        ("fc", 6, "SNF"), ("fc", 6, "SNF + logged NLL"), ("fc", 6, "exact"),
        ("conv", 16, "SNF"), ("conv", 16, "SNF + logged NLL"), ("conv", 16, "exact"),
    ]  # fmt: skip
    assert all(r.step_ms > 0 and math.isfinite(r.step_ms) for r in rows)
    by = {(r.layer, r.variant): r.params for r in rows}
    # FC: W, b, R per layer (2 layers of 6); the exact model never uses R
    assert by[("fc", "SNF")] == 2 * (36 + 6 + 36) and by[("fc", "exact")] == 2 * (36 + 6)
    assert by[("conv", "SNF")] == 2 * (9 + 1 + 9) and by[("conv", "exact")] == 2 * (9 + 1)
    text = out.read_text()
    assert "intro" in text and "keep me" in text
    assert text.count("<!-- benchmark:snf:start -->") == 1 and text.count("<!-- benchmark:snf:end -->") == 1
    section = text.split("<!-- benchmark:snf:start -->")[1].split("<!-- benchmark:snf:end -->")[0]
    assert "| fc | 6 | exact | 84 |" in section and "1.00x |" in section
    snf_bench.main(["--quick", "--write", "--out", str(out), "--dims", "4", "--conv-sides", "2", "--batch", "8"])
    text = out.read_text()  # replaced, not appended
    assert text.count("<!-- benchmark:snf:start -->") == 1 and "| fc | 6 |" not in text and "| fc | 4 |" in text


def test_table_ratios():
    rows = [snf_bench.Row("fc", 64, "SNF", 10, 2.0), snf_bench.Row("fc", 64, "exact", 5, 5.0)]
    table = snf_bench.table(rows)
    assert "| fc | 64 | SNF | 10 | 2.00 | 2.50x |" in table and "| fc | 64 | exact | 5 | 5.00 | 1.00x |" in table
