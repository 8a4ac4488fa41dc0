"""FFJORD: continuous normalizing flows (stacked ODE blocks) with RNODE regularisation."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch import Tensor

from unflow_zoo.core.flow import Flow
from unflow_zoo.flows.ffjord import ffjord
from unflow_zoo.models.base import FlowModule
from unflow_zoo.models.registry import register_model
from unflow_zoo.transforms.ode import ODETransform

__all__ = ["FFJORD"]


@register_model("ffjord")
class FFJORD(FlowModule):
    r"""FFJORD: ``n_blocks`` continuous normalizing flows, each solving

    .. math:: \frac{dz}{dt} = f_k(z, t), \quad t \in [0, T_k], \qquad
              \log p(x) = \log p_Z(z_K) + \sum_{k=1}^K \int_0^{T_k}
              \operatorname{tr}\frac{\partial f_k}{\partial z}(z(t), t)\, dt,

    with :math:`f_k` a concatsquash network (:class:`~unflow_zoo.transforms.ode.ODENet`,
    :math:`h = (W x + b) \odot \sigma(W_t t + b_t) + W_b t` per layer) and the learnable
    end times :math:`T_k` initialised to ``end_time``. The trace is exact for
    :math:`D \le` ``exact_trace_max_dim`` (and always in evaluation there) and
    Hutchinson's :math:`\epsilon^\top J \epsilon` above, with ``noise`` drawn once per
    solve. Sampling solves the ODEs backwards, an inverse exact to the solver
    tolerance only.

    A conditional flow (``context_features > 0``) solves :math:`dz/dt = f_k(z, t, c)`: the
    context is concatenated to the input of every concatsquash layer (as constant feature
    maps for images) and held fixed along each solve; the trace is still that of
    :math:`\partial f_k / \partial z`.

    Training minimises the NLL plus the RNODE penalties, averaged over the batch,

    .. math:: \lambda_K \sum_k \int_0^{T_k} \|f_k\|^2 dt
              + \lambda_J \sum_k \int_0^{T_k} \|\partial f_k/\partial z\|_F^2 dt,

    which straighten the trajectories so that the solver needs fewer steps
    (:meth:`regularization`). Per training step it logs ``nfe_forward`` (function
    evaluations of all forward solves) and, with ``adjoint=True``, ``nfe_backward``
    (those of the adjoint solves), ``train_loss`` (NLL + penalties), ``train_kinetic_energy``
    and ``train_jacobian_frobenius`` when regularised; per epoch ``end_time_k``, the learnt
    :math:`T_k`.

    Args:
        event_shape: ``(D,)`` (concatsquash linear layers) or ``(C, H, W)`` (3x3 concatsquash
            convolutions; ``hidden`` are channel counts).
        n_blocks: number of stacked ODE blocks.
        hidden: hidden widths of each ODE net (official toy setting: ``[64, 64, 64]``).
        act: ``softplus``, ``tanh``, ``elu`` or ``silu``.
        gate_bias: initial bias :math:`b_t` of every concatsquash time gate. 3 opens the gates
            (:math:`\sigma(3) = 0.95`); ``None`` keeps PyTorch's default init, the official code's,
            whose gates start half closed, so that the initial dynamics are about :math:`2^{-L}`
            of an MLP's for :math:`L` layers and training starts slowly (docs/benchmarks.md:
            gap 9.2 vs 1.9 nats after 60 Adam steps on an 8-D mixture).
        end_time: initial :math:`T` of each block (1.0; the official code's 0.5 also starts slower).
        train_end_time: learn :math:`T`.
        solver: adaptive torchdiffeq solver (paper: dopri5).
        atol: absolute tolerance of ``solver`` (paper: 1e-5 on the toys, 1e-8 on tabular data).
        rtol: relative tolerance of ``solver`` (paper: 1e-5 on the toys, 1e-6 on tabular data).
        train_solver: training solver (default ``solver``), e.g. ``rk4`` with
            ``train_step_size=0.25``.
        train_step_size: step of a fixed-step ``train_solver`` (0.25: 4 steps per block, in
            rescaled time :math:`t/T`).
        adjoint: adjoint backpropagation (constant memory, one more solve per step).
        trace: ``auto``, ``exact`` or ``hutchinson`` (see :class:`~unflow_zoo.transforms.ode.ODETransform`).
        exact_trace_max_dim: largest :math:`D` for the exact trace.
        noise: Hutchinson noise, ``gaussian`` or ``rademacher``.
        kinetic_weight: :math:`\lambda_K`.
        jacobian_weight: :math:`\lambda_J`.
        **kwargs: :class:`~unflow_zoo.models.base.FlowModule` options (base, lr, optimizer, ...).

    References:
        Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, "FFJORD: Free-form
        Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019,
        arXiv:1810.01367.
        Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential
        Equations", NeurIPS 2018, arXiv:1806.07366.
        Finlay, Jacobsen, Nurbekyan & Oberman, "How to train your neural ODE: the
        world of Jacobian and kinetic regularization", ICML 2020, arXiv:2002.02798.
    """

    # a fixed-step training solver: an adaptive one takes seconds for a few steps
    small_hparams: ClassVar[dict[str, Any]] = {
        "hidden": [16, 16],
        "train_solver": "rk4",
        "train_step_size": 0.25,
    }
    # the solver's tolerance bounds the round trip and the log-det; one solve per Jacobian point
    check_options: ClassVar[dict[str, Any]] = {
        "inverse_atol": 1e-3,
        "logdet_atol": 1e-3,
        "check_grid": False,
        "max_jacobian_points": 3,
    }

    def __init__(
        self,
        event_shape: tuple[int, ...] = (2,),
        n_blocks: int = 1,
        hidden: list[int] = [64, 64, 64],  # noqa: B006  (jsonargparse needs a literal default)
        act: Literal["softplus", "tanh", "elu", "silu"] = "tanh",
        gate_bias: float | None = 3.0,
        end_time: float = 1.0,
        train_end_time: bool = True,
        solver: str = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        train_solver: str | None = None,
        train_step_size: float | None = None,
        adjoint: bool = False,
        trace: Literal["auto", "exact", "hutchinson"] = "auto",
        exact_trace_max_dim: int = 8,
        noise: Literal["gaussian", "rademacher"] = "gaussian",
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **kwargs)

    def build_flow(self) -> Flow:
        """The flow of :func:`unflow_zoo.flows.ffjord.ffjord`, the family's Lightning-free builder, from this
        module's hyper-parameters and hooks (see :meth:`~unflow_zoo.models.base.FlowModule.build_with`)."""
        return self.build_with(ffjord)

    def compile_unsupported(self) -> str | None:
        # measured (scripts/benchmarks/compile.py): the exact and Hutchinson traces call torch.autograd.grad
        # with create_graph=True inside the forward, a double backward AOTAutograd refuses in the training
        # step's backward pass (past any first-call fallback); torchdiffeq's adaptive solvers graph-break at
        # every accepted step and inductor cannot lower their torch.unique (an error after minutes)
        return (
            "FFJORD's ODE solve cannot be compiled: its trace estimator needs a double backward "
            "(unsupported by torch.compile) and torchdiffeq's adaptive step control is data-dependent"
        )

    # ----- diagnostics ----------------------------------------------------------------
    @property
    def blocks(self) -> list[ODETransform]:
        return [t for t in self.flow.transform.modules() if isinstance(t, ODETransform)]

    @property
    def nfe_forward(self) -> int:
        """Function evaluations of the last solve of every block, summed."""
        return sum(b.nfe_forward for b in self.blocks)

    @property
    def nfe_backward(self) -> int:
        """Function evaluations of the adjoint backward solves since the last forward (0 without adjoint)."""
        return sum(b.nfe_backward for b in self.blocks)

    def _energies(self) -> tuple[Tensor, Tensor] | None:
        blocks = self.blocks
        if any(b.kinetic_energy is None for b in blocks):
            return None
        ke = sum(b.kinetic_energy.mean() for b in blocks)  # type: ignore[union-attr]
        jf = sum(b.jacobian_frobenius.mean() for b in blocks)  # type: ignore[union-attr]
        return ke, jf  # type: ignore[return-value]

    def regularization(self) -> Tensor | float:
        r""":math:`\lambda_K E_K + \lambda_J E_J` of the last training forward pass (batch means,
        summed over blocks); 0 when both weights are 0 or no training pass has run since.
        Logs the two energies when called in a training step."""
        hp = self.hparams
        energies = self._energies()
        if energies is None or (hp.kinetic_weight == 0 and hp.jacobian_weight == 0):
            return 0.0
        ke, jf = energies
        # consumed: the energies hold the graph of the step, which must not outlive it
        for b in self.blocks:
            b.kinetic_energy = b.jacobian_frobenius = None
        if self._trainer is not None and self.trainer.training:
            self.log("train_kinetic_energy", ke.detach())
            self.log("train_jacobian_frobenius", jf.detach())
        return hp.kinetic_weight * ke + hp.jacobian_weight * jf

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("nfe_forward", float(self.nfe_forward), prog_bar=True)
        self.log("train_loss", loss.detach())
        return loss

    def on_after_backward(self) -> None:
        if self.hparams.adjoint:
            self.log("nfe_backward", float(self.nfe_backward))

    def end_times(self) -> list[float]:
        """The current end time :math:`T_k` of each block."""
        return [float(b.end_time.detach()) for b in self.blocks]

    def on_train_epoch_end(self) -> None:
        for k, value in enumerate(self.end_times()):
            self.log(f"end_time_{k}", value)
