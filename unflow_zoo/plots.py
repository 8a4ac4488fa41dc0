"""Figures of a trained flow: data vs samples, and the learned density.

Never imports a family: works on any LightningModule with ``sample(n)`` and
``log_prob(x)`` (every FlowModule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from unflow_zoo.loggers import log_figure

__all__ = ["DensityPlotCallback", "new_figure", "pick_contexts", "plot_conditional_density", "plot_density"]


def new_figure(figsize: tuple[float, float], ncols: int = 1, nrows: int = 1) -> tuple[Figure, Any]:
    """``(figure, axes)``: a figure on its own Agg canvas and a ``(nrows, ncols)`` array of axes.

    matplotlib's object API, not pyplot: no global backend is set (importing the package must
    not change a notebook's backend), nothing is registered with pyplot's figure manager (so
    nothing needs closing), and ``savefig`` works headless.
    """
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _grid_axes(data: Tensor, points: int, pad: float = 0.15) -> list[Tensor]:
    lo, hi = data.min(dim=0).values, data.max(dim=0).values
    span = (hi - lo).clamp_min(1e-6)
    return [torch.linspace(float(a - pad * s), float(b + pad * s), points) for a, b, s in zip(lo, hi, span)]


@torch.no_grad()
def plot_density(
    model: Any,
    data: Tensor,
    n_samples: int = 2000,
    points: int = 200,
    true_log_prob: Any = None,
    title: str | None = None,
) -> Figure:
    """Figure for a flow over 1-D or 2-D data (higher D: the first two coordinates).

    1-D: histogram of the data with the model density (and the true one if
    given) on top, and a histogram of samples. 2-D: scatter of the data,
    scatter of samples and a heat map of the learned density. ``model`` needs
    ``sample(n)`` and ``log_prob(x)``.
    """
    data = data.detach().float().cpu().reshape(data.shape[0], -1)
    d = data.shape[1]
    samples = model.sample(n_samples).detach().float().cpu().reshape(n_samples, -1)
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    if d == 1:
        fig, grid_axes = new_figure((10, 4), ncols=2)
        axes = grid_axes[0]
        (x,) = _grid_axes(data, 4 * points)
        dens = model.log_prob(x[:, None].to(device, dtype)).float().exp().cpu()
        axes[0].hist(data[:, 0].numpy(), bins=100, density=True, alpha=0.4, label="data")
        axes[0].plot(x.numpy(), dens.numpy(), "C1", label="model")
        if true_log_prob is not None:
            truth = true_log_prob(x[:, None].double())
            if truth is not None:
                axes[0].plot(x.numpy(), truth.exp().numpy(), "k--", lw=1, label="truth")
        axes[0].set_title("data and learned density")
        axes[0].legend()
        axes[1].hist(samples[:, 0].numpy(), bins=100, density=True, color="C1", alpha=0.6)
        axes[1].set_title("samples")
    else:
        fig, grid_axes = new_figure((15, 4.6), ncols=3)
        axes = grid_axes[0]
        lims = _grid_axes(data[:, :2], points)
        axes[0].scatter(data[:, 0], data[:, 1], s=1, alpha=0.3)
        axes[0].set_title("data")
        axes[1].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3, color="C1")
        axes[1].set_title("samples")
        for ax in axes[:2]:
            ax.set_xlim(float(lims[0][0]), float(lims[0][-1]))
            ax.set_ylim(float(lims[1][0]), float(lims[1][-1]))
        if d == 2:
            gx, gy = torch.meshgrid(lims[0], lims[1], indexing="xy")
            grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
            logp = torch.cat([model.log_prob(c.to(device, dtype)).float().cpu() for c in grid.split(8192)])
            axes[2].pcolormesh(gx.numpy(), gy.numpy(), logp.exp().reshape(gx.shape).numpy(), shading="auto")
            axes[2].set_title("learned density")
        else:
            axes[2].hist2d(samples[:, 0].numpy(), samples[:, 1].numpy(), bins=100)
            axes[2].set_title(f"samples, first 2 of {d} dims")
        for ax in axes:
            ax.set_aspect("equal", adjustable="box")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def pick_contexts(context: Tensor, k: int = 4) -> Tensor:
    """Up to ``k`` representative rows of a context set ``(N, C)``: each distinct one-hot label
    (the first ``k`` classes present), else the rows at the 10%..90% quantiles of the first column."""
    context = context.detach().cpu()
    one_hot = bool(((context == 0) | (context == 1)).all()) and bool((context.sum(1) == 1).all())
    if one_hot:
        classes = torch.unique(context.argmax(1))[:k]
        return torch.eye(context.shape[1], dtype=context.dtype)[classes]
    order = torch.argsort(context[:, 0])
    at = torch.linspace(0.1, 0.9, k) * (len(order) - 1)
    return context[order[at.round().long()]]


def _near(context: Tensor, c: Tensor, share: float = 0.1) -> Tensor:
    """Indices of the rows of ``context`` equal to ``c``, or its nearest ``share`` of rows."""
    dist = (context - c).norm(dim=1)
    exact = torch.nonzero(dist == 0).flatten()
    if len(exact) >= 20:
        return exact
    return torch.argsort(dist)[: max(20, int(share * len(context)))]


@torch.no_grad()
def plot_conditional_density(
    model: Any,
    data: Tensor,
    context: Tensor,
    contexts: Tensor | None = None,
    n_samples: int = 1000,
    points: int = 150,
    title: str | None = None,
) -> Figure:
    """One row per context :math:`c` of a conditional flow over 1-D or 2-D data: the data whose
    context is ``c`` (or nearest to it), samples of :math:`p(x \\mid c)` and the learned density.

    Args:
        model: anything with ``sample(n, context)`` and ``log_prob(x, context)`` (every FlowModule).
        data: points ``(N, D)``.
        context: their contexts ``(N, C)``.
        contexts: the contexts to draw, ``(K, C)``; default :func:`pick_contexts` of ``context``.
        n_samples: samples per context.
        points: grid points per axis of the density.
        title: the figure's title.

    Returns:
        The figure (``K`` rows, 3 columns for 2-D data, 2 for 1-D).
    """
    data = data.detach().float().cpu().reshape(data.shape[0], -1)
    context = context.detach().float().cpu()
    contexts = pick_contexts(context) if contexts is None else contexts.detach().float().cpu()
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    d = data.shape[1]
    ncols = 2 if d == 1 else 3
    fig, axes = new_figure((4.6 * ncols, 3.8 * len(contexts)), ncols=ncols, nrows=len(contexts))
    lims = _grid_axes(data[:, : min(d, 2)], points if d > 1 else 4 * points)
    for row, c in zip(axes, contexts):
        label = "c = " + ", ".join(f"{float(v):.2g}" for v in c[:4]) + (" ..." if len(c) > 4 else "")
        here = data[_near(context, c)]
        c_dev = c.to(device, dtype)
        samples = model.sample(n_samples, c_dev).detach().float().cpu().reshape(n_samples, -1)
        if d == 1:
            (x,) = lims
            dens = model.log_prob(x[:, None].to(device, dtype), c_dev).float().exp().cpu()
            row[0].hist(here[:, 0].numpy(), bins=60, density=True, alpha=0.4, label="data")
            row[0].plot(x.numpy(), dens.numpy(), "C1", label="model")
            row[0].legend()
            row[0].set_title(f"data and p(x | c), {label}")
            row[1].hist(samples[:, 0].numpy(), bins=60, density=True, color="C1", alpha=0.6)
            row[1].set_title("samples")
            continue
        row[0].scatter(here[:, 0], here[:, 1], s=2, alpha=0.4)
        row[0].set_title(f"data, {label}")
        row[1].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="C1")
        row[1].set_title("samples of p(x | c)")
        if d == 2:
            gx, gy = torch.meshgrid(lims[0], lims[1], indexing="xy")
            grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
            logp = torch.cat([model.log_prob(g.to(device, dtype), c_dev).float().cpu() for g in grid.split(8192)])
            row[2].pcolormesh(gx.numpy(), gy.numpy(), logp.exp().reshape(gx.shape).numpy(), shading="auto")
            row[2].set_title("learned p(x | c)")
        else:
            row[2].hist2d(samples[:, 0].numpy(), samples[:, 1].numpy(), bins=60)
            row[2].set_title(f"samples, first 2 of {d} dims")
        for ax in row:
            ax.set_xlim(float(lims[0][0]), float(lims[0][-1]))
            ax.set_ylim(float(lims[1][0]), float(lims[1][-1]))
            ax.set_aspect("equal", adjustable="box")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class DensityPlotCallback(L.Callback):
    """At the end of fit, save ``density.png`` (data vs samples and the learned
    density) to the run folder and hand it to every logger of the trainer that takes
    figures (:func:`unflow_zoo.loggers.log_figure`: TensorBoard's Images tab, a PNG in
    the CSV logger's folder, a W&B image, an MLflow artifact).

    Samples and draws on global rank 0 only (every rank reaches ``on_fit_end`` with
    the same weights, so one figure is enough); the run folder is resolved on all
    ranks first, since ``trainer.log_dir`` is a collective under DDP. Image-shaped
    data (3 or more dims per event) is skipped.

    Args:
        enabled: turn the figure off.
        n_samples: samples drawn for the figure.
        points: grid points per axis of the density heat map.
        filename: file name inside the run folder.
        name: the figure's name in the loggers (TensorBoard tag, W&B key, stem of the logged PNG).

    Attributes:
        last_path: the figure's file in the run folder, once drawn.
        logged_to: where the loggers filed it (tags, keys, paths), once drawn.
    """

    def __init__(
        self,
        enabled: bool = True,
        n_samples: int = 2000,
        points: int = 200,
        filename: str = "density.png",
        name: str = "density",
    ) -> None:
        self.enabled, self.n_samples, self.points, self.filename, self.name = enabled, n_samples, points, filename, name
        self.last_path: Path | None = None
        self.logged_to: list[str] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        # trainer.log_dir broadcasts rank 0's folder to all ranks, a collective: asked on rank 0
        # alone it waits forever for the others (or fails when they exit), so every rank asks.
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        data = context = None
        for split in ("test", "val", "train"):
            data, context = getattr(dm, f"{split}_data", None), getattr(dm, f"{split}_context", None)
            if data is not None and len(data) > 0:
                break
        if data is None or data.ndim != 2 or data.shape[1] < 1:
            return
        keep = max(self.n_samples, 5000)
        data = data[:keep]
        title = f"{type(pl_module).__name__} on {getattr(dm, 'hparams', {}).get('dataset', 'data')}"
        was_training = pl_module.training
        pl_module.eval()
        try:
            if context is not None:
                # a conditional flow: p(x | c) for a few contexts of the data, one row each
                fig = plot_conditional_density(
                    pl_module, data, context[:keep], n_samples=self.n_samples, points=self.points, title=title
                )
            else:
                fig = plot_density(
                    pl_module,
                    data,
                    n_samples=self.n_samples,
                    points=self.points,
                    true_log_prob=getattr(dm, "true_log_prob", None),
                    title=title,
                )
        finally:
            pl_module.train(was_training)
        out = run_dir / self.filename
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        self.last_path = out
        self.logged_to = log_figure(trainer, self.name, fig, step=trainer.global_step)
