"""``unflow-zoo`` and ``lightning``: the LightningCLI entry points.

    unflow-zoo fit --config configs/quickstart.yaml
    unflow-zoo fit --model unflow_zoo.models.maf.MaskedAutoregressiveFlow --data.dataset moons
    unflow-zoo test --config configs/maf/moons.yaml --ckpt_path runs/.../last.ckpt
    unflow-zoo pretrained list | sample | evaluate | export ...   (see unflow_zoo/commands.py)
    lightning fit --config configs/quickstart.yaml               (the same fit)

``unflow-zoo`` (:func:`main`) runs every command of the package. ``lightning``
(:func:`lightning_main`) runs only LightningCLI's ``fit``, ``validate`` and ``test`` and hands
every other command (``lightning login``, ``lightning studio ...``) to lightning-sdk, which
installs a ``lightning`` script of its own: whichever package was installed last owns the
script, so ours keeps the SDK's commands working.
"""

from __future__ import annotations

import difflib
import math
import os
import pickle
import re
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from unflow_zoo.callbacks import BestCheckpoint, LastFiniteCheckpoint, RunCheckpoint
from unflow_zoo.commands import COMMANDS, run_command
from unflow_zoo.data import DensityDataModule
from unflow_zoo.errors import ConfigError, MissingDependencyError, UnflowZooError, UnsafeFileError
from unflow_zoo.models import FlowModule
from unflow_zoo.models.registry import registered_class
from unflow_zoo.plots import DensityPlotCallback
from unflow_zoo.pretrained.convert import read_checkpoint, refused_pickle

__all__ = ["FlowCLI", "lightning_main", "lightning_sdk_entry_point", "main"]


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


def _exit_on_error(prog: str, run: Callable[[], Any]) -> Any:
    """``run()``, with an :class:`~unflow_zoo.errors.UnflowZooError` printed as ``{prog}: error: ...``
    and exit status 1 (the traceback only with ``UNFLOW_ZOO_TRACEBACK=1``)."""
    try:
        return run()
    except UnflowZooError as e:
        if os.environ.get("UNFLOW_ZOO_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _flow_cli(args: list[str] | None, epilog: str) -> None:
    FlowCLI(
        FlowModule,
        DensityDataModule,
        subclass_mode_model=True,
        # LightningCLI reads sys.argv itself; `args` is for calls from Python (it warns otherwise)
        args=list(args) if args is not None else None,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"description": _DESCRIPTION, "epilog": epilog},
    )


def main(args: list[str] | None = None) -> None:
    """``unflow-zoo``: the pretrained-flow commands (:mod:`unflow_zoo.commands`) or LightningCLI.

    An :class:`~unflow_zoo.errors.UnflowZooError` (a user's mistake or a bad file, with a message
    that names the fix) is printed without a traceback and exits with status 1; set
    ``UNFLOW_ZOO_TRACEBACK=1`` to see where it was raised.

    Args:
        args: the command line without the program name; ``None`` reads ``sys.argv``.

    Raises:
        SystemExit: status 1 after an ``UnflowZooError``; LightningCLI's own status after ``--help``
            or a bad argument.
    """
    argv = list(args) if args is not None else sys.argv[1:]

    def run() -> None:
        if argv and argv[0] in COMMANDS:
            # argparse, not LightningCLI: these commands train nothing and take no Trainer arguments.
            run_command(argv)
        else:
            _flow_cli(args, _EPILOG)

    _exit_on_error("unflow-zoo", run)


#: The subcommands the ``lightning`` script runs itself: LightningCLI's (``fit``, ``validate``, ``test``).
LIGHTNING_SUBCOMMANDS: tuple[str, ...] = tuple(FlowCLI.subcommands())

#: The console scripts lightning-sdk installs (both run its CLI), in the order they are preferred.
_SDK_SCRIPTS = ("lightning", "lightning-sdk")

