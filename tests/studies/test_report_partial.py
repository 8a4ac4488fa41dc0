"""The study's report on part of a study: a folder holding only some jobs still gets its summary
and the figures its rows can fill (a run of the ablation alone once stopped matplotlib)."""

from __future__ import annotations

from pathlib import Path

from unflow_zoo.studies.overparam import read_csv
from unflow_zoo.studies.report import write_report

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "overparam" / "results.csv"


def _rows(keep):
    return [r for r in read_csv(RESULTS) if keep(r) and r["epoch"] in (0, 1, 100)]


def test_a_folder_with_only_ablation_jobs_gets_its_summary_and_ablation_figure(tmp_path):
    rows = _rows(lambda r: r["variant"] == "matched" and r["data"] == "mog1d")
    assert rows
    summary = write_report(rows, tmp_path)
    assert "| mog1d | unconstrained | matched |" in summary.read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "ablation_matched_step.png" in pngs and "final_nll_vs_width.png" not in pngs


def test_the_full_rows_give_every_figure(tmp_path):
    rows = _rows(lambda r: r["data"] in ("mog1d", "grid"))
    write_report(rows, tmp_path)
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"final_nll_vs_width.png", "weight_movement_vs_width.png", "ablation_matched_step.png"} <= pngs
    assert {"nll_vs_epoch_constrained_grid.png", "nll_vs_epoch_unconstrained_mog1d.png"} <= pngs
