"""The overparameterization study: a smoke sweep, resuming, the command line and the cluster path."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from unflow_zoo.commands import run_command
from unflow_zoo.errors import ConfigError
from unflow_zoo.studies import overparam
from unflow_zoo.studies.overparam import COLUMNS, PAPER, StudyConfig, jobs_of, load_split, quick_config, run_study
from unflow_zoo.studies.report import width_effects, write_report

TINY = dict(
    datasets=("gmm1d", "grid"),
    widths={"constrained": (4, 16), "unconstrained": (8, 32)},
    seeds=(0, 1),
    epochs={"constrained": 2, "unconstrained": 2},
    max_train=128,
    max_test=64,
    max_steps=3,
)


def test_smoke_sweep_writes_rows_report_and_figures(tmp_path: Path) -> None:
    cfg = quick_config(out=tmp_path, **TINY)
    rows = run_study(cfg, say=lambda msg: None)
    jobs = jobs_of(cfg)
    # paper: 2 families x 2 data x 2 widths; matched: unconstrained only, and not at the
    # reference (narrowest) width, where its rate is the paper's
    assert len(jobs) == 8 + 2
    assert all(j.width == 32 for j in jobs if j.variant == "matched")
    assert len(rows) == len(jobs) * 2 * 3  # seeds x (init + 2 epochs)
    with (tmp_path / "results.csv").open() as fh:
        assert tuple(csv.DictReader(fh).fieldnames or ()) == COLUMNS
    for r in rows:
        assert math.isfinite(r["train_nll"]) and r["n_train"] == 128
        if r["epoch"] == 0:
            assert r["move_W"] == 0.0
        else:
            assert r["move_W"] > 0.0
    grid = [r for r in rows if r["data"] == "grid"]
    assert all(math.isfinite(r["true_nll"]) for r in grid)  # the grid's density is known
    # the matched variant rescales the rate by the gradient norms at initialisation
    matched = {(r["width"], r["seed"]): r for r in rows if r["variant"] == "matched" and r["epoch"] == 0}
    paper = {(r["width"], r["seed"], r["data"]): r for r in rows if r["variant"] == "paper"}
    for (width, seed), r in matched.items():
        ref = paper[(8, seed, r["data"])]["grad_sq_init"]
        assert r["lr"] == pytest.approx(PAPER["unconstrained"].lr * ref / r["grad_sq_init"], rel=1e-5)
    summary = write_report(rows, tmp_path).read_text()
    # the reference width appears in the matched rows of the report, as the paper's run
    assert "| gmm1d | unconstrained | matched | 8 |" in summary
    assert "| gmm1d | constrained | paper | 4 |" in summary and "Width effects" in summary
    for name in ("final_nll_vs_width.png", "weight_movement_vs_width.png", "ablation_matched_step.png",
                 "nll_vs_epoch_unconstrained_grid.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 1000


def test_rerun_skips_finished_jobs(tmp_path: Path, monkeypatch) -> None:
    cfg = quick_config(out=tmp_path, families=("constrained",), variants=("paper",), **TINY)
    run_study(cfg, say=lambda msg: None)
    files = sorted((tmp_path / "runs").glob("*.csv"))
    assert len(files) == 4
    (files[0]).unlink()  # one job "lost": only it runs again
    ran: list[str] = []
    real = overparam.run_job

    def spy(job, config, progress=None, checkpoint=None):
        ran.append(job.key)
        return real(job, config, progress, checkpoint)

    monkeypatch.setattr(overparam, "run_job", spy)
    messages: list[str] = []
    rows = run_study(cfg, say=messages.append)
    assert ran == [files[0].stem]
    assert any("3 of 4 jobs already finished" in m for m in messages)
    assert len(rows) == 4 * 2 * 3


def test_member_rows_equal_a_one_seed_run(tmp_path: Path) -> None:
    """A seed's numbers do not depend on which other seeds share its ensemble."""
    both = overparam.run_job(overparam.Job("constrained", "paper", "gmm1d", 16, (0, 1)), quick_config(**TINY))
    alone = overparam.run_job(overparam.Job("constrained", "paper", "gmm1d", 16, (1,)), quick_config(**TINY))
    a = [r["test_nll"] for r in both if r["seed"] == 1]
    b = [r["test_nll"] for r in alone]
    assert a == pytest.approx(b, rel=1e-5)


