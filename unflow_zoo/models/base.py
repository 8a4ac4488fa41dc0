"""FlowModule: the LightningModule every flow family derives from."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from unflow_zoo.core.distributions import BaseDistribution, make_base
from unflow_zoo.core.flow import Flow, FlowDistribution
from unflow_zoo.errors import ConfigError, DataError, DataTypeError, DivergenceError
from unflow_zoo.flows import validate as v
from unflow_zoo.flows.common import context_embedding_net, stack_with_permutations
from unflow_zoo.flows.common import vector_features as _vector_features
from unflow_zoo.metrics import bits_per_dim, fit_gaussian
from unflow_zoo.models.compiled import (
    _COMPILE_MODES,
    CompileFallbackWarning,
    CompileMode,
    _Compiled,
    _flow_log_prob,
    _flow_sample,
)
from unflow_zoo.models.pretrained_io import pretrained_io

__all__ = ["CompileFallbackWarning", "FlowModule", "stack_with_permutations"]

#: the builder arguments a FlowModule supplies itself (see :meth:`FlowModule.build_with`)
_SUPPLIED = ("event_shape", "base", "context_features", "context_embedding")


def _at_least_float32(t: Tensor) -> Tensor:
    """``t`` promoted to float32 if it is float16/bfloat16; float32 and float64 unchanged.

    A family whose log-density comes back in low precision under autocast would
    otherwise have its NLL averaged over the batch (and accumulated by the metrics)
    with 8 significant bits.
    """
    return t.float() if t.is_floating_point() and torch.finfo(t.dtype).bits < 32 else t


OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "cosine", "plateau", "step"]
_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULERS = ("none", "cosine", "plateau", "step")
#: the per-row evaluation metrics: a mean over every row, non-finite ones included (see ``_eval_step``)
_EVAL_MEANS = ("nll", "bpd", "kl", "gaussian_nll")


class FlowModule(L.LightningModule):
    r"""Maximum-likelihood training of a :class:`~unflow_zoo.core.Flow`.

    A family writes one method, :meth:`build_flow`, which reads its own
    hyper-parameters from ``self.hparams`` and returns a Flow. Everything else,
    NLL training, validation/test NLL and bits/dim (torchmetrics), the
    Gaussian baseline and the KL to a known density (below), optimizers,
    schedulers, checkpointing, multi-GPU and mixed precision, comes from here
    and from Lightning. A family declares its hyper-parameters as type-hinted
    constructor arguments (LightningCLI reads them) and passes the rest on::

        class MyFlow(FlowModule):
            def __init__(self, event_shape=(2,), hidden: int = 64, **kwargs):
                super().__init__(event_shape=event_shape, **kwargs)

            def build_flow(self) -> Flow:
                return Flow(MyTransform(self.hparams.hidden), self.make_base())

    The package's own families build their flow with the family's Lightning-free builder
    (``unflow_zoo.flows``, e.g. ``unflow_zoo.flows.build("maf", event_shape=(2,))``) through
    :meth:`build_with`, so ``model.flow`` is the plain torch module that builder returns.

    Validation and test also log, where the trainer's data module knows:

    - ``{stage}_kl``: the NLL minus the true log-density, an estimate of
      :math:`\mathrm{KL}(p\,\|\,q)`, when it has ``true_log_prob``;
    - ``{stage}_gaussian_nll``: the NLL, on the evaluated split, of the
      maximum-likelihood Gaussian fitted to its ``train_data`` (tabular
      ``(N, D)`` data only; mean and covariance in float64, fitted at the start
      of each evaluation epoch; a singular covariance is ridged by a tiny jitter). It is the best an
      affine flow can do, so ``val_nll - val_gaussian_nll`` is what the family's
      non-linearity buys (Liao & He, "Jacobian Determinant of Normalizing
      Flows", 2021; :func:`unflow_zoo.metrics.gaussian_nll` is its value on the
      training data itself).

    A non-finite log-density is never dropped from a metric: every evaluation logs
    ``{stage}_nonfinite``, the number of rows whose log-density is NaN or :math:`\pm\infty`
    (a point outside the model's support counts: its log-density is :math:`-\infty`), and
    while it is above zero ``{stage}_nll``, ``{stage}_bpd`` and ``{stage}_kl`` are
    :math:`+\infty`, not a mean over the finite rows. The metrics accumulate in the model's
    dtype (float64 under ``precision="64-true"``, else float32).

    Training stops with :class:`~unflow_zoo.errors.DivergenceError` at the first non-finite
    loss or gradient, checked after the backward pass and before gradient clipping and the
    optimizer step (:meth:`on_before_optimizer_step`, one device sync per step): the bad step
    never changes the weights, and :class:`~unflow_zoo.callbacks.LastFiniteCheckpoint` (on by
    default in the CLI) saves them as ``last-finite.ckpt``. Under several processes the
    decision is all-reduced (one small collective per step), so every rank stops at the same
    step. Under ``16-mixed`` only the loss is checked: the gradient scaler skips a step whose
    gradients overflow, by design.

    Mixed precision and several processes come from the Trainer (``precision=``,
    ``strategy=``, ``devices=``, ``num_nodes=``; docs/distributed.md). Under
    ``bf16-mixed``/``16-mixed`` the conditioner networks run in low precision while
    log-determinants, spline bin searches, quadrature sums and numerical inverses stay
    float32 (the transforms disable autocast where it matters), and :meth:`log_prob`
    returns at least float32, so the NLL and its batch mean are never reduced in
    bfloat16. ``precision="64-true"`` (or ``model.double()``) gives a float64 model for
    numerical checks. Under DDP the validation and test metrics are torchmetrics
    objects, synced across ranks, and every rank holds the same weights, so hooks
    that only read the model (figures, sampling) run on global rank 0 alone.

    Args:
        event_shape: shape of one data point, ``(D,)`` or ``(C, H, W)``; the CLI
            links it from the data module.
        base: base distribution name (``normal``, ``exponential``, ``diag-normal``).
        lr: learning rate, finite and > 0.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        weight_decay: L2 penalty (decoupled for adamw), finite and >= 0.
        momentum: SGD momentum, in [0, 1).
        scheduler: ``none``, ``cosine`` (per step, to the end of training),
            ``plateau`` (on the validation NLL) or ``step``.
        scheduler_step_size: epochs between decays for ``step``, an int >= 1.
        scheduler_gamma: decay factor for ``step`` and ``plateau``, in (0, 1] (``plateau``:
            in (0, 1), as a factor of 1 would never reduce); the learning rate is multiplied
            by it, so a value outside that range would grow it or flip its sign.
        scheduler_patience: epochs without improvement for ``plateau``, an int >= 0.
        context_features: width :math:`C` of the context :math:`c` of a conditional flow
            :math:`p(x \mid c)`; 0 (the default) for an unconditional one. Batches are then
            ``(x, c)`` (:class:`~unflow_zoo.data.DensityDataModule` serves them for sources
            with a context) and ``log_prob``/``sample`` take ``context=``.
        context_embedding: hidden widths of an MLP that embeds the context before every
            conditioner sees it, the last being the embedding's width (e.g. ``[64, 16]``);
            None feeds the raw context. Override :meth:`make_context_embedding` for another
            network (a CNN for image contexts).
        compile: run the flow's log-density (training, validation, test and :meth:`log_prob`)
            and, where the family gains from it, its sampling under :func:`torch.compile`. The
            first call compiles (tens of seconds on CPU; a new batch shape, grad mode or dtype
            compiles again, the second time with dynamic shapes); the weights, their names in the
            ``state_dict``, checkpoints and pretrained files are those of the eager model, and the
            results agree with eager mode to float rounding. A part the compiler fails on (or a
            family whose :meth:`compile_unsupported` says why it cannot compile) runs eagerly, with
            one :class:`CompileFallbackWarning` naming the family and the reason; sampling is
            compiled only where :attr:`compile_sampling` says it helps. Per-family speed-ups:
            docs/benchmarks.md.
        compile_mode: torch.compile's ``mode`` (``default``, ``reduce-overhead``,
            ``max-autotune``, ``max-autotune-no-cudagraphs``); None: torch's default. Read only
            under ``compile=True``.

    Raises:
        ConfigError: an argument outside the range above, or an unknown optimizer or scheduler.
    """

    registry_name: str = "custom"
    small_hparams: ClassVar[dict[str, Any]] = {}
    """The family's test sizes: the hyper-parameters (size knobs and, where the defaults are slow to
    train, solver settings) under which a 2-D instance, and an image one where the family takes
    images, builds and trains a few steps in well under a second, e.g. ``{"n_layers": 2, "hidden":
    [16]}``. Flow hyper-parameters only, no training options, so that the family's Lightning-free
    builder takes them too. :func:`~unflow_zoo.testing.small_model` and
    :func:`~unflow_zoo.testing.small_flow` build from them; every registered family declares its
    own, on its class (the registry-wide contract test checks it)."""
    check_options: ClassVar[dict[str, Any]] = {}
    """The :func:`~unflow_zoo.testing.check_transform` options the family's small instance needs,
    e.g. a numerical inverse's ``inverse_atol``, or ``check_grid=False`` for tails no small grid
    holds (empty: the kit's defaults); :func:`~unflow_zoo.testing.check_model` applies them."""
    #: Whether ``compile=True`` also compiles :meth:`sample` and :meth:`sample_and_log_prob`. Off
    #: unless the family measured a gain (scripts/benchmarks/compile.py): a data-dependent redraw
    #: check or numerical inverse splits sampling into many small graphs, often slower than eager.
    #: Compiled sampling draws from the same distribution, but not the same numbers as eager mode
    #: under one seed (inductor has its own random-number generator).
    compile_sampling: ClassVar[bool] = False

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        base: str = "normal",
        lr: float = 1e-3,
        optimizer: OptimizerName = "adam",
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        scheduler: SchedulerName = "none",
        scheduler_step_size: int = 10,
        scheduler_gamma: float = 0.5,
        scheduler_patience: int = 5,
        context_features: int = 0,
        context_embedding: list[int] | None = None,
        compile: bool = False,
        compile_mode: CompileMode | None = None,
    ) -> None:
        super().__init__()
        owner = self.registry_name if self.registry_name != "custom" else type(self).__name__
        if not isinstance(compile, bool):
            raise ConfigError(f"{owner}: compile must be true or false, got {compile!r}")
        if compile_mode is not None and compile_mode not in _COMPILE_MODES:
            raise ConfigError(
                f"{owner}: unknown compile_mode {compile_mode!r}; choose {', '.join(_COMPILE_MODES)} "
                "(or leave it unset for torch's default)"
            )
        if optimizer not in _OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose adam, adamw or sgd")
        if scheduler not in _SCHEDULERS:
            raise ConfigError(f"unknown scheduler {scheduler!r}; choose none, cosine, plateau or step")
        if isinstance(event_shape, int) and not isinstance(event_shape, bool):
            event_shape = (event_shape,)
        shape = v.event_shape(event_shape, owner=owner)
        v.positive_float("lr", lr, owner=owner, fix="pass a learning rate such as lr=0.001")
        v.non_negative_float("weight_decay", weight_decay, owner=owner, fix="pass weight_decay=0 for none")
        v.in_range("momentum", momentum, 0, 1, high_open=True, owner=owner, fix="pass e.g. momentum=0.9 (0: none)")
        plateau = scheduler == "plateau"  # ReduceLROnPlateau needs a factor < 1
        gamma_range = "(0, 1)" if plateau else "(0, 1]"
        fix = (
            f"it multiplies the learning rate at every decay: pass a factor in {gamma_range}, e.g. scheduler_gamma=0.5"
        )
        v.in_range("scheduler_gamma", scheduler_gamma, 0, 1, low_open=True, high_open=plateau, owner=owner, fix=fix)
        v.positive_int("scheduler_step_size", scheduler_step_size, owner=owner)
        v.non_negative_int("scheduler_patience", scheduler_patience, owner=owner)
        v.non_negative_int("context_features", context_features, owner=owner)
        if context_embedding is not None:
            if not context_features:
                raise ConfigError(f"{owner}: context_embedding needs context_features > 0 (an unconditional flow)")
            v.positive_ints(
                "context_embedding",
                context_embedding,
                owner=owner,
                allow_empty=False,
                fix="pass the embedding MLP's widths, the last its output, e.g. context_embedding=[64, 16]",
            )
        self.save_hyperparameters()
        self.hparams["event_shape"] = shape
        self.event_shape: tuple[int, ...] = shape
        self.flow: Flow = self.build_flow()
        self.flow.set_context(context_features, self.make_context_embedding())
        for stage in ("val", "test"):
            # nan_strategy="disable": a NaN row propagates (the default, "warn", would drop it) and
            # no per-batch isnan check forces a device sync; non-finite rows enter as +inf (_eval_step).
            for name in _EVAL_MEANS:
                setattr(self, f"{stage}_{name}", MeanMetric(nan_strategy="disable"))
            setattr(self, f"{stage}_nonfinite", SumMetric(nan_strategy="disable"))
        # divergence checks (on_before_optimizer_step): the pending step's loss and whether it is
        # finite, and the last step found finite (detached tensors: no device sync until needed)
        self._pending_ok: Tensor | None = None
        self._pending_loss: Tensor | None = None
        self._pending_batch: int | None = None
        self._last_finite_loss: Tensor | None = None
        self._last_finite_step: int | None = None
        # compile=True: the compiled log-density and sampling, built at their first call (never pickled)
        self._compiled: dict[str, _Compiled] = {}
        # the ML Gaussian of the data module's training split, refitted at the start of every
        # evaluation epoch (O(N D^2), small next to evaluating a flow) so it never goes stale
        self._gaussian_baseline: torch.distributions.MultivariateNormal | None = None

    # ----- the hook a family writes -------------------------------------------------
    def build_flow(self) -> Flow:
        """The flow this module trains, built once, in ``__init__``; the method a family writes.

        A family of the package calls its Lightning-free builder (:mod:`unflow_zoo.flows`) through
        :meth:`build_with`; a subclass may override this to build any
        :class:`~unflow_zoo.core.flow.Flow`, reading its hyper-parameters from ``self.hparams``.
        ``FlowModule`` then declares the context on it and attaches :meth:`make_context_embedding`.

        Returns:
            The flow.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_flow() -> Flow")

    def build_with(self, builder: Callable[..., Flow], **overrides: Any) -> Flow:
        """``builder(event_shape, **hparams)`` with this module's hyper-parameters and hooks.

        Every keyword argument of ``builder`` found in ``self.hparams`` is passed on (one that is
        not, as in a checkpoint saved before the hyper-parameter existed, keeps the builder's
        default), except four that come from the hooks: ``event_shape`` is :attr:`event_shape`,
        ``base`` is :meth:`make_base`, ``context_features`` is :attr:`flow_context_features` (the
        width the conditioners see) and ``context_embedding`` is None, since ``FlowModule``
        attaches :meth:`make_context_embedding` to the flow itself. The module's flow is then
        ``unflow_zoo.flows.build(name, **hparams)``'s, weight for weight under the same seed.

        Args:
            builder: a flow builder, e.g. :func:`unflow_zoo.flows.maf.maf`.
            **overrides: keyword arguments that replace those taken from the module.

        Returns:
            The flow.
        """
        params = inspect.signature(builder).parameters
        kwargs: dict[str, Any] = {k: self.hparams[k] for k in params if k not in _SUPPLIED and k in self.hparams}
        supplied = {
            "base": self.make_base(),
            "context_features": self.flow_context_features,
            "context_embedding": None,
        }
        kwargs.update({k: value for k, value in supplied.items() if k in params})
        kwargs.update(overrides)
        return builder(self.event_shape, **kwargs)

    @property
    def flow_context_features(self) -> int:
        """The context width the transforms' conditioners see: the embedding's output width, or
        ``context_features`` without an embedding (0: unconditional). Families build their
        conditioners with it."""
        widths = self.hparams.get("context_embedding")
        return int(widths[-1]) if widths else int(self.hparams.get("context_features", 0))

    def make_context_embedding(self) -> nn.Module | None:
        """The network applied to the context before the conditioners (see ``context_embedding``);
        None for none. Override it to embed the context with any module whose output width is
        :attr:`flow_context_features`."""
        return context_embedding_net(
            int(self.hparams.get("context_features", 0)), self.hparams.get("context_embedding")
        )

    def make_base(self) -> BaseDistribution:
        """The base distribution named by ``hparams.base`` over ``event_shape``."""
        return make_base(self.hparams.base, self.event_shape)

    def vector_features(self) -> int:
        """``D`` for a family that works on vectors; a clear error for image-shaped events."""
        return _vector_features(self.event_shape, owner=self.registry_name)

    def regularization(self) -> Tensor | float:
        """Extra training loss added to the NLL (RNODE penalties and the like)."""
        return 0.0

    # ----- density API ----------------------------------------------------------------
    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r""":math:`\log q(x \mid c)`, shape ``(B,)``, in float32 or wider (see the class docstring);
        ``context`` ``(B, C)`` or one ``(C,)`` row for all points (conditional flows only).
        Under ``compile=True``, the compiled log-density (see the class's ``compile``)."""
        compiled = self._compiled_part("log_prob")
        if compiled is None:
            return _at_least_float32(self.flow.log_prob(x, context))
        return _at_least_float32(compiled(self.flow, x, context))

    def sample(self, n: int, context: Tensor | None = None, *, temperature: float = 1.0) -> Tensor:
        """``n`` draws, ``(n, *event_shape)``; ``(n, B, *event_shape)`` for a ``(B, C)`` context
        (see :meth:`unflow_zoo.core.flow.Flow.sample`, also for ``temperature``)."""
        compiled = self._compiled_part("sample")
        if compiled is None:
            return self.flow.sample(n, context, temperature=temperature)
        return compiled(self.flow, n, context, temperature, False)[0]

    def sample_and_log_prob(
        self, n: int, context: Tensor | None = None, *, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Draws and their log-densities from one inverse pass (see :meth:`sample`)."""
        compiled = self._compiled_part("sample")
        if compiled is None:
            x, lp = self.flow.sample_and_log_prob(n, context, temperature=temperature)
        else:
            x, lp = compiled(self.flow, n, context, temperature, True)
        return x, _at_least_float32(lp)

    # ----- compiled training (compile=True) ---------------------------------------------
    def compile_unsupported(self) -> str | None:
        """Why ``compile=True`` cannot usefully compile this module's log-density; None (the default) if
        it can. A family overrides it where the compiler is measured to fail in a way the first-call
        fallback cannot catch (an error in the backward pass, minutes of compiling before an error) or
        to split the log-density into so many graphs that it runs slower than eager mode. The module
        then runs eagerly and says so once, with a :class:`CompileFallbackWarning` giving this reason. A
        failure torch.compile reports as an error at the call needs no override: it falls back there."""
        return None

    def _compiled_part(self, part: Literal["log_prob", "sample"]) -> _Compiled | None:
        """The compiled ``part`` of the flow under ``compile=True``; None where it runs eagerly
        (compile off, sampling not compiled for this family, or a fallback already warned)."""
        if not self.hparams.get("compile", False) or (part == "sample" and not self.compile_sampling):
            return None
        compiled = self._compiled.get(part)
        if compiled is None:
            owner = self.registry_name if self.registry_name != "custom" else type(self).__name__
            fn = _flow_log_prob if part == "log_prob" else _flow_sample
            compiled = self._compiled[part] = _Compiled(fn, owner, part, self.hparams.get("compile_mode"))
            reason = self.compile_unsupported() if part == "log_prob" else None
            if reason is not None:
                compiled.fall_back(reason)
        return None if compiled.fallback is not None else compiled

    @property
    def compile_fallbacks(self) -> dict[str, str]:
        """The parts of the flow that ``compile=True`` runs eagerly after all, and why (empty: every
        part called so far is compiled). Filled at each part's first call."""
        return {part: c.fallback for part, c in self._compiled.items() if c.fallback is not None}

    def __getstate__(self) -> dict[str, Any]:
        # the compiled functions hold torch.compile's caches: a copy or an unpickled module compiles anew
        state = super().__getstate__()
        state["_compiled"] = {}
        return state

    def distribution(self, context: Tensor | None = None) -> FlowDistribution:
        """The flow given ``context`` as a ``torch.distributions.Distribution``
        (:class:`~unflow_zoo.core.flow.FlowDistribution`): ``model.distribution(c).sample((n,))``,
        ``.log_prob(x)``, ``.rsample(...)``, for code written against torch distributions (sbi, Pyro)."""
        return self.flow(context)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    # ----- training -------------------------------------------------------------------
    def _batch(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """``(x, context)`` of a batch: ``x``, ``(x,)`` or ``(x, c)``; the context only for a
        conditional model, and a clear error when the batch and the model disagree about it."""
        items = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        x, context = items[0], (items[1] if len(items) > 1 else None)
        self._check_batch_x(x)
        wanted = int(self.hparams.get("context_features", 0))
        if wanted and context is None:
            raise DataError(
                f"{type(self).__name__} was built with context_features={wanted} but the batch has no context; "
                "serve (x, c) batches (DensityDataModule does for a source with a context) or build the model "
                "with context_features=0"
            )
        return x, (context if wanted else None)

    def _batch_x(self, batch: Any) -> Tensor:
        return self._batch(batch)[0]

    def _check_batch_x(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise DataError(
                f"expected a batch of shape (B, {', '.join(map(str, self.event_shape))}) for "
                f"{type(self).__name__} with event_shape={self.event_shape}, got {tuple(x.shape)}; "
                "set model.event_shape to the data's shape (the CLI links it from the data module)"
            )

    def on_fit_start(self) -> None:
        # a new fit: no step pending (a training_step called by hand leaves one) and none finite yet
        self._pending_ok = self._pending_loss = self._pending_batch = None
        self._last_finite_loss = self._last_finite_step = None
        dm = getattr(self.trainer, "datamodule", None)
        shape = getattr(dm, "event_shape", None)
        if shape is not None and tuple(shape) != self.event_shape:
            raise ConfigError(
                f"the data module serves events of shape {tuple(shape)} but the model was built for "
                f"{self.event_shape}; set model.event_shape (or let the CLI link it)"
            )
        served = getattr(dm, "context_features", None)
        wanted = int(self.hparams.get("context_features", 0))
        if served is not None and int(served) != wanted:
            name = getattr(getattr(dm, "hparams", None), "dataset", type(dm).__name__)
            raise ConfigError(
                f"the data set {name!r} serves a context of width {served} but {type(self).__name__} was built "
                f"with context_features={wanted}; set model.context_features={served}"
                + (" (or pick a data set without a context)" if served else " (or a data set with a context)")
            )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, context = self._batch(batch)
        nll = -self.log_prob(x, context).mean()
        loss = nll + self.regularization()
        self._note_loss(loss, batch_idx)
        self.log("train_nll", nll, prog_bar=True, batch_size=x.shape[0])
        return loss

    # ----- divergence ------------------------------------------------------------------
    def _note_loss(self, loss: Tensor, batch_idx: int) -> None:
        """Record whether ``loss`` is finite, as a tensor (no device sync here): the check happens
        once per optimizer step, in :meth:`on_before_optimizer_step`, together with the gradients'.
        Under gradient accumulation every micro-batch's loss must be finite."""
        ok = torch.isfinite(loss.detach()).all()
        self._pending_ok = ok if self._pending_ok is None else self._pending_ok & ok
        self._pending_loss = loss.detach()
        self._pending_batch = batch_idx

    def _all_ranks(self, ok: bool) -> bool:
        """``ok`` on every rank: one all-reduce under several processes, so that all ranks stop at
        the same step (a rank-local decision would leave the others waiting in the next collective)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return ok
        return bool(trainer.strategy.reduce_boolean_decision(ok, all=True))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Raise :class:`~unflow_zoo.errors.DivergenceError` on a non-finite loss or gradient.

        Lightning calls this after the backward pass and before gradient clipping and the
        optimizer step, so the bad step has not changed the weights (nor the optimizer's state).
        One device sync per optimizer step covers the loss and every gradient.
        """
        trainer = self._trainer
        loss_ok, self._pending_ok = self._pending_ok, None
        if trainer is None:
            return
        # 16-mixed: the gradient scaler skips an overflowing step and lowers its scale by design
        check_grads = getattr(trainer.precision_plugin, "scaler", None) is None
        grads = [p.grad for p in self.parameters() if p.grad is not None] if check_grads else []
        flags = ([loss_ok] if loss_ok is not None else []) + [torch.isfinite(g).all() for g in grads]
        if not flags:
            return
        device = flags[0].device
        ok = self._all_ranks(bool(torch.stack([f.to(device) for f in flags]).all()))
        if ok:
            self._last_finite_loss, self._last_finite_step = self._pending_loss, trainer.global_step
            return
        if loss_ok is not None and not bool(loss_ok):
            what = f"the training loss is {float(self._pending_loss):g}"
        elif grads and not all(bool(f) for f in flags[-len(grads) :]):
            bad = [n for n, p in self.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            what = f"the gradient of {shown} is not finite (the loss was {float(self._pending_loss):g})"
        else:
            what = "another process's training loss or gradient is not finite"
        raise DivergenceError(self._divergence_message(what))

    def _divergence_message(self, what: str) -> str:
        trainer = self.trainer
        batch = f", batch {self._pending_batch}" if self._pending_batch is not None else ""
        head = (
            f"training diverged: {what} at global step {trainer.global_step} (epoch {trainer.current_epoch}{batch}); "
            "the run stopped before this step changed the weights. "
        )
        if self._last_finite_loss is None and trainer.global_step == 0:
            return head + (
                "No finite step came before it: the initial model already fails on this batch, so the learning rate "
                "is not the cause. Check the data (NaN or inf values, points outside the base distribution's "
                "support) and the model's settings"
            )
        if self._last_finite_loss is None:  # resumed from a checkpoint, diverged at once
            last = "No finite step came before it since this fit resumed. "
        else:
            last = (
                f"The last finite loss was {float(self._last_finite_loss):.6g} (global step {self._last_finite_step}). "
            )
        lr = f"lower the learning rate (model lr={self.hparams.lr:g})"
        clip = trainer.gradient_clip_val
        if clip:
            fix = f"{lr} or the gradient clipping threshold (trainer.gradient_clip_val={clip:g})"
        else:
            fix = f"{lr}, or clip gradients (trainer.gradient_clip_val, e.g. 5.0)"
        return head + last + "Likely fix: " + fix

    def _eval_step(self, stage: str, batch: Any) -> None:
        x, context = self._batch(batch)
        logp = self.log_prob(x, context)
        finite = torch.isfinite(logp)
        # A row with a non-finite log-density (NaN, or -inf outside the support) enters every mean
        # as +inf: the NLL is then +inf, never a mean over the finite rows alone; the count says how many.
        logp = torch.where(finite, logp, torch.full_like(logp, -math.inf))
        nll = -logp
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        getattr(self, f"{stage}_nonfinite").update((~finite).sum())
        self.log(f"{stage}_nonfinite", getattr(self, f"{stage}_nonfinite"))
        getattr(self, f"{stage}_nll").update(nll)
        getattr(self, f"{stage}_bpd").update(bits_per_dim(self._nll_in_data_space(dm, x, nll), self.dim))
        self.log(f"{stage}_nll", getattr(self, f"{stage}_nll"), prog_bar=True)
        self.log(f"{stage}_bpd", getattr(self, f"{stage}_bpd"))
        true_log_prob = getattr(dm, "true_log_prob", None)
        if true_log_prob is not None:
            truth = true_log_prob(x) if context is None else true_log_prob(x, context)
            if truth is not None:
                # mean of log p(x) - log q(x) over data from p: an unbiased estimate of KL(p || q),
                # i.e. the model's NLL minus the true entropy on the same points.
                getattr(self, f"{stage}_kl").update(truth.to(logp.dtype) - logp)
                self.log(f"{stage}_kl", getattr(self, f"{stage}_kl"), prog_bar=stage == "val")
        baseline = self._gaussian_baseline
        if baseline is not None:
            nll_gauss = -baseline.log_prob(x.detach().to(baseline.loc.device, torch.float64))
            metric = getattr(self, f"{stage}_gaussian_nll")
            metric.update(nll_gauss.to(x.device, metric.dtype))
            self.log(f"{stage}_gaussian_nll", getattr(self, f"{stage}_gaussian_nll"))

    @staticmethod
    def _nll_in_data_space(dm: Any, x: Tensor, nll: Tensor) -> Tensor:
        r"""The NLL in the data's own units, for bits/dim.

        A data module that serves preprocessed data (dequantised pixels through a
        logit, say) exposes ``pixel_log_det(x)``: :math:`\log|\det \partial x / \partial y|`
        of the map from its raw units :math:`y` (pixels in ``[0, 256)``) to the served
        :math:`x`. By the change of variables :math:`-\log p(y) = -\log q(x) - \log|\det
        \partial x/\partial y|`; ``None`` (or no such method) means the two coincide.
        """
        pixel_log_det = getattr(dm, "pixel_log_det", None)
        if not callable(pixel_log_det):
            return nll
        correction = pixel_log_det(x)
        return nll if correction is None else nll - correction.to(nll.dtype)

    def _fit_gaussian_baseline(self) -> None:
        """Fit the ML Gaussian of ``datamodule.train_data`` when it is tabular ``(N, D)`` data."""
        dm = getattr(self.trainer, "datamodule", None)
        train = getattr(dm, "train_data", None)
        tabular = isinstance(train, Tensor) and train.ndim == 2 and tuple(train.shape[1:]) == self.event_shape
        self._gaussian_baseline = fit_gaussian(train) if tabular else None

    def _metric_dtype(self) -> torch.dtype:
        """float64 for a float64 model, else float32 (never lower: see ``_at_least_float32``)."""
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), self.dtype)
        return torch.float64 if dtype == torch.float64 else torch.float32

    def _prepare_metrics(self, stage: str) -> None:
        """Accumulate ``stage``'s metrics in the model's dtype: ``model.double()`` (and so
        ``precision="64-true"``) leaves torchmetrics states in float32 on purpose."""
        dtype = self._metric_dtype()
        for name in (*_EVAL_MEANS, "nonfinite"):
            metric = getattr(self, f"{stage}_{name}")
            if metric.dtype != dtype:
                metric.set_dtype(dtype)

    def on_validation_epoch_start(self) -> None:
        self._prepare_metrics("val")
        self._fit_gaussian_baseline()

    def on_test_epoch_start(self) -> None:
        self._prepare_metrics("test")
        self._fit_gaussian_baseline()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("test", batch)

    # ----- pretrained ----------------------------------------------------------------
    def save_pretrained(self, path: str, **kwargs: Any) -> Any:
        """Write this flow as a pretrained folder (or ``.zip``); see :mod:`unflow_zoo.pretrained`."""
        return pretrained_io().save_pretrained(self, path, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Upload this flow to its own Hugging Face Hub repo; see :func:`unflow_zoo.pretrained.push_to_hub`.

        Args:
            repo_id: the repo, ``owner/name``; created if missing.
            revision: the branch to commit to (default ``main``).
            private: make a new repo private.
            token: a Hub token with write access (default ``HF_TOKEN`` or ``hf auth login``'s).
            **kwargs: ``commit_message`` and :meth:`save_pretrained`'s arguments (``datamodule``, ``metrics``...).

        Returns:
            huggingface_hub's ``CommitInfo`` of the upload.
        """
        return pretrained_io().push_to_hub(self, repo_id, revision=revision, private=private, token=token, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, revision: str | None = None, **kwargs: Any) -> FlowModule:
        """Load a pretrained flow by registry name, path, URL, Hub repo id ``owner/name`` or ``hf://`` repo;
        ``revision`` picks a Hub repo's branch, tag or commit. See :func:`unflow_zoo.pretrained.load_pretrained`.
        On a subclass, the loaded flow must be an instance of it."""
        model = pretrained_io().load_pretrained(name_or_path, revision=revision, **kwargs)
        if not isinstance(model, cls):
            raise DataTypeError(f"{name_or_path!r} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, *args: Any, weights_only: bool | None = True, **kwargs: Any
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, reading the file with ``weights_only=True`` by default.

        Lightning would unpickle a checkpoint given by URL with ``weights_only=False``, which
        runs whatever code the file carries (SECURITY.md). Pass ``weights_only=False`` only for a
        file you trust that holds objects other than tensors and plain containers.
        """
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Projected gradient descent: modules that keep parameters in a constrained set
        # (positive weights of monotone nets) project them back after every step.
        with torch.no_grad():
            for m in self.flow.modules():
                project = getattr(m, "project_", None)
                if callable(project):
                    project()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "cosine":
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.scheduler_step_size, gamma=hp.scheduler_gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=hp.scheduler_gamma, patience=hp.scheduler_patience
        )
        has_val = self.trainer is not None and self.trainer.limit_val_batches != 0
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "monitor": "val_nll" if has_val else "train_nll"},
        }
