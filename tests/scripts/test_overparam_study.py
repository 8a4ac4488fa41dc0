"""scripts/overparam_study.py: a tiny in-process sweep, and --quick end to end (slow)."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "overparam_study.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("overparam_study", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study() -> ModuleType:
    return _load()


def test_smoke_run_writes_csv_summary_and_figures(study, tmp_path):
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    cfg = study.quick_config(
        datasets=("gmm1d",),
        widths={"constrained": (4, 16), "unconstrained": (8, 32)},
        seeds=(0,),
        epochs={"constrained": 2, "unconstrained": 2},
        max_train=96,
        max_test=64,
        limit_train_batches=2,
        out=tmp_path,
    )
    rows = study.run_study(cfg)
    paths = study.make_figures(rows, tmp_path)
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(threads)
    assert elapsed < 30, f"smoke run took {elapsed:.1f}s"

    # results.csv: written by run_study, one row per family x width x epoch (0 = init, then 2 epochs)
    with (tmp_path / "results.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == study.COLUMNS
        table = list(reader)
    for col in ("family", "data", "width", "seed", "epoch", "train_nll", "test_nll", "move_W", "move_b", "move_a"):
        assert col in study.COLUMNS
    assert len(table) == len(rows) == 2 * 2 * 3
    keys = {(r["family"], r["width"], r["epoch"]) for r in table}
    assert keys == {(f, str(w), str(e)) for f, ws in (("constrained", (4, 16)), ("unconstrained", (8, 32)))
                    for w in ws for e in range(3)}  # fmt: skip
    parsed = study.read_csv(tmp_path / "results.csv")
    for r in parsed:
        assert math.isfinite(r["train_nll"]) and math.isfinite(r["test_nll"])
        assert r["n_train"] == 96 and r["n_test"] == 64
        # gmm1d has a known density: the true entropy estimate is there, and no model beats it by much
        assert 1.5 < r["true_nll"] < 3.0
        if r["epoch"] == 0:
            assert r["move_W"] == 0.0
        else:
            assert r["move_W"] > 0
    # the paper's unconstrained integrand keeps its top layer fixed: a never moves
    assert all(r["move_a"] == 0.0 for r in parsed if r["family"] == "unconstrained")
    assert any(r["move_a"] > 0 for r in parsed if r["family"] == "constrained")

    names = {p.name for p in paths}
    assert names == {
        "nll_vs_epoch_constrained_gmm1d.png",
        "nll_vs_epoch_unconstrained_gmm1d.png",
        "final_nll_vs_width.png",
        "weight_movement_vs_width.png",
    }
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)

    table_md = study.summarize(rows)
    assert table_md.startswith("| family | data | width |")
    assert table_md.count("\n") == 2 + 4  # header, rule, one line per family x width


def test_command_line_builds_the_requested_sweep(study, tmp_path):
    args = study.parse_args(
        ["--quick", "--out", str(tmp_path), "--families", "constrained", "--datasets", "grid",
         "--widths-constrained", "3", "5", "--seeds", "7", "--epochs", "4"]
    )  # fmt: skip
    cfg = study.config_from_args(args)
    assert cfg.families == ("constrained",) and cfg.datasets == ("grid",)
    assert cfg.widths["constrained"] == (3, 5) and cfg.seeds == (7,)
    assert cfg.epochs_for("constrained") == 4 and cfg.out == tmp_path
    full = study.config_from_args(study.parse_args([]))
    assert full.datasets == ("mog1d", "beta1d", "grid", "mog5d", "gmm1d")
    assert full.widths == {"constrained": (10, 100, 1000, 10000), "unconstrained": (100, 400, 1600, 6400)}
    assert full.epochs_for("constrained") == 200 and full.epochs_for("unconstrained") == 100
    assert full.setups["constrained"].lr == 5e-4 and full.setups["unconstrained"].lr == 5e-3


def test_eval_every_records_selected_epochs_and_the_last(study):
    cfg = study.quick_config(
        datasets=("gmm1d",), widths={"constrained": (4,)}, families=("constrained",), seeds=(3,),
        epochs={"constrained": 5}, eval_every=2, max_train=64, max_test=32, limit_train_batches=1,
    )  # fmt: skip
    rows = study.run_one("constrained", "gmm1d", 4, 3, cfg)
    assert [r["epoch"] for r in rows] == [0, 2, 4, 5]
    assert [r["seed"] for r in rows] == [3] * 4
    assert rows[-1]["seconds"] > rows[0]["seconds"] >= 0


def test_models_get_the_paper_setup(study):
    cfg = study.full_config()
    dm = study.make_datamodule("unconstrained", "mog1d", 0, cfg)
    dm.setup()
    hp = study.model_hparams("unconstrained", 400, dm, cfg)
    assert hp["lower_limit"] == pytest.approx(float(dm.train_data.min()) - study.LOWER_LIMIT_MARGIN)
    assert (hp["integrand"], hp["quadrature"], hp["n_nodes"], hp["base"], hp["n_layers"]) == (
        "paper", "riemann", 50, "exponential", 1,
    )
    assert (hp["embedding"], hp["min_slope"], hp["train_top"]) == (0, 0.0, False)
    assert (hp["optimizer"], hp["lr"], hp["momentum"]) == ("sgd", 5e-3, 0.0)
    model = study.create_model("unconstrained", **hp)
    assert torch.isfinite(model.log_prob(dm.test_data)).all()

    dm = study.make_datamodule("constrained", "grid", 0, cfg)
    dm.setup()
    hp = study.model_hparams("constrained", 10, dm, cfg)
    assert (hp["linear_term"], hp["std_a"], hp["init"], hp["lr"], hp["event_shape"]) == (
        0.0, 0.005, "standard-normal", 5e-4, (2,),
    )
    assert len(dm.train_data) == 9000 and len(dm.test_data) == 1000
    torch.testing.assert_close(dm.train_data.mean(0), torch.zeros(2), atol=1e-5, rtol=0)


def test_ball_scaling_and_raw_units(study):
    dm = study.StudyDataModule(dataset="gmm1d", scaling="ball", n_samples=500, val_fraction=0.0, test_fraction=0.2)
    dm.setup()
    assert float(dm.train_data.norm(dim=1).max()) == pytest.approx(0.5, abs=1e-6)
    raw = dm.transform_to_raw(dm.train_data.double())
    # the true density in served units carries the scaling's log-Jacobian
    served_lp = dm.true_log_prob(dm.train_data.double())
    raw_lp = dm._raw_log_prob(raw)
    torch.testing.assert_close(served_lp, raw_lp + dm.log_scale())


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert time.perf_counter() - t0 < 600
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "summary.md").is_file()
    assert (tmp_path / "final_nll_vs_width.png").is_file()
    assert "| family | data | width |" in proc.stdout
