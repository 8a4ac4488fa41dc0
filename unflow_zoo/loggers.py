"""Figures through whatever loggers a Trainer has.

Lightning's loggers share ``log_metrics`` and ``log_hyperparams`` but no way to log an image: each
takes a figure its own way. :func:`log_figure` hands one matplotlib figure to every logger in
``trainer.loggers``:

- ``TensorBoardLogger``: ``experiment.add_figure(name, fig, global_step=step)`` (the Images tab);
- ``CSVLogger``: a PNG file, ``<log_dir>/figures/<name>-step<step>.png``;
- ``WandbLogger``: ``log_image(key=name, images=[rgb array], step=step)``;
- ``MLFlowLogger``: ``experiment.log_figure(run_id, fig, "figures/<name>-step<step>.png")``;
- any other logger: nothing (the figure is in the run folder all the same).

A logger whose experiment has ``add_figure`` (tensorboardX's ``SummaryWriter``, a TensorBoard
logger of another Lightning package) is treated as TensorBoard. W&B and MLflow are optional: their
loggers are matched by class, so neither package is imported here.

Imports nothing from the package: it knows loggers and figures, not flows.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["figure_file_name", "figure_to_rgb", "log_figure"]


def figure_file_name(name: str, step: int | None = None) -> str:
    """The file a figure is written to: ``<name>-step<step>.png``, or ``<name>.png`` without a step.

    Args:
        name: the figure's name (its TensorBoard tag); characters other than letters, digits, ``.``,
            ``-`` and ``_`` become ``_``, so a tag such as ``val/density`` stays one file.
        step: the global step the figure belongs to.

    Returns:
        The file name, without a folder.
    """
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._") or "figure"
    return f"{stem}-step{step}.png" if step is not None else f"{stem}.png"


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """The figure drawn on an Agg canvas, as an ``(H, W, 3)`` ``uint8`` array (no pyplot involved).

    Args:
        fig: a matplotlib figure.

    Returns:
        The rendered pixels, height first.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _to_tensorboard(logger: Any, name: str, fig: Figure, step: int | None) -> str:
    # close=False: the figure still goes to the other loggers, and closing means pyplot
    logger.experiment.add_figure(name, fig, global_step=step, close=False)
    return f"TensorBoard tag {name!r}"


def _to_csv(logger: Any, name: str, fig: Figure, step: int | None) -> str:
    out = Path(logger.log_dir) / "figures" / figure_file_name(name, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return str(out)


def _to_wandb(logger: Any, name: str, fig: Figure, step: int | None) -> str:
    # an array, not the figure: wandb.Image converts figures through pyplot
    logger.log_image(key=name, images=[figure_to_rgb(fig)], step=step)
    return f"W&B key {name!r}"


def _to_mlflow(logger: Any, name: str, fig: Figure, step: int | None) -> str:
    artifact = f"figures/{figure_file_name(name, step)}"
    logger.experiment.log_figure(logger.run_id, fig, artifact)
    return f"MLflow artifact {artifact}"


def _sink(logger: Logger) -> Any:
    """The function that gives ``logger`` a figure, or None for a logger that takes none."""
    if isinstance(logger, WandbLogger):
        return _to_wandb
    if isinstance(logger, MLFlowLogger):
        return _to_mlflow
    if isinstance(logger, CSVLogger):
        return _to_csv
    if isinstance(logger, TensorBoardLogger) or hasattr(getattr(logger, "experiment", None), "add_figure"):
        return _to_tensorboard
    return None


def log_figure(trainer: Any, name: str, fig: Figure, step: int | None = None) -> list[str]:
    """Give ``fig`` to every logger of ``trainer`` that takes figures (see the module's table).

    Call it on global rank 0 only, the way Lightning's loggers log. A logger that fails (a network
    error of a tracking server, a full disk) does not end the run: it is skipped with a
    ``UserWarning`` that names it, and the others still get the figure.

    Args:
        trainer: a ``lightning.Trainer`` (anything with a ``loggers`` list).
        name: the figure's name: a TensorBoard tag, a W&B key, the stem of the PNG file.
        fig: the figure; it is not closed.
        step: the global step to file it under; ``None`` leaves the step out.

    Returns:
        Where the figure went, one line per logger that took it (a tag, a key or a file path).
    """
    where = []
    for logger in getattr(trainer, "loggers", None) or []:
        sink = _sink(logger)
        if sink is None:
            continue
        try:
            where.append(sink(logger, name, fig, step))
        except Exception as e:  # noqa: BLE001 - the figure is an extra: a failing logger must not end the run
            warnings.warn(
                f"{type(logger).__name__} did not take the figure {name!r}: {type(e).__name__}: {e}",
                UserWarning,
                stacklevel=2,
            )
    return where
