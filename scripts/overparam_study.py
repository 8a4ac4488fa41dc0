r"""Overparameterization study: constrained vs unconstrained flows as the width grows.

Reproduces the synthetic-data experiments of Shah, Deshpande & Goyal,
"Learning and Generalization in Overparameterized Normalizing Flows" (AISTATS
2022, arXiv:2106.10535; code github.com/kulinshah98/overparam-NFs, folders
``CNF/`` and ``UNF/``). The paper's claim: one-hidden-layer *constrained* flows
(positive weights) train worse as the width ``m`` grows, while *unconstrained*
flows (integrate a positive, unconstrained network; UMNN-style) learn well
when overparameterized. This script sweeps ``m`` for both families on the
paper's four data files (``mog1d``, ``beta1d``, ``grid``, ``mog5d``) and on
``gmm1d``, a two-Gaussian mixture with a known density, so that the NLL can be
compared with the true entropy.

Training setup, as in the official code (``CNF/main.py``, ``CNF/utils.py``,
``UNF/main.py``, ``UNF/utils.py``); what we do differently is listed below.

- Constrained: :math:`f(x) = \sum_r a_r c \tanh(w_r x + b_r)` (block
  autoregressive for D > 1), ``w, a >= 1e-6`` by projection after every step
  ("clamp-zero"), ``w, b ~ N(0, 1)``, ``c = 1/sqrt(m)``, ``a ~ |N(0, 0.005^2)|``,
  all layers trained; standard normal base; SGD lr 5e-4, batch 32, 200 epochs,
  no momentum, constant lr; data standardised per coordinate, 90/10
  train/test split; seed 18.
- Unconstrained: :math:`f(x) = \int_{x_0}^x \mathrm{ELU}(N(t)) + 1\,dt` with
  :math:`N(t) = a^\top \mathrm{ReLU}(W [x_{<i}, t] + b)`, one network per
  coordinate, ``W, b ~ N(0, 1/m)``, top layer ``a ~ N(0, 0.25^2)`` fixed (not
  trained), no offset; right Riemann sum with 50 nodes; standard exponential
  base with :math:`x_0` = the data minimum of each coordinate; SGD lr 5e-3,
  batch 32, 100 epochs; data divided by twice the largest norm (a ball of
  radius 1/2, not centred), all points used for training; seed 9.

Deviations, and why:

- Both families use the same seeded 90/10 train/test split, so that both
  report a test NLL (the paper's unconstrained runs have no test set), and the
  scaling statistics (mean/std, resp. the ball radius) come from the training
  split only (the paper's constrained code standardises with the whole file).
- The lower integration limit ``x0`` is one scalar for all coordinates in this
  package: the smallest training coordinate minus a margin of 0.05 (5% of the
  ball's diameter), instead of the per-coordinate minimum over all points.
  With an exponential base, points below ``x0`` have density 0; the margin
  keeps held-out points slightly below the training minimum finite (any that
  still fall outside are counted in ``test_nonfinite``).
- For D > 1 the package's unconstrained flow conditions one shared paper
  integrand on a MADE embedding of :math:`x_{<i}` (UMNN-MAF) instead of
  feeding :math:`x_{<i}` to a separate network per coordinate; in 1-D the
  embedding is switched off (``embedding=0``), which is the paper's model.
- The constrained flow runs with ``linear_term=0`` (the paper's map, whose
  density is sub-normalised), not the package default 0.01.
- NLLs are reported in the *raw data units* of each file (nats per point, the
  log-Jacobian of the scaling added back), so that the two families, which see
  differently scaled data, are comparable with each other and with the true
  entropy. They are evaluated on the whole train and test split after every
  epoch (``--eval-every``), like the paper's ``find_complete_training_loss``.
- The paper ran one seed; we run several and report mean and spread.
- ``--quick`` trains far shorter (see :func:`quick_config`).

Usage::

    PYTHONPATH=. python scripts/overparam_study.py --quick --out runs/overparam-quick
    PYTHONPATH=. python scripts/overparam_study.py --out runs/overparam --jobs 16   # the full study

Outputs in ``--out``: ``results.csv`` (one row per family, data set, width,
seed and epoch; epoch 0 is the initialisation), ``summary.md`` (final test NLL,
mean ± std over seeds), ``nll_vs_epoch_<family>_<data>.png``,
``final_nll_vs_width.png`` and ``weight_movement_vs_width.png``.

Cost, on 2 shared CPU cores with one torch thread per run (details in
``docs/overparam_study.md``):

- ``--quick``: measured 4 min 17 s wall clock (252 s of training, 24 runs,
  peak memory 0.55 GB).
- the full study (5 data sets x (4 + 4) widths x 3 seeds = 120 runs, 200/100
  epochs on 9,000 points): *estimated* from measured per-step and evaluation
  costs at about 40 CPU-hours (29 with ``--eval-every 10``); the longest single
  run (unconstrained, ``mog5d``, m = 6400) takes about 4.7 h, so
  ``--jobs 16`` on a 16-core machine needs about 5 h. Split it with
  ``--families``/``--datasets``/``--seeds`` and merge the CSVs with
  ``--from-csv a/results.csv b/results.csv --out merged``.

Full run::

    PYTHONPATH=. python scripts/overparam_study.py --out runs/overparam --jobs 16

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
    Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import logging
import math
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")  # headless: figures go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from unflow_zoo.callbacks import WeightMovementCallback  # noqa: E402
from unflow_zoo.data import DensityDataModule  # noqa: E402
from unflow_zoo.models import create_model, get_model_class  # noqa: E402
from unflow_zoo.models.base import FlowModule  # noqa: E402

try:  # the unconstrained family registers itself on import; models/__init__ may not import it yet
    import unflow_zoo.models.unconstrained  # noqa: E402,F401
except ImportError:  # pragma: no cover - only while that family is being written
    pass

__all__ = [
    "COLUMNS",
    "DATASETS",
    "FAMILIES",
    "LOWER_LIMIT_MARGIN",
    "PAPER_SETUP",
    "EpochNLLRecorder",
    "FamilySetup",
    "StudyConfig",
    "StudyDataModule",
    "config_from_args",
    "dataset_nll",
    "full_config",
    "main",
    "make_datamodule",
    "make_figures",
    "model_hparams",
    "parse_args",
    "quick_config",
    "read_csv",
    "run_one",
    "run_study",
    "summarize",
    "true_test_nll",
    "write_csv",
]

FAMILIES: tuple[str, ...] = ("constrained", "unconstrained")
DATASETS: tuple[str, ...] = ("mog1d", "beta1d", "grid", "mog5d", "gmm1d")
GROUPS: tuple[str, ...] = ("W", "b", "a")
#: Columns of results.csv, in order.
COLUMNS: tuple[str, ...] = (
    "family", "data", "width", "seed", "epoch", "train_nll", "test_nll", "true_nll",
    "move_W", "move_b", "move_a", "rel_move_W", "rel_move_b", "rel_move_a",
    "test_nonfinite", "n_train", "n_test", "seconds",
)  # fmt: skip


# ----- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySetup:
    """The paper's training setup for one family.

    Attributes:
        lr: SGD learning rate.
        epochs: training epochs.
        scaling: ``"standardize"`` (zero mean, unit variance per coordinate) or
            ``"ball"`` (divide by twice the largest norm: a ball of radius 1/2).
        model: hyper-parameters passed to :func:`unflow_zoo.create_model` (besides
            ``width``, ``event_shape`` and the optimiser).
    """

    lr: float
    epochs: int
    scaling: str
    model: dict[str, Any] = field(default_factory=dict)


#: Official code defaults (CNF/main.py, UNF/main.py); see the module docstring.
PAPER_SETUP: dict[str, FamilySetup] = {
    "constrained": FamilySetup(
        lr=5e-4,
        epochs=200,
        scaling="standardize",
        model=dict(
            init="standard-normal", std_a=0.005, positivity="clamp", eps=1e-6, depth=1, n_layers=1,
            train_layers=("W", "b", "a"),
            # The paper's f has no linear term (the density is sub-normalised by the base mass outside
            # f's bounded image); the study reproduces the paper's model, not the package default 0.01.
            linear_term=0.0,
        ),
    ),
    "unconstrained": FamilySetup(
        lr=5e-3,
        epochs=100,
        scaling="ball",
        model=dict(
            integrand="paper", init="gaussian-sqrt-m", std_a=0.25, train_top=False, n_layers=1,
            quadrature="riemann", n_nodes=50, phi="elu", base="exponential", min_slope=0.0,
        ),
    ),
}

#: Margin below the smallest training coordinate for the unconstrained lower limit (ball units).
LOWER_LIMIT_MARGIN = 0.05


@dataclass
class StudyConfig:
    """One sweep. Every field has the full study's value by default.

    Attributes:
        families, datasets: what to sweep.
        widths: per family, the widths m.
        seeds: one run per seed (seeds the split, the initialisation and the batch order).
        epochs: per family; ``None`` entries take the paper's.
        setups: per family training setup (lr, scaling, model hyper-parameters).
        batch_size: SGD batch size (paper: 32).
        test_fraction: held-out share (paper: 0.1).
        n_samples: points drawn from synthetic sources (the paper's files have 10,000).
        max_train, max_test: subsample the splits (``None``: all points).
        limit_train_batches: cap on batches per epoch (smoke tests; ``None``: all).
        eval_batch_size: batch size of the full-data NLL evaluation (128: the constrained
            network's forward pass is memory-bound, small blocks stay in cache).
        eval_every: evaluate the full train/test NLL every this many epochs (and after
            the last); the paper's constrained code does so every epoch, its unconstrained
            code every 10. Evaluation costs about as much as an epoch of training at m = 10^4.
        jobs: runs in parallel worker processes (each with ``threads`` torch threads).
        threads: torch intra-op threads (1 is fastest on small shared machines).
        csv_logger: also write Lightning's CSVLogger files under ``<out>/lightning``.
        out: output folder (CSV written there after every run, so partial sweeps survive).
    """

    families: tuple[str, ...] = FAMILIES
    datasets: tuple[str, ...] = DATASETS
    widths: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {"constrained": (10, 100, 1000, 10000), "unconstrained": (100, 400, 1600, 6400)}
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: dict[str, int | None] = field(default_factory=lambda: {f: None for f in FAMILIES})
    setups: dict[str, FamilySetup] = field(default_factory=lambda: dict(PAPER_SETUP))
    batch_size: int = 32
    test_fraction: float = 0.1
    n_samples: int = 10000
    max_train: int | None = None
    max_test: int | None = None
    limit_train_batches: int | None = None
    eval_batch_size: int = 128
    eval_every: int = 1
    jobs: int = 1
    threads: int = 1
    csv_logger: bool = False
    out: Path | None = None

    def epochs_for(self, family: str) -> int:
        e = self.epochs.get(family)
        return self.setups[family].epochs if e is None else int(e)


def full_config(**overrides: Any) -> StudyConfig:
    """The full study: paper setup, all five data sets, 4 + 4 widths, 3 seeds."""
    return replace(StudyConfig(), **overrides)


def quick_config(**overrides: Any) -> StudyConfig:
    """A small version that finishes in minutes on 2 CPU cores.

    Two 1-D data sets (``mog1d`` from the paper, ``gmm1d`` with a known
    density), widths {10, 100, 1000} and {100, 400, 1600}, two seeds, the
    full 9,000/1,000 split, and 20 epochs (5,640 SGD steps) of the constrained
    and 8 epochs (2,256 steps) of the unconstrained flow with the paper's
    learning rates: a tenth of the paper's constrained and a twelfth of its
    unconstrained training, so the curves show early training, not convergence.
    """
    cfg = StudyConfig(
        datasets=("mog1d", "gmm1d"),
        widths={"constrained": (10, 100, 1000), "unconstrained": (100, 400, 1600)},
        seeds=(0, 1),
        epochs={"constrained": 20, "unconstrained": 8},
    )
    return replace(cfg, **overrides)


# ----- data -------------------------------------------------------------------------------------


class StudyDataModule(DensityDataModule):
    r"""A :class:`~unflow_zoo.data.DensityDataModule` with the paper's scalings and subsampling.

    ``scaling="standardize"`` is the parent's standardisation (constrained runs);
    ``scaling="ball"`` divides every coordinate by :math:`s = 2 \max_i \|x_i\|`
    over the training split, so that training points lie in the ball of radius
    1/2 (unconstrained runs, ``UNF/utils.py``), recorded as ``std = s`` so that
    :meth:`true_log_prob` and :meth:`log_scale` account for it. ``max_train`` /
    ``max_test`` keep the first points of the (already shuffled) splits.
    """

    def __init__(
        self, *args: Any, scaling: str = "standardize", max_train: int | None = None,
        max_test: int | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        if scaling not in ("standardize", "ball", "none"):
            raise ValueError(f"unknown scaling {scaling!r}; choose standardize, ball or none")
        kwargs["standardize"] = scaling == "standardize"
        super().__init__(*args, **kwargs)
        self.scaling, self.max_train, self.max_test = scaling, max_train, max_test

    def setup(self, stage: str | None = None) -> None:
        if self.is_setup:
            return
        super().setup(stage)
        assert self.train_data is not None and self.test_data is not None
        if self.max_train is not None:
            self.train_data = self.train_data[: self.max_train]
        if self.max_test is not None:
            self.test_data = self.test_data[: self.max_test]
        if self.scaling == "ball":
            # Raw coordinates here (standardize=False): the parent's mean/std are the identity.
            radius = float(self.train_data.double().norm(dim=1).max())
            scale = 2.0 * radius if radius > 0 else 1.0
            self.mean = torch.zeros(self.event_shape[0], dtype=torch.float64)
            self.std = torch.full((self.event_shape[0],), scale, dtype=torch.float64)
            self.train_data = (self.train_data.double() / scale).float()
            self.val_data = (self.val_data.double() / scale).float() if self.val_data is not None else None
            self.test_data = (self.test_data.double() / scale).float()

    def log_scale(self) -> float:
        r""":math:`\sum_d \log s_d`: add it to an NLL of served points to get the NLL in raw units."""
        return float(torch.log(self.std).sum())


def make_datamodule(family: str, data: str, seed: int, config: StudyConfig) -> StudyDataModule:
    """The data module of one run (same split for every width and family at a given seed)."""
    return StudyDataModule(
        dataset=data,
        scaling=config.setups[family].scaling,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        n_samples=config.n_samples,
        val_fraction=0.0,
        test_fraction=config.test_fraction,
        seed=seed,
        max_train=config.max_train,
        max_test=config.max_test,
    )


# ----- models -----------------------------------------------------------------------------------


def model_hparams(family: str, width: int, dm: StudyDataModule, config: StudyConfig) -> dict[str, Any]:
    """Hyper-parameters for :func:`create_model` for one run (``dm`` must be set up).

    Keys of the paper setup that the family does not accept are dropped with a
    warning, so the study states what it could not reproduce instead of failing.
    """
    setup = config.setups[family]
    hp: dict[str, Any] = dict(setup.model)
    hp.update(event_shape=dm.event_shape, width=width, optimizer="sgd", lr=setup.lr, momentum=0.0)
    if family == "unconstrained":
        assert dm.train_data is not None
        if "lower_limit" not in setup.model:
            # The paper integrates from the data minimum; one scalar here, with a margin for held-out points.
            hp["lower_limit"] = float(dm.train_data.min()) - LOWER_LIMIT_MARGIN
        if "embedding" not in setup.model and dm.event_shape[0] == 1:
            # In 1-D the paper's integrand sees t alone; an embedding would only add a learned bias.
            hp["embedding"] = 0
    accepted = _accepted_kwargs(get_model_class(family))
    dropped = sorted(k for k in hp if k not in accepted)
    if dropped:
        warnings.warn(f"{family}: the model does not accept {dropped}; running without them", stacklevel=2)
        hp = {k: v for k, v in hp.items() if k in accepted}
    return hp


def _accepted_kwargs(cls: type) -> set[str]:
    """Named constructor arguments of ``cls`` and of its FlowModule bases (a family passes ``**kwargs`` up)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if isinstance(klass, type) and issubclass(klass, FlowModule):
            params = inspect.signature(klass.__init__).parameters
            names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
    return names


# ----- one run ----------------------------------------------------------------------------------


@torch.no_grad()
def dataset_nll(model: FlowModule, data: Tensor, batch_size: int) -> tuple[float, int]:
    """Mean NLL of ``data`` under ``model`` (served units) and the number of points with non-finite log-density.

    Evaluated in batches without autograd: the paper's ``find_complete_training_loss``
    evaluates the whole training set after every epoch, not the running average of the epoch.
    """
    was_training = model.training
    model.eval()
    total, nonfinite = 0.0, 0
    try:
        for chunk in data.split(batch_size):
            lp = model.log_prob(chunk.to(model.device)).double()
            nonfinite += int((~torch.isfinite(lp)).sum())
            total += float(-lp.sum())
    finally:
        model.train(was_training)
    return total / max(len(data), 1), nonfinite


class EpochNLLRecorder(L.Callback):
    """Record the full train and test NLL (in raw data units) at fit start and after every
    ``every``-th epoch (and the last).

    ``history`` holds one dict per evaluation, keys ``epoch`` (0: the initialisation),
    ``train_nll``, ``test_nll``, ``test_nonfinite`` and ``seconds`` (wall time since fit start).
    """

    def __init__(self, dm: StudyDataModule, eval_batch_size: int = 128, every: int = 1) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be a positive int, got {every}")
        self.dm, self.eval_batch_size, self.every = dm, eval_batch_size, every
        self.history: list[dict[str, Any]] = []
        self._t0 = 0.0

    def _record(self, pl_module: FlowModule, epoch: int) -> None:
        assert self.dm.train_data is not None and self.dm.test_data is not None
        shift = self.dm.log_scale()
        train, _ = dataset_nll(pl_module, self.dm.train_data, self.eval_batch_size)
        test, bad = dataset_nll(pl_module, self.dm.test_data, self.eval_batch_size)
        self.history.append(
            dict(epoch=epoch, train_nll=train + shift, test_nll=test + shift, test_nonfinite=bad,
                 seconds=time.perf_counter() - self._t0)
        )  # fmt: skip

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.history = []
        self._t0 = time.perf_counter()
        self._record(pl_module, 0)  # type: ignore[arg-type]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every == 0 or last:
            self._record(pl_module, epoch)  # type: ignore[arg-type]


def true_test_nll(dm: StudyDataModule) -> float:
    """Mean true NLL of the test points in raw units (a Monte Carlo estimate of the entropy), or NaN."""
    assert dm.test_data is not None
    if not dm.has_true_density:
        return math.nan
    lp = dm.true_log_prob(dm.test_data.double())
    return math.nan if lp is None else float(-lp.mean()) + dm.log_scale()


def run_one(family: str, data: str, width: int, seed: int, config: StudyConfig) -> list[dict[str, Any]]:
    """Train one flow and return one row per epoch (epoch 0 = initialisation), columns :data:`COLUMNS`."""
    dm = make_datamodule(family, data, seed, config)
    dm.setup("fit")
    assert dm.train_data is not None and dm.test_data is not None
    L.seed_everything(seed, workers=False, verbose=False)
    model = create_model(family, **model_hparams(family, width, dm, config))
    movement = WeightMovementCallback(log=False)
    recorder = EpochNLLRecorder(dm, config.eval_batch_size, config.eval_every)
    logger: Any = False
    if config.csv_logger and config.out is not None:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(Path(config.out) / "lightning", name=f"{family}-{data}-m{width}-s{seed}")
        movement.log_metrics = True
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=config.epochs_for(family),
        limit_train_batches=config.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[movement, recorder],
    )
    trainer.fit(model, datamodule=dm)
    true_nll = true_test_nll(dm)
    moves = {h["epoch"] + 1: h for h in movement.history if h["stage"] == "epoch"}
    zero = {f"{p}move_{g}": 0.0 for g in GROUPS for p in ("", "rel_")}
    rows = []
    for rec in recorder.history:
        mv = zero if rec["epoch"] == 0 else moves.get(rec["epoch"], {})
        row = dict(family=family, data=data, width=width, seed=seed, **rec, true_nll=true_nll,
                   n_train=len(dm.train_data), n_test=len(dm.test_data))  # fmt: skip
        for g in GROUPS:
            for p in ("", "rel_"):
                row[f"{p}move_{g}"] = mv.get(f"{p}move_{g}", math.nan)
        rows.append({c: row[c] for c in COLUMNS})
    return rows


def run_study(config: StudyConfig, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every (family, data set, width, seed) run of ``config``, one row per evaluated epoch.

    Runs go one after another, or over ``config.jobs`` worker processes. Rows come
    back in sweep order either way; with ``config.out`` set, ``results.csv`` is
    rewritten after every finished run, so an interrupted sweep keeps what it did.
    """
    say = progress or (lambda msg: None)
    unknown = [f for f in config.families if f not in config.setups]
    if unknown:
        raise ValueError(f"no training setup for families {unknown}; known: {sorted(config.setups)}")
    _quiet_lightning()
    runs = [(f, d, w, s) for d in config.datasets for f in config.families for w in config.widths[f]
            for s in config.seeds]  # fmt: skip
    done: dict[int, list[dict[str, Any]]] = {}
    t_start = time.perf_counter()

    def finished(k: int, new: list[dict[str, Any]], seconds: float) -> None:
        done[k] = new
        family, data, width, seed = runs[k]
        last = new[-1]
        say(
            f"[{len(done)}/{len(runs)}] {family:13s} {data:7s} m={width:<6d} seed={seed} "
            f"train {last['train_nll']:.3f} test {last['test_nll']:.3f} moveW {last['move_W']:.3g} "
            f"({seconds:.1f}s, total {time.perf_counter() - t_start:.0f}s)"
        )
        if config.out is not None:
            write_csv([r for j in sorted(done) for r in done[j]], Path(config.out) / "results.csv")

    if config.jobs > 1 and len(runs) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=config.jobs) as pool:
            futures = {pool.submit(_timed_run, run, config): k for k, run in enumerate(runs)}
            for fut in as_completed(futures):
                new, seconds = fut.result()
                finished(futures[fut], new, seconds)
    else:
        for k, run in enumerate(runs):
            new, seconds = _timed_run(run, config)
            finished(k, new, seconds)
    return [r for k in sorted(done) for r in done[k]]


def _timed_run(run: tuple[str, str, int, int], config: StudyConfig) -> tuple[list[dict[str, Any]], float]:
    """:func:`run_one` with ``config.threads`` torch threads (restored after), and its wall time."""
    _quiet_lightning()  # again: a worker process starts with default logging
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    t0 = time.perf_counter()
    try:
        return run_one(*run, config), time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def _quiet_lightning() -> None:
    """Silence the per-run banners: a sweep starts hundreds of Trainers."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (".*does not have many workers.*", ".*across ranks is zero.*", ".*LeafSpec.*",
                    ".*GPU available but not used.*", ".*The number of training batches.*"):  # fmt: skip
        warnings.filterwarnings("ignore", pattern)


# ----- results files ----------------------------------------------------------------------------


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows to ``path`` with columns :data:`COLUMNS`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
    return p


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``results.csv``, numbers parsed."""
    ints = {"width", "seed", "epoch", "test_nonfinite", "n_train", "n_test"}
    texts = {"family", "data"}

    def parse(k: str, v: str) -> Any:
        return int(v) if k in ints else v if k in texts else float(v)

    with Path(path).open(newline="") as fh:
        return [{k: parse(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]


def _final(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last-epoch row of every run."""
    last: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["family"], r["data"], r["width"], r["seed"])
        if key not in last or r["epoch"] > last[key]["epoch"]:
            last[key] = r
    return list(last.values())


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    with np.errstate(invalid="ignore"):
        return float(np.mean(a)), float(np.std(a, ddof=1)) if a.size > 1 else 0.0


