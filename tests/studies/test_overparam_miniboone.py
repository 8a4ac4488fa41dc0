"""The MINIBOONE part of the overparameterization study (the official UMNN / B-NAF width sweep), on a
small fixture in the MAF archive's exact format: ``miniboone/data.npy``, a float64 array of 43 columns."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from unflow_zoo.commands import run_command
from unflow_zoo.errors import DataError
from unflow_zoo.models.constrained import ConstrainedFlow
from unflow_zoo.models.unconstrained import UnconstrainedFlow
from unflow_zoo.studies import overparam
from unflow_zoo.studies.overparam import (
    COLUMNS,
    DATASETS,
    MINIBOONE,
    StudyConfig,
    full_config,
    jobs_of,
    miniboone_model,
    quick_config,
    run_study,
)

ROWS = 300  # the published split: 30 test, 27 validation, 243 training rows


def write_archive(folder: Path, rows: int = ROWS, columns: int = 43) -> Path:
    """``folder/miniboone/data.npy`` as the archive has it (correlated float64 columns)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, columns)) @ (np.eye(columns) + 0.2 * rng.standard_normal((columns, columns)))
    path = folder / "miniboone" / "data.npy"
    path.parent.mkdir(parents=True)
    np.save(path, x)
    return folder


def tiny(data_dir: Path | None = None, **overrides) -> StudyConfig:
    kw: dict = {
        "datasets": ("miniboone",), "widths": {"constrained": (2, 4), "unconstrained": (2, 4)},
        "epochs": {"constrained": 2, "unconstrained": 2}, "seeds": (1, 2), "max_steps": 2, "data_dir": data_dir,
    }  # fmt: skip
    return StudyConfig(**{**kw, **overrides})


def test_defaults_keep_miniboone_out_and_follow_the_official_runs() -> None:
    assert "miniboone" not in DATASETS and StudyConfig().datasets == DATASETS
    assert not any(j.data == "miniboone" for j in jobs_of(full_config()))
    cfg = StudyConfig(datasets=("miniboone", "mog1d"), variants=("paper", "matched"))
    for family, epochs in (("unconstrained", 500), ("constrained", 1000)):
        assert cfg.widths_for(family, "miniboone") == (8, 16, 32, 64, 128, 256)
        assert cfg.epochs_for(family, "miniboone") == epochs
    assert cfg.widths_for("constrained", "mog1d") == (10, 100, 1000, 10000)  # the synthetic sets unchanged
    jobs = jobs_of(cfg)
    assert {j.variant for j in jobs if j.data == "miniboone"} == {"paper"}  # no ablation there
    assert sum(j.data == "miniboone" for j in jobs) == 12
    assert quick_config(datasets=("miniboone",)).widths_for("unconstrained", "miniboone") == (8, 16, 32)
    u, c = MINIBOONE["unconstrained"], MINIBOONE["constrained"]
    assert (u.lr, u.batch_size, u.clip_value, u.lr_step, u.lr_gamma) == (1e-3, 500, 1.0, 100, 0.1)
    assert (c.lr, c.batch_size, c.clip_norm, c.lr_step) == (1e-2, 200, 0.1, None)
    assert u.rate_factor(100) == 1.0 and u.rate_factor(101) == pytest.approx(0.1)


def test_models_are_the_official_shapes() -> None:
    umnn = miniboone_model("unconstrained", 8, 43, seed=1)
    assert isinstance(umnn, UnconstrainedFlow) and len(umnn.transforms) == 1
    hp = umnn.hparams
    assert (list(hp.hidden), list(hp.conditioner_hidden), hp.embedding, hp.n_nodes) == ([8] * 3, [8] * 3, 8, 51)
    assert (hp.quadrature, hp.min_slope, hp.base) == ("clenshaw-curtis", 0.0, "normal")
    bnaf = miniboone_model("constrained", 8, 43, seed=1, depth=2)
    assert isinstance(bnaf, ConstrainedFlow) and len(bnaf.blocks) == 5
    assert all(b.depth == 2 and b.positivity == "exp" and b.linear_term == 1.0 for b in bnaf.blocks)


