"""Figures through every configured logger: TensorBoard, CSV, W&B and MLflow (the last two as stand-ins)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure

from unflow_zoo.loggers import figure_file_name, figure_to_rgb, log_figure
from unflow_zoo.plots import new_figure

PNG = b"\x89PNG"


def _figure() -> Figure:
    fig, axes = new_figure((2, 1.5))
    axes[0, 0].plot([0, 1], [1, 0])
    return fig


def _trainer(*loggers) -> SimpleNamespace:
    return SimpleNamespace(loggers=list(loggers))


class FakeWandb(WandbLogger):
    """A WandbLogger without wandb: records what ``log_image`` was given."""

    def __init__(self) -> None:  # no super().__init__: that imports wandb
        self.images: list[tuple[str, list, int | None]] = []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))


class _MlflowClient:
    def __init__(self) -> None:
        self.figures: list[tuple[str, Figure, str]] = []

    def log_figure(self, run_id, figure, artifact_file, *, save_kwargs=None):
        self.figures.append((run_id, figure, artifact_file))


class FakeMlflow(MLFlowLogger):
    """An MLFlowLogger without mlflow: its ``experiment`` is a recording stand-in for ``MlflowClient``."""

    def __init__(self) -> None:  # no super().__init__: that imports mlflow
        self._client = _MlflowClient()

    @property
    def experiment(self):
        return self._client

    @property
    def run_id(self):
        return "run-1"


class _Writer:
    """Duck type of a SummaryWriter (tensorboardX's, say)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add_figure(self, tag, figure, global_step=None, close=True):
        self.calls.append((tag, figure, global_step, close))


class _MinimalLogger(Logger):
    """A logger with metrics only, and an experiment that takes no figures."""

    def __init__(self, experiment=None) -> None:
        super().__init__()
        self._experiment = experiment if experiment is not None else object()

    name = "minimal"
    version = 0

    @property
    def experiment(self):
        return self._experiment

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_csv_logger_gets_a_png_in_its_log_dir(tmp_path):
    logger = CSVLogger(tmp_path)
    where = log_figure(_trainer(logger), "density", _figure(), step=7)
    out = tmp_path / "lightning_logs" / "version_0" / "figures" / "density-step7.png"
    assert where == [str(out)]
    assert out.read_bytes()[:4] == PNG


def test_tensorboard_logger_gets_an_image_event(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    fig = _figure()
    assert log_figure(_trainer(logger), "density", fig, step=3) == ["TensorBoard tag 'density'"]
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "density" in events.Tags()["images"]
    (image,) = events.Images("density")
    assert image.step == 3 and image.encoded_image_string[:4] == PNG
    width, height = fig.canvas.get_width_height()
    assert (image.width, image.height) == (width, height)


def test_wandb_logger_gets_an_rgb_array():
    logger = FakeWandb()
    fig = _figure()
    assert log_figure(_trainer(logger), "density", fig, step=5) == ["W&B key 'density'"]
    ((key, images, step),) = logger.images
    assert key == "density" and step == 5
    (image,) = images
    width, height = fig.canvas.get_width_height()
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert (image < 250).any()  # something was drawn, not a blank canvas


def test_mlflow_logger_gets_an_artifact_on_its_run():
    logger = FakeMlflow()
    fig = _figure()
    assert log_figure(_trainer(logger), "density", fig, step=9) == ["MLflow artifact figures/density-step9.png"]
    assert logger.experiment.figures == [("run-1", fig, "figures/density-step9.png")]


def test_every_logger_gets_the_figure(tmp_path):
    loggers = [TensorBoardLogger(tmp_path), CSVLogger(tmp_path), FakeWandb(), FakeMlflow()]
    where = log_figure(_trainer(*loggers), "density", _figure(), step=1)
    assert len(where) == 4
    assert where[0].startswith("TensorBoard") and where[1].endswith("density-step1.png")
    assert where[2].startswith("W&B") and where[3].startswith("MLflow")


def test_an_experiment_with_add_figure_counts_as_tensorboard():
    writer = _Writer()
    fig = _figure()
    log_figure(_trainer(_MinimalLogger(writer)), "d", fig, step=2)
    # the figure is not closed: the next logger still draws it
    assert writer.calls == [("d", fig, 2, False)]


def test_loggers_without_figures_and_no_logger_are_skipped():
    assert log_figure(_trainer(_MinimalLogger()), "density", _figure()) == []
    assert log_figure(_trainer(), "density", _figure()) == []
    assert log_figure(SimpleNamespace(), "density", _figure()) == []


def test_a_failing_logger_warns_and_the_others_still_get_it(tmp_path):
    class Broken(FakeWandb):
        def log_image(self, key, images, step=None, **kwargs):
            raise ConnectionError("tracking server unreachable")

    csv = CSVLogger(tmp_path)
    with pytest.warns(UserWarning, match="Broken did not take the figure 'density'.*unreachable"):
        where = log_figure(_trainer(Broken(), csv), "density", _figure(), step=4)
    assert where == [str(tmp_path / "lightning_logs" / "version_0" / "figures" / "density-step4.png")]


def test_figure_file_names():
    assert figure_file_name("density", 12) == "density-step12.png"
    assert figure_file_name("density") == "density.png"
    assert figure_file_name("val/density", 1) == "val_density-step1.png"
    assert figure_file_name("../..", 1) == "figure-step1.png"  # never a path out of the folder


def test_figure_to_rgb_needs_no_canvas_of_its_own():
    fig = Figure(figsize=(1, 1), dpi=50)  # no canvas attached by hand
    fig.add_subplot().plot([0, 1])
    image = figure_to_rgb(fig)
    assert image.shape == (50, 50, 3) and image.dtype == np.uint8
