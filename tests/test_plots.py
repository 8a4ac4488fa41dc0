"""Figures: drawn with matplotlib's object API, never changing the user's backend."""

from __future__ import annotations

import subprocess
import sys

import torch

from unflow_zoo import create_model
from unflow_zoo.plots import new_figure, plot_density


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
