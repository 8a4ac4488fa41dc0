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

MINIBOONE (``--datasets miniboone``; never part of the default sweep): the official repository's
other width sweep, UMNN and B-NAF on UCI MINIBOONE (``UMNN/run.py``: integrand widths 8 to 256,
seeds 1 to 5; ``BNAF/density_estimation.py``). Each data set has a :class:`ModelSpec` (how its
models are built, loaded, trained and costed; :func:`spec_of`), and this one differs from the
synthetic sets' as follows:

- **data**: the package's UCI loader (:func:`~unflow_zoo.data.uci.load_uci`): the MAF archive's
  ``miniboone/data.npy`` (D = 43), its published tail split (the study uses train and test;
  validation is unused) and MAF standardisation; NLLs are in those standardised units (the
  literature's), and a seed only initialises the model and orders the batches. The file is
  looked for in ``--data-dir`` (default ``$UNFLOW_ZOO_DATA``, else ``~/.cache/unflow_zoo/data``)
  before any job starts; ``--download`` fetches the archive.
- **unconstrained** (the official ``UCIExperiments.py`` with ``run.py``'s flags): one UMNN-MAF
  layer, integrand MLP ``[w, w, w]`` (leaky ReLU, ELU + 1), MADE ``[w, w, w]``, embedding ``w``,
  Clenshaw-Curtis with 50 steps (51 nodes), lower limit 0, standard normal base; SGD, lr 1e-3
  divided by 10 every 100 epochs, gradients clipped by value at 1, batch 500, 500 epochs.
  Departures: the offset :math:`\beta` is its own MADE output (UMNN reuses the first embedding
  entry) and the derivative is exactly ELU + 1 (UMNN adds 1e-10 inside the log).
- **constrained** (B-NAF, the official ``density_estimation.py`` as the repository ships it):
  5 blocks with the order reversed between them, ``w`` hidden units per dimension, positive
  diagonal blocks through ``exp``, ``bnaf_depth`` hidden layers per block (default 2; the
  repository's command, ``--layers 0``, has 1: ``--bnaf-depth 1``); SGD, lr 1e-2, gradient norm
  clipped at 0.1, batch 200, 1000 epochs. Departures: no weight normalisation, and the learned
  gated residual is the fixed ``x + f(x)`` (``linear_term=1``, B-NAF's ``res="normal"``): with
  the family's default slope of 0.01 the five blocks contract the data by about 1e-10 at
  initialisation (an NLL near 900 nats instead of 61 on standardised data) and SGD at this rate
  barely moves it.
- widths ``8, 16, 32, 64, 128, 256`` for both families, the study's seeds, the ``paper`` variant
  only (the ablation is the one-hidden-layer models'); the members of a job train one after
  the other (:class:`~unflow_zoo.studies.ensemble.FlowMember`) through the same loop, with the
  same checkpoints and result columns.

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
"""

from __future__ import annotations

import argparse
import csv
import gc
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unflow_zoo.data import DensityDataModule
from unflow_zoo.data.files import DataFileNotFoundError
from unflow_zoo.data.paths import DATA_DIR_ENV
from unflow_zoo.data.uci import UCI_DATASETS, load_uci
from unflow_zoo.errors import ConfigError, DataError, MissingDependencyError
from unflow_zoo.studies.ensemble import ConstrainedEnsemble, FlowMember, UnconstrainedEnsemble, _Ensemble
from unflow_zoo.transforms.monotone import ConstrainedMonotone
from unflow_zoo.transforms.paper_integral import PaperUnconstrainedTransform

__all__ = [
    "COLUMNS",
    "DATASETS",
    "FAMILIES",
    "MINIBOONE",
    "PAPER",
    "UCI_STUDY_DATASETS",
    "VARIANTS",
    "Job",
    "ModelSpec",
    "Setup",
    "StudyConfig",
    "batch_order",
    "build_ensemble",
    "check_data",
    "full_config",
    "jobs_of",
    "load_split",
    "load_uci_split",
    "miniboone_model",
    "quick_config",
    "read_csv",
    "run_job",
    "run_study",
    "spec_of",
    "write_csv",
]

FAMILIES: tuple[str, ...] = ("constrained", "unconstrained")
#: The default sweep: the paper's synthetic sets.
DATASETS: tuple[str, ...] = ("mog1d", "beta1d", "grid", "mog5d", "gmm1d")
#: Run only when named (``--datasets miniboone``): the official code's UCI sweep (see the module docstring).
UCI_STUDY_DATASETS: tuple[str, ...] = ("miniboone",)
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
    """The training setup of one family on one kind of data set (see the module docstring).

    Attributes:
        lr: the SGD learning rate (the initial one when ``lr_step`` is set).
        epochs, widths: the full study's.
        scaling: ``standardize`` or ``ball`` (the synthetic sets), ``published`` (the UCI
            loader's MAF standardisation).
        quick_widths, quick_epochs: ``--quick``'s (empty / None: the full study's).
        batch_size: points per step (None: :attr:`StudyConfig.batch_size`, the paper's 32).
        clip_value, clip_norm: gradient clipping before each step, by value and by global norm
            (None: none; only members trained one by one clip).
        lr_step, lr_gamma: the rate is multiplied by ``lr_gamma`` every ``lr_step`` epochs (None: constant).
    """

    lr: float
    epochs: int
    scaling: str
    widths: tuple[int, ...]
    quick_widths: tuple[int, ...] = ()
    quick_epochs: int | None = None
    batch_size: int | None = None
    clip_value: float | None = None
    clip_norm: float | None = None
    lr_step: int | None = None
    lr_gamma: float = 1.0

    def rate_factor(self, epoch: int) -> float:
        """The schedule's factor on :attr:`lr` during ``epoch`` (1 is the first epoch)."""
        if self.lr_step is None or epoch < 1:
            return 1.0
        return self.lr_gamma ** ((epoch - 1) // self.lr_step)


#: The paper's setups on the synthetic sets (``CNF/main.py``, ``UNF/main.py``); ``--quick`` takes
#: three widths and a fifth of the epochs.
PAPER: dict[str, Setup] = {
    "constrained": Setup(lr=5e-4, epochs=200, scaling="standardize", widths=(10, 100, 1000, 10000),
                         quick_widths=(10, 100, 1000), quick_epochs=40),
    "unconstrained": Setup(lr=5e-3, epochs=100, scaling="ball", widths=(100, 400, 1600, 6400),
                           quick_widths=(100, 400, 1600), quick_epochs=20),
}  # fmt: skip

#: The official MINIBOONE setups: UMNN (``UMNN/UCIExperiments.py`` with ``UMNN/run.py``'s flags) and
#: B-NAF (``BNAF/density_estimation.py``); widths 8 to 256 as ``run.py``'s. ``--quick``: widths 8, 16, 32
#: for 2 epochs (still minutes per member: these are 43-dimensional multi-layer flows).
MINIBOONE: dict[str, Setup] = {
    "constrained": Setup(lr=1e-2, epochs=1000, scaling="published", widths=(8, 16, 32, 64, 128, 256),
                         quick_widths=(8, 16, 32), quick_epochs=2, batch_size=200, clip_norm=0.1),
    "unconstrained": Setup(lr=1e-3, epochs=500, scaling="published", widths=(8, 16, 32, 64, 128, 256),
                           quick_widths=(8, 16, 32), quick_epochs=2, batch_size=500, clip_value=1.0,
                           lr_step=100, lr_gamma=0.1),
}  # fmt: skip


@dataclass
class StudyConfig:
    """One sweep; every field defaults to the full study at the paper's settings.

    Attributes:
        families, datasets, variants: what to sweep (``variants`` per family in ``variant_families``);
            ``datasets`` from :data:`DATASETS` (the default) and :data:`UCI_STUDY_DATASETS`.
        widths, epochs: per family, for every data set of the sweep; ``None`` takes each data set's
            :class:`Setup` (:data:`PAPER`'s, :data:`MINIBOONE`'s; their quick ones with ``quick``).
        quick: the few-minute version's widths and epochs where ``widths``/``epochs`` are None.
        seeds: one member per seed; each seeds the split, the initialisation and the batch order
            (on MINIBOONE the split is the published one: the seed initialises and orders only).
        variant_families: the families each variant runs for (the ablation targets the
            unconstrained flow, whose gradient norm grows with the width).
        batch_size, test_fraction, n_samples: the paper's 32, 0.1 and its files' 10,000 points
            (the synthetic sets; MINIBOONE has its published split and the official batch sizes).
        data_dir, download: where the UCI files are (None: :func:`~unflow_zoo.data.paths.default_data_dir`),
            and whether to fetch the archive when they are missing.
        bnaf_depth: hidden layers per block of the constrained (B-NAF) flow on MINIBOONE.
        max_train, max_test: subsample the splits (smoke tests).
        max_steps: stop each epoch after this many steps (smoke tests; ``None``: all).
        eval_batch: points per forward pass of the full-data evaluation.
        jobs: local worker processes; ``threads``: torch threads in each.
        device: ``"cpu"`` or ``"cuda"``.
        order: ``"largest-first"`` (the pool packs best) or ``"cheapest-first"`` (a sweep stopped
            early has finished as many jobs as possible); the 5-D set and then the UCI sets go
            last either way.
        out: output folder.
    """

    families: tuple[str, ...] = FAMILIES
    datasets: tuple[str, ...] = DATASETS
    variants: tuple[str, ...] = ("paper",)
    widths: dict[str, tuple[int, ...] | None] = field(default_factory=lambda: {f: None for f in FAMILIES})
    epochs: dict[str, int | None] = field(default_factory=lambda: {f: None for f in FAMILIES})
    quick: bool = False
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
    data_dir: Path | None = None
    download: bool = False
    bnaf_depth: int = 2

    def __post_init__(self) -> None:
        # every name and number is checked before the first (hours-long) job starts
        for name, values, known in (
            ("families", self.families, FAMILIES),
            ("datasets", self.datasets, DATASETS + UCI_STUDY_DATASETS),
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
        for name in ("batch_size", "n_samples", "eval_batch", "jobs", "threads", "bnaf_depth"):
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

    def setup_for(self, family: str, data: str | None = None) -> Setup:
        """The :class:`Setup` of ``family`` on ``data`` (None: a synthetic set, :data:`PAPER`'s)."""
        return PAPER[family] if data is None else spec_of(data).setup(family)

    def widths_for(self, family: str, data: str | None = None) -> tuple[int, ...]:
        """The widths of ``family`` on ``data``: :attr:`widths` if given, else the set's (quick) ones."""
        w = self.widths.get(family)
        if w is not None:
            return tuple(int(v) for v in w)
        setup = self.setup_for(family, data)
        return setup.quick_widths if self.quick and setup.quick_widths else setup.widths

    def epochs_for(self, family: str, data: str | None = None) -> int:
        """The epochs of ``family`` on ``data``: :attr:`epochs` if given, else the set's (quick) ones."""
        e = self.epochs.get(family)
        if e is not None:
            return int(e)
        setup = self.setup_for(family, data)
        return setup.quick_epochs if self.quick and setup.quick_epochs is not None else setup.epochs


def full_config(**overrides: Any) -> StudyConfig:
    """The full study: five data sets, 4 + 4 widths, 3 seeds, 200 / 100 epochs, and the ablation."""
    return replace(StudyConfig(variants=("paper", "matched")), **overrides)


def quick_config(**overrides: Any) -> StudyConfig:
    """A few minutes on two cores: ``mog1d`` and ``gmm1d`` (known density), three widths per
    family (10, 100, 1000 / 100, 400, 1600), two seeds, a fifth of the paper's epochs (40 / 20),
    both variants. With ``datasets=("miniboone",)``: widths 8, 16, 32 for 2 epochs (tens of minutes)."""
    cfg = StudyConfig(quick=True, datasets=("mog1d", "gmm1d"), variants=("paper", "matched"), seeds=(0, 1))
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
    """The split of ``data`` for the member of ``seed``, scaled for one family: the data set's
    :class:`ModelSpec` loader (a synthetic set: :func:`load_synthetic_split`; MINIBOONE:
    :func:`load_uci_split`)."""
    return spec_of(data).load(data, seed, scaling, config)


def load_synthetic_split(data: str, seed: int, scaling: str, config: StudyConfig) -> Split:
    """The seeded 90/10 split of a synthetic ``data`` set, scaled the paper's way for one family.

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


def _uci_arrays(data: str, config: StudyConfig) -> tuple[Any, Any, Any]:
    """The published ``(train, val, test)`` arrays of a UCI set, through the package's loader; a
    missing file raises the loader's message (where to put it, how to download it) plus the
    study's own options."""
    try:
        splits = load_uci(data, config.data_dir, download=config.download)
    except DataFileNotFoundError as err:
        raise DataFileNotFoundError(
            f"study overparam --datasets {data}: {err}. For the study: --data-dir DIR (or ${DATA_DIR_ENV}) "
            f"names the folder that holds {data}/data.npy, and --download fetches the archive there first."
        ) from err
    expected = UCI_DATASETS[data]
    for part, name in zip(splits, ("train", "validation", "test"), strict=True):
        if part.ndim != 2 or part.shape[1] != expected:
            raise DataError(
                f"study overparam: the {data} {name} split has shape {part.shape}, expected (N, {expected}) "
                f"(the MAF archive's {data}/data.npy); is the file from another version of the archive?"
            )
    return splits


def load_uci_split(data: str, seed: int, scaling: str, config: StudyConfig) -> Split:
    """The published train and test splits of a UCI set (MINIBOONE), MAF-standardised by
    :func:`~unflow_zoo.data.uci.load_uci`; the validation split is unused.

    Neither ``seed`` (it initialises the model and orders the batches only) nor ``scaling``
    (``published``) changes them; NLLs stay in these standardised units, the literature's
    (``log_scale = 0``), and there is no true density (``true_nll`` NaN). ``max_train`` and
    ``max_test`` keep the first rows.
    """
    train, _, test = _uci_arrays(data, config)
    tr = torch.from_numpy(train[: config.max_train]).float()
    te = torch.from_numpy(test[: config.max_test]).float()
    return Split(tr, te, 0.0, math.nan, torch.zeros(tr.shape[1]))


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


def miniboone_model(family: str, width: int, features: int, seed: int, depth: int = 2) -> Any:
    """The package's model closest to the official MINIBOONE run of ``family`` at ``width``
    (see the module docstring), initialised under ``seed``: a ``create_model`` module.

    - ``unconstrained``: UMNN-MAF with one layer, MLP integrand and MADE ``[width] * 3``, embedding
      ``width``, 51 Clenshaw-Curtis nodes, lower limit 0, ``min_slope=0``, standard normal base.
    - ``constrained``: B-NAF, 5 blocks of ``depth`` hidden layers of ``width`` units per dimension,
      ``exp`` positivity, the residual ``x + f(x)`` (``linear_term=1``).
    """
    from unflow_zoo.models import create_model  # the study sits above the families

    torch.manual_seed(seed)
    if family == "unconstrained":
        return create_model(
            "unconstrained", event_shape=(features,), integrand="mlp", hidden=[width] * 3, activation="leaky_relu",
            embedding=width, conditioner_hidden=[width] * 3, n_layers=1, quadrature="clenshaw-curtis", n_nodes=51,
            phi="elu", min_slope=0.0, base="normal", lower_limit=0.0,
        )  # fmt: skip
    if family == "constrained":
        return create_model(
            "constrained", event_shape=(features,), width=width, depth=depth, n_layers=5, positivity="exp",
            linear_term=1.0,
        )  # fmt: skip
    raise ConfigError(f"unknown family {family!r}; choose one of {FAMILIES}")


def _build_paper(
    family: str, width: int, features: int, seeds: Sequence[int], lowers: Sequence[Tensor], config: StudyConfig
) -> _Ensemble:
    return build_ensemble(family, width, features, seeds, lowers)


def _build_miniboone(
    family: str, width: int, features: int, seeds: Sequence[int], lowers: Sequence[Tensor], config: StudyConfig
) -> _Ensemble:
    (seed,) = seeds  # one member at a time
    setup = MINIBOONE[family]
    model = miniboone_model(family, width, features, seed, depth=config.bnaf_depth)
    return FlowMember(model, features, width, clip_value=setup.clip_value, clip_norm=setup.clip_norm)


def _check_uci(data: str, config: StudyConfig) -> None:
    _uci_arrays(data, config)


# ----- what each data set trains ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What the study trains on one kind of data set, and how.

    Attributes:
        name: ``paper`` (the synthetic sets) or ``miniboone``.
        setups: family -> :class:`Setup`.
        variants: the variants it runs (the others are skipped for its data sets).
        ensemble: True: a job's seeds train together as one vectorised model; False: one after
            the other (a :class:`~unflow_zoo.studies.ensemble.FlowMember` each) in the same loop.
        load: ``(data, seed, scaling, config) -> Split``.
        build: ``(family, width, features, seeds, lowers, config) -> _Ensemble`` (one seed when
            not ``ensemble``).
        step_seconds: ``(job, config, features) -> float``, the estimated seconds of one training
            step of the job's model (all its members at once for an ensemble), one CPU thread.
        steps_per_epoch: ``(job, config) -> int``, at the full split size.
        check: ``(data, config) -> None``, raises before any job starts when the data cannot be
            loaded (None: nothing to check).
    """

    name: str
    setups: Mapping[str, Setup]
    variants: tuple[str, ...]
    ensemble: bool
    load: Callable[[str, int, str, StudyConfig], Split]
    build: Callable[[str, int, int, Sequence[int], Sequence[Tensor], StudyConfig], _Ensemble]
    step_seconds: Callable[[Job, StudyConfig, int], float]
    steps_per_epoch: Callable[[Job, StudyConfig], int]
    check: Callable[[str, StudyConfig], None] | None = None

    def setup(self, family: str) -> Setup:
        if family not in self.setups:
            raise ConfigError(f"unknown family {family!r}; choose one of {FAMILIES}")
        return self.setups[family]


def _paper_step_seconds(job: Job, config: StudyConfig, features: int) -> float:
    # members x units plus a per-step overhead (the vectorised ensembles, measured on one core)
    return len(job.seeds) * features * job.width * 3e-6 + 6e-4


#: Rows of the published MINIBOONE training split (36488 in data.npy; 3648 test, 3284 validation).
MINIBOONE_TRAIN_ROWS = 29556


def _miniboone_step_seconds(job: Job, config: StudyConfig, features: int) -> float:
    # one member's SGD step at the official batch, measured on one thread of a busy 2-core CPU
    # (UMNN: 0.65 s at w = 8, 3.4-4.5 s at 64, 48-50 s at 256; B-NAF depth 2: 0.17, 2.1-2.8, 47-63 s; depth 1:
    # 0.07 s at 8, 0.5 s at 256): the integrand's w^2 per node, B-NAF's dense (D w)^2 hidden-to-hidden blocks
    w = float(job.width)
    if job.family == "unconstrained":
        return 0.4 + 7.5e-4 * w * w
    return 0.06 + 1.7e-3 * w + 7e-4 * (config.bnaf_depth - 1) * w * w


def _paper_steps(job: Job, config: StudyConfig) -> int:
    return 282  # 9000 training points in batches of 32


def _miniboone_steps(job: Job, config: StudyConfig) -> int:
    batch = MINIBOONE[job.family].batch_size or config.batch_size
    n = min(MINIBOONE_TRAIN_ROWS, config.max_train or MINIBOONE_TRAIN_ROWS)
    return -(-n // batch)


PAPER_SPEC = ModelSpec(
    name="paper", setups=PAPER, variants=VARIANTS, ensemble=True, load=load_synthetic_split, build=_build_paper,
    step_seconds=_paper_step_seconds, steps_per_epoch=_paper_steps,
)  # fmt: skip
MINIBOONE_SPEC = ModelSpec(
    name="miniboone", setups=MINIBOONE, variants=("paper",), ensemble=False, load=load_uci_split,
    build=_build_miniboone, step_seconds=_miniboone_step_seconds, steps_per_epoch=_miniboone_steps,
    check=_check_uci,
)  # fmt: skip
_SPECS: dict[str, ModelSpec] = {**{d: PAPER_SPEC for d in DATASETS}, "miniboone": MINIBOONE_SPEC}


def spec_of(data: str) -> ModelSpec:
    """The :class:`ModelSpec` of a data set of the study."""
    try:
        return _SPECS[data]
    except KeyError:
        known = ", ".join(DATASETS + UCI_STUDY_DATASETS)
        raise ConfigError(f"study overparam: unknown data set {data!r}; choose from {known}") from None


def check_data(config: StudyConfig, datasets: Sequence[str] | None = None) -> None:
    """Raise (a :class:`~unflow_zoo.errors.DataError`) when a data set of ``config`` (or of
    ``datasets``) cannot be loaded: the UCI archive's file missing, with where to put it and how
    to download it. :func:`run_study` calls it before any job starts."""
    for data in dict.fromkeys(config.datasets if datasets is None else datasets):
        spec = spec_of(data)
        if spec.check is not None:
            spec.check(data, config)


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
            for data in config.datasets:
                if variant not in spec_of(data).variants:
                    continue  # the ablation is the one-hidden-layer models' (see ModelSpec)
                widths = config.widths_for(family, data)
                for width in widths:
                    if variant == "matched" and width == min(widths):
                        continue  # its rate is the paper's: the same run as the paper variant's
                    jobs.append(Job(family, variant, data, int(width), tuple(config.seeds)))
    return jobs


_FEATURES = {"mog1d": 1, "beta1d": 1, "gmm1d": 1, "grid": 2, "mog5d": 5, **UCI_DATASETS}


def job_cost(job: Job, config: StudyConfig) -> float:
    """Relative cost (for scheduling and the ETA), about CPU-seconds on one thread: epochs x steps
    per epoch x the data set's estimated seconds per step (:attr:`ModelSpec.step_seconds`), x the
    members for a spec that trains them one by one, plus a third for the per-epoch evaluation there."""
    spec = spec_of(job.data)
    d = _FEATURES.get(job.data, 2)
    per_epoch = spec.steps_per_epoch(job, config) * spec.step_seconds(job, config, d)
    if not spec.ensemble:
        per_epoch *= len(job.seeds) * 4 / 3
    return config.epochs_for(job.family, job.data) * per_epoch


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
    """Train one job's members and return one row per member and evaluated epoch (0 = init).

    The seeds train together as one vectorised ensemble, or, for a data set whose
    :class:`ModelSpec` has ``ensemble=False`` (MINIBOONE), one after the other in seed order
    through the same loop (:func:`_run_group`), each its own one-member group.

    With ``checkpoint`` (a file path), the training state is saved there after every epoch (and
    when a member of a one-by-one job finishes) and a job that finds its own state there resumes
    after the last saved epoch of the member it was training, keeping the rows of the members it
    had finished: plain SGD, batch orders that are a function of (seed, epoch) and schedules that
    are a function of the epoch make the resumed run the same as an uninterrupted one. The file
    is removed when the job finishes. ``progress(key, done, total)`` counts epochs over all groups.
    """
    torch.set_num_threads(config.threads)
    # everything alive now (torch, the package, the data) is permanent for the collector: its
    # full passes over them were about 5% of a training step
    gc.freeze()
    spec = spec_of(job.data)
    setup = spec.setup(job.family)
    splits = [spec.load(job.data, s, setup.scaling, config) for s in job.seeds]
    k = len(job.seeds)
    groups = [tuple(range(k))] if spec.ensemble else [(i,) for i in range(k)]
    saved = _load_partial(checkpoint, job) if checkpoint is not None else None
    rows: list[dict[str, Any]] = []
    first = 0
    if saved is not None:
        rows, first = list(saved["rows"]), int(saved.get("group", 0))
    for g in range(first, len(groups)):
        resume = saved if saved is not None and g == first and "ensemble" in saved else None
        rows = _run_group(job, config, spec, setup, splits, groups, g, rows, resume, progress, checkpoint)
        if checkpoint is not None and g + 1 < len(groups):
            _save_partial(checkpoint, {"key": job.key, "group": g + 1, "epoch": 0, "rows": rows})
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return rows


def _run_group(
    job: Job, config: StudyConfig, spec: ModelSpec, setup: Setup, splits: Sequence[Split],
    groups: Sequence[tuple[int, ...]], g: int, rows: list[dict[str, Any]], saved: dict[str, Any] | None,
    progress: Progress | None, checkpoint: Path | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train the members ``groups[g]`` of ``job`` (resuming from ``saved``) and return ``rows``
    followed by theirs."""
    device = torch.device(config.device)
    seeds = [job.seeds[i] for i in groups[g]]
    parts = [splits[i] for i in groups[g]]
    d = parts[0].train.shape[1]
    lowers = [sp.lower for sp in parts]
    ens = spec.build(job.family, job.width, d, seeds, lowers, config).to(device)
    train = torch.stack([sp.train for sp in parts]).to(device)  # (E, N, D): same N for every seed
    test = torch.stack([sp.test for sp in parts]).to(device)
    log_scale = torch.tensor([sp.log_scale for sp in parts], dtype=torch.float64)
    e, n = train.shape[0], train.shape[1]
    batch = setup.batch_size or config.batch_size
    epochs = config.epochs_for(job.family, job.data)
    rows = list(rows)

    def record(epoch: int) -> None:
        tr, _ = _nll(ens, train, config.eval_batch)
        te, bad = _nll(ens, test, config.eval_batch)
        mv = ens.movement(start)
        for k, seed in enumerate(seeds):
            row = dict(
                family=job.family, variant=job.variant, data=job.data, width=job.width, seed=seed, epoch=epoch,
                lr=float(lr[k]), train_nll=float(tr[k] + log_scale[k]), test_nll=float(te[k] + log_scale[k]),
                true_nll=parts[k].true_nll, grad_sq_init=float(grad_sq[k]), test_nonfinite=int(bad[k]),
                n_train=n, n_test=test.shape[1], seconds=time.perf_counter() - t0,
            )  # fmt: skip
            row.update({key: float(v[k]) for key, v in mv.items()})
            rows.append(row)

    if saved is not None:
        ens.load_state_dict(saved["ensemble"])
        start = {key: v.to(device) for key, v in saved["start"].items()}
        grad_sq, lr = saved["grad_sq"], saved["lr"]
        first = int(saved["epoch"]) + 1
        t0 = time.perf_counter() - float(saved["seconds"])
    else:
        grad_sq = _full_grad_sq(ens, train, config.eval_batch)
        lr = torch.full((e,), setup.lr, dtype=torch.float64)
        if job.variant == "matched":
            ref_width = min(config.widths_for(job.family, job.data))
            ref = spec.build(job.family, ref_width, d, seeds, lowers, config).to(device)
            lr = lr * _full_grad_sq(ref, train, config.eval_batch) / grad_sq
        start = ens.snapshot()
        t0 = time.perf_counter()
        record(0)
        first = 1
    arange = torch.arange(e, device=device).unsqueeze(1)
    for epoch in range(first, epochs + 1):
        lr_dev = (lr * setup.rate_factor(epoch)).to(device=device, dtype=torch.float32)
        order = torch.stack([batch_order(s, epoch, n) for s in seeds]).to(device)  # (E, N)
        for step, lo in enumerate(range(0, n, batch)):
            if config.max_steps is not None and step >= config.max_steps:
                break
            idx = order[:, lo : lo + batch]
            xb = train[arange, idx]  # (E, B, D): each member its own points
            loss = -ens.log_prob(xb).mean(1).sum()
            loss.backward()
            ens.sgd_step(lr_dev)
        record(epoch)
        if checkpoint is not None and epoch < epochs:
            state = {"key": job.key, "group": g, "epoch": epoch, "ensemble": ens.state_dict(), "start": start}
            state.update(grad_sq=grad_sq, lr=lr, rows=rows, seconds=time.perf_counter() - t0)
            _save_partial(checkpoint, state)
        if progress is not None:
            progress(job.key, g * epochs + epoch, len(groups) * epochs)
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
    order = {name: i for i, name in enumerate(FAMILIES + DATASETS + UCI_STUDY_DATASETS + VARIANTS)}
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
    jobs = jobs_of(config)
    todo = [j for j in jobs if not (out / "runs" / f"{j.key}.csv").exists()]
    check_data(config, [j.data for j in todo])  # a missing UCI file fails here, before anything runs
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _write_config(config, out)
    if len(todo) < len(jobs):
        say(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} jobs already finished in {out / 'runs'}")
    # largest first (the pool then packs well), but the 5-D set last: it costs as much as the
    # four others together, and a stopped sweep then has every other data set complete; the UCI
    # sets (hours per member) after it
    sign = 1.0 if config.order == "cheapest-first" else -1.0
    todo.sort(key=lambda j: (spec_of(j.data).name != "paper", j.data == "mog5d", j.variant != "paper",
                             sign * job_cost(j, config)))  # fmt: skip
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
        # never past the total: float sums of the per-epoch parts can overshoot it by a rounding error
        bar.update(min((frac - prev) * costs[key], max(bar.total - bar.n, 0.0)))

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


def _csv(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def add_arguments(p: Any) -> None:
    """The options of ``unflow-zoo study overparam`` on an ``argparse`` parser."""
    uc, uu = MINIBOONE["constrained"], MINIBOONE["unconstrained"]
    p.add_argument("--out", required=True, help="output folder (resumable: finished jobs are skipped)")
    p.add_argument("--quick", action="store_true", help="the few-minute version (see quick_config)")
    p.add_argument("--families", type=_names, default=None, help="comma list (default: both)")
    p.add_argument("--datasets", type=_names, default=None,
                   help=f"comma list (default: {','.join(DATASETS)}); also {','.join(UCI_STUDY_DATASETS)}: the "
                        "official UMNN and B-NAF width sweep on UCI MINIBOONE (D=43; needs the MAF archive's "
                        "miniboone/data.npy, see --data-dir; never part of the default)")  # fmt: skip
    p.add_argument("--variants", type=_names, default=None,
                   help="paper,matched (default: both; --quick too; miniboone runs paper only)")  # fmt: skip
    p.add_argument("--seeds", type=_ints, default=None,
                   help="comma list (default 0,1,2; the official MINIBOONE runs used 1,2,3,4,5)")  # fmt: skip
    p.add_argument("--widths-constrained", type=_ints, default=None,
                   help=f"comma list, for every data set of the run (default {_csv(PAPER['constrained'].widths)}; "
                        f"miniboone {_csv(uc.widths)})")  # fmt: skip
    p.add_argument("--widths-unconstrained", type=_ints, default=None,
                   help=f"comma list, for every data set of the run (default {_csv(PAPER['unconstrained'].widths)}; "
                        f"miniboone {_csv(uu.widths)})")  # fmt: skip
    p.add_argument("--epochs-constrained", type=int, default=None,
                   help=f"default {PAPER['constrained'].epochs} (the paper's; miniboone {uc.epochs}, the official "
                        "B-NAF run's)")  # fmt: skip
    p.add_argument("--epochs-unconstrained", type=int, default=None,
                   help=f"default {PAPER['unconstrained'].epochs} (the paper's; miniboone {uu.epochs}, the official "
                        "UMNN run's)")  # fmt: skip
    p.add_argument("--bnaf-depth", type=int, default=None,
                   help="hidden layers per block of the constrained (B-NAF) flow on miniboone (default 2; the "
                        "official command, --layers 0, has 1)")  # fmt: skip
    p.add_argument("--data-dir", default=None,
                   help=f"folder holding the UCI files for miniboone (miniboone/data.npy or data/miniboone/data.npy; "
                        f"default ${DATA_DIR_ENV}, else ~/.cache/unflow_zoo/data)")  # fmt: skip
    p.add_argument("--download", action="store_true",
                   help="fetch the MAF archive (Zenodo 1161203, about 860 MB) into --data-dir when miniboone's file "
                        "is missing")  # fmt: skip
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
    for name in ("families", "datasets", "variants", "seeds", "max_steps", "max_train", "max_test", "bnaf_depth"):
        value = getattr(args, name, None)
        if value is not None:
            updates[name] = value
    if getattr(args, "data_dir", None):
        updates["data_dir"] = Path(args.data_dir).expanduser()
    updates["download"] = bool(getattr(args, "download", False))
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
