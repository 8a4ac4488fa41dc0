r"""DensityDataModule: one LightningDataModule for every density data set.

The module serves float32 batches (float64 with ``dtype="float64"``) of shape ``(B, D)``
(or ``(B, C, H, W)`` for images) and tells the model three things: ``event_shape`` (known right after
construction, so LightningCLI can link ``data.event_shape`` to
``model.event_shape``); where known, the true log-density of the points it
serves (:meth:`DensityDataModule.true_log_prob`), from which FlowModule
estimates :math:`\mathrm{KL}(p\,\|\,q)`; and, for images, the log-determinant
of the preprocessing (:meth:`DensityDataModule.pixel_log_det`), from which
FlowModule reports bits/dim in pixel space.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, TensorDataset, get_worker_info

from unflow_zoo.data.files import VENDORED, peek_dim, read_points, resolve_path
from unflow_zoo.data.images import IMAGE_DATASETS, load_digits, load_mnist
from unflow_zoo.data.preprocess import PixelPreprocess, dequantize
from unflow_zoo.data.synthetic import SOURCES, Source, get_source
from unflow_zoo.data.validation import validate_points
from unflow_zoo.errors import ConfigError, DataError, DataTypeError

__all__ = [
    "DTYPES",
    "SCALINGS",
    "DensityDataModule",
    "Scaling",
    "ServedDtype",
    "dataset_names",
    "split_sizes",
    "standardize_stats",
]

_FILE = "file"

Scaling = Literal["none", "standardize", "ball"]
#: The values of ``DensityDataModule(scaling=...)``.
SCALINGS: tuple[str, ...] = ("none", "standardize", "ball")

ServedDtype = Literal["float32", "float64"]
#: The values of ``DensityDataModule(dtype=...)`` and the torch dtypes they serve.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

if (
    len({*SOURCES, *VENDORED, *IMAGE_DATASETS, _FILE}) != len(SOURCES) + len(VENDORED) + len(IMAGE_DATASETS) + 1
):  # pragma: no cover
    raise RuntimeError("data set names must be unique across synthetic sources, shipped files, images and 'file'")


def _uci_datasets() -> dict[str, int]:
    """``unflow_zoo.data.uci.UCI_DATASETS`` (name -> D), or ``{}`` while that module is absent.

    Imported here rather than at the top so that this module (and the synthetic and
    image sets) work whether or not the UCI loaders are installed.
    """
    try:
        from unflow_zoo.data.uci import UCI_DATASETS
    except ImportError:
        return {}
    return dict(UCI_DATASETS)


def dataset_names() -> list[str]:
    """Every value ``DensityDataModule(dataset=...)`` accepts."""
    uci = [name for name in sorted(_uci_datasets()) if name not in {*SOURCES, *VENDORED, *IMAGE_DATASETS}]
    return sorted(SOURCES) + sorted(VENDORED) + uci + sorted(IMAGE_DATASETS) + [_FILE]


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` for ``n`` points.

    Each held-out size is ``round(n * fraction)``, but at least one point when its
    fraction is positive, so asking for a validation set never silently yields none.

    Raises:
        DataError: nothing would be left to train on.
    """
    n_val = max(round(n * val_fraction), 1) if val_fraction > 0 else 0
    n_test = max(round(n * test_fraction), 1) if test_fraction > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(
            f"{n} points split with val_fraction={val_fraction} and test_fraction={test_fraction} "
            f"leave {n_train} for training; use more points or smaller fractions"
        )
    return n_train, n_val, n_test


def _torch_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _column_scale(x: np.ndarray) -> np.ndarray:
    """The largest ``|x|`` of each column (1 for an all-zero column): dividing by it first keeps
    sums of squares far from overflow, whatever the magnitude of the data."""
    scale = np.abs(x).max(axis=0)
    return np.where((scale > 0) & np.isfinite(scale), scale, 1.0)


