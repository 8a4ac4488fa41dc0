r"""DensityDataModule: one LightningDataModule for every tabular density data set.

The module serves float32 batches of shape ``(B, D)`` and tells the model two
things: ``event_shape`` (known right after construction, so LightningCLI can
link ``data.event_shape`` to ``model.event_shape``) and, where known, the true
log-density of the points it serves (:meth:`DensityDataModule.true_log_prob`),
from which FlowModule estimates :math:`\mathrm{KL}(p\,\|\,q)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.data.files import VENDORED, peek_dim, read_points, resolve_path
from unflow_zoo.data.synthetic import SOURCES, Source, get_source
from unflow_zoo.data.validation import validate_points

__all__ = ["DensityDataModule", "dataset_names", "split_sizes"]

_FILE = "file"

if set(SOURCES) & set(VENDORED) or _FILE in SOURCES or _FILE in VENDORED:  # pragma: no cover
    raise RuntimeError("data set names must be unique across synthetic sources, shipped files and 'file'")


def dataset_names() -> list[str]:
    """Every value ``DensityDataModule(dataset=...)`` accepts."""
    return sorted(SOURCES) + sorted(VENDORED) + [_FILE]


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` for ``n`` points.

    Each held-out size is ``round(n * fraction)``, but at least one point when its
    fraction is positive, so asking for a validation set never silently yields none.

    Raises:
        ValueError: nothing would be left to train on.
    """
    n_val = max(round(n * val_fraction), 1) if val_fraction > 0 else 0
    n_test = max(round(n * test_fraction), 1) if test_fraction > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"{n} points split with val_fraction={val_fraction} and test_fraction={test_fraction} "
            f"leave {n_train} for training; use more points or smaller fractions"
        )
    return n_train, n_val, n_test