def test_split_scalings_and_raw_units() -> None:
    cfg = StudyConfig(max_train=500, max_test=100)
    ball = load_split("grid", 0, "ball", cfg)
    assert float(ball.train.norm(dim=1).max()) == pytest.approx(0.5, rel=1e-5)
    assert torch.all(ball.lower < ball.train.min(0).values)
    std = load_split("grid", 0, "standardize", cfg)
    assert torch.allclose(std.train.mean(0), torch.zeros(2), atol=1e-5)
    # the same raw points: the scalings differ by their log-Jacobians only
    assert std.true_nll == ball.true_nll


def test_command_line_quick_smoke(tmp_path: Path, capsys) -> None:
    rows = run_command([
        "study", "overparam", "--quick", "--out", str(tmp_path), "--datasets", "gmm1d", "--seeds", "0",
        "--widths-constrained", "4", "--widths-unconstrained", "8", "--epochs-constrained", "1",
        "--epochs-unconstrained", "1", "--max-steps", "2", "--max-train", "64", "--max-test", "32", "--jobs", "1",
    ])  # fmt: skip
    assert {r["family"] for r in rows} == {"constrained", "unconstrained"}
    assert (tmp_path / "summary.md").exists() and (tmp_path / "config.json").exists()
    assert "study finished" in capsys.readouterr().out
    again = run_command(["study", "overparam", "--quick", "--out", str(tmp_path), "--datasets", "gmm1d",
                         "--seeds", "0", "--report-only"])  # fmt: skip
    assert len(again) == len(rows)


def test_command_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        run_command(["study", "overparam", "--out", str(tmp_path / "none"), "--report-only"])
    with pytest.raises(ConfigError, match="families must be a non-empty list from constrained, unconstrained"):
        jobs_of(quick_config(families=("cnf",)))
    for bad in ({"datasets": ("nosuch",)}, {"widths": {"constrained": (0,)}}, {"epochs": {"unconstrained": 0}},
                {"seeds": ()}, {"test_fraction": 1.0}, {"jobs": 0}, {"order": "random"}):  # fmt: skip
        with pytest.raises(ConfigError, match="study overparam"):
            quick_config(**bad)


def test_submitit_local_executor(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    cfg = quick_config(out=tmp_path, families=("constrained",), variants=("paper",), **{**TINY, "datasets": ("gmm1d",)})
    rows = run_study(cfg, executor="submitit-local", say=lambda msg: None)
    assert len(rows) == 2 * 2 * 3
    assert (tmp_path / "submitit").is_dir()


def test_width_effects_are_paired_by_seed() -> None:
    rows = []
    for seed, base in ((0, 3.0), (1, 3.5), (2, 2.5)):
        for width, shift in ((10, 0.0), (100, -0.2)):
            rows.append(dict(family="unconstrained", variant="paper", data="mog1d", width=width, seed=seed, epoch=5,
                             test_nll=base + shift + 0.01 * seed))  # fmt: skip
    (effect,) = width_effects(rows)
    # the seeds differ by 1 nat, the paired difference by 0: the effect is far beyond the spread
    assert effect["mean"] == pytest.approx(-0.2) and effect["significant"] and effect["direction"] == "wider is better"


@pytest.mark.parametrize("family", ["constrained", "unconstrained"])
def test_a_stopped_job_resumes_from_its_last_epoch(tmp_path: Path, family: str) -> None:
    """The per-epoch checkpoint: a job stopped after epoch 1 and restarted gives the rows of an
    uninterrupted run (same weights, same batch orders), and the file is gone when it finishes."""
    cfg = quick_config(**{**TINY, "epochs": {"constrained": 3, "unconstrained": 3}})
    job = overparam.Job(family, "paper", "gmm1d", 16 if family == "constrained" else 8, (0, 1))
    whole = overparam.run_job(job, cfg)
    ckpt = tmp_path / "job.partial.pt"

    class Stop(Exception):
        pass

    def stop_after_first(key: str, epoch: int, total: int) -> None:
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        overparam.run_job(job, cfg, progress=stop_after_first, checkpoint=ckpt)
    assert ckpt.is_file()
    resumed = overparam.run_job(job, cfg, checkpoint=ckpt)
    assert not ckpt.exists()
    key = lambda r: (r["seed"], r["epoch"])  # noqa: E731
    assert [key(r) for r in resumed] == [key(r) for r in whole]
    for a, b in zip(resumed, whole):
        assert a["test_nll"] == pytest.approx(b["test_nll"], rel=1e-6) and a["move_W"] == pytest.approx(b["move_W"])
    # a checkpoint of another job, or garbage, is ignored
    ckpt.write_bytes(b"not a checkpoint")
    assert len(overparam.run_job(job, cfg, checkpoint=ckpt)) == len(whole)
