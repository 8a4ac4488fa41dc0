"""Figures: drawn with matplotlib's object API, never changing the user's backend."""

from __future__ import annotations

import subprocess
import sys

import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unflow_zoo import DensityDataModule, create_model
from unflow_zoo.plots import DensityPlotCallback, new_figure, plot_density


def test_importing_the_package_leaves_the_matplotlib_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg'); "
        "import unflow_zoo, unflow_zoo.cli, unflow_zoo.plots, unflow_zoo.ood, unflow_zoo.studies.report; "
        "print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_figures_save_headless_without_pyplot(tmp_path):
    fig, axes = new_figure((3, 2), ncols=2)
    assert axes.shape == (1, 2)
    axes[0, 0].plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    model = create_model("maf", event_shape=(2,), n_layers=1, hidden=[4])
    fig = plot_density(model, torch.randn(50, 2), n_samples=50, points=10)
    fig.savefig(tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_density_figure_goes_to_every_logger(tmp_path, trainer_factory):
    tb, csv = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    plot = DensityPlotCallback(n_samples=100, points=10)
    trainer = trainer_factory(max_epochs=1, limit_train_batches=2, logger=[tb, csv], callbacks=[plot])
    trainer.fit(
        create_model("maf", event_shape=(2,), n_layers=1, hidden=[4]), DensityDataModule("moons", n_samples=300)
    )
    step = trainer.global_step
    # the run folder is the first logger's; the CSV logger gets its own copy, named by step
    assert plot.last_path == tmp_path / "tb" / "version_0" / "density.png"
    png = tmp_path / "csv" / "version_0" / "figures" / f"density-step{step}.png"
    assert plot.logged_to == ["TensorBoard tag 'density'", str(png)]
    assert png.read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(tb.log_dir)
    events.Reload()
    assert [image.step for image in events.Images("density")] == [step]


def test_density_figure_without_a_logger(tmp_path, trainer_factory):
    plot = DensityPlotCallback(n_samples=100, points=10)
    trainer = trainer_factory(max_epochs=1, limit_train_batches=2, default_root_dir=str(tmp_path), callbacks=[plot])
    trainer.fit(
        create_model("maf", event_shape=(2,), n_layers=1, hidden=[4]), DensityDataModule("moons", n_samples=300)
    )
    assert plot.last_path == tmp_path / "density.png" and plot.last_path.is_file()
    assert plot.logged_to == []


def _conditional_flow(features: int, context: int):
    from unflow_zoo.core import Flow, StandardNormal
    from unflow_zoo.core.transform import Compose
    from unflow_zoo.transforms import MaskedAffineAutoregressive

    torch.manual_seed(0)
    flow = Flow(
        Compose(MaskedAffineAutoregressive(features, hidden=[8], context_features=context)), StandardNormal(features)
    )
    flow.set_context(context)
    return flow


def test_pick_contexts_takes_labels_or_quantiles():
    from unflow_zoo.plots import pick_contexts

    labels = torch.eye(4)[torch.tensor([2, 0, 2, 3, 0])]
    assert torch.equal(pick_contexts(labels), torch.eye(4)[[0, 2, 3]])
    scalar = torch.linspace(-1, 1, 101).unsqueeze(1)
    picked = pick_contexts(scalar, k=3)
    torch.testing.assert_close(picked[:, 0], torch.tensor([-0.8, 0.0, 0.8]))


def test_conditional_density_figure_has_a_row_per_context(tmp_path):
    from unflow_zoo.plots import plot_conditional_density

    for d in (1, 2):
        flow = _conditional_flow(d, 4)
        data, ctx = torch.randn(400, d), torch.eye(4)[torch.randint(0, 4, (400,))]
        fig = plot_conditional_density(flow, data, ctx, n_samples=100, points=20, title="t")
        rows = len({ax.get_subplotspec().rowspan.start for ax in fig.axes if ax.get_subplotspec() is not None})
        assert rows == 4
        assert all("c = " in fig.axes[k * (2 if d == 1 else 3)].get_title() for k in range(4))
        fig.savefig(tmp_path / f"c{d}.png")
        assert (tmp_path / f"c{d}.png").stat().st_size > 0