def test_study_end_to_end_rows_resume_and_report(tmp_path: Path, monkeypatch) -> None:
    data = write_archive(tmp_path / "data")
    monkeypatch.setenv("UNFLOW_ZOO_DATA", str(data))  # the loader's default folder, as a user sets it
    out = tmp_path / "out"
    args = ["study", "overparam", "--out", str(out), "--datasets", "miniboone", "--seeds", "1,2",
            "--widths-constrained", "2,4", "--widths-unconstrained", "2", "--epochs-constrained", "2",
            "--epochs-unconstrained", "2", "--max-steps", "2", "--jobs", "1"]  # fmt: skip
    rows = run_command(args)
    assert len(rows) == 3 * 2 * 3  # (2 + 1 widths) x 2 seeds x (init + 2 epochs)
    with (out / "results.csv").open() as fh:
        assert tuple(csv.DictReader(fh).fieldnames or ()) == COLUMNS
    for r in rows:
        assert r["data"] == "miniboone" and r["variant"] == "paper"
        assert (r["n_train"], r["n_test"]) == (243, 30)  # the published tail split of 300 rows
        assert math.isfinite(r["train_nll"]) and math.isfinite(r["test_nll"]) and math.isnan(r["true_nll"])
        assert r["lr"] == MINIBOONE[r["family"]].lr and r["grad_sq_init"] > 0
        assert (r["move_W"] == 0.0) == (r["epoch"] == 0)
    summary = (out / "summary.md").read_text()  # the command's report
    # a rerun (the same sweep, through the API) reruns only the job whose file was lost
    (out / "runs" / "constrained-paper-miniboone-m4.csv").unlink()
    ran: list[str] = []
    real = overparam.run_job
    monkeypatch.setattr(overparam, "run_job", lambda job, *a, **k: ran.append(job.key) or real(job, *a, **k))
    messages: list[str] = []
    again = run_study(tiny(out=out, widths={"constrained": (2, 4), "unconstrained": (2,)}), say=messages.append)
    assert ran == ["constrained-paper-miniboone-m4"] and len(again) == len(rows)
    assert any("2 of 3 jobs already finished" in m for m in messages)
    assert "| miniboone | unconstrained | paper | 2 |" in summary and "MAF-standardised" in summary
    assert (out / "nll_vs_epoch_constrained_miniboone.png").stat().st_size > 1000


@pytest.mark.parametrize("family", ["constrained", "unconstrained"])
def test_a_stopped_job_resumes_inside_its_second_member(tmp_path: Path, family: str) -> None:
    """Members train one after the other: a job stopped in the second member's first epoch keeps the
    first member's rows and resumes the second from its checkpoint, as if never stopped."""
    cfg = tiny(write_archive(tmp_path / "data"), epochs={family: 2})
    job = overparam.Job(family, "paper", "miniboone", 4, (1, 2))
    whole = overparam.run_job(job, cfg)
    ckpt = tmp_path / "job.partial.pt"
    seen: list[tuple[int, int]] = []

    class Stop(Exception):
        pass

    def stop(key: str, done: int, total: int) -> None:
        seen.append((done, total))
        if done == 3:  # the second member's first epoch
            raise Stop

    with pytest.raises(Stop):
        overparam.run_job(job, cfg, progress=stop, checkpoint=ckpt)
    assert seen == [(1, 4), (2, 4), (3, 4)] and ckpt.is_file()
    resumed = overparam.run_job(job, cfg, checkpoint=ckpt)
    assert not ckpt.exists()

    def key(r: dict) -> tuple[int, int]:
        return r["seed"], r["epoch"]

    assert [key(r) for r in resumed] == [key(r) for r in whole] == [(s, e) for s in (1, 2) for e in range(3)]
    for a, b in zip(resumed, whole):
        assert a["test_nll"] == pytest.approx(b["test_nll"], rel=1e-6) and a["move_W"] == pytest.approx(b["move_W"])


def test_a_missing_or_foreign_archive_fails_before_any_job(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"miniboone/data\.npy") as err:
        run_study(tiny(empty, out=out), say=lambda msg: None)
    message = str(err.value)
    assert str(empty) in message and "--data-dir" in message and "--download" in message and "zenodo" in message
    assert not out.exists()  # nothing ran, nothing was written
    with pytest.raises(DataError, match="miniboone/data.npy"):  # the command line says the same
        run_command(["study", "overparam", "--out", str(out), "--datasets", "miniboone", "--data-dir", str(empty)])
    wrong = write_archive(tmp_path / "wrong", columns=10)
    with pytest.raises(DataError, match=r"expected \(N, 43\)"):
        run_study(tiny(wrong, out=out), say=lambda msg: None)
