"""Smoke test of scripts/benchmarks/digits.py: one family's digits config through the CLI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("unflow_zoo_digits_suite", ROOT / "scripts" / "benchmarks" / "digits.py")
digits = importlib.util.module_from_spec(spec)
sys.modules["unflow_zoo_digits_suite"] = digits
spec.loader.exec_module(digits)


def test_every_family_has_a_digits_config():
    from unflow_zoo.models import list_models

    assert set(list_models()) <= set(digits.digits_configs())


def test_quick_run_reports_bits_per_dim_in_pixel_space():
    (row,) = digits.main(["--quick", "--no-zuko"])
    assert row["model"] == "unflow-zoo maf" and row["epochs"] == 1
    # 3 steps from the identity: worse than the data's ML Gaussian (~2.4) yet far from absurd;
    # above log2(17) = 4.09 would mean worse than uniform over the 17 pixel levels by a lot
    assert 2.0 < row["test_bpd"] < 8.0
    # bits/dim and the served NLL differ by the preprocessing log-det, which is large here
    assert abs(row["test_nll"] / (64 * 0.6931) - row["test_bpd"]) > 0.5


def test_table_sorts_by_bits_per_dim():
    rows = [
        {"model": "a", "epochs": 1, "test_nll": 60.0, "test_bpd": 2.5, "seconds": 3.0},
        {"model": "b", "epochs": 1, "test_nll": 50.0, "test_bpd": 2.1, "seconds": 3.0},
    ]
    text = digits.table(rows)
    assert text.index("| b |") < text.index("| a |")
