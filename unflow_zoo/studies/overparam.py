r"""The overparameterization study: constrained vs unconstrained flows as the width grows.

Reproduces the synthetic-data experiments of Shah, Deshpande & Goyal, "Learning and
Generalization in Overparameterized Normalizing Flows" (AISTATS 2022; code
github.com/kulinshah98/overparam-NFs, ``CNF/`` and ``UNF/``) at the paper's settings, and
adds what the paper does not control (several seeds, a held-out split for both families,
and a learning-rate ablation). ``unflow-zoo study overparam --out DIR`` runs it;
``--quick`` runs a small version in a few minutes.

The paper's setup, as the official code has it (``CNF/main.py``, ``UNF/main.py``):

- **constrained**: :math:`f(x) = \sum_r a_r c \tanh(w_r x + b_r)` (block autoregressive for
  ``D > 1``), ``w, b ~ N(0, 1)``, ``c = 1/sqrt(m)``, ``a ~ |N(0, 0.005^2)|``, positivity by
  projection to ``>= 1e-6`` after every step, no linear term; standard normal base; SGD,
  lr 5e-4, batch 32, 200 epochs; data standardised; widths 10 to 10^4.
- **unconstrained**: per coordinate :math:`y_i = \int_{x_{0,i}}^{x_i} \mathrm{ELU}(N_i(t)) + 1\,dt`,
  :math:`N_i(t) = a_i^\top \mathrm{ReLU}(W_i [x_{<i}, t] + b_i)` (one network per coordinate, fed
  the raw :math:`x_{<i}`), ``W, b ~ N(0, 1/m)``, fixed ``a ~ N(0, 0.25^2)``; right Riemann sum
  with 50 nodes; standard exponential base with :math:`x_0` at the data minimum; SGD, lr 5e-3,
  batch 32, 100 epochs; data divided by twice the largest norm; widths 100 to 6400.

Departures (each for a reason stated in ``docs/overparam_study.md``): one seeded 90/10
train/test split for both families, scaling statistics from the training split; the
unconstrained lower limit is the training minimum of each coordinate minus 0.05 (in the
scaled units), so that held-out points just below the minimum keep a finite density (those
still below count in ``test_nonfinite``); three seeds (each seeds the split, the
initialisation and the batch order); NLLs in raw data units (the scaling's log-Jacobian
added back), on the whole train and test split after every epoch.

Each (family, variant, data set, width) is one *job* whose seeds train together as one
vectorised model (:mod:`unflow_zoo.studies.ensemble`); a job writes
``<out>/runs/<job>.csv`` atomically when it ends, and a rerun with the same ``--out`` skips
the jobs whose file exists, so a sweep can be stopped, resumed, or split across machines
(copy the ``runs/`` folders together). ``results.csv`` is their concatenation.

Variants:

- ``paper``: the paper's learning rates.
- ``matched``: the learning rate of each width scaled by
  :math:`\|\nabla_\theta L\|^2_{m_0} / \|\nabla_\theta L\|^2_m` at initialisation (same seed,
  full training set, :math:`m_0` the narrowest width), so that the first-order decrease of
  the loss per step, :math:`\eta \|\nabla L\|^2`, is the same at every width: the ablation of
  the confound that a wider unconstrained net takes larger steps in function space at a
  fixed rate.

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unflow_zoo.data import DensityDataModule
from unflow_zoo.errors import ConfigError, MissingDependencyError
from unflow_zoo.studies.ensemble import ConstrainedEnsemble, UnconstrainedEnsemble, _Ensemble
from unflow_zoo.transforms.monotone import ConstrainedMonotone
from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform

__all__ = [
    "COLUMNS",
    "DATASETS",
    "FAMILIES",
    "PAPER",
    "VARIANTS",
    "Job",
    "StudyConfig",
    "batch_order",
    "build_ensemble",
    "full_config",
    "jobs_of",
    "load_split",
    "quick_config",
    "read_csv",
    "run_job",
    "run_study",
    "write_csv",
]

FAMILIES: tuple[str, ...] = ("constrained", "unconstrained")
DATASETS: tuple[str, ...] = ("mog1d", "beta1d", "grid", "mog5d", "gmm1d")
VARIANTS: tuple[str, ...] = ("paper", "matched")
#: Columns of results.csv, in order.
COLUMNS: tuple[str, ...] = (
    "family", "variant", "data", "width", "seed", "epoch", "lr", "train_nll", "test_nll", "true_nll",
    "move_W", "move_b", "move_a", "rel_move_W", "rel_move_b", "rel_move_a", "grad_sq_init",
    "test_nonfinite", "n_train", "n_test", "seconds",
)  # fmt: skip
#: Margin below the smallest training coordinate for the unconstrained lower limit (scaled units).
LOWER_LIMIT_MARGIN = 0.05


@dataclass(frozen=True)
class Setup:
    """The paper's training setup of one family (see the module docstring)."""

    lr: float
    epochs: int
    scaling: str  # "standardize" or "ball"
    widths: tuple[int, ...]


