"""Multi-process DDP on the CPU (2 processes, gloo) against a single process.

A DDP run is a real ``strategy="ddp"`` launch, as ``unflow-zoo fit --trainer.strategy
ddp`` does it: a small script (written below) is started in a subprocess, and
Lightning starts its second rank by re-running the script. (``ddp_spawn`` would
pickle the data module into the workers; see the note in docs/distributed.md.)

Why 2 x batch B/2 must equal 1 x batch B: Lightning gives each rank a
``DistributedSampler``; with ``shuffle=True`` it draws one permutation of the
training set per epoch, seeded by ``seed_everything``'s seed plus the epoch, and
rank ``r`` takes positions ``r, r + 2, r + 4, ...``. Batch ``k`` of the two ranks
together is therefore positions ``[kB, (k+1)B)`` of that permutation, and DDP
averages the two half-batch mean gradients into the mean gradient of the whole
batch. A single process that walks the same permutation (a ``DistributedSampler``
with one replica) in batches of ``B`` takes the same Adam steps, up to float32
summation order. The training set (320 points) is a multiple of ``B`` and the
validation set (80) of the world size, so no sampler pads with repeated points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from unflow_zoo.data import DensityDataModule
from unflow_zoo.models import create_model

ROOT = Path(__file__).resolve().parents[1]
SEED, GLOBAL_BATCH, EPOCHS = 0, 64, 2
MODEL = {"event_shape": (2,), "n_layers": 2, "hidden": [16], "lr": 1e-2}
DATA = {"dataset": "moons", "n_samples": 400, "val_fraction": 0.2, "test_fraction": 0.0, "seed": SEED}
# Same steps, same batches: the two runs differ only in float32 summation order (the
# all-reduce adds two half-batch means), ~1e-7 relative per step; after 10 Adam steps the
# weights agree to 6e-8 (measured), and a wrong step (summed instead of averaged gradients,
# ranks seeing the same half, a different order) moves them by ~lr = 1e-2.
WEIGHT_ATOL = 1e-5

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from unflow_zoo.data import DensityDataModule
    from unflow_zoo.models import create_model
    from unflow_zoo.plots import DensityPlotCallback

    cfg = json.loads(sys.argv[1])
    out = Path(cfg["out"])


    class MarkedPlot(DensityPlotCallback):
        # leaves a marker named after the rank whenever a figure was actually drawn
        def on_fit_end(self, trainer, pl_module):
            super().on_fit_end(trainer, pl_module)
            if self.last_path is not None:
                (out / f"plotted_by_rank{trainer.global_rank}").touch()


    torch.set_num_threads(1)
    L.seed_everything(cfg["seed"], verbose=False)
    model = create_model("maf", **cfg["model"])
    dm = DensityDataModule(**cfg["data"])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=cfg["devices"],
        strategy="ddp",
        max_epochs=cfg["epochs"],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=[
            ModelCheckpoint(dirpath=str(out / "ckpt"), save_top_k=-1, every_n_epochs=1, filename="{epoch}"),
            MarkedPlot(n_samples=100, points=10),
        ],
    )
    trainer.fit(model, dm, ckpt_path=cfg.get("resume"))
    if trainer.is_global_zero:
        torch.save(model.state_dict(), out / "weights.pt")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (out / "metrics.json").write_text(json.dumps(dict(metrics, world_size=trainer.world_size)))
    """
)


def _run_ddp(tmp: Path, devices: int = 2, epochs: int = EPOCHS, resume: str | None = None) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "ddp_fit.py"
    script.write_text(SCRIPT)
    data = {**DATA, "batch_size": GLOBAL_BATCH // devices}
    cfg = {"out": str(tmp), "seed": SEED, "model": MODEL, "data": data, "devices": devices, "epochs": epochs}
    cfg["resume"] = resume
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for var in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK"):
        env.pop(var, None)  # let Lightning pick a free port: several suites may run at once
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(cfg)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    metrics = json.loads((tmp / "metrics.json").read_text())
    weights = torch.load(tmp / "weights.pt", weights_only=True)
    return {"metrics": metrics, "weights": weights, "dir": tmp}


class _SameOrderData(DensityDataModule):
    """The data module with the training order of a DDP run: a one-replica DistributedSampler."""

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ds = TensorDataset(self.train_data)
        sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=SEED)
        return DataLoader(ds, batch_size=self.hparams.batch_size, sampler=sampler)


def _run_single(trainer_factory) -> tuple[dict[str, float], dict[str, torch.Tensor], DensityDataModule]:
    L.seed_everything(SEED, verbose=False)
    model = create_model("maf", **MODEL)
    dm = _SameOrderData(**DATA, batch_size=GLOBAL_BATCH)
    trainer = trainer_factory(max_epochs=EPOCHS)
    trainer.fit(model, dm)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, model.state_dict(), dm


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict[str, Any]:
    return _run_ddp(tmp_path_factory.mktemp("ddp"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= atol, f"weights differ by {worst:.3g} > {atol}"
    return worst


def test_two_ranks_of_half_batches_equal_one_process(ddp_run, trainer_factory):
    assert ddp_run["metrics"]["world_size"] == 2
    metrics1, weights1, dm = _run_single(trainer_factory)
    _assert_same_weights(ddp_run["weights"], weights1, WEIGHT_ATOL)
    # and the training did move the weights by much more than the tolerance
    L.seed_everything(SEED, verbose=False)
    init = create_model("maf", **MODEL).state_dict()
    moved = max(float((init[k] - weights1[k]).abs().max()) for k in init if init[k].is_floating_point())
    assert moved > 100 * WEIGHT_ATOL

    # val_nll is synced: the 2-rank value is the mean over the whole validation set, not over
    # rank 0's half (which differs from it by far more than the tolerance)
    assert ddp_run["metrics"]["val_nll"] == pytest.approx(metrics1["val_nll"], rel=1e-5)
    model = create_model("maf", **MODEL)
    model.load_state_dict(ddp_run["weights"])
    with torch.no_grad():
        nll = -model.log_prob(dm.val_data)
    assert ddp_run["metrics"]["val_nll"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert abs(float(nll[0::2].mean()) - float(nll.mean())) > 1e-3  # what rank 0 alone would report


def test_figure_is_drawn_on_rank_zero_only(ddp_run):
    markers = sorted(p.name for p in ddp_run["dir"].glob("plotted_by_rank*"))
    assert markers == ["plotted_by_rank0"]
    assert (ddp_run["dir"] / "density.png").is_file()


@pytest.mark.slow
def test_resumed_ddp_run_equals_a_straight_run(ddp_run, tmp_path):
    # the straight run saved a checkpoint after each epoch; resume from the first one
    first = ddp_run["dir"] / "ckpt" / "epoch=0.ckpt"
    assert first.is_file()
    resumed = _run_ddp(tmp_path / "resumed", resume=str(first))
    # DistributedSampler reseeds with seed + epoch, so epoch 2 sees the same batches, and the
    # checkpoint restores the Adam moments: only summation order can differ
    _assert_same_weights(resumed["weights"], ddp_run["weights"], 1e-6)
    assert resumed["metrics"]["val_nll"] == pytest.approx(ddp_run["metrics"]["val_nll"], rel=1e-6)
