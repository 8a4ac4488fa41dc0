"""``unflow-zoo`` (and ``lightning``): the LightningCLI entry point.

    unflow-zoo fit --config configs/quickstart.yaml
    unflow-zoo fit --model unflow_zoo.models.maf.MaskedAutoregressiveFlow --data.dataset moons
    unflow-zoo test --config configs/maf/moons.yaml --ckpt_path runs/.../last.ckpt
    unflow-zoo pretrained list | sample | evaluate | export ...   (see unflow_zoo/commands.py)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from unflow_zoo.commands import COMMANDS
from unflow_zoo.data import DensityDataModule
from unflow_zoo.models import FlowModule
from unflow_zoo.plots import DensityPlotCallback

__all__ = ["FlowCLI", "main"]


class FlowCLI(LightningCLI):
    """LightningCLI with the data module's ``event_shape`` linked to the model,
    a density figure at the end of fit, and a test run on the held-out split
    that prints where the checkpoint and the figure are."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.event_shape", "model.init_args.event_shape", apply_on="instantiate")
        parser.add_lightning_class_args(DensityPlotCallback, "plot")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="evaluate on the test split after fit")

    def after_fit(self) -> None:
        trainer, model, dm = self.trainer, self.model, self.datamodule
        results: list[dict[str, Any]] = []
        cfg = self.config.get(self.subcommand, self.config)
        if cfg.get("test_after_fit", True) and getattr(dm.hparams, "test_fraction", 0) > 0:
            results = trainer.test(model, datamodule=dm, verbose=False)
        # log_dir syncs across ranks under DDP: every rank must ask, or rank 0 waits forever
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        path = (ckpt.best_model_path or ckpt.last_model_path) if ckpt is not None else ""
        plot = next((c for c in trainer.callbacks if isinstance(c, DensityPlotCallback)), None)
        print(f"\nrun folder: {run_dir.resolve()}")
        if path:
            print(f"checkpoint: {Path(path).resolve()}")
        if plot is not None and plot.last_path is not None:
            print(f"figure:     {plot.last_path.resolve()}")
        for key, value in (results[0] if results else {}).items():
            if isinstance(value, float) and math.isfinite(value):
                print(f"{key:11s} {value:.4f}")


def main(args: list[str] | None = None) -> None:
    """``unflow-zoo``: the pretrained-flow commands (:mod:`unflow_zoo.commands`) or LightningCLI."""
    argv = list(args) if args is not None else sys.argv[1:]
    if argv and argv[0] in COMMANDS:
        # argparse, not LightningCLI: these commands train nothing and take no Trainer arguments.
        from unflow_zoo.commands import run_command

        run_command(argv)
        return
    FlowCLI(
        FlowModule,
        DensityDataModule,
        subclass_mode_model=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