PAPER: dict[str, Setup] = {
    "constrained": Setup(lr=5e-4, epochs=200, scaling="standardize", widths=(10, 100, 1000, 10000)),
    "unconstrained": Setup(lr=5e-3, epochs=100, scaling="ball", widths=(100, 400, 1600, 6400)),
}


@dataclass
class StudyConfig:
    """One sweep; every field defaults to the full study at the paper's settings.

    Attributes:
        families, datasets, variants: what to sweep (``variants`` per family in ``variant_families``).
        widths, epochs: per family; ``None`` takes :data:`PAPER`'s.
        seeds: one member per seed; each seeds the split, the initialisation and the batch order.
        variant_families: the families each variant runs for (the ablation targets the
            unconstrained flow, whose gradient norm grows with the width).
        batch_size, test_fraction, n_samples: the paper's 32, 0.1 and its files' 10,000 points.
        max_train, max_test: subsample the splits (smoke tests).
        max_steps: stop each epoch after this many steps (smoke tests; ``None``: all).
        eval_batch: points per forward pass of the full-data evaluation.
        jobs: local worker processes; ``threads``: torch threads in each.
        device: ``"cpu"`` or ``"cuda"``.
        order: ``"largest-first"`` (the pool packs best) or ``"cheapest-first"`` (a sweep stopped
            early has finished as many jobs as possible); the 5-D set goes last either way.
        out: output folder.
    """

    families: tuple[str, ...] = FAMILIES
    datasets: tuple[str, ...] = DATASETS
    variants: tuple[str, ...] = ("paper",)
    widths: dict[str, tuple[int, ...] | None] = field(default_factory=lambda: {f: None for f in FAMILIES})
    epochs: dict[str, int | None] = field(default_factory=lambda: {f: None for f in FAMILIES})
    seeds: tuple[int, ...] = (0, 1, 2)
    variant_families: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"paper": FAMILIES, "matched": ("unconstrained",)}
    )
    batch_size: int = 32
    test_fraction: float = 0.1
    n_samples: int = 10000
    max_train: int | None = None
    max_test: int | None = None
    max_steps: int | None = None
    eval_batch: int = 1024
    jobs: int = 1
    threads: int = 1
    device: str = "cpu"
    order: str = "largest-first"
    out: Path | None = None

    def __post_init__(self) -> None:
        # every name and number is checked before the first (hours-long) job starts
        for name, values, known in (
            ("families", self.families, FAMILIES),
            ("datasets", self.datasets, DATASETS),
            ("variants", self.variants, VARIANTS),
        ):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ConfigError(
                    f"study overparam: {name} must be a non-empty list from {', '.join(known)}; got {list(values)}"
                )
        for family in self.families:
            widths, epochs = self.widths.get(family), self.epochs.get(family)
            if widths is not None and (not widths or any(int(w) < 1 for w in widths)):
                raise ConfigError(f"study overparam: {family} widths must be positive ints, got {list(widths)}")
            if epochs is not None and int(epochs) < 1:
                raise ConfigError(f"study overparam: {family} epochs must be >= 1, got {epochs}")
        if not self.seeds:
            raise ConfigError("study overparam: give at least one seed")
        for name in ("batch_size", "n_samples", "eval_batch", "jobs", "threads"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"study overparam: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train", "max_test", "max_steps"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ConfigError(f"study overparam: {name} must be >= 1 or None, got {value}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"study overparam: test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.order not in ("largest-first", "cheapest-first"):
            raise ConfigError(f"study overparam: order must be largest-first or cheapest-first, got {self.order!r}")

    def widths_for(self, family: str) -> tuple[int, ...]:
        w = self.widths.get(family)
        return PAPER[family].widths if w is None else tuple(int(v) for v in w)

    def epochs_for(self, family: str) -> int:
        e = self.epochs.get(family)
        return PAPER[family].epochs if e is None else int(e)


def full_config(**overrides: Any) -> StudyConfig:
    """The full study: five data sets, 4 + 4 widths, 3 seeds, 200 / 100 epochs, and the ablation."""
    return replace(StudyConfig(variants=("paper", "matched")), **overrides)


def quick_config(**overrides: Any) -> StudyConfig:
    """A few minutes on two cores: ``mog1d`` and ``gmm1d`` (known density), three widths per
    family, two seeds, a fifth of the paper's epochs (40 / 20), both variants."""
    cfg = StudyConfig(
        datasets=("mog1d", "gmm1d"),
        variants=("paper", "matched"),
        widths={"constrained": (10, 100, 1000), "unconstrained": (100, 400, 1600)},
        epochs={"constrained": 40, "unconstrained": 20},
        seeds=(0, 1),
    )
    return replace(cfg, **overrides)


# ----- data -------------------------------------------------------------------------------------


@dataclass
class Split:
    """One seed's scaled train/test points and what is needed to report raw-unit NLLs."""

    train: Tensor  # (N, D) float32, scaled
    test: Tensor
    log_scale: float  # sum_d log s_d: add to a scaled-space NLL for raw units
    true_nll: float  # mean true NLL of the raw test points (NaN where unknown)
    lower: Tensor  # (D,) unconstrained lower limits, scaled units


def load_split(data: str, seed: int, scaling: str, config: StudyConfig) -> Split:
    """The seeded 90/10 split of ``data``, scaled the paper's way for one family.

    ``standardize``: zero mean and unit variance per coordinate (constrained); ``ball``: divide
    by twice the largest training norm (unconstrained, ``UNF/utils.py``). Statistics come
    from the training split only.
    """
    dm = DensityDataModule(
        dataset=data, n_samples=config.n_samples, val_fraction=0.0, test_fraction=config.test_fraction,
        seed=seed, standardize=False,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.train_data is not None and dm.test_data is not None
    train, test = dm.train_data.double(), dm.test_data.double()
    if config.max_train is not None:
        train = train[: config.max_train]
    if config.max_test is not None:
        test = test[: config.max_test]
    if scaling == "standardize":
        mean, std = train.mean(0), train.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
    elif scaling == "ball":
        mean = torch.zeros(train.shape[1], dtype=torch.float64)
        radius = float(train.norm(dim=1).max())
        std = torch.full((train.shape[1],), 2.0 * radius if radius > 0 else 1.0, dtype=torch.float64)
    else:
        raise ConfigError(f"unknown scaling {scaling!r}; choose standardize or ball")
    true_nll = math.nan
    if dm.has_true_density:
        lp = dm.true_log_prob(test)
        true_nll = math.nan if lp is None else float(-lp.mean())
    tr, te = ((v - mean) / std for v in (train, test))
    lower = tr.min(0).values - LOWER_LIMIT_MARGIN
    return Split(tr.float(), te.float(), float(torch.log(std).sum()), true_nll, lower.float())


def batch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The shuffled order of ``n`` training points in ``epoch`` for the member of ``seed``.

    A function of (seed, epoch) only, so that a member trained alone, in any ensemble, or
    resumed at an epoch boundary sees the same batches.
    """
    gen = torch.Generator().manual_seed(1_000_003 * int(seed) + int(epoch))
    return torch.randperm(n, generator=gen)


# ----- models -----------------------------------------------------------------------------------


def member_transform(family: str, width: int, features: int, seed: int, lower: Tensor | None = None) -> Any:
    """The package's own flow transform for one member, initialised under ``seed`` exactly as
    ``create_model`` initialises it (the ensemble copies its parameters)."""
    from unflow_zoo.models import create_model  # the study sits above the families

    torch.manual_seed(seed)
    if family == "constrained":
        model = create_model(
            "constrained", event_shape=(features,), width=width, depth=1, n_layers=1, positivity="clamp",
            init="standard-normal", std_a=0.005, eps=1e-6, linear_term=0.0,
        )  # fmt: skip
    elif family == "unconstrained":
        assert lower is not None
        model = create_model(
            "unconstrained", event_shape=(features,), layout="paper", integrand="paper", width=width,
            n_layers=1, init="gaussian-sqrt-m", std_a=0.25, train_top=False, quadrature="riemann", n_nodes=50,
            phi="elu", min_slope=0.0, base="exponential", lower_limit=[float(v) for v in lower],
        )  # fmt: skip
    else:
        raise ConfigError(f"unknown family {family!r}; choose one of {FAMILIES}")
    transforms = [
        m for m in model.flow.transform.modules() if isinstance(m, (ConstrainedMonotone, PaperUnconstrainedTransform))
    ]
    if len(transforms) != 1:
        raise RuntimeError(f"expected one {family} transform in the model, found {len(transforms)}")
    return transforms[0]


def build_ensemble(family: str, width: int, features: int, seeds: Sequence[int], lowers: Sequence[Tensor]) -> _Ensemble:
    """One ensemble member per seed, each initialised as the package initialises it alone."""
    members = [member_transform(family, width, features, s, lo) for s, lo in zip(seeds, lowers, strict=True)]
    if family == "constrained":
        return ConstrainedEnsemble.from_transforms(members)
    return UnconstrainedEnsemble.from_transforms(members)


# ----- one job ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One (family, variant, data set, width): its seeds train together as one ensemble."""

    family: str
    variant: str
    data: str
    width: int
    seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.family}-{self.variant}-{self.data}-m{self.width}"


def jobs_of(config: StudyConfig) -> list[Job]:
    """Every job of ``config``, in sweep order."""
    jobs = []
    for variant in config.variants:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown variant {variant!r}; choose from {VARIANTS}")
        for family in config.families:
            if family not in FAMILIES:
                raise ConfigError(f"unknown family {family!r}; choose from {FAMILIES}")
            if family not in config.variant_families.get(variant, FAMILIES):
                continue
            widths = config.widths_for(family)
            for data in config.datasets:
                for width in widths:
                    if variant == "matched" and width == min(widths):
                        continue  # its rate is the paper's: the same run as the paper variant's
                    jobs.append(Job(family, variant, data, int(width), tuple(config.seeds)))
    return jobs


_FEATURES = {"mog1d": 1, "beta1d": 1, "gmm1d": 1, "grid": 2, "mog5d": 5}


def job_cost(job: Job, config: StudyConfig) -> float:
    """Relative cost (for scheduling and the ETA): steps x members x (units + a per-step overhead)."""
    d = _FEATURES.get(job.data, 2)
    steps = config.epochs_for(job.family) * 282
    return steps * (len(job.seeds) * d * job.width * 3e-6 + 6e-4)


def _chunk(ens: _Ensemble, batch: int) -> int:
    """Points per evaluation pass: at most ``batch``, and at most about 2^21 hidden units in all
    (the D > 1 conditioning holds ``E * D * m`` numbers per point)."""
    return max(32, min(batch, (1 << 21) // (ens.members * ens.features * ens.width)))


def _nll(ens: _Ensemble, data: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Mean NLL per member over ``data`` ``(E, N, D)`` and the count of non-finite log-densities."""
    batch = _chunk(ens, batch)
    total = torch.zeros(ens.members, dtype=torch.float64)
    bad = torch.zeros(ens.members, dtype=torch.long)
    with torch.no_grad():
        for chunk in data.split(batch, dim=1):
            lp = ens.log_prob(chunk).double().cpu()
            finite = torch.isfinite(lp)
            bad += (~finite).sum(1)
            total += torch.where(finite, -lp, torch.zeros_like(lp)).sum(1)
    n = data.shape[1]
    mean = total / n
    return torch.where(bad > 0, torch.full_like(mean, math.inf), mean), bad


def _full_grad_sq(ens: _Ensemble, data: Tensor, batch: int) -> Tensor:
    """Squared norm of the gradient of the mean training NLL per member (full training set)."""
    n = data.shape[1]
    for chunk in data.split(_chunk(ens, batch), dim=1):
        lp = ens.log_prob(chunk)
        (-(lp.sum(1) / n)).sum().backward()
    g = ens.grad_sq_norm()
    for p in ens.parameters():
        p.grad = None
    return g


Progress = Callable[[str, int, int], None]


def _save_partial(path: Path, state: dict[str, Any]) -> None:
    """The state of an unfinished job, atomically (a temporary file, then renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_partial(path: Path, job: Job) -> dict[str, Any] | None:
    """The saved state of ``job`` if ``path`` holds one (read with ``weights_only=True``: tensors and
    plain containers only), else None; a file of another job or a corrupt one is ignored (and replaced)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is just not a usable checkpoint
        return None
    return state if isinstance(state, dict) and state.get("key") == job.key else None


def run_job(
    job: Job, config: StudyConfig, progress: Progress | None = None, checkpoint: Path | None = None
) -> list[dict[str, Any]]:
    """Train one job's ensemble and return one row per member and evaluated epoch (0 = init).

    With ``checkpoint`` (a file path), the ensemble's state is saved there after every epoch and a
    job that finds its own state there resumes after the last saved epoch: plain SGD and batch
    orders that are a function of (seed, epoch) make the resumed run the same as an uninterrupted
    one. The file is removed when the job finishes.
    """
    torch.set_num_threads(config.threads)
    setup = PAPER[job.family]
    device = torch.device(config.device)
    splits = [load_split(job.data, s, setup.scaling, config) for s in job.seeds]
    d = splits[0].train.shape[1]
    ens = build_ensemble(job.family, job.width, d, job.seeds, [sp.lower for sp in splits]).to(device)
    train = torch.stack([sp.train for sp in splits]).to(device)  # (E, N, D): same N for every seed
    test = torch.stack([sp.test for sp in splits]).to(device)
    log_scale = torch.tensor([sp.log_scale for sp in splits], dtype=torch.float64)
    e, n = train.shape[0], train.shape[1]
    grad_sq = _full_grad_sq(ens, train, config.eval_batch)
    lr = torch.full((e,), setup.lr, dtype=torch.float64)
    if job.variant == "matched":
        ref_width = min(config.widths_for(job.family))
        ref = build_ensemble(job.family, ref_width, d, job.seeds, [sp.lower for sp in splits]).to(device)
        lr = lr * _full_grad_sq(ref, train, config.eval_batch) / grad_sq
    lr_dev = lr.to(device=device, dtype=torch.float32)
    start = ens.snapshot()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    epochs = config.epochs_for(job.family)

    def record(epoch: int) -> None:
        tr, _ = _nll(ens, train, config.eval_batch)
        te, bad = _nll(ens, test, config.eval_batch)
        mv = ens.movement(start)
        for k, seed in enumerate(job.seeds):
            row = dict(
                family=job.family, variant=job.variant, data=job.data, width=job.width, seed=seed, epoch=epoch,
                lr=float(lr[k]), train_nll=float(tr[k] + log_scale[k]), test_nll=float(te[k] + log_scale[k]),
                true_nll=splits[k].true_nll, grad_sq_init=float(grad_sq[k]), test_nonfinite=int(bad[k]),
                n_train=n, n_test=test.shape[1], seconds=time.perf_counter() - t0,
            )  # fmt: skip
            row.update({key: float(v[k]) for key, v in mv.items()})
            rows.append(row)

    first = 1
    saved = _load_partial(checkpoint, job) if checkpoint is not None else None
    if saved is not None:
        ens.load_state_dict(saved["ensemble"])
        start = {k: v.to(device) for k, v in saved["start"].items()}
        grad_sq, lr = saved["grad_sq"], saved["lr"]
        lr_dev = lr.to(device=device, dtype=torch.float32)
        rows, first = list(saved["rows"]), int(saved["epoch"]) + 1
        t0 -= float(saved["seconds"])
    else:
        record(0)
    arange = torch.arange(e, device=device).unsqueeze(1)
    for epoch in range(first, epochs + 1):
        order = torch.stack([batch_order(s, epoch, n) for s in job.seeds]).to(device)  # (E, N)
        for step, lo in enumerate(range(0, n, config.batch_size)):
            if config.max_steps is not None and step >= config.max_steps:
                break
            idx = order[:, lo : lo + config.batch_size]
            xb = train[arange, idx]  # (E, B, D): each member its own points
            loss = -ens.log_prob(xb).mean(1).sum()
            loss.backward()
            ens.sgd_step(lr_dev)
        record(epoch)
        if checkpoint is not None and epoch < epochs:
            state = {"key": job.key, "epoch": epoch, "ensemble": ens.state_dict(), "start": start}
            state.update(grad_sq=grad_sq, lr=lr, rows=rows, seconds=time.perf_counter() - t0)
            _save_partial(checkpoint, state)
        if progress is not None:
            progress(job.key, epoch, epochs)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return rows


# ----- results files ----------------------------------------------------------------------------


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` (columns :data:`COLUMNS`) atomically: to a temporary file, then renamed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, p)
    return p


_INTS = {"width", "seed", "epoch", "test_nonfinite", "n_train", "n_test"}
_TEXTS = {"family", "variant", "data"}


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a results file, numbers parsed."""

    def parse(k: str, v: str) -> Any:
        return int(v) if k in _INTS else v if k in _TEXTS else float(v)

    with Path(path).open(newline="") as fh:
        return [{k: parse(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]


def merge_runs(out: Path) -> list[dict[str, Any]]:
    """Concatenate ``out/runs/*.csv`` into ``out/results.csv`` (sorted) and return the rows."""
    rows: list[dict[str, Any]] = []
    for f in sorted((out / "runs").glob("*.csv")):
        rows.extend(read_csv(f))
    order = {name: i for i, name in enumerate(FAMILIES + DATASETS + VARIANTS)}
    rows.sort(key=lambda r: (order.get(r["variant"], 99), order.get(r["family"], 99), order.get(r["data"], 99),
                             r["width"], r["seed"], r["epoch"]))  # fmt: skip
    write_csv(rows, out / "results.csv")
    return rows


# ----- the sweep --------------------------------------------------------------------------------


def _job_main(job: Job, config: StudyConfig, queue: Any = None) -> tuple[str, float, dict[str, float]]:
    """Worker entry: run a job, write its file, return (key, seconds, final mean test NLL by seed)."""
    t0 = time.perf_counter()
    progress = (lambda key, ep, total: queue.put((key, ep, total))) if queue is not None else None
    assert config.out is not None
    runs = Path(config.out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    # a stopped job resumes from its last finished epoch (this file), not from the start
    rows = run_job(job, config, progress, checkpoint=runs / f".{job.key}.partial.pt")
    write_csv(rows, runs / f"{job.key}.csv")
    last = max(r["epoch"] for r in rows)
    final = {str(r["seed"]): r["test_nll"] for r in rows if r["epoch"] == last}
    return job.key, time.perf_counter() - t0, final


def run_study(config: StudyConfig, executor: str = "local", say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every unfinished job of ``config`` (skipping those whose ``runs/<job>.csv`` exists),
    then merge the results; returns all rows.

    ``executor``: ``"local"`` (``config.jobs`` worker processes, largest jobs first, a progress
    bar with an ETA), ``"slurm"`` (a SLURM job array through submitit) or ``"submitit-local"``
    (submitit's local executor, for testing the cluster path on one machine).
    """
    if config.out is None:
        raise ConfigError("the study needs an output folder (--out DIR)")
    out = Path(config.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _write_config(config, out)
    jobs = jobs_of(config)
    todo = [j for j in jobs if not (out / "runs" / f"{j.key}.csv").exists()]
    if len(todo) < len(jobs):
        say(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} jobs already finished in {out / 'runs'}")
    # largest first (the pool then packs well), but the 5-D set last: it costs as much as the
    # four others together, and a stopped sweep then has every other data set complete
    sign = 1.0 if config.order == "cheapest-first" else -1.0
    todo.sort(key=lambda j: (j.data == "mog5d", j.variant != "paper", sign * job_cost(j, config)))
    if executor == "local":
        _run_local(todo, config, say)
    elif executor in ("slurm", "submitit-local"):
        _run_submitit(todo, config, executor, say)
    else:
        raise ConfigError(f"unknown executor {executor!r}; choose local, slurm or submitit-local")
    return merge_runs(out)


def _write_config(config: StudyConfig, out: Path) -> None:
    import json

    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    tmp = out / ".config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1, default=list) + "\n")
    os.replace(tmp, out / "config.json")


def _run_local(todo: list[Job], config: StudyConfig, say: Callable[[str], None]) -> None:
    from tqdm.auto import tqdm

    if not todo:
        return
    costs = {j.key: job_cost(j, config) for j in todo}
    bar = tqdm(
        total=sum(costs.values()), unit="", bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]"
    )
    done_frac: dict[str, float] = {}

    def advance(key: str, frac: float) -> None:
        prev = done_frac.get(key, 0.0)
        done_frac[key] = frac
        bar.update((frac - prev) * costs[key])

    def report(key: str, seconds: float, final: dict[str, float]) -> None:
        advance(key, 1.0)
        nll = ", ".join(f"{v:.3f}" for v in final.values())
        bar.write(f"done {key}: final test NLL by seed {nll} ({seconds:.0f} s)")

    if config.jobs <= 1:
        for job in todo:
            report(*_job_main(job, config, _Inline(advance)))
    else:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            queue = manager.Queue()
            with ProcessPoolExecutor(max_workers=config.jobs, mp_context=ctx) as pool:
                pending = {pool.submit(_job_main, job, config, queue) for job in todo}
                while pending:
                    finished, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
                    while not queue.empty():
                        key, ep, total = queue.get()
                        advance(key, ep / total)
                    for fut in finished:
                        report(*fut.result())
    bar.close()


class _Inline:
    """A queue stand-in for in-process jobs: progress goes straight to the bar."""

    def __init__(self, advance: Callable[[str, float], None]) -> None:
        self.advance = advance

    def put(self, item: tuple[str, int, int]) -> None:
        key, ep, total = item
        self.advance(key, ep / total)


def _run_submitit(todo: list[Job], config: StudyConfig, executor: str, say: Callable[[str], None]) -> None:
    try:
        import submitit
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "the cluster executors need submitit: pip install 'unflow-zoo[cluster]' (or pip install submitit)"
        ) from err
    if not todo:
        return
    assert config.out is not None
    folder = Path(config.out) / "submitit"
    if executor == "slurm":
        ex: Any = submitit.AutoExecutor(folder=folder)
        ex.update_parameters(timeout_min=24 * 60, cpus_per_task=max(1, config.threads), slurm_array_parallelism=256)
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=24 * 60)
    jobs = ex.map_array(_job_main, todo, [config] * len(todo))
    say(f"submitted {len(jobs)} jobs ({executor}); logs in {folder}")
    for job in jobs:
        key, seconds, final = job.result()
        say(f"done {key}: final test NLL by seed {', '.join(f'{v:.3f}' for v in final.values())} ({seconds:.0f} s)")


# ----- command line -----------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _names(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def add_arguments(p: Any) -> None:
    """The options of ``unflow-zoo study overparam`` on an ``argparse`` parser."""
    p.add_argument("--out", required=True, help="output folder (resumable: finished jobs are skipped)")
    p.add_argument("--quick", action="store_true", help="the few-minute version (see quick_config)")
    p.add_argument("--families", type=_names, default=None, help="comma list (default: both)")
    p.add_argument("--datasets", type=_names, default=None, help=f"comma list (default: {','.join(DATASETS)})")
    p.add_argument("--variants", type=_names, default=None, help="paper,matched (default: both; --quick too)")
    p.add_argument("--seeds", type=_ints, default=None, help="comma list (default 0,1,2)")
    p.add_argument("--widths-constrained", type=_ints, default=None, help="comma list (default 10,100,1000,10000)")
    p.add_argument("--widths-unconstrained", type=_ints, default=None, help="comma list (default 100,400,1600,6400)")
    p.add_argument("--epochs-constrained", type=int, default=None, help="default 200 (the paper's)")
    p.add_argument("--epochs-unconstrained", type=int, default=None, help="default 100 (the paper's)")
    p.add_argument("--jobs", type=int, default=None, help="local worker processes (default: the CPU count)")
    p.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                   help="local process pool, a SLURM job array via submitit, or submitit's local executor")  # fmt: skip
    p.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default="cpu",
                   help="gpu: train each job's ensemble on the GPU (the torch kernels; the fused C ones are CPU-only)")  # fmt: skip
    p.add_argument("--order", choices=("largest-first", "cheapest-first"), default="largest-first")
    p.add_argument("--report-only", action="store_true", help="only rebuild results.csv, summary.md and figures")
    # smoke runs (the test suite): cut every epoch and split short
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-train", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-test", type=int, default=None, help=argparse.SUPPRESS)


def config_from_args(args: Any) -> StudyConfig:
    """The :class:`StudyConfig` of parsed ``unflow-zoo study overparam`` arguments."""
    cfg = quick_config() if args.quick else full_config()
    updates: dict[str, Any] = {"out": Path(args.out), "order": args.order}
    for name in ("families", "datasets", "variants", "seeds", "max_steps", "max_train", "max_test"):
        value = getattr(args, name)
        if value is not None:
            updates[name] = value
    widths = dict(cfg.widths)
    epochs = dict(cfg.epochs)
    for family in FAMILIES:
        w = getattr(args, f"widths_{family}")
        e = getattr(args, f"epochs_{family}")
        if w is not None:
            widths[family] = w
        if e is not None:
            epochs[family] = e
    updates["widths"], updates["epochs"] = widths, epochs
    accel = args.accelerator
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    if accel == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--accelerator gpu: no CUDA device is visible to torch")
    updates["device"] = "cuda" if accel == "gpu" else "cpu"
    jobs = args.jobs if args.jobs is not None else (1 if accel == "gpu" else max(1, os.cpu_count() or 1))
    updates["jobs"] = jobs
    return replace(cfg, **updates)


def main(args: Any) -> list[dict[str, Any]]:
    """``unflow-zoo study overparam``: run (or resume) the sweep, then write the report."""
    from unflow_zoo.studies.report import write_report

    config = config_from_args(args)
    out = Path(config.out)  # type: ignore[arg-type]
    if args.report_only:
        if not (out / "runs").is_dir():
            raise SystemExit(f"--report-only: no runs/ folder in {out}; run the study there first")
        rows = merge_runs(out)
    else:
        t0 = time.perf_counter()
        rows = run_study(config, executor=args.executor)
        print(f"study finished in {time.perf_counter() - t0:.0f} s wall; results in {out / 'results.csv'}")
    summary = write_report(rows, out)
    print(f"summary: {summary}; figures in {out}")
    return rows