class DensityDataModule(L.LightningDataModule):
    r"""Train/val/test splits of a synthetic source or a file of points.

    ``setup()`` draws (or reads) the data, checks it for NaN/inf, shuffles it with
    ``seed`` and splits it by the fractions; the same arguments always give the
    same splits. With ``standardize=True`` the served data are
    :math:`\tilde x = (x - m)/s`, with the training set's mean :math:`m` and
    standard deviation :math:`s`, and the true density transforms as

    .. math:: \log \tilde p(\tilde x) = \log p(s \odot \tilde x + m) + \textstyle\sum_d \log s_d .

    Args:
        dataset: a synthetic source (``moons``, ``8gaussians``, ``gmm1d``, ...),
            a shipped file of the seed paper (``mog1d``, ``beta1d``, ``grid``,
            ``mog5d``), or ``file`` to read ``path``; see :func:`dataset_names`.
        data_dir: folder relative paths are also looked up in.
        path: the text file for ``dataset="file"``: one point per line,
            coordinates separated by whitespace.
        batch_size: training batch size.
        n_samples: number of points drawn from a synthetic source (files use all rows).
        val_fraction: share of points held out for validation; 0 skips validation.
        test_fraction: share of points held out for testing.
        seed: seeds data generation, the split and the training shuffle.
        standardize: serve each coordinate with zero mean and unit variance on
            the training set.
        num_workers: DataLoader worker processes.
        eval_batch_size: batch size for validation and test; ``batch_size`` if None.

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022 (the shipped files; 90/10 train/test and
        standardisation in its constrained-flow runs).
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
        num_workers: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if dataset not in dataset_names():
            raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(dataset_names())}")
        for arg, value in (("batch_size", batch_size), ("n_samples", n_samples)):
            if value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive int or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{arg} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves nothing to train on; "
                "keep their sum below 1"
            )

        self.source: Source | None = None
        self.file: Path | None = None
        self._raw_log_prob: Callable[[Tensor], Tensor] | None = None
        if dataset in SOURCES:
            self.source = get_source(dataset)
            dim = self.source.dim
            self._raw_log_prob = self.source.log_prob if self.source.has_density else None
        elif dataset in VENDORED:
            self.file = VENDORED[dataset].path
            dim = VENDORED[dataset].dim
            self._raw_log_prob = VENDORED[dataset].log_prob
        else:
            if path is None:
                raise ValueError("dataset='file' needs path=: a text file with one point per line")
            self.file = resolve_path(path, data_dir)
            dim = peek_dim(self.file)  # only the first line: event_shape must not cost a full read
        self.event_shape: tuple[int, ...] = (dim,)

        self.train_data: Tensor | None = None
        self.val_data: Tensor | None = None
        self.test_data: Tensor | None = None
        # Identity until setup() fits them, so the transforms below always work.
        self.mean: Tensor = torch.zeros(dim, dtype=torch.float64)
        self.std: Tensor = torch.ones(dim, dtype=torch.float64)
        self._train_generator = torch.Generator().manual_seed(seed)

    # ----- data -----------------------------------------------------------------------------
    @property
    def data_name(self) -> str:
        """Where the points come from: the source name or the file path."""
        return str(self.file) if self.hparams.dataset == _FILE else self.hparams.dataset

    @property
    def is_setup(self) -> bool:
        return self.train_data is not None

    def _load_raw(self, rng: np.random.Generator) -> np.ndarray:
        if self.source is not None:
            return validate_points(self.source.sample(self.hparams.n_samples, rng), where=self.data_name)
        assert self.file is not None
        return read_points(self.file)  # validates, naming lines

    def setup(self, stage: str | None = None) -> None:
        """Draw or read the data, validate, shuffle, split and (optionally) standardize; runs once."""
        if self.is_setup:
            return
        hp = self.hparams
        # Separate streams, so that changing the fractions reshuffles but never redraws the data.
        data_seq, split_seq = np.random.SeedSequence(hp.seed).spawn(2)
        raw = self._load_raw(np.random.default_rng(data_seq))
        if raw.shape[1:] != self.event_shape:
            raise ValueError(
                f"{self.data_name}: points have shape {raw.shape[1:]}, but event_shape was {self.event_shape} "
                "when the module was built; did the file change?"
            )
        n_train, n_val, _ = split_sizes(raw.shape[0], hp.val_fraction, hp.test_fraction)
        raw = raw[np.random.default_rng(split_seq).permutation(raw.shape[0])]
        train, val, test = raw[:n_train], raw[n_train : n_train + n_val], raw[n_train + n_val :]
        if hp.standardize:
            mean, std = train.mean(axis=0), train.std(axis=0)
            # A constant coordinate (or a single training point) has no scale to divide by.
            std = np.where(std > 0, std, 1.0)
            self.mean, self.std = torch.from_numpy(mean), torch.from_numpy(std)
        self.train_data = self.raw_to_served(torch.from_numpy(train)).float()
        self.val_data = self.raw_to_served(torch.from_numpy(val)).float()
        self.test_data = self.raw_to_served(torch.from_numpy(test)).float()

    # ----- standardization --------------------------------------------------------------------
    def transform_to_raw(self, x: Tensor) -> Tensor:
        """Served coordinates to the source's own: :math:`x \\odot s + m`."""
        return (x * self.std.to(x.device, x.dtype) + self.mean.to(x.device, x.dtype)).to(x.dtype)

    def raw_to_served(self, x: Tensor) -> Tensor:
        """The source's coordinates to served ones: :math:`(x - m) / s`."""
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    # ----- true density -----------------------------------------------------------------------
    @property
    def has_true_density(self) -> bool:
        """Whether :meth:`true_log_prob` returns values (the source's density is known)."""
        return self._raw_log_prob is not None

    def true_log_prob(self, x: Tensor) -> Tensor | None:
        """True log-density of served points ``x`` of shape ``(B, *event_shape)``, shape ``(B,)``.

        Computed in float64 and returned in ``x``'s dtype and device; ``None`` when
        the density is unknown. Calls :meth:`setup` first if standardization
        statistics are needed and not yet fitted.
        """
        if self._raw_log_prob is None:
            return None
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected a batch of shape (B, {', '.join(map(str, self.event_shape))}) for {self.data_name}, "
                f"got {tuple(x.shape)}"
            )
        if self.hparams.standardize:
            self.setup()
        # MPS has no float64; the density is cheap enough to evaluate on the CPU there.
        device = torch.device("cpu") if x.device.type == "mps" else x.device
        mean, std = self.mean.to(device), self.std.to(device)
        raw = x.to(device, torch.float64) * std + mean
        log_prob = self._raw_log_prob(raw) + torch.log(std).sum()
        return log_prob.to(x.device, x.dtype)

    # ----- loaders -----------------------------------------------------------------------------
    def _loader(self, data: Tensor | None, batch_size: int, shuffle: bool) -> DataLoader:
        assert data is not None
        workers = self.hparams.num_workers
        return DataLoader(
            TensorDataset(data),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=self._train_generator if shuffle else None,
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    @property
    def _eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(x,)``; the order is a function of ``seed``."""
        self.setup()
        return self._loader(self.train_data, self.hparams.batch_size, shuffle=True)

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
            f"batch_size={hp.batch_size}, standardize={hp.standardize}, seed={hp.seed})"
        )