_LIGHTNING_EPILOG = (
    f"this `lightning` script is unflow-zoo's: it runs {', '.join(LIGHTNING_SUBCOMMANDS)}, and hands every other "
    "command (login, studio, job, ...) to lightning-sdk when that is installed. The package's other commands "
    "(pretrained, sample, evaluate, export, study) are `unflow-zoo`'s"
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lightning_sdk_entry_point() -> metadata.EntryPoint | None:
    """lightning-sdk's own ``lightning`` command, found in the installed packages' metadata.

    lightning-sdk (preinstalled on Lightning Studios) declares the console scripts ``lightning`` and
    ``lightning-sdk``; pip writes only one ``lightning`` file, so when unflow-zoo was installed after
    it, its command is reachable only through this entry point. Entry points of this package are never
    returned, so the dispatch cannot loop.

    Returns:
        The entry point (``lightning`` preferred over ``lightning-sdk``), or ``None`` when lightning-sdk
        is not installed.
    """
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group="console_scripts"):
        top = ep.module.split(".")[0]
        if ep.name not in _SDK_SCRIPTS or top == "unflow_zoo":
            continue
        dist = getattr(ep, "dist", None)
        # an entry point without its distribution (built by hand) is judged by the module it names
        if _canonical(getattr(dist, "name", None) or top) == "lightning-sdk":
            found.setdefault(ep.name, ep)
    return next((found[name] for name in _SDK_SCRIPTS if name in found), None)


def _not_ours(command: str) -> UnflowZooError:
    """The error for ``lightning COMMAND`` when lightning-sdk is not installed."""
    if command in COMMANDS:
        return ConfigError(
            f"`lightning {command}` is not a command of the `lightning` script, which runs only "
            f"{', '.join(LIGHTNING_SUBCOMMANDS)}; run `unflow-zoo {command} ...` instead"
        )
    close = difflib.get_close_matches(command, LIGHTNING_SUBCOMMANDS, n=1)
    hint = f" (did you mean `lightning {close[0]}`?)" if close else ""
    return MissingDependencyError(
        f"`lightning {command}` is not an unflow-zoo command{hint}: `lightning` runs "
        f"{', '.join(LIGHTNING_SUBCOMMANDS)} here and hands every other command to lightning-sdk "
        "(Lightning AI's CLI: login, studio, job, ...), which is not installed. Install it with "
        "`pip install lightning-sdk`, or use `unflow-zoo` for this package's commands (`unflow-zoo --help`)"
    )


def _run_sdk(ep: metadata.EntryPoint, argv: list[str]) -> Any:
    """lightning-sdk's command run on ``argv``, as if its own ``lightning`` script had been called."""
    cli = ep.load()
    old = sys.argv
    sys.argv = [old[0] if old and old[0] else "lightning", *argv]
    try:
        return cli()
    finally:
        sys.argv = old


def lightning_main(args: list[str] | None = None) -> Any:
    """``lightning``: ``fit``, ``validate`` and ``test`` through unflow-zoo's LightningCLI; every other
    command through lightning-sdk's own ``lightning`` (:func:`lightning_sdk_entry_point`).

    ``lightning fit --config configs/quickstart.yaml`` is ``unflow-zoo fit --config ...``. ``lightning
    login`` (or ``lightning`` alone, or ``lightning --help``) runs lightning-sdk's CLI when that is
    installed. Without lightning-sdk, ``lightning`` alone or with options only shows this package's
    LightningCLI, and any other command is an error that says how to get it.

    Args:
        args: the command line without the program name; ``None`` reads ``sys.argv``.

    Returns:
        What lightning-sdk's command returned, for a command handed to it; ``None`` otherwise.

    Raises:
        SystemExit: status 1 for a command that needs lightning-sdk when it is not installed (or after
            any other ``UnflowZooError``); the command's own status otherwise.
    """
    argv = list(args) if args is not None else sys.argv[1:]
    first = argv[0] if argv else None
    if first in LIGHTNING_SUBCOMMANDS:
        return _exit_on_error("lightning", lambda: _flow_cli(args, _LIGHTNING_EPILOG))
    sdk = lightning_sdk_entry_point()
    if sdk is not None:
        return _run_sdk(sdk, argv)
    if first is None or first.startswith("-"):
        return _exit_on_error("lightning", lambda: _flow_cli(args, _LIGHTNING_EPILOG))

    def refuse() -> None:
        raise _not_ours(first)

    return _exit_on_error("lightning", refuse)


if __name__ == "__main__":
    main()
