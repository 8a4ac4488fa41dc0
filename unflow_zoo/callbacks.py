r"""Lightning callbacks: checkpoints a run can resume from, and studying how a flow trains.

:class:`RunCheckpoint` saves ``last.ckpt`` at the end of every epoch (or every N
epochs or steps) and at the end of fit, whatever the validation interval, so that a
killed run loses at most one interval. :class:`LastFiniteCheckpoint` saves
``last-finite.ckpt`` when training stops with a
:class:`~unflow_zoo.errors.DivergenceError`: the weights of the last finite step. The
CLI adds both by default.

:class:`WeightMovementCallback` measures how far each parameter group travels
from its initialisation, :math:`\|\theta_t - \theta_0\|_F`: the quantity behind
the lazy-training (NTK) picture of overparameterized networks, in which the
weights of a wide enough network barely move while the loss still goes down.
Shah, Deshpande & Goyal (2022) plot it against the width for their constrained
flows (their code logs it for both families).

References:
    Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
    Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (code:
    github.com/kulinshah98/overparam-NFs, which logs ``Change_in_w``,
    ``Change_in_b`` and the top-layer change every epoch).
    Chizat, Oyallon & Bach, "On Lazy Training in Differentiable Programming",
    NeurIPS 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from unflow_zoo.errors import ConfigError, DivergenceError

__all__ = ["BestCheckpoint", "LastFiniteCheckpoint", "RunCheckpoint", "WeightMovementCallback", "parameter_groups_of"]

ParameterGroups = dict[str, list[Tensor]]


def _fallback_groups(module: nn.Module) -> ParameterGroups:
    """All named parameters, grouped by name: ``...weight`` -> ``"W"``, ``...bias`` -> ``"b"``,
    anything else -> ``"other"``; empty groups are dropped."""
    groups: ParameterGroups = {"W": [], "b": [], "other": []}
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        key = "W" if leaf.startswith("weight") else "b" if leaf.startswith("bias") else "other"
        groups[key].append(p)
    return {k: v for k, v in groups.items() if v}


def parameter_groups_of(module: nn.Module) -> ParameterGroups:
    """The parameter groups of a flow module, by the first rule that applies.

    1. ``module.parameter_groups()`` (the paper families: ``{"W", "b", "a"}``);
    2. ``module.flow.parameter_groups()``;
    3. every named parameter, grouped as ``"W"`` (names ending in ``weight``),
       ``"b"`` (``bias``) and ``"other"``.
    """
    for owner in (module, getattr(module, "flow", None)):
        method = getattr(owner, "parameter_groups", None)
        if callable(method):
            groups = method()
            if not isinstance(groups, Mapping):
                raise TypeError(
                    f"{type(owner).__name__}.parameter_groups() must return a mapping of group name to a "
                    f"list of tensors, got {type(groups).__name__}"
                )
            return {str(k): list(v) for k, v in groups.items()}
    return _fallback_groups(module)


class WeightMovementCallback(L.Callback):
    r"""Log how far each parameter group has moved from its initial value.

    At the start of fitting the callback copies every tensor of
    :func:`parameter_groups_of` ``(pl_module)``. At the end of each training
    epoch (and every ``every_n_steps`` optimizer steps, if set) it computes, for
    each group :math:`g` with tensors :math:`\theta_{g,1}, \dots`, over the
    concatenation of the group's tensors,

    .. math::

        \texttt{move\_g} = \|\theta_{g,t} - \theta_{g,0}\|_F
        = \Big(\sum_k \|\theta_{g,k,t} - \theta_{g,k,0}\|_F^2\Big)^{1/2},
        \qquad
        \texttt{rel\_move\_g} = \frac{\|\theta_{g,t} - \theta_{g,0}\|_F}{\|\theta_{g,0}\|_F},

    logs them with ``pl_module.log`` (epoch values as ``move_W``, ``rel_move_W``,
    ...; step values with the suffix ``_step``) and appends a record to
    :attr:`history`, so that scripts can read the numbers without a logger.
    ``rel_move`` is ``nan`` for a group that starts at exactly zero.

    For the paper families the groups are ``"W"`` (hidden weights), ``"b"``
    (hidden biases) and ``"a"`` (output weights); the paper plots
    :math:`\|W_t - W_0\|` against the width ``m`` for constrained flows. In this
    package's study (docs/overparam_study.md) it falls like :math:`m^{-1/2}` for the
    constrained flow (the lazy regime), while the unconstrained flow under the paper's
    initialisation moves by about 1.3 to 1.7 at every width (not lazy). A group that
    does not train (e.g. ``train_layers=["W", "b"]`` for the constrained flow, or the
    fixed top layer of the paper's unconstrained integrand) reads exactly 0.

    The snapshot lives on the parameters' own device and is saved in Lightning
    checkpoints (:meth:`state_dict`), so a resumed run keeps measuring from the
    true initialisation. Every rank computes the same numbers from its replica;
    nothing is written to disk.

    Args:
        every_n_steps: also record every this many optimizer steps (``None``: epochs only).
        groups: restrict to these group names (default: all groups the module has).
        log: call ``pl_module.log`` (``False``: only fill :attr:`history`).
        relative: also compute ``rel_move_<g>``.
        group_fn: a custom ``module -> {name: [tensors]}`` in place of :func:`parameter_groups_of`.

    Attributes:
        history: one dict per record: ``epoch``, ``step``, ``stage`` (``"epoch"`` or
            ``"step"``) and ``move_<g>`` (and ``rel_move_<g>``) for every group.

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (figures of
        :math:`\|W_t - W_0\|` against width for constrained flows).
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        groups: Sequence[str] | None = None,
        log: bool = True,
        relative: bool = True,
        group_fn: Callable[[nn.Module], Mapping[str, Sequence[Tensor]]] | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"every_n_steps must be a positive int or None, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.groups = None if groups is None else tuple(groups)
        self.log_metrics = log
        self.relative = relative
        self.group_fn = group_fn
        self.initial: dict[str, list[Tensor]] | None = None
        self.history: list[dict[str, Any]] = []
        self._restored = False
        self._last_step = -1

    # ----- measurement ------------------------------------------------------------------
    def _current(self, pl_module: nn.Module) -> dict[str, list[Tensor]]:
        found = self.group_fn(pl_module) if self.group_fn is not None else parameter_groups_of(pl_module)
        found = {str(k): list(v) for k, v in found.items()}
        if self.groups is None:
            return found
        missing = [g for g in self.groups if g not in found]
        if missing:
            raise ConfigError(f"{type(pl_module).__name__} has no parameter group(s) {missing}; it has {sorted(found)}")
        return {g: found[g] for g in self.groups}

    @torch.no_grad()
    def snapshot(self, pl_module: nn.Module) -> None:
        """Take the current parameters as the initial point ``theta_0``."""
        self.initial = {g: [t.detach().clone() for t in ts] for g, ts in self._current(pl_module).items()}

    @torch.no_grad()
    def compute(self, pl_module: nn.Module) -> dict[str, float]:
        """``move_<g>`` (and ``rel_move_<g>``) now, as Python floats."""
        if self.initial is None:
            raise RuntimeError("WeightMovementCallback.compute() before snapshot(): no initial parameters taken")
        current = self._current(pl_module)
        out: dict[str, float] = {}
        for g, init in self.initial.items():
            now = current.get(g, [])
            if len(now) != len(init) or any(a.shape != b.shape for a, b in zip(now, init)):
                raise RuntimeError(
                    f"parameter group {g!r} changed shape since fit start "
                    f"({[tuple(t.shape) for t in init]} -> {[tuple(t.shape) for t in now]}); "
                    "weight movement is only defined for a fixed architecture"
                )
            # Accumulate squared norms in float64: for m = 10^4 units tiny moves are summed over many entries.
            moved = sum(float(torch.sum((a.double() - b.double()) ** 2)) for a, b in zip(now, init))
            out[f"move_{g}"] = math.sqrt(moved)
            if self.relative:
                base = sum(float(torch.sum(b.double() ** 2)) for b in init)
                out[f"rel_move_{g}"] = out[f"move_{g}"] / math.sqrt(base) if base > 0 else math.nan
        return out

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        values = self.compute(pl_module)
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "stage": stage, **values})
        if self.log_metrics:
            suffix = "" if stage == "epoch" else "_step"
            on_epoch = stage == "epoch"
            for key, value in values.items():
                # Identical on every rank (replicated parameters): no sync needed.
                pl_module.log(key + suffix, value, on_step=not on_epoch, on_epoch=on_epoch, sync_dist=False)

    # ----- hooks ------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores callback state before on_fit_start: a resumed run keeps its theta_0,
        # moved from the checkpoint's CPU copy to wherever the parameters now live.
        if self._restored and self.initial is not None:
            self._restored = False
            current = self._current(pl_module)
            self.initial = {
                g: [t.to(device=c.device, dtype=c.dtype) for t, c in zip(ts, current.get(g, ts))]
                for g, ts in self.initial.items()
            }
            return
        self.history = []
        self._last_step = -1
        self.snapshot(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches share one global step: record it once.
        if self.every_n_steps is not None and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self._record(trainer, pl_module, "step")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module, "epoch")

    # ----- checkpointing ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        initial = None if self.initial is None else {g: [t.cpu() for t in ts] for g, ts in self.initial.items()}
        return {"initial": initial, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial = state_dict.get("initial")
        self.history = list(state_dict.get("history", []))
        self._restored = self.initial is not None


# ----- checkpoints a run can resume from ---------------------------------------------------------------
class RunCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` with the defaults of a run that must
    survive a kill: ``last.ckpt`` is written at the end of every training epoch, whether or not
    the epoch validated (``save_on_train_epoch_end=True``), and once more at the end of fit if the
    final step was not saved yet (``max_steps`` ending mid-epoch, ``every_n_epochs`` not
    dividing ``max_epochs``).

    Every argument is ModelCheckpoint's: save every N epochs with ``every_n_epochs=N`` or every
    N optimizer steps with ``every_n_train_steps=N`` (give one of them). With ``monitor=None``
    (the default) the top-k file is the latest epoch, as with Lightning's default checkpoint;
    to keep the best validation NLL instead, pass ``monitor="val_nll"`` with
    ``save_on_train_epoch_end=False`` (the score exists only after a validation). The files go
    to ``<log dir>/checkpoints`` unless ``dirpath`` says otherwise. Resuming from ``last.ckpt``
    (``--ckpt_path``) continues exactly where the run stopped (same weights, optimizer, scheduler
    and shuffle order as an uninterrupted run).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        save_last: bool | Literal["link"] | None = True,
        save_top_k: int = 1,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        save_on_train_epoch_end: bool | None = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor,
            save_last=save_last,
            save_top_k=save_top_k,
            every_n_epochs=every_n_epochs,
            every_n_train_steps=every_n_train_steps,
            save_on_train_epoch_end=save_on_train_epoch_end,
            **kwargs,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # (save_last="link" would link to an older top-k file: that case is left to ModelCheckpoint)
        if self.save_last is True and not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)


class BestCheckpoint(ModelCheckpoint):
    """The weights with the lowest validation NLL so far, as ``best.ckpt`` (one file, replaced).

    A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` with ``monitor="val_nll"``,
    ``mode="min"``, ``save_top_k=1``, saved after each validation. The CLI adds it beside
    :class:`RunCheckpoint` and tests on it after fit, so that a run stopped early (or one whose
    last epochs overfit) reports the test NLL of its best validated weights, not of the last.
    A run that never validates writes no ``best.ckpt``.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "best", **kwargs: Any) -> None:
        kwargs = {"monitor": "val_nll", "mode": "min", "save_top_k": 1, "save_last": False, **kwargs}
        super().__init__(dirpath=dirpath, filename=filename, save_on_train_epoch_end=False, **kwargs)


