r"""DensityDataModule: one LightningDataModule for every density data set.

The module serves float32 batches (float64 with ``dtype="float64"``) of shape ``(B, D)``
(or ``(B, C, H, W)`` for images) and tells the model four things: ``event_shape`` (known right after
construction, so LightningCLI can link ``data.event_shape`` to
``model.event_shape``); ``context_features``, the width of the context ``c`` of batches ``(x, c)``;
where known, the true log-density of the points it
serves (:meth:`DensityDataModule.true_log_prob`), from which FlowModule
estimates :math:`\mathrm{KL}(p\,\|\,q)`; and, for images, the log-determinant
of the preprocessing (:meth:`DensityDataModule.pixel_log_det`), from which
FlowModule reports bits/dim in pixel space.

Where the data come from is one :class:`~unflow_zoo.data.kinds.DataKind` per kind of source
(synthetic, conditional, shipped files, the user's files and arrays, UCI, images), which the
module holds as :attr:`DensityDataModule.kind`; the module itself scales, validates and serves.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, TensorDataset, get_worker_info

from unflow_zoo.data.conditional import ConditionalSource
from unflow_zoo.data.images import load_mnist
from unflow_zoo.data.kinds import (
    ARRAYS,
    CONTEXTS,
    FILE,
    ConditionalData,
    DataKind,
    LoadRequest,
    Splits,
    SyntheticData,
    UCIData,
    arrays_from_hf,
    dataset_names,
    make_kind,
    split_sizes,
)
from unflow_zoo.data.paths import resolve_data_dir
from unflow_zoo.data.preprocess import PixelPreprocess, dequantize
from unflow_zoo.data.synthetic import Source
from unflow_zoo.errors import ConfigError, DataError, DataTypeError

__all__ = [
    "CONTEXTS",
    "DTYPES",
    "SCALINGS",
    "DensityDataModule",
    "Scaling",
    "ServedContext",
    "ServedDtype",
    "dataset_names",
    "split_sizes",
    "standardize_stats",
]

Scaling = Literal["none", "standardize", "ball"]
#: The values of ``DensityDataModule(scaling=...)``.
SCALINGS: tuple[str, ...] = ("none", "standardize", "ball")

ServedDtype = Literal["float32", "float64"]
#: The values of ``DensityDataModule(dtype=...)`` and the torch dtypes they serve.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

#: The values of ``DensityDataModule(context=...)``: no context, or an image's one-hot class label.
ServedContext = Literal["none", "label"]

# The arrays DensityDataModule.from_arrays hands to the __init__ it calls: (x, context, name). Not
# an argument of __init__, so that they stay out of hparams (LightningCLI, checkpoints, pretrained
# records), which hold plain values only.
_GIVEN: ContextVar[tuple[Any, Any, str] | None] = ContextVar("unflow_zoo_given_arrays", default=None)


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
    r"""Collate integer pixels into served batches ``(x,)`` (``(x, c)`` with a context), with fresh
    dequantisation noise per call.

    :math:`x = g(k + u)`, :math:`u \sim U[0, 1)` (or :math:`x = g(k)` with ``dequantize=False``),
    ``g`` the :class:`~unflow_zoo.data.preprocess.PixelPreprocess`, then flattened to ``(B, D)``
    when ``flatten``. In the main process the noise comes from ``generator``, so a seeded
    generator makes every epoch's noise reproducible and different from the last. In a
    DataLoader worker it comes from the worker's global torch stream, which PyTorch seeds
    from the loader's own (seeded) generator plus the worker id: still reproducible, and
    distinct across workers (a copied ``generator`` would repeat the same noise in each).
    Items ``(pixels, context)`` (a labelled image set) give batches ``(x, c)``, the contexts
    stacked unchanged; the noise is drawn the same way with or without them.
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

    def __call__(self, items: list[Any]) -> tuple[Tensor, ...]:
        if items and isinstance(items[0], (tuple, list)) and len(items[0]) > 1:
            pixels = torch.stack([item[0] for item in items])
            return self.serve(pixels), torch.stack([item[1] for item in items])
        return (self.serve(torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])),)


