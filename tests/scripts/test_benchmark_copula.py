"""Smoke test of scripts/benchmarks/copula.py: a real (tiny) run and the report section it writes."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("unflow_zoo_benchmark_copula", ROOT / "scripts/benchmarks/copula.py")
copula = importlib.util.module_from_spec(spec)
sys.modules["unflow_zoo_benchmark_copula"] = copula  # dataclasses look their module up while the file executes
spec.loader.exec_module(copula)


def test_quick_run_writes_its_section_only(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nintro\n\n<!-- benchmark:other:start -->\nkeep me\n<!-- benchmark:other:end -->\n")
    rows = copula.main(["--quick", "--write", "--out", str(out)])
    assert [r.base for r in rows] == ["normal", "student-t", "copula-t"]
    for r in rows:
        assert math.isfinite(r.test_nll) and math.isfinite(r.kl_gap) and r.params > 0
        assert set(r.quantile_error) == {"x1@0.99", "x1@0.999", "x2@0.99", "x2@0.999"}
        assert all(e >= 0 and math.isfinite(e) for e in r.quantile_error.values())
    by = {r.base: r for r in rows}
    assert by["normal"].df is None and len(by["copula-t"].df) == 2
    # even after a few steps a heavy-tailed base is far closer to heavy-tailed data
    assert by["copula-t"].kl_gap < by["normal"].kl_gap - 0.5
    text = out.read_text()
    assert "intro" in text and "keep me" in text
    assert text.count("<!-- benchmark:copula:start -->") == 1 and text.count("<!-- benchmark:copula:end -->") == 1
    section = text.split("<!-- benchmark:copula:start -->")[1].split("<!-- benchmark:copula:end -->")[0]
    assert "| `copula-t` |" in section and "| `normal` |" in section
    copula.main(["--quick", "--write", "--out", str(out), "--bases", "normal"])  # replaced, not appended
    text = out.read_text()
    assert text.count("<!-- benchmark:copula:start -->") == 1 and "| `copula-t` |" not in text
