"""Smoke test of scripts/toy_table.py: one real (1-epoch) CLI run, and the report writer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("unflow_zoo_toy_table", ROOT / "scripts" / "toy_table.py")
toy_table = importlib.util.module_from_spec(spec)
sys.modules["unflow_zoo_toy_table"] = toy_table
spec.loader.exec_module(toy_table)


def test_quick_run_reads_the_gap_from_the_cli():
    results = toy_table.main(["--quick", "--no-write", "--families", "maf", "--toys", "8gaussians"])
    r = results["maf"]["8gaussians"]
    # The gap is an estimate of KL(p || q) >= 0 up to sampling noise; 1 epoch of 5 batches is far from 0.
    assert r["test_kl"] > 0.1 and r["seconds"] > 0
    # gap = NLL - true entropy, and the 8 Gaussians' entropy is about 2.83 nats
    assert r["test_nll"] - r["test_kl"] == pytest.approx(2.83, abs=0.1)


def test_table_flags_families_above_the_target():
    results = {
        "maf": {"8gaussians": {"test_kl": 0.05, "test_nll": 2.9}, "checkerboard": {"test_kl": 0.31, "test_nll": 3.8}},
        "linear": {"8gaussians": {"test_kl": 1.2, "test_nll": 4.0}},
    }
    text = toy_table.table(results)
    assert "| `maf` | 0.050 | 0.310 (above 0.2) | 2.900 | 3.800 |" in text
    # the affine baseline is not held to the target, and a missing run shows as '-'
    assert "| `linear` | 1.200 | - | 4.000 | - |" in text


def test_readme_section_is_replaced_in_place(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{toy_table.MARK_START}\nold\n{toy_table.MARK_END}\noutro\n")
    toy_table.write_readme("new table", readme)
    text = readme.read_text()
    assert "old" not in text and "new table" in text and text.startswith("intro") and text.endswith("outro\n")
    readme.write_text("no markers\n")
    with pytest.raises(RuntimeError, match="toys:start"):
        toy_table.write_readme("x", readme)