def standardize_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population standard deviation of ``x`` ``(n, D)``, in float64, overflow-free.

    Each column is divided by its largest ``|x|`` before the moments are taken and the
    results multiplied back, so any finite float64 data (``1e300`` included, where the
    plain variance overflows to inf and the standardised column collapses to ``-0.0``)
    give finite statistics, and a constant column gives exactly 0, replaced by 1 (there
    is no scale to divide by; a single training point is constant too).
    """
    x = np.asarray(x, dtype=np.float64)
    scale = _column_scale(x)
    scaled = x / scale
    mean, std = scaled.mean(axis=0) * scale, scaled.std(axis=0) * scale
    return mean, np.where(std > 0, std, 1.0)


def _largest_norm(x: np.ndarray) -> float:
    """``max_i ||x_i||`` in float64, computed on ``x / max|x|`` so that it cannot overflow."""
    x = np.asarray(x, dtype=np.float64)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        return peak
    return peak * float(np.linalg.norm(x / peak, axis=1).max())


class EpochSampler(RandomSampler):
    """A random order of ``n`` indices that is a function of ``(seed, epoch)`` alone.

    Lightning calls :meth:`set_epoch` before every training epoch, so a run resumed from a
    checkpoint continues with the order it would have had, not epoch 0's again; and under
    DDP Lightning swaps it for a ``DistributedSampler`` (it is a ``RandomSampler``, so that one
    shuffles too), which also orders by ``seed + epoch``.
    """

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(range(n))
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class DequantizingCollate:
    r"""Collate integer pixels into served batches ``(x,)``, with fresh dequantisation noise per call.

    :math:`x = g(k + u)`, :math:`u \sim U[0, 1)` (or :math:`x = g(k)` with ``dequantize=False``),
    ``g`` the :class:`~unflow_zoo.data.preprocess.PixelPreprocess`, then flattened to ``(B, D)``
    when ``flatten``. In the main process the noise comes from ``generator``, so a seeded
    generator makes every epoch's noise reproducible and different from the last. In a
    DataLoader worker it comes from the worker's global torch stream, which PyTorch seeds
    from the loader's own (seeded) generator plus the worker id: still reproducible, and
    distinct across workers (a copied ``generator`` would repeat the same noise in each).
    """

    def __init__(
        self, preprocess: PixelPreprocess, *, flatten: bool, dequantize: bool, generator: torch.Generator | None
    ) -> None:
        self.preprocess, self.flatten, self.dequantize, self.generator = preprocess, flatten, dequantize, generator

    def serve(self, pixels: Tensor) -> Tensor:
        """Served float32 data of a batch of integer ``pixels`` ``(B, C, H, W)``."""
        generator = self.generator if get_worker_info() is None else None
        y = dequantize(pixels, generator) if self.dequantize else pixels.to(torch.float32)
        x = self.preprocess.to_served(y)
        return x.reshape(x.shape[0], -1) if self.flatten else x

    def __call__(self, items: list[Any]) -> tuple[Tensor]:
        return (self.serve(torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])),)


class DensityDataModule(L.LightningDataModule):
    r"""Train/val/test splits of a synthetic source, a file of points, a UCI set or images.

    **Tabular data** (synthetic sources, shipped files, ``file``): ``setup()`` draws
    (or reads) the data, checks it for NaN/inf and for values that overflow the served
    ``dtype`` (``1e39`` in float32; a :class:`~unflow_zoo.errors.DataError` names the line
    and column), shuffles it with ``seed`` and splits it by the fractions; the same
    arguments always give the same splits. With a ``scaling`` the served data are
    :math:`\tilde x = (x - m)/s`, with statistics of the training split alone (in float64,
    each column pre-scaled by its largest :math:`|x|`, so that they cannot overflow):

    - ``"standardize"`` (or ``standardize=True``): the training set's mean :math:`m` and
      standard deviation :math:`s` per coordinate;
    - ``"ball"``: :math:`m = 0` and :math:`s_d = 2 \max_i \|x_i\|` for every coordinate, so
      that the training points lie in the ball of radius 1/2 (the seed paper's unconstrained
      runs, ``UNF/utils.py``; not centred);

    and the true density transforms as

    .. math:: \log \tilde p(\tilde x) = \log p(s \odot \tilde x + m) + \textstyle\sum_d \log s_d .

    Both are recorded as ``mean`` / ``std``, which :meth:`raw_to_served`,
    :meth:`transform_to_raw`, :meth:`true_log_prob` and saved pretrained flows use.

    **UCI** (``power``, ``gas``, ``hepmass``, ``miniboone``, ``bsds300``; via
    :func:`unflow_zoo.data.uci.load_uci`): the published train/validation/test splits,
    already normalised as in MAF. ``val_fraction``, ``test_fraction``, ``standardize``,
    ``scaling`` and ``n_samples`` are ignored (a warning says so when they differ from their defaults).

    **Images** (``digits``, ``mnist``): integer pixels :math:`k` with :math:`L` levels are
    served as :math:`x = g(k + u)`, :math:`u \sim U[0,1)` (:mod:`unflow_zoo.data.preprocess`):
    :math:`g(y) = y/L - 1/2` by default, or
    :math:`g(y) = \operatorname{logit}(\alpha + (1-2\alpha)\, y/L)` with ``logit_alpha``.
    Training batches get fresh noise every time they are served (seeded from ``seed``);
    validation and test sets are dequantised once with fixed seeded noise, so every
    evaluation sees the same points. :meth:`pixel_log_det` returns
    :math:`\log|\det \partial x/\partial y|`, with which FlowModule reports bits/dim of
    the dequantised pixels. Splits:

    - ``digits``: scikit-learn's 1797 8x8 images (:math:`L = 17`), shuffled with ``seed`` and
      split by ``val_fraction`` / ``test_fraction`` (defaults: 1437 / 180 / 180);
    - ``mnist`` (:math:`L = 256`): the official 10 000 test images (``test_fraction`` is
      ignored); with ``val_fraction > 0`` the last sixth of the official training set
      (the last 10 000 of 60 000) is the validation set, as in MAF's 50k/10k/10k, whatever
      the value of ``val_fraction``; with ``val_fraction = 0`` all 60 000 train.

    ``standardize``, ``scaling`` and ``n_samples`` are ignored for images; ``train_data`` /
    ``val_data`` / ``test_data`` hold served float32 tensors (training split dequantised
    with fixed noise, for baselines and plots; training batches use fresh noise).

    Args:
        dataset: a synthetic source (``moons``, ``8gaussians``, ``gmm1d``, ...),
            a shipped file of the seed paper (``mog1d``, ``beta1d``, ``grid``,
            ``mog5d``), a UCI set, an image set (``digits``, ``mnist``), or ``file``
            to read ``path``; see :func:`dataset_names`.
        data_dir: folder relative paths are also looked up in, and where UCI and MNIST
            files are looked for (and downloaded to).
        path: the text file for ``dataset="file"``: one point per line,
            coordinates separated by whitespace.
        batch_size: training batch size.
        n_samples: number of points drawn from a synthetic source (files use all rows).
        val_fraction: share of points held out for validation; 0 skips validation.
        test_fraction: share of points held out for testing.
        seed: seeds data generation, the split, the training shuffle and the dequantisation noise.
        standardize: serve each coordinate with zero mean and unit variance on
            the training set (tabular data only); the same as ``scaling="standardize"``.
        scaling: ``"none"``, ``"standardize"`` or ``"ball"`` (see above; tabular data only);
            None: ``"standardize"`` if ``standardize`` else ``"none"``. ``standardize=True``
            with another scaling is an error. ``hparams.standardize`` records whether the
            standardisation applies (True after ``scaling="standardize"`` too).
        num_workers: DataLoader worker processes.
        eval_batch_size: batch size for validation and test; ``batch_size`` if None.
        flatten: images only: serve ``(B, C*H*W)`` vectors (event_shape ``(64,)`` for digits,
            ``(784,)`` for MNIST) instead of ``(B, C, H, W)``.
        dequantize: images only: add :math:`U[0,1)` noise to the pixels (needed for a
            meaningful continuous density; ``False`` serves :math:`g(k)`, e.g. for a model
            that dequantises itself).
        logit_alpha: images only: :math:`\alpha` of the logit transform (``1e-6`` as MAF on
            MNIST, ``0.05`` as RealNVP/Glow), or None for :math:`y/L - 1/2`.
        download: fetch missing files (MNIST from the Hugging Face Hub, UCI from the
            published archive) into ``data_dir``; without it a missing file is an error
            that says where it was looked for.
        dtype: ``"float32"`` (default) or ``"float64"``: the dtype of the served tabular and
            UCI data, which the data are validated in. ``"float64"`` is for data beyond
            float32's range (about 3.4e38), trained with ``Trainer(precision="64-true")``;
            images are always served in float32 (a warning says so).

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022 (the shipped files; 90/10 train/test and
        standardisation in its constrained-flow runs, "ball" scaling in its unconstrained ones).
        Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
        NeurIPS 2017 (UCI preprocessing and splits; MNIST 50k/10k/10k with logit, alpha 1e-6).
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017
        (dequantisation, logit with alpha 0.05, bits/dim in pixel space).
    """

    def __init__(
        self,
        dataset: str = "moons",
        data_dir: str = "data",
        path: str | None = None,
        batch_size: int = 256,
        n_samples: int = 20000,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        standardize: bool = False,
        scaling: Scaling | None = None,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        flatten: bool = False,
        dequantize: bool = True,
        logit_alpha: float | None = None,
        download: bool = False,
        dtype: ServedDtype = "float32",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        names = dataset_names()
        if dataset not in names:
            raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(names)}")
        for arg, value in (("batch_size", batch_size), ("n_samples", n_samples)):
            if value < 1:
                raise ConfigError(f"{arg} must be a positive int, got {value}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be a positive int or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{arg} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves nothing to train on; "
                "keep their sum below 1"
            )
        if scaling is not None and scaling not in SCALINGS:
            raise ConfigError(f"unknown scaling {scaling!r}; choose one of: {', '.join(SCALINGS)}")
        if standardize and scaling not in (None, "standardize"):
            raise ConfigError(
                f"standardize=True means scaling='standardize', which conflicts with scaling={scaling!r}; "
                "give only scaling="
            )
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
        #: The scaling applied to tabular data: ``"none"``, ``"standardize"`` or ``"ball"``.
        self.scaling: str = scaling if scaling is not None else ("standardize" if standardize else "none")

        self.source: Source | None = None
        self.file: Path | None = None
        self.preprocess: PixelPreprocess | None = None
        self._raw_log_prob: Callable[[Tensor], Tensor] | None = None
        uci = _uci_datasets()
        if dataset in SOURCES:
            self.source = get_source(dataset)
            dim = self.source.dim
            self._raw_log_prob = self.source.log_prob if self.source.has_density else None
        elif dataset in VENDORED:
            self.file = VENDORED[dataset].path
            dim = VENDORED[dataset].dim
            self._raw_log_prob = VENDORED[dataset].log_prob
        elif dataset in IMAGE_DATASETS:
            spec = IMAGE_DATASETS[dataset]
            if not dequantize and logit_alpha == 0.0:
                raise ConfigError(
                    "logit_alpha=0 without dequantisation maps pixel 0 to -inf; "
                    "set dequantize=True or a positive logit_alpha"
                )
            self.preprocess = PixelPreprocess(spec.levels, logit_alpha)
            dim = math.prod(spec.shape)
            self._warn_ignored(dataset, standardize=False, scaling=None, n_samples=20000, dtype="float32")
            if dataset == "mnist":
                self._warn_ignored(dataset, test_fraction=0.1)
                if val_fraction not in (0.0, 0.1):
                    warnings.warn(
                        f"dataset='mnist' validates on the last 10 000 training images (MAF's 50k/10k split) "
                        f"whenever val_fraction > 0; val_fraction={val_fraction} is used only as on/off",
                        UserWarning,
                        stacklevel=2,
                    )
        elif dataset in uci:
            dim = uci[dataset]
            self._warn_ignored(
                dataset, val_fraction=0.1, test_fraction=0.1, standardize=False, scaling=None, n_samples=20000
            )
        else:
            if path is None:
                raise ConfigError("dataset='file' needs path=: a text file with one point per line")
            self.file = resolve_path(path, data_dir)
            dim = peek_dim(self.file)  # only the first line: event_shape must not cost a full read
        if self.preprocess is None:
            self._warn_ignored(dataset, flatten=False, dequantize=True, logit_alpha=None)
        self.event_shape: tuple[int, ...] = IMAGE_DATASETS[dataset].shape if self.is_image and not flatten else (dim,)
        # Readers of hparams.standardize (the pretrained records) see either spelling; the
        # warnings above have named what the caller actually passed.
        self.hparams["standardize"] = self.scaling == "standardize"

        self.train_data: Tensor | None = None
        self.val_data: Tensor | None = None
        self.test_data: Tensor | None = None
        # Integer pixels of each split (images only); training batches are dequantised from these.
        self.train_pixels: Tensor | None = None
        self.val_pixels: Tensor | None = None
        self.test_pixels: Tensor | None = None
        # Identity until setup() fits them, so the transforms below always work.
        self.mean: Tensor = torch.zeros(dim, dtype=torch.float64)
        self.std: Tensor = torch.ones(dim, dtype=torch.float64)
        # No torch.Generator is held here: the module must pickle for ddp_spawn. The shuffle
        # order comes from EpochSampler (seed + epoch) and the noise stream is made per loader.

    def _warn_ignored(self, dataset: str, **defaults: Any) -> None:
        changed = [f"{k}={self.hparams[k]!r}" for k, v in defaults.items() if self.hparams[k] != v]
        if changed:
            warnings.warn(
                f"dataset={dataset!r} ignores {', '.join(changed)} (see the DensityDataModule docstring "
                "for how its splits and preprocessing are fixed)",
                UserWarning,
                stacklevel=3,
            )

    # ----- data -----------------------------------------------------------------------------
    @property
    def data_name(self) -> str:
        """Where the points come from: the source name or the file path."""
        return str(self.file) if self.hparams.dataset == _FILE else self.hparams.dataset

    @property
    def is_setup(self) -> bool:
        return self.train_data is not None

    @property
    def is_image(self) -> bool:
        """Whether the module serves an image set (dequantised pixels, :meth:`pixel_log_det` defined)."""
        return self.preprocess is not None

    @property
    def is_uci(self) -> bool:
        return self.hparams.dataset in _uci_datasets()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the served data (``torch.float32`` unless ``dtype="float64"``; images: float32)."""
        return torch.float32 if self.is_image else DTYPES[self.hparams.dtype]

    @property
    def _np_dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self.dtype == torch.float64 else np.float32)

    def _load_raw(self, rng: np.random.Generator) -> np.ndarray:
        """The raw points in float64, checked finite in the served dtype."""
        np_dtype = self._np_dtype
        if self.source is not None:
            raw = validate_points(self.source.sample(self.hparams.n_samples, rng), where=self.data_name, dtype=np_dtype)
        else:
            assert self.file is not None
            raw = read_points(self.file, dtype=np_dtype)  # validates, naming lines and columns
        return np.asarray(raw, dtype=np.float64)

    def _check_served(self, splits: dict[str, Tensor]) -> None:
        """Refuse served data that are not finite, and warn about values a flow cannot use.

        Raw data that fit the dtype can still be served as inf, e.g. a validation point far
        from a training split whose column barely varies. And served values beyond
        ``sqrt(max)`` of the dtype (1.8e19 in float32) are finite, but the base
        distribution's log-density squares them, so every loss would be inf.
        """
        limit = math.sqrt(torch.finfo(self.dtype).max)
        for name, data in splits.items():
            if not data.numel():
                continue
            finite = torch.isfinite(data)
            if not finite.all():
                row, col = (int(i) for i in (~finite).nonzero()[0])
                raise DataError(
                    f"{self.data_name}: after scaling={self.scaling!r}, {int((~finite).any(1).sum())} points of the "
                    f"{name} split are not finite in {self.dtype} (first: row {row}, column index {col}); "
                    "those values lie too far from the training statistics; rescale that column, or use "
                    "dtype='float64'"
                )
            peak = data.abs().amax(0)
            col = int(peak.argmax())
            if float(peak[col]) > limit:
                warnings.warn(
                    f"{self.data_name}: the {name} split is served with values up to {float(peak[col]):.3g} "
                    f"(column index {col}, scaling={self.scaling!r}); a flow's base log-density squares them, "
                    f"which overflows {self.dtype} beyond {limit:.3g}, so the loss of those points will be inf; "
                    + (
                        "use scaling='standardize' or rescale the column"
                        if self.scaling == "none"
                        else "they lie far outside the training split: check them for typos, or remove them"
                    ),
                    UserWarning,
                    stacklevel=3,
                )

    def prepare_data(self) -> None:
        """Fetch missing files before any process's :meth:`setup`, with ``download=True``.

        Lightning calls this on one process per node and waits for it, so under DDP the UCI
        archive (with its preprocessed cache) and MNIST are downloaded once per node, not by
        every rank at once; :meth:`setup` then reads what is on disk. Nothing to do for the
        other sources. Called outside a Trainer, :meth:`setup` still downloads what is missing.
        """
        hp = self.hparams
        if not hp.download:
            return
        if self.is_uci:
            from unflow_zoo.data.uci import load_uci  # lazily: see _uci_datasets

            load_uci(hp.dataset, hp.data_dir, download=True)
        elif hp.dataset == "mnist":
            load_mnist(hp.data_dir, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Draw or read the data, validate, shuffle, split and (optionally) scale; runs once."""
        if self.is_setup:
            return
        if self.is_image:
            self._setup_images()
            return
        if self.is_uci:
            self._setup_uci()
            return
        hp = self.hparams
        # Separate streams, so that changing the fractions reshuffles but never redraws the data.
        data_seq, split_seq = np.random.SeedSequence(hp.seed).spawn(2)
        raw = self._load_raw(np.random.default_rng(data_seq))
        if raw.shape[1:] != self.event_shape:
            raise DataError(
                f"{self.data_name}: points have shape {raw.shape[1:]}, but event_shape was {self.event_shape} "
                "when the module was built; did the file change?"
            )
        n_train, n_val, _ = split_sizes(raw.shape[0], hp.val_fraction, hp.test_fraction)
        raw = raw[np.random.default_rng(split_seq).permutation(raw.shape[0])]
        train, val, test = raw[:n_train], raw[n_train : n_train + n_val], raw[n_train + n_val :]
        if self.scaling == "standardize":
            # In float64, pre-scaled by each column's largest |x|: the variance cannot overflow.
            mean, std = standardize_stats(train)
            self.mean, self.std = torch.from_numpy(mean), torch.from_numpy(std)
        elif self.scaling == "ball":
            radius = _largest_norm(train)
            scale = 2.0 * radius if radius > 0 else 1.0  # all points at the origin: nothing to divide by
            self.mean = torch.zeros(train.shape[1], dtype=torch.float64)
            self.std = torch.full((train.shape[1],), scale, dtype=torch.float64)
        served = {
            name: self.raw_to_served(torch.from_numpy(part)).to(self.dtype)
            for name, part in (("training", train), ("validation", val), ("test", test))
        }
        self._check_served(served)
        self.train_data, self.val_data, self.test_data = served.values()

    def _setup_uci(self) -> None:
        from unflow_zoo.data.uci import load_uci  # lazily: see _uci_datasets

        hp = self.hparams
        splits = load_uci(hp.dataset, hp.data_dir, download=hp.download)
        served = []
        np_dtype = self._np_dtype
        for name, part in zip(("train", "validation", "test"), splits, strict=True):
            part = validate_points(part, where=f"{hp.dataset} ({name} split)", dtype=np_dtype)
            if part.shape[1:] != self.event_shape:
                raise DataError(
                    f"{hp.dataset}: the {name} split has {part.shape[1]} columns, expected {self.event_shape[0]} "
                    "(UCI_DATASETS); is the local copy from another version of the archive?"
                )
            served.append(torch.from_numpy(np.ascontiguousarray(part, dtype=np_dtype)))
        self.train_data, self.val_data, self.test_data = served

    def _setup_images(self) -> None:
        hp = self.hparams
        split_seq = np.random.SeedSequence(hp.seed).spawn(2)[1]
        if hp.dataset == "digits":
            pixels = load_digits()
            n_train, n_val, _ = split_sizes(pixels.shape[0], hp.val_fraction, hp.test_fraction)
            pixels = pixels[np.random.default_rng(split_seq).permutation(pixels.shape[0])]
            train, val, test = pixels[:n_train], pixels[n_train : n_train + n_val], pixels[n_train + n_val :]
        else:
            mnist = load_mnist(hp.data_dir, download=hp.download)
            train, test = mnist["train"], mnist["test"]
            # MAF's convention: the last sixth (10 000 of 60 000) of the official training set validates.
            n_val = max(train.shape[0] // 6, 1) if hp.val_fraction > 0 else 0
            if train.shape[0] - n_val < 1:
                raise DataError(f"MNIST: {train.shape[0]} training images leave none to train on after validation")
            train, val = train[: train.shape[0] - n_val], train[train.shape[0] - n_val :]
        expected = IMAGE_DATASETS[hp.dataset].shape
        for part in (train, val, test):
            if part.shape[1:] != expected:  # pragma: no cover - the loaders check this already
                raise DataError(f"{hp.dataset}: images of shape {part.shape[1:]}, expected {expected}")
        self.train_pixels, self.val_pixels, self.test_pixels = (torch.from_numpy(p) for p in (train, val, test))
        # Fixed, seeded noise for the evaluation splits (and the stored copy of the training split).
        streams = np.random.SeedSequence(hp.seed).spawn(6)
        self.val_data = self._serve_fixed(self.val_pixels, streams[3])
        self.test_data = self._serve_fixed(self.test_pixels, streams[4])
        self.train_data = self._serve_fixed(self.train_pixels, streams[5])

    def _serve_fixed(self, pixels: Tensor, seq: np.random.SeedSequence, chunk: int = 8192) -> Tensor:
        """Served float32 data of ``pixels``, dequantised with noise seeded by ``seq``."""
        collate = DequantizingCollate(
            self.preprocess,  # type: ignore[arg-type]
            flatten=self.hparams.flatten,
            dequantize=self.hparams.dequantize,
            generator=torch.Generator().manual_seed(_torch_seed(seq)),
        )
        # Chunks bound the temporaries of the logit to a few MB at a time.
        parts = [collate.serve(pixels[i : i + chunk]) for i in range(0, pixels.shape[0], chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, *self.event_shape)

    # ----- scaling and pixel preprocessing -----------------------------------------------------
    def transform_to_raw(self, x: Tensor) -> Tensor:
        """Served coordinates to the source's own: :math:`x \\odot s + m`; for images, the
        dequantised pixels :math:`y = g^{-1}(x) \\in [0, L)` (in ``x``'s shape)."""
        if self.preprocess is not None:
            return self.preprocess.inverse(x)[0]
        return (x * self.std.to(x.device, x.dtype) + self.mean.to(x.device, x.dtype)).to(x.dtype)

    def raw_to_served(self, x: Tensor) -> Tensor:
        """The source's coordinates to served ones: :math:`(x - m) / s`; for images, dequantised
        pixels :math:`y` to :math:`g(y)` (in ``y``'s shape, not flattened)."""
        if self.preprocess is not None:
            return self.preprocess.to_served(x)
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    def pixel_log_det(self, x: Tensor) -> Tensor | None:
        r""":math:`\log|\det \partial x / \partial y|` of served images ``x`` ``(B, *event_shape)``, shape ``(B,)``.

        ``y`` are the dequantised pixels in :math:`[0, L)`; FlowModule turns a model NLL of
        ``x`` into bits/dim of the pixels as :math:`(\mathrm{NLL} - \log|\det|) / (D \ln 2)`.
        It is :math:`-D \log L` without the logit and
        :math:`\sum_d [\log(1-2\alpha) - \log L + \operatorname{softplus}(x_d) + \operatorname{softplus}(-x_d)]`
        with it (float64 inside, returned in ``x``'s dtype). ``None`` for non-image data,
        which are served in their own units.
        """
        if self.preprocess is None:
            return None
        self._check_batch(x)
        return self.preprocess.log_det(x)

    def _check_batch(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise DataTypeError(
                f"expected a torch.Tensor batch for {self.data_name}, got {type(x).__name__}; "
                "convert it with torch.as_tensor(x, dtype=torch.float32)"
            )
        if tuple(x.shape[1:]) != self.event_shape:
            raise DataError(
                f"expected a batch of shape (B, {', '.join(map(str, self.event_shape))}) for {self.data_name}, "
                f"got {tuple(x.shape)}"
            )

    # ----- true density -----------------------------------------------------------------------
    @property
    def has_true_density(self) -> bool:
        """Whether :meth:`true_log_prob` returns values (the source's density is known)."""
        return self._raw_log_prob is not None

    def true_log_prob(self, x: Tensor) -> Tensor | None:
        """True log-density of served points ``x`` of shape ``(B, *event_shape)``, shape ``(B,)``.

        Computed in float64 and returned in ``x``'s dtype and device; ``None`` when
        the density is unknown. Calls :meth:`setup` first if the scaling statistics
        are needed and not yet fitted.
        """
        if self._raw_log_prob is None:
            return None
        self._check_batch(x)
        if self.scaling != "none":
            self.setup()
        # MPS has no float64; the density is cheap enough to evaluate on the CPU there.
        device = torch.device("cpu") if x.device.type == "mps" else x.device
        mean, std = self.mean.to(device), self.std.to(device)
        raw = x.to(device, torch.float64) * std + mean
        log_prob = self._raw_log_prob(raw) + torch.log(std).sum()
        return log_prob.to(x.device, x.dtype)

    # ----- loaders -----------------------------------------------------------------------------
    def _loader(
        self, data: Tensor | None, batch_size: int, shuffle: bool, collate_fn: Callable | None = None
    ) -> DataLoader:
        assert data is not None
        workers = self.hparams.num_workers
        return DataLoader(
            TensorDataset(data),
            batch_size=batch_size,
            sampler=EpochSampler(len(data), self.hparams.seed) if shuffle else None,
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_fn,
        )

    def _noise_generator(self) -> torch.Generator:
        """The dequantisation noise stream: its own seed (spawn key 2; 0 and 1 draw and split
        the data, so noise never shifts the shuffle order), and one stream per DDP rank, or
        every rank would add the same noise to its different images."""
        rank = self.trainer.global_rank if self.trainer is not None else 0
        seq = np.random.SeedSequence(self.hparams.seed).spawn(3)[2]
        if rank:  # rank 0 keeps the single-process stream
            seq = seq.spawn(rank)[rank - 1]
        return torch.Generator().manual_seed(_torch_seed(seq))

    @property
    def _eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(x,)``; the order is a function of ``seed``.

        Images are dequantised as they are served, with fresh noise every epoch from a
        stream seeded by ``seed`` (see :class:`DequantizingCollate`).
        """
        self.setup()
        if self.preprocess is None:
            return self._loader(self.train_data, self.hparams.batch_size, shuffle=True)
        collate = DequantizingCollate(
            self.preprocess,
            flatten=self.hparams.flatten,
            dequantize=self.hparams.dequantize,
            generator=self._noise_generator(),
        )
        return self._loader(self.train_pixels, self.hparams.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches ``(x,)``, or ``[]`` (Lightning then skips validation) when ``val_fraction=0``."""
        self.setup()
        assert self.val_data is not None
        return self._loader(self.val_data, self._eval_batch_size, shuffle=False) if len(self.val_data) else []

    def test_dataloader(self) -> DataLoader | list:
        """Test batches ``(x,)``, or ``[]`` when ``test_fraction=0``."""
        self.setup()
        assert self.test_data is not None
        return self._loader(self.test_data, self._eval_batch_size, shuffle=False) if len(self.test_data) else []

    def __repr__(self) -> str:
        hp = self.hparams
        return (
            f"{type(self).__name__}(dataset={self.data_name!r}, event_shape={self.event_shape}, "
            f"batch_size={hp.batch_size}, scaling={self.scaling!r}, seed={hp.seed}"
            + (f", preprocess={self.preprocess!r}" if self.preprocess is not None else "")
            + ")"
        )