class LastFiniteCheckpoint(L.Callback):
    """Keep the last finite weights when training diverges.

    :class:`~unflow_zoo.models.FlowModule` raises :class:`~unflow_zoo.errors.DivergenceError`
    at a non-finite loss or gradient before the optimizer step, so the weights the trainer holds
    when the error reaches :meth:`on_exception` are still those of the last finite step. This
    callback saves them (a full Lightning checkpoint: weights, optimizer, loops) as ``filename``
    in ``dirpath`` (default: the trainer's checkpoint folder, else
    ``<default_root_dir>/checkpoints``), and adds the path to the error's message and as its
    ``checkpoint_path`` attribute. Lightning re-raises the error after the hook, so the run still
    fails. Other exceptions are left alone.

    Under several processes every rank raises at the same step (the FlowModule all-reduces
    its check), so every rank reaches the checkpoint's barrier; rank 0 writes the file.

    Args:
        dirpath: the folder (default: see above).
        filename: the file's name.

    Attributes:
        last_path: where the checkpoint was written (``None`` before a divergence).
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last-finite.ckpt") -> None:
        super().__init__()
        self.dirpath = dirpath
        self.filename = filename
        self.last_path: Path | None = None

    def _folder(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        ckpt = trainer.checkpoint_callback
        folder = getattr(ckpt, "dirpath", None)
        # no trainer.log_dir here: it broadcasts, and this runs inside an error
        return Path(folder) if folder else Path(trainer.default_root_dir) / "checkpoints"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, DivergenceError) or trainer.state.fn != TrainerFn.FITTING or trainer.fast_dev_run:
            return  # (fast_dev_run writes no checkpoints, as in Lightning)
        path = self._folder(trainer) / self.filename
        trainer.save_checkpoint(path)
        self.last_path = path
        exception.checkpoint_path = str(path)  # type: ignore[attr-defined]
        message = f"{exception.args[0] if exception.args else exception}. The last finite weights are saved in {path}"
        exception.args = (message, *exception.args[1:])
        rank_zero_info(f"training diverged; the last finite weights are saved in {path}")