def _by_cell(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in _final(rows):
        cells[(r["family"], r["data"], r["width"])].append(r)
    return cells


def _order(rows: Sequence[dict[str, Any]], key: str, preferred: Sequence[str]) -> list[str]:
    present = {r[key] for r in rows}
    return [x for x in preferred if x in present] + sorted(present - set(preferred))


def summarize(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the final epoch per family, data set and width: mean ± std over seeds."""

    def fmt(values: Sequence[float], digits: int = 3) -> str:
        m, s = _mean_std(values)
        if math.isnan(m):
            return "–"
        if not math.isfinite(m):
            return f"{m}"
        return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"

    lines = [
        "| family | data | width | epochs | seeds | train NLL | test NLL | true NLL | move_W | rel_move_W | move_a |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = _by_cell(rows)
    for data in _order(rows, "data", DATASETS):
        for family in _order(rows, "family", FAMILIES):
            for width in sorted(w for (f, d, w) in cells if f == family and d == data):
                rs = cells[(family, data, width)]
                true = [r["true_nll"] for r in rs if not math.isnan(r["true_nll"])]
                bad = sum(int(r["test_nonfinite"]) for r in rs)
                test = fmt([r["test_nll"] for r in rs]) + (f" ({bad} pts outside support)" if bad else "")
                lines.append(
                    f"| {family} | {data} | {width} | {rs[0]['epoch']} | {len(rs)} | "
                    f"{fmt([r['train_nll'] for r in rs])} | {test} | "
                    f"{fmt(true) if true else '–'} | {fmt([r['move_W'] for r in rs], 4)} | "
                    f"{fmt([r['rel_move_W'] for r in rs], 5)} | {fmt([r['move_a'] for r in rs], 4)} |"
                )
    return "\n".join(lines) + "\n"


# ----- figures ----------------------------------------------------------------------------------


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def make_figures(rows: Sequence[dict[str, Any]], out: str | os.PathLike[str], dpi: int = 80) -> list[Path]:
    """Write the study's figures into ``out``; returns their paths.

    - ``nll_vs_epoch_<family>_<data>.png``: test (solid) and train (dashed) NLL per epoch,
      one colour per width, mean over seeds; the true entropy as a dotted line where known;
    - ``final_nll_vs_width.png``: one panel per data set, final test NLL against width
      for both families, mean ± std over seeds (bars);
    - ``weight_movement_vs_width.png``: rows W, b, a; one column per data set;
      final :math:`\\|\\theta_T - \\theta_0\\|` against width, log-log, both families.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    datasets = _order(rows, "data", DATASETS)
    families = _order(rows, "family", FAMILIES)
    colors = {f: f"C{i}" for i, f in enumerate(families)}

    # NLL against epoch.
    for family in families:
        for data in datasets:
            sub = [r for r in rows if r["family"] == family and r["data"] == data]
            if not sub:
                continue
            widths = sorted({r["width"] for r in sub})
            cmap = plt.get_cmap("viridis")
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            for i, w in enumerate(widths):
                c = cmap(i / max(len(widths) - 1, 1))
                epochs = sorted({r["epoch"] for r in sub if r["width"] == w})
                for key, style in (("test_nll", "-"), ("train_nll", "--")):
                    ys = [np.mean(_finite([r[key] for r in sub if r["width"] == w and r["epoch"] == e]) or [np.nan])
                          for e in epochs]  # fmt: skip
                    ax.plot(epochs, ys, style, color=c, lw=1.4, label=f"m={w}" if key == "test_nll" else None)
            true = _finite([r["true_nll"] for r in sub])
            if true:
                ax.axhline(float(np.mean(true)), color="k", ls=":", lw=1, label="true entropy")
            ax.set_xlabel("epoch (0 = init)")
            ax.set_ylabel("NLL (nats, raw units)")
            ax.set_title(f"{family} on {data}: test (solid), train (dashed)", fontsize=9)
            _clip_to_trained(ax, sub)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"nll_vs_epoch_{family}_{data}.png"
            fig.savefig(path, dpi=dpi)
            plt.close(fig)
            paths.append(path)

    cells = _by_cell(rows)

    # Final NLL against width.
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.4), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        for family in families:
            widths = sorted(w for (f, d, w) in cells if f == family and d == data)
            if not widths:
                continue
            stats = [_mean_std(_finite([r["test_nll"] for r in cells[(family, data, w)]])) for w in widths]
            ax.errorbar(widths, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                        color=colors[family], label=f"{family} test")  # fmt: skip
            train = [np.mean(_finite([r["train_nll"] for r in cells[(family, data, w)]]) or [np.nan]) for w in widths]
            ax.plot(widths, train, ls="--", marker=".", color=colors[family], alpha=0.6, label=f"{family} train")
        true = _finite([r["true_nll"] for r in _final(rows) if r["data"] == data])
        if true:
            ax.axhline(float(np.mean(true)), color="k", ls=":", lw=1, label="true entropy")
        ax.set_xscale("log")
        ax.set_xlabel("width m")
        ax.set_title(data)
    axes[0][0].set_ylabel("final NLL (nats, raw units)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = out / "final_nll_vs_width.png"
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    paths.append(path)

    # Weight movement against width.
    fig, axes = plt.subplots(len(GROUPS), len(datasets), figsize=(3.4 * len(datasets), 2.6 * len(GROUPS)),
                             squeeze=False)  # fmt: skip
    for j, data in enumerate(datasets):
        for i, g in enumerate(GROUPS):
            ax = axes[i][j]
            frozen, plotted = [], []
            for family in families:
                widths = sorted(w for (f, d, w) in cells if f == family and d == data)
                stats = [_mean_std(_finite([r[f"move_{g}"] for r in cells[(family, data, w)]])) for w in widths]
                keep = [(w, m, s) for w, (m, s) in zip(widths, stats) if m > 0]  # log axes: a frozen group reads 0
                if keep:
                    ax.errorbar([k[0] for k in keep], [k[1] for k in keep], yerr=[k[2] for k in keep], marker="o",
                                capsize=3, color=colors[family], label=family)  # fmt: skip
                    plotted.extend(k[1] for k in keep)
                elif widths:
                    frozen.append(family)
            ax.set_xscale("log")
            # Log scale only where the values span a range; a narrow one reads better linear.
            if plotted and max(plotted) > 3 * min(plotted):
                ax.set_yscale("log")
            if frozen:
                ax.text(0.5, 0.5, "\n".join(f"{f}: 0 (not trained)" for f in frozen), ha="center", va="center",
                        transform=ax.transAxes, fontsize=8, color="0.3")  # fmt: skip
            if i == 0:
                ax.set_title(data)
            if j == 0:
                ax.set_ylabel(f"||{g}_T - {g}_0||")
            if i == len(GROUPS) - 1:
                ax.set_xlabel("width m")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = out / "weight_movement_vs_width.png"
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    paths.append(path)
    return paths


def _clip_to_trained(ax: plt.Axes, rows: Sequence[dict[str, Any]]) -> None:
    """Keep the y range on the trained curves: the NLL at initialisation can be far above."""
    vals = _finite([r[k] for r in rows if r["epoch"] > 0 for k in ("train_nll", "test_nll")])
    if vals:
        lo, hi = min(vals), max(vals)
        pad = 0.1 * (hi - lo) + 1e-3
        true = _finite([r["true_nll"] for r in rows])
        lo = min([lo, *true])
        ax.set_ylim(lo - pad, hi + pad)


# ----- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Width sweep of constrained vs unconstrained flows (Shah, Deshpande & Goyal 2022).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sweep that runs in minutes on 2 CPU cores")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/overparam[-quick])")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=None)
    p.add_argument("--datasets", nargs="+", default=None, help=f"data sets (full run: {' '.join(DATASETS)})")
    p.add_argument("--widths-constrained", nargs="+", type=int, default=None)
    p.add_argument("--widths-unconstrained", nargs="+", type=int, default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="epochs for both families (default: the paper's)")
    p.add_argument("--max-train", type=int, default=None, help="subsample the training split")
    p.add_argument("--max-test", type=int, default=None, help="subsample the test split")
    p.add_argument("--limit-train-batches", type=int, default=None, help="batches per epoch (smoke tests)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    p.add_argument("--eval-every", type=int, default=None, help="epochs between full NLL evaluations")
    p.add_argument("--csv-logger", action="store_true", help="also write Lightning CSVLogger files")
    p.add_argument("--dpi", type=int, default=80, help="figure resolution")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--from-csv", type=Path, nargs="+", default=None,
                   help="skip training: rebuild summary.md and the figures from results.csv file(s), "
                        "e.g. of sweeps split over machines (merged; results.csv written to --out)")  # fmt: skip
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The :class:`StudyConfig` for parsed command-line arguments."""
    cfg = quick_config() if args.quick else full_config()
    widths = dict(cfg.widths)
    if args.widths_constrained:
        widths["constrained"] = tuple(args.widths_constrained)
    if args.widths_unconstrained:
        widths["unconstrained"] = tuple(args.widths_unconstrained)
    epochs = dict(cfg.epochs)
    if args.epochs is not None:
        epochs = {f: args.epochs for f in FAMILIES}
    out = args.out or Path("runs") / ("overparam-quick" if args.quick else "overparam")
    return replace(
        cfg,
        families=tuple(args.families) if args.families else cfg.families,
        datasets=tuple(args.datasets) if args.datasets else cfg.datasets,
        widths=widths,
        seeds=tuple(args.seeds) if args.seeds else cfg.seeds,
        epochs=epochs,
        max_train=args.max_train if args.max_train is not None else cfg.max_train,
        max_test=args.max_test if args.max_test is not None else cfg.max_test,
        limit_train_batches=args.limit_train_batches,
        threads=args.threads,
        jobs=args.jobs,
        eval_every=args.eval_every if args.eval_every is not None else cfg.eval_every,
        csv_logger=args.csv_logger,
        out=out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    assert cfg.out is not None
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.from_csv is not None:
        rows = [r for path in args.from_csv for r in read_csv(path)]
        target = cfg.out / "results.csv"
        if target.resolve() not in {p.resolve() for p in args.from_csv}:  # never overwrite an input
            write_csv(rows, target)
        took = f"rebuilt from {', '.join(map(str, args.from_csv))}"
    else:
        rows = run_study(cfg, progress=lambda msg: print(msg, flush=True))
        write_csv(rows, cfg.out / "results.csv")
        took = f"training took {time.perf_counter() - t0:.0f} s ({(time.perf_counter() - t0) / 60:.1f} min)"
    elapsed = time.perf_counter() - t0
    seeds = sorted({r["seed"] for r in rows})
    table = summarize(rows)
    header = (
        f"# Overparameterization study{' (--quick)' if args.quick else ''}\n\n"
        f"Final-epoch NLL in nats per point (raw data units), mean ± std over seeds {seeds}; {took}.\n\n"
    )
    (cfg.out / "summary.md").write_text(header + table)
    print()
    print(table)
    if not args.no_figures:
        for path in make_figures(rows, cfg.out, dpi=args.dpi):
            print(f"wrote {path}")
    print(f"results in {cfg.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
