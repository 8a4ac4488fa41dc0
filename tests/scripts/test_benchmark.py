"""Smoke tests of scripts/benchmark.py and its suites: real (tiny) runs, and the report writer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("unflow_zoo_benchmark", ROOT / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
sys.modules["unflow_zoo_benchmark"] = benchmark
spec.loader.exec_module(benchmark)  # puts scripts/ on sys.path, so the suites import as `benchmarks.*`

from benchmarks import families, harness, scaling, unconstrained


def test_quick_unconstrained_suite_measures_our_flow():
    results = benchmark.main(["--suites", "unconstrained", "--quick", "--no-write", "--peers", "ours"])
    (r,) = results["unconstrained"]
    assert r.model == "unflow-zoo unconstrained" and r.dim == 2 and r.params > 0
    assert r.train_step_ms > 0 and r.sample_s > 0 and r.note == ""
    # 30 Adam steps from a standard normal already close part of the gap on the 2-D mixture
    assert 0 <= r.kl_after_budget < 3.0


def test_quick_families_suite_has_our_row_and_ratios():
    results = benchmark.main(["--suites", "families", "--quick", "--no-write", "--families", "maf"])
    rows = results["families"]
    ours = [r for r in rows if r.model == "unflow-zoo maf"]
    assert len(ours) == 1 and ours[0].samples_per_s > 0 and ours[0].params > 0
    text = families.table(rows)
    assert "| maf | unflow-zoo maf | 2 |" in text
    # peers (zuko, nflows) appear only where installed, each with a ratio against our row
    for peer in (r for r in rows if r is not ours[0]):
        assert f"| maf | {peer.model} | 2 |" in text and "x |" in text


def test_every_case_suite_lists_cases_for_every_mode():
    for suite in (unconstrained, families, scaling):
        quick, full = suite.cases(True), suite.cases(False)
        assert quick and full and len(quick) <= len(full)
    widths = [c["width"] for c in scaling.cases(False) if c["sweep"] == "width m"]
    assert max(widths) >= 10_000  # the overparameterized regime


def test_ratio_table_reads_peer_over_ours():
    mk = lambda model, ms, s: harness.Result(model, 2, 10, ms, s, 1.0, 0.1, 5, case={"family": "maf", "sample_n": 100})
    text = families.table([mk("zuko MAF", 10.0, 0.5), mk("unflow-zoo maf", 2.0, 0.1)])
    # ours first; zuko takes 5x our step time and gives a fifth of our samples/s
    lines = [line for line in text.splitlines() if line.startswith("| maf")]
    assert lines[0].startswith("| maf | unflow-zoo maf |")
    assert "| 10.0 | 5.00x | 200 | 5.00x |" in lines[1]


def test_report_section_is_replaced_not_duplicated(tmp_path):
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\nintro\n")
    harness.write_section(out, "families", "first")
    harness.write_section(out, "scaling", "other")
    harness.write_section(out, "families", "second")
    text = out.read_text()
    assert "intro" in text and "second" in text and "first" not in text and "other" in text
    assert text.count("<!-- benchmark:families:start -->") == 1


def test_missing_peer_is_skipped_with_a_reason(capsys, monkeypatch):
    monkeypatch.setattr(harness, "SKIPPED", [])
    assert harness.run_case("families", {"family": "maf", "impl": "no such peer", "dim": 2}, timeout=300) is None
    assert "skipped" in capsys.readouterr().err
    # and the suite's report names it, so the committed table says which rows are missing
    note = harness.skipped_note("families")
    assert note.startswith("\n\nNot run: no such peer (") and harness.skipped_note("scaling") == ""


@pytest.mark.slow
def test_quick_scaling_suite_runs():
    rows = benchmark.main(["--suites", "scaling", "--quick", "--no-write"])["scaling"]
    assert rows and all(r.train_step_ms > 0 for r in rows)


def test_quick_interleaved_suite_times_our_flow_beside_its_peers():
    from benchmarks import interleaved

    (r,) = benchmark.main(["--suites", "interleaved", "--quick", "--no-write", "--families", "maf"])["interleaved"]
    text = interleaved.table([r])
    ours = [line for line in text.splitlines() if "| unflow-zoo maf |" in line]
    assert len(ours) == 1 and float(ours[0].split("|")[3]) > 0  # a measured train step in ms


def test_interleaved_suite_skips_a_peer_that_is_not_installed(monkeypatch, capsys):
    from benchmarks import interleaved

    def missing(dim):
        raise ImportError("No module named 'zuko'")

    monkeypatch.setitem(
        families.BUILDERS, "maf", {"unflow-zoo maf": families.BUILDERS["maf"]["unflow-zoo maf"], "zuko MAF": missing}
    )
    r = interleaved.worker({"family": "maf", "dim": 2, "rounds": 1, "steps": 1})
    text = interleaved.table([r])
    assert "| maf | unflow-zoo maf |" in text and "zuko MAF" not in text
    assert "zuko MAF: skipped" in capsys.readouterr().err
