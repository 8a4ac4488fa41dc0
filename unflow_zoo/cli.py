"""``unflow-zoo`` (and ``lightning``): the LightningCLI entry point.

unflow-zoo fit --config configs/quickstart.yaml
unflow-zoo fit --model unflow_zoo.models.maf.MaskedAutoregressiveFlow --data.dataset moons
unflow-zoo test --config configs/maf/moons.yaml --ckpt_path runs/.../last.ckpt
unflow-zoo pretrained list | sample | evaluate | export ...   (see unflow_zoo/commands.py)
"""

from __future__ import annotations

import math
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from unflow_zoo.callbacks import BestCheckpoint, LastFiniteCheckpoint, RunCheckpoint
from unflow_zoo.commands import COMMANDS, run_command
from unflow_zoo.data import DensityDataModule
from unflow_zoo.errors import UnflowZooError, UnsafeFileError
from unflow_zoo.models import FlowModule
from unflow_zoo.models.registry import registered_class
from unflow_zoo.plots import DensityPlotCallback
from unflow_zoo.pretrained.convert import read_checkpoint, refused_pickle

__all__ = ["FlowCLI", "main"]


class FlowCLI(LightningCLI):
    """LightningCLI with the data module's ``event_shape`` linked to the model,
    a density figure at the end of fit, and a test run on the held-out split
    that prints where the checkpoint and the figure are (and every test metric, ``inf``
    included, with the number of rows whose log-density was not finite).

    Every run saves ``last.ckpt`` at the end of each training epoch and at the end of fit,
    whatever the validation interval (:class:`~unflow_zoo.callbacks.RunCheckpoint`, set with
    ``--checkpoint.*``: ``--checkpoint.every_n_epochs N`` or ``--checkpoint.every_n_train_steps N``);
    ``--trainer.enable_checkpointing false`` turns it off, and a ``ModelCheckpoint`` of the
    config's own ``trainer.callbacks`` replaces it. A run that diverges stops with
    :class:`~unflow_zoo.errors.DivergenceError` (exit status 1) after saving the last finite
    weights as ``last-finite.ckpt`` (:class:`~unflow_zoo.callbacks.LastFiniteCheckpoint`).

    Checkpoints are untrusted input (SECURITY.md): every ``--ckpt_path``, local or URL, is
    read with ``weights_only=True`` (Lightning's default for URLs would unpickle whatever the
    file holds), and the model class a checkpoint names (``_class_path``) is used only when
    it is a registered family or the class the command line itself chose; it is never imported
    on the file's say-so.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.event_shape", "model.init_args.event_shape", apply_on="instantiate")
        parser.add_lightning_class_args(DensityPlotCallback, "plot")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="evaluate on the test split after fit")
        parser.add_argument(
            "--best_checkpoint",
            type=bool,
            default=True,
            help="keep the lowest-val_nll weights as best.ckpt and test on them after fit",
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """The default checkpoints: :class:`RunCheckpoint` unless checkpointing is off or the config
        brings its own ``ModelCheckpoint``; :class:`LastFiniteCheckpoint` unless it brings one."""
        own = config.get("callbacks") or []
        own = own if isinstance(own, list) else [own]
        keep_run = config.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, ModelCheckpoint) for c in own
        )
        callbacks = [c for c in callbacks if keep_run or not isinstance(c, RunCheckpoint)]
        sub = self.subcommand  # None when the CLI only parses (run=False)
        if keep_run and sub == "fit" and self.config[sub].get("best_checkpoint", True):
            callbacks.append(BestCheckpoint())
        if not any(isinstance(c, LastFiniteCheckpoint) for c in [*own, *callbacks]):
            callbacks.append(LastFiniteCheckpoint())
        return super()._instantiate_trainer(config, callbacks)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; Lightning's ``predict`` is left out: a density model has no
        prediction to write (``unflow-zoo sample`` / ``evaluate`` do what it would)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the checkpoint's hyper-parameters into the config (so ``test --ckpt_path``
        needs no model config); here the file is read safely and the class it names is checked first."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = read_checkpoint(ckpt_path)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        named = hparams.get("_class_path")
        if named is not None:
            chosen = self.config[subcommand].get("model")
            chosen_path = getattr(chosen, "class_path", None) if chosen is not None else None
            if registered_class(str(named)) is None and named != chosen_path:
                raise UnsafeFileError(
                    f"{ckpt_path} names the model class {named!r}, which is not a registered unflow-zoo family; "
                    "a checkpoint never chooses code to import. Pass the class yourself (--model CLASS_PATH) "
                    "if you trust it"
                )
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except pickle.UnpicklingError as e:
            # the checkpoint (a URL, or a file on a remote filesystem) asked for code
            ckpt_path = self.config_init[subcommand].get("ckpt_path")
            raise refused_pickle(ckpt_path, e) from None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            if kwargs.get("weights_only") is False:
                raise UnsafeFileError(
                    "--weights_only false would let the checkpoint's pickle run code; unflow-zoo always reads "
                    "checkpoints with weights_only=True. Load a checkpoint you trust in Python instead "
                    "(FlowModule.load_from_checkpoint(path, weights_only=False))"
                )
            kwargs["weights_only"] = True
        return kwargs

    def after_fit(self) -> None:
        trainer, model, dm = self.trainer, self.model, self.datamodule
        results: list[dict[str, Any]] = []
        cfg = self.config.get(self.subcommand, self.config)
        # read the checkpoint paths now: testing from best.ckpt restores every callback's state,
        # including the paths, to what they were when best.ckpt was written
        path = _resume_path(next((c for c in trainer.checkpoint_callbacks if not isinstance(c, BestCheckpoint)), None))
        best = next((c for c in trainer.callbacks if isinstance(c, BestCheckpoint)), None)
        # every rank must test the same file: rank 0's path, broadcast
        best_path = trainer.strategy.broadcast(best.best_model_path if best is not None else "")
        best_score = (
            float(best.best_model_score) if best is not None and best.best_model_score is not None else math.nan
        )
        if cfg.get("test_after_fit", True) and getattr(dm.hparams, "test_fraction", 0) > 0:
            if best_path:
                results = trainer.test(model, datamodule=dm, verbose=False, ckpt_path=best_path, weights_only=True)
            else:
                results = trainer.test(model, datamodule=dm, verbose=False)
        # log_dir syncs across ranks under DDP: every rank must ask, or rank 0 waits forever
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        plot = next((c for c in trainer.callbacks if isinstance(c, DensityPlotCallback)), None)
        print(f"\nrun folder: {run_dir.resolve()}")
        if path:
            print(f"checkpoint: {Path(path).resolve()}")
        if best_path:
            tested = " (tested below)" if results else ""
            print(f"best:       {Path(best_path).resolve()}  val_nll {best_score:.4f}{tested}")
        if plot is not None and plot.last_path is not None:
            print(f"figure:     {plot.last_path.resolve()}")
        if results:
            print(_format_results(results[0]))


def _resume_path(ckpt: ModelCheckpoint | None) -> str:
    """The file a run resumes from: with no monitor the top-k file is just the latest epoch, so
    ``last.ckpt``; with one, its best file."""
    if ckpt is None:
        return ""
    first, second = (
        (ckpt.best_model_path, ckpt.last_model_path) if ckpt.monitor else (ckpt.last_model_path, ckpt.best_model_path)
    )
    return first or second


def _format_results(metrics: dict[str, Any]) -> str:
    """One line per metric, ``inf``/``nan`` included; a non-finite value names how many rows had a
    non-finite log-density (``{stage}_nonfinite``, itself shown only when above zero)."""
    lines = []
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        stage = key.split("_", 1)[0]
        bad = int(metrics.get(f"{stage}_nonfinite", 0) or 0)
        if key.endswith("_nonfinite"):
            if bad:
                lines.append(f"{key:11s} {bad} rows with a non-finite log-density")
        elif math.isfinite(value):
            lines.append(f"{key:11s} {value:.4f}")
        else:
            lines.append(f"{key:11s} {value}" + (f" ({bad} non-finite rows)" if bad else ""))
    return "\n".join(lines)


_DESCRIPTION = "unflow-zoo: normalizing flows on PyTorch Lightning. Train, validate and test with LightningCLI."
_EPILOG = (
    "more commands (each with --help): "
    "pretrained list|info (the shipped and cached flows); "
    "sample --pretrained NAME --n N --out FILE; "
    "evaluate --pretrained NAME | --ckpt PATH (NLL and bits/dim on the recorded split); "
    "export CKPT OUT (a Lightning checkpoint to a pretrained folder); "
    "study overparam --out DIR (the seed paper's width sweep)"
)


def main(args: list[str] | None = None) -> None:
    """``unflow-zoo``: the pretrained-flow commands (:mod:`unflow_zoo.commands`) or LightningCLI.

    An :class:`~unflow_zoo.errors.UnflowZooError` (a user's mistake or a bad file, with a message
    that names the fix) is printed without a traceback and exits with status 1; set
    ``UNFLOW_ZOO_TRACEBACK=1`` to see where it was raised.
    """
    argv = list(args) if args is not None else sys.argv[1:]
    try:
        if argv and argv[0] in COMMANDS:
            # argparse, not LightningCLI: these commands train nothing and take no Trainer arguments.
            run_command(argv)
            return
        FlowCLI(
            FlowModule,
            DensityDataModule,
            subclass_mode_model=True,
            # LightningCLI reads sys.argv itself; `args` is for calls from Python (it warns otherwise)
            args=list(args) if args is not None else None,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"description": _DESCRIPTION, "epilog": _EPILOG},
        )
    except UnflowZooError as e:
        if os.environ.get("UNFLOW_ZOO_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"unflow-zoo: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
