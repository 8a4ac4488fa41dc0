"""FFJORD: continuous normalizing flows (stacked ODE blocks) with RNODE regularisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose
from unflow_zoo.errors import ConfigError
from unflow_zoo.flows import validate as v
from unflow_zoo.flows.common import BaseSpec, conditioner_context, finish_flow, shape_of
from unflow_zoo.flows.registry import register_flow
from unflow_zoo.transforms.ode import ODENet, ODETransform

__all__ = ["ffjord"]


@register_flow("ffjord")
def ffjord(
    event_shape: Any,
    *,
    n_blocks: int = 1,
    hidden: Sequence[int] = (64, 64, 64),
    act: str = "tanh",
    gate_bias: float | None = 3.0,
    end_time: float = 1.0,
    train_end_time: bool = True,
    solver: str = "dopri5",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    train_solver: str | None = None,
    train_step_size: float | None = None,
    adjoint: bool = False,
    trace: str = "auto",
    exact_trace_max_dim: int = 8,
    noise: str = "gaussian",
    kinetic_weight: float = 0.0,
    jacobian_weight: float = 0.0,
    base: BaseSpec = "normal",
    context_features: int = 0,
    context_embedding: Sequence[int] | None = None,
) -> Flow:
    r"""FFJORD: ``n_blocks`` continuous normalizing flows :math:`dz/dt = f_k(z, t)` with
    concatsquash networks (see :class:`~unflow_zoo.models.ffjord.FFJORD`).

    The RNODE weights only decide here whether the blocks record the kinetic energy and the
    Jacobian's Frobenius norm during training; the penalty itself is the training loop's
    (:meth:`~unflow_zoo.models.ffjord.FFJORD.regularization`).

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        n_blocks: number of stacked ODE blocks.
        hidden: hidden widths of each ODE net.
        act: ``softplus``, ``tanh``, ``elu`` or ``silu``.
        gate_bias: initial bias of the concatsquash time gates (3: open gates; None: PyTorch's
            default init, the official code's, whose half-closed gates slow the start of training).
        end_time: initial :math:`T` of each block (the official code's 0.5 starts slower; see
            docs/benchmarks.md).
        train_end_time: learn :math:`T`.
        solver: adaptive torchdiffeq solver.
        atol: absolute tolerance of ``solver``.
        rtol: relative tolerance of ``solver``.
        train_solver: training solver (default ``solver``).
        train_step_size: step of a fixed-step ``train_solver``, in rescaled time, in (0, 1].
        adjoint: adjoint backpropagation.
        trace: ``auto``, ``exact`` or ``hutchinson``.
        exact_trace_max_dim: largest :math:`D` for the exact trace.
        noise: Hutchinson noise, ``gaussian`` or ``rademacher``.
        kinetic_weight: :math:`\lambda_K` (> 0: record the kinetic energy).
        jacobian_weight: :math:`\lambda_J` (> 0: record the Jacobian's Frobenius norm).
        base: base distribution, by name or as a module.
        context_features: width of the context of a conditional flow (0: unconditional).
        context_embedding: widths of an MLP embedding the context, the last its output (None: none).

    Returns:
        The flow.

    References:
        Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, "FFJORD: Free-form
        Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019,
        arXiv:1810.01367.
    """
    name = "ffjord"
    shape = shape_of(event_shape, owner=name)
    ctx = conditioner_context(context_features, context_embedding, owner=name)
    n_blocks = v.positive_int("n_blocks", n_blocks, owner=name)
    hidden = v.positive_ints("hidden", hidden, owner=name, allow_empty=False, fix="pass e.g. hidden=[64, 64, 64]")
    act = v.one_of("act", act, ("tanh", "softplus", "elu", "silu", "swish"), owner=name)
    end_time = v.positive_float("end_time", end_time, owner=name, fix="pass e.g. end_time=1.0")
    if gate_bias is not None:
        gate_bias = v.in_range("gate_bias", gate_bias, owner=name, fix="pass e.g. gate_bias=3.0, or null")
    atol = v.positive_float("atol", atol, owner=name, fix="pass a small tolerance, e.g. atol=1e-5")
    rtol = v.positive_float("rtol", rtol, owner=name, fix="pass a small tolerance, e.g. rtol=1e-5")
    step = train_step_size
    if step is not None:
        fix = "pass a step in rescaled time, e.g. train_step_size=0.25 (4 steps per block)"
        step = v.in_range("train_step_size", step, 0, 1, low_open=True, owner=name, fix=fix)
    trace = v.one_of("trace", trace, ("auto", "exact", "hutchinson"), owner=name)
    exact_max = v.non_negative_int("exact_trace_max_dim", exact_trace_max_dim, owner=name)
    noise = v.one_of("noise", noise, ("gaussian", "rademacher"), owner=name)
    rnode = "RNODE weights must be >= 0; 0 turns the penalty off"
    kinetic = v.non_negative_float("kinetic_weight", kinetic_weight, owner=name, fix=rnode)
    jacobian = v.non_negative_float("jacobian_weight", jacobian_weight, owner=name, fix=rnode)
    if len(shape) not in (1, 3):
        raise ConfigError(
            f"ffjord takes event_shape (D,) or (C, H, W), got {shape}; "
            "flatten the data to (D,) or give images a channel axis"
        )
    regularize = kinetic > 0 or jacobian > 0
    with v.config_errors(name):
        blocks = [
            ODETransform(
                ODENet(shape, hidden, act, context_features=ctx, gate_bias=gate_bias),
                features=math.prod(shape),
                end_time=end_time,
                train_end_time=train_end_time,
                solver=solver,
                atol=atol,
                rtol=rtol,
                train_solver=train_solver,
                train_step_size=step,
                adjoint=adjoint,
                trace=trace,
                exact_trace_max_dim=exact_max,
                noise=noise,
                regularize=regularize,
            )
            for _ in range(n_blocks)
        ]
        return finish_flow(Compose(blocks), base, shape, context_features, context_embedding)