class DensityDataModule(L.LightningDataModule):
    r"""Train/val/test splits of a synthetic source, a file or arrays of points, a UCI set or images.

    **Tabular data** (synthetic sources, shipped files, ``file``, arrays given with
    :meth:`from_arrays` or :meth:`from_hf`): ``setup()`` draws (or reads) the data, checks it for NaN/inf and for values that overflow the served
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
    with fixed noise, for baselines and plots; training batches use fresh noise). With
    ``context="label"`` every image comes with its class as a one-hot context ``c`` (10 wide;
    ``train_context`` / ``val_context`` / ``test_context``), batches are ``(x, c)``, and a flow
    with ``context_features=10`` models :math:`p(x \mid \text{label})`; the images, their
    split and their noise are the same as without.

    **Conditional data** (the conditional sources, ``context_columns`` of a file, an ``.npz``
    with a ``context`` array, ``context=`` of :meth:`from_arrays`, ``context="label"``): batches
    are ``(x, c)`` and :attr:`context_features` is the width of ``c``.

    Args:
        dataset: a synthetic source (``moons``, ``8gaussians``, ``gmm1d``, ...),
            a shipped file of the seed paper (``mog1d``, ``beta1d``, ``grid``,
            ``mog5d``), a UCI set, an image set (``digits``, ``mnist``), or ``file``
            to read ``path``; see :func:`dataset_names`. (``arrays`` is what
            :meth:`from_arrays` and :meth:`from_hf` record; it cannot be built by name.)
        data_dir: the folder UCI and MNIST files are looked for in (and downloaded to), and
            where a relative ``path`` is looked up after the working directory. None (the
            default): the user's cache, ``$UNFLOW_ZOO_DATA``, else ``$UNFLOW_ZOO_CACHE/data``,
            else ``$XDG_CACHE_HOME/unflow_zoo/data``, else ``~/.cache/unflow_zoo/data``
            (:func:`~unflow_zoo.data.paths.default_data_dir`), read from the environment when the
            module looks for files, not when it is imported. A relative ``data_dir`` is relative
            to the working directory.
        path: the data file for ``dataset="file"``, read by its suffix: ``.csv`` (comma-separated,
            one point per row; a first row that holds no number is a header of column names),
            ``.npy`` (one ``(n, D)`` array), ``.npz`` (one such array, or ``x`` and optionally
            ``context``, one row per point), anything else whitespace-separated text, one point per
            line (:func:`~unflow_zoo.data.files.read_table`); absolute, or relative to the working
            directory (tried first) or to ``data_dir``. NumPy files are never unpickled.
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
        context_columns: ``dataset="file"`` only: the columns of the file that are the
            context :math:`c` of a conditional flow :math:`p(x \mid c)`, by 0-based index or, for a
            ``.csv`` with a header, by name; the other columns are :math:`x`. Batches are then
            ``(x, c)``. The conditional sources (``8gaussians-by-label``, ``gaussian-by-context``,
            ``two-moons-sbi``; :mod:`unflow_zoo.data.conditional`) and an ``.npz`` with a
            ``context`` array serve ``(x, c)`` by themselves. Contexts are served raw (``scaling``
            applies to :math:`x` only), in the served ``dtype``.
        dtype: ``"float32"`` (default) or ``"float64"``: the dtype of the served tabular and
            UCI data, which the data are validated in. ``"float64"`` is for data beyond
            float32's range (about 3.4e38), trained with ``Trainer(precision="64-true")``;
            images are always served in float32 (a warning says so).
        context: images only: ``"label"`` serves each image's class as a one-hot context
            (batches ``(x, c)``, :attr:`context_features` 10); ``"none"`` (default) serves the
            images alone.

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
        data_dir: str | None = None,
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
        context_columns: list[int | str] | None = None,
        context: ServedContext = "none",
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
        if context not in CONTEXTS:
            raise ConfigError(f"unknown context {context!r}; choose one of: {', '.join(CONTEXTS)}")
        #: The scaling applied to tabular data: ``"none"``, ``"standardize"`` or ``"ball"``.
        self.scaling: str = scaling if scaling is not None else ("standardize" if standardize else "none")

        #: Where the data come from: one :class:`~unflow_zoo.data.kinds.DataKind`, which the module asks
        #: for the shapes, the splits, the true density and the pixel map.
        self.kind: DataKind = make_kind(
            dataset,
            path=path,
            data_dir=self.data_dir,
            context_columns=context_columns,
            context=context,
            flatten=flatten,
            dequantize=dequantize,
            logit_alpha=logit_alpha,
            arrays=_GIVEN.get() if dataset == ARRAYS else None,
            dtype=np.float32 if dtype == "float32" else np.float64,
            mnist_loader=load_mnist,  # looked up here, so that it can be swapped (a test fakes the download)
        )
        for defaults in self.kind.ignored:
            self._warn_ignored(dataset, **defaults)
        for note in self.kind.notes(self.hparams):
            warnings.warn(note, UserWarning, stacklevel=2)
        if context_columns and dataset != FILE:
            raise ConfigError(
                f"context_columns names columns of a file (dataset='file'); dataset={dataset!r} "
                + ("serves its own context" if self.kind.context_features else "has no context columns")
            )
        self.event_shape: tuple[int, ...] = tuple(self.kind.event_shape)
        # Readers of hparams.standardize (the pretrained records) see either spelling; the
        # warnings above have named what the caller actually passed.
        self.hparams["standardize"] = self.scaling == "standardize"

        self.train_data: Tensor | None = None
        self.val_data: Tensor | None = None
        self.test_data: Tensor | None = None
        # The context of each split (conditional data only), one row per point.
        self.train_context: Tensor | None = None
        self.val_context: Tensor | None = None
        self.test_context: Tensor | None = None
        # Integer pixels of each split (images only); training batches are dequantised from these.
        self.train_pixels: Tensor | None = None
        self.val_pixels: Tensor | None = None
        self.test_pixels: Tensor | None = None
        # Identity until setup() fits them, so the transforms below always work.
        dim = math.prod(self.event_shape)
        self.mean: Tensor = torch.zeros(dim, dtype=torch.float64)
        self.std: Tensor = torch.ones(dim, dtype=torch.float64)
        # No torch.Generator is held here: the module must pickle for ddp_spawn. The shuffle
        # order comes from EpochSampler (seed + epoch) and the noise stream is made per loader.

    @classmethod
    def from_arrays(cls, x: Any, context: Any = None, *, name: str = ARRAYS, **kwargs: Any) -> DensityDataModule:
        r"""A data module serving the points ``x`` (and contexts ``context``) given from Python.

        The arrays are validated (as files are: NaN/inf and overflow in the served ``dtype``,
        naming the row and column index) and copied when the module is built, then shuffled
        with ``seed``, split by the fractions and scaled like any tabular data.

        The arrays are not among the module's arguments: ``hparams`` records
        ``dataset="arrays"`` and the other arguments, so a Lightning checkpoint or a saved
        pretrained flow records that the flow was trained on arrays, but not the arrays, and
        :func:`~unflow_zoo.pretrained.rebuild_datamodule` cannot rebuild the module (it says so).
        To keep the data with the record, save them (``np.savez(path, x=x, context=c)``) and use
        ``DensityDataModule(dataset="file", path=path)``.

        Args:
            x: the points, ``(n, D)``: a NumPy array, a torch tensor (any device), or
                anything ``np.asarray`` takes.
            context: their contexts ``(n, C)``, one row per point, for a conditional flow
                :math:`p(x \mid c)` (batches ``(x, c)``); None for none.
            name: what the data are called in messages and ``repr``.
            **kwargs: the other arguments of :class:`DensityDataModule` (``batch_size``,
                ``seed``, ``val_fraction``, ``scaling``, ``dtype``, ...); not ``dataset``, ``path``
                or ``context_columns``.

        Returns:
            The data module, not yet set up.

        Raises:
            ConfigError: ``dataset``, ``path`` or ``context_columns`` in ``kwargs``.
            DataTypeError: arrays of objects, strings or complex numbers.
            DataError: not ``(n, D)``, rows of ``x`` and ``context`` that differ in number, NaN/inf,
                or values that overflow the served dtype.
        """
        for arg, instead in (
            ("dataset", "the data are x"),
            ("path", "use DensityDataModule(dataset='file', path=...) for a file"),
            ("context_columns", "pass the context as context="),
        ):
            if arg in kwargs:
                raise ConfigError(f"from_arrays takes no {arg}=: {instead}")
        token = _GIVEN.set((x, context, name))
        try:
            return cls(dataset=ARRAYS, **kwargs)
        finally:
            _GIVEN.reset(token)

    @classmethod
    def from_hf(
        cls,
        dataset: Any,
        columns: Sequence[str] | None = None,
        context_columns: Sequence[str] | None = None,
        *,
        name: str | None = None,
        **kwargs: Any,
    ) -> DensityDataModule:
        r"""A data module serving columns of a Hugging Face ``datasets.Dataset`` as points (and contexts).

        The columns are read into arrays (each a number, or a fixed-length sequence of numbers,
        per row) and served as with :meth:`from_arrays`, whose notes on what is recorded apply.

        Args:
            dataset: one split, a ``datasets.Dataset`` (``dataset_dict["train"]``); the module
                splits it by ``val_fraction`` / ``test_fraction``.
            columns: the columns of :math:`x`, in order; None: every column not in ``context_columns``.
            context_columns: the columns of the context :math:`c` of :math:`p(x \mid c)`; None for none.
            name: what the data are called in messages; None: the dataset's own name.
            **kwargs: the other arguments of :class:`DensityDataModule`, as for :meth:`from_arrays`.

        Returns:
            The data module, not yet set up.

        Raises:
            DataTypeError: not a ``datasets.Dataset``, or a column that does not hold numbers.
            ConfigError: a column the dataset does not have, or named twice.
            DataError: what :meth:`from_arrays` refuses (NaN/inf, overflow, naming the row and column index).
        """
        x, context, where = arrays_from_hf(dataset, columns, context_columns, name)
        return cls.from_arrays(x, context, name=where, **kwargs)

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
    def data_dir(self) -> Path:
        """The folder data files are read from and downloaded to: ``data_dir=``, or the default
        (:func:`~unflow_zoo.data.paths.default_data_dir`) read from the environment now."""
        return resolve_data_dir(self.hparams.data_dir)

    @property
    def context_features(self) -> int:
        """The width :math:`C` of the context the batches carry (``(x, c)``), 0 for none: a model
        must be built with ``context_features`` equal to it (FlowModule checks at the start of fit)."""
        return self.kind.context_features

    @property
    def data_name(self) -> str:
        """Where the points come from: the source name or the file path."""
        return self.kind.name

    @property
    def source(self) -> Source | None:
        """The synthetic distribution the points are drawn from (synthetic data sets only, else None).

        Assigning another :class:`~unflow_zoo.data.synthetic.Source` (of the same ``dim``) before
        :meth:`setup` serves its points under the data set's name.
        """
        return self.kind.source if isinstance(self.kind, SyntheticData) else None

    @source.setter
    def source(self, value: Source) -> None:
        if not isinstance(self.kind, SyntheticData):
            raise ConfigError(f"{self.data_name} is not drawn from a synthetic source; there is none to replace")
        self.kind.source = value

    @property
    def conditional(self) -> ConditionalSource | None:
        """The conditional source the pairs ``(x, c)`` are drawn from (conditional sources only, else None)."""
        return self.kind.source if isinstance(self.kind, ConditionalData) else None

    @property
    def file(self) -> Path | None:
        """The file the points are read from (shipped files and ``dataset="file"``, else None)."""
        return getattr(self.kind, "file", None)

    @property
    def preprocess(self) -> PixelPreprocess | None:
        """Images only: the map :math:`g` from dequantised pixels to served data, else None."""
        return self.kind.preprocess

    @property
    def in_memory(self) -> bool:
        """Whether the data were given from Python (:meth:`from_arrays`, :meth:`from_hf`): then they
        exist only in this object, and ``hparams`` (a checkpoint, a pretrained record) cannot rebuild them."""
        return self.kind.in_memory

    @property
    def is_setup(self) -> bool:
        return self.train_data is not None

    @property
    def is_image(self) -> bool:
        """Whether the module serves an image set (dequantised pixels, :meth:`pixel_log_det` defined)."""
        return self.preprocess is not None

    @property
    def is_uci(self) -> bool:
        return isinstance(self.kind, UCIData)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the served data (``torch.float32`` unless ``dtype="float64"``; images: float32)."""
        return torch.float32 if self.is_image else DTYPES[self.hparams.dtype]

    @property
    def _np_dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self.dtype == torch.float64 else np.float32)

    def _request(self) -> LoadRequest:
        hp = self.hparams
        return LoadRequest(
            seed=hp.seed,
            n_samples=hp.n_samples,
            val_fraction=hp.val_fraction,
            test_fraction=hp.test_fraction,
            dtype=self._np_dtype,
            data_dir=self.data_dir,
            download=hp.download,
        )

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
        if self.hparams.download:
            self.kind.prepare(self.data_dir, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Draw or read the data, validate, shuffle, split and (optionally) scale; runs once."""
        if self.is_setup:
            return
        splits = self.kind.load(self._request())
        if self.is_image:
            self._setup_images(splits)
        elif not self.kind.scalable:  # the published UCI splits, served as they come
            self.train_data, self.val_data, self.test_data = (torch.from_numpy(split.x) for split in splits)
        else:
            self._setup_tabular(splits)

    def _setup_tabular(self, splits: Splits) -> None:
        train, val, test = (split.x for split in splits)
        if splits.train.context is not None:
            self.train_context, self.val_context, self.test_context = (
                torch.from_numpy(split.context).to(self.dtype)  # type: ignore[arg-type]
                for split in splits
            )
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

    def _setup_images(self, splits: Splits) -> None:
        self.train_pixels, self.val_pixels, self.test_pixels = (torch.from_numpy(split.x) for split in splits)
        if splits.train.context is not None:
            self.train_context, self.val_context, self.test_context = (
                torch.from_numpy(split.context)  # type: ignore[arg-type]
                for split in splits
            )
        # Fixed, seeded noise for the evaluation splits (and the stored copy of the training split).
        streams = np.random.SeedSequence(self.hparams.seed).spawn(6)
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
        return self.kind.has_density

    def true_log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor | None:
        r"""True log-density of served points ``x`` of shape ``(B, *event_shape)``, shape ``(B,)``;
        for a conditional source, :math:`\log p(x \mid c)` with ``context`` ``(B, C)``.

        Computed in float64 and returned in ``x``'s dtype and device; ``None`` when
        the density is unknown. Calls :meth:`setup` first if the scaling statistics
        are needed and not yet fitted.
        """
        if not self.has_true_density:
            return None
        self._check_batch(x)
        if self.context_features and context is None:
            raise DataError(f"{self.data_name} is conditional: true_log_prob needs the context of x")
        if self.scaling != "none":
            self.setup()
        # MPS has no float64; the density is cheap enough to evaluate on the CPU there.
        device = torch.device("cpu") if x.device.type == "mps" else x.device
        mean, std = self.mean.to(device), self.std.to(device)
        raw = x.to(device, torch.float64) * std + mean
        c = context.to(device, torch.float64) if self.context_features and context is not None else None
        log_prob = self.kind.log_prob(raw, c) + torch.log(std).sum()
        return log_prob.to(x.device, x.dtype)

    # ----- loaders -----------------------------------------------------------------------------
    def _loader(
        self,
        data: Tensor | None,
        batch_size: int,
        shuffle: bool,
        collate_fn: Callable | None = None,
        context: Tensor | None = None,
    ) -> DataLoader:
        assert data is not None
        workers = self.hparams.num_workers
        return DataLoader(
            TensorDataset(data) if context is None else TensorDataset(data, context),
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
        """Shuffled training batches ``(x,)`` (``(x, c)`` with a context); the order is a function of ``seed``.

        Images are dequantised as they are served, with fresh noise every epoch from a
        stream seeded by ``seed`` (see :class:`DequantizingCollate`).
        """
        self.setup()
        if self.preprocess is None:
            return self._loader(self.train_data, self.hparams.batch_size, shuffle=True, context=self.train_context)
        collate = DequantizingCollate(
            self.preprocess,
            flatten=self.hparams.flatten,
            dequantize=self.hparams.dequantize,
            generator=self._noise_generator(),
        )
        return self._loader(
            self.train_pixels, self.hparams.batch_size, shuffle=True, collate_fn=collate, context=self.train_context
        )

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches ``(x,)`` (``(x, c)`` with a context), or ``[]`` (Lightning then skips
        validation) when ``val_fraction=0``."""
        self.setup()
        assert self.val_data is not None
        if not len(self.val_data):
            return []
        return self._loader(self.val_data, self._eval_batch_size, shuffle=False, context=self.val_context)

    def test_dataloader(self) -> DataLoader | list:
        """Test batches ``(x,)`` (``(x, c)`` with a context), or ``[]`` when ``test_fraction=0``."""
        self.setup()
        assert self.test_data is not None
        if not len(self.test_data):
            return []
        return self._loader(self.test_data, self._eval_batch_size, shuffle=False, context=self.test_context)

    def __repr__(self) -> str:
        hp = self.hparams
        return (
            f"{type(self).__name__}(dataset={self.data_name!r}, event_shape={self.event_shape}, "
            f"batch_size={hp.batch_size}, scaling={self.scaling!r}, seed={hp.seed}"
            + (f", preprocess={self.preprocess!r}" if self.preprocess is not None else "")
            + ")"
        )
