"""FlowModule: the LightningModule every flow family derives from."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from unflow_zoo.core.distributions import BaseDistribution, make_base
from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose, Permutation, Transform
from unflow_zoo.metrics import bits_per_dim, fit_gaussian

__all__ = ["FlowModule", "stack_with_permutations"]


def stack_with_permutations(
    make_layer: Callable[[int], Transform], n_layers: int, features: int, permutation: str = "reverse"
) -> Compose:
    """``n_layers`` transforms from ``make_layer(k)``, with the feature order reversed (or
    permuted at random, seeded by ``k``) between consecutive ones, so that every feature
    gets to condition on every other. No permutation for a single feature."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if permutation not in ("reverse", "random"):
        raise ValueError(f"unknown permutation {permutation!r}; choose 'reverse' or 'random'")
    layers: list[Transform] = []
    for k in range(n_layers):
        if k > 0 and features > 1:
            perm = Permutation.reverse(features) if permutation == "reverse" else Permutation.random(features, seed=k)
            layers.append(perm)
        layers.append(make_layer(k))
    return Compose(layers)


def _at_least_float32(t: Tensor) -> Tensor:
    """``t`` promoted to float32 if it is float16/bfloat16; float32 and float64 unchanged.

    A family whose log-density comes back in low precision under autocast would
    otherwise have its NLL averaged over the batch (and accumulated by the metrics)
    with 8 significant bits.
    """
    return t.float() if t.is_floating_point() and torch.finfo(t.dtype).bits < 32 else t


OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "cosine", "plateau", "step"]


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
        lr: learning rate.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        weight_decay: L2 penalty (decoupled for adamw).
        momentum: SGD momentum.
        scheduler: ``none``, ``cosine`` (per step, to the end of training),
            ``plateau`` (on the validation NLL) or ``step``.
        scheduler_step_size: epochs between decays for ``step``.
        scheduler_gamma: decay factor for ``step`` and ``plateau``.
        scheduler_patience: epochs without improvement for ``plateau``.
    """

    registry_name: str = "custom"

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
    ) -> None:
        super().__init__()
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"unknown optimizer {optimizer!r}; choose adam, adamw or sgd")
        if scheduler not in ("none", "cosine", "plateau", "step"):
            raise ValueError(f"unknown scheduler {scheduler!r}; choose none, cosine, plateau or step")
        if isinstance(event_shape, int):
            event_shape = (event_shape,)
        self.save_hyperparameters()
        self.hparams["event_shape"] = tuple(int(s) for s in event_shape)
        self.event_shape: tuple[int, ...] = self.hparams["event_shape"]
        self.flow: Flow = self.build_flow()
        for stage in ("val", "test"):
            setattr(self, f"{stage}_nll", MeanMetric())
            setattr(self, f"{stage}_bpd", MeanMetric())
            setattr(self, f"{stage}_kl", MeanMetric())
            setattr(self, f"{stage}_gaussian_nll", MeanMetric())
        # the ML Gaussian of the data module's training split, refitted at the start of every
        # evaluation epoch (O(N D^2), small next to evaluating a flow) so it never goes stale
        self._gaussian_baseline: torch.distributions.MultivariateNormal | None = None

    # ----- the hook a family writes -------------------------------------------------
    def build_flow(self) -> Flow:
        raise NotImplementedError(f"{type(self).__name__} must implement build_flow() -> Flow")

    def make_base(self) -> BaseDistribution:
        """The base distribution named by ``hparams.base`` over ``event_shape``."""
        return make_base(self.hparams.base, self.event_shape)

    def vector_features(self) -> int:
        """``D`` for a family that works on vectors; a clear error for image-shaped events."""
        if len(self.event_shape) != 1:
            raise ValueError(
                f"{self.registry_name} works on vectors, event_shape (D,); got {self.event_shape}. "
                "Flatten the data first"
            )
        return self.event_shape[0]

    def regularization(self) -> Tensor | float:
        """Extra training loss added to the NLL (RNODE penalties and the like)."""
        return 0.0

    # ----- density API ----------------------------------------------------------------
    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r""":math:`\log q(x)`, shape ``(B,)``, in float32 or wider (see the class docstring)."""
        return _at_least_float32(self.flow.log_prob(x, context))

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        return self.flow.sample(n, context)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    # ----- training -------------------------------------------------------------------
    def _batch_x(self, batch: Any) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected a batch of shape (B, {', '.join(map(str, self.event_shape))}) for "
                f"{type(self).__name__} with event_shape={self.event_shape}, got {tuple(x.shape)}; "
                "set model.event_shape to the data's shape (the CLI links it from the data module)"
            )
        return x

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        shape = getattr(dm, "event_shape", None)
        if shape is not None and tuple(shape) != self.event_shape:
            raise ValueError(
                f"the data module serves events of shape {tuple(shape)} but the model was built for "
                f"{self.event_shape}; set model.event_shape (or let the CLI link it)"
            )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._batch_x(batch)
        nll = -self.log_prob(x).mean()
        loss = nll + self.regularization()
        self.log("train_nll", nll, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _eval_step(self, stage: str, batch: Any) -> None:
        x = self._batch_x(batch)
        logp = self.log_prob(x)
        nll = -logp
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        getattr(self, f"{stage}_nll").update(nll)
        getattr(self, f"{stage}_bpd").update(bits_per_dim(self._nll_in_data_space(dm, x, nll), self.dim))
        self.log(f"{stage}_nll", getattr(self, f"{stage}_nll"), prog_bar=True)
        self.log(f"{stage}_bpd", getattr(self, f"{stage}_bpd"))
        true_log_prob = getattr(dm, "true_log_prob", None)
        if true_log_prob is not None:
            truth = true_log_prob(x)
            if truth is not None:
                # mean of log p(x) - log q(x) over data from p: an unbiased estimate of KL(p || q),
                # i.e. the model's NLL minus the true entropy on the same points.
                getattr(self, f"{stage}_kl").update(truth.to(logp.dtype) - logp)
                self.log(f"{stage}_kl", getattr(self, f"{stage}_kl"), prog_bar=stage == "val")
        baseline = self._gaussian_baseline
        if baseline is not None:
            nll_gauss = -baseline.log_prob(x.detach().to(baseline.loc.device, torch.float64))
            getattr(self, f"{stage}_gaussian_nll").update(nll_gauss.to(x.device, torch.float32))
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

    def on_validation_epoch_start(self) -> None:
        self._fit_gaussian_baseline()

    def on_test_epoch_start(self) -> None:
        self._fit_gaussian_baseline()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("test", batch)

    # ----- pretrained ----------------------------------------------------------------
    def save_pretrained(self, path: str, **kwargs: Any) -> Any:
        """Write this flow as a pretrained folder (or ``.zip``); see :mod:`unflow_zoo.pretrained`."""
        from unflow_zoo.pretrained import save_pretrained

        return save_pretrained(self, path, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> FlowModule:
        """Load a pretrained flow by registry name, path, URL or ``hf://`` repo; see
        :func:`unflow_zoo.pretrained.load_pretrained`. On a subclass, the loaded flow must be
        an instance of it."""
        from unflow_zoo.pretrained import load_pretrained

        model = load_pretrained(name_or_path, **kwargs)
        if not isinstance(model, cls):
            raise TypeError(f"{name_or_path!r} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

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
