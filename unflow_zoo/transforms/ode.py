r"""Continuous normalizing flows: an ODE solved with torchdiffeq (FFJORD).

The transform integrates the augmented ODE

.. math:: \frac{d}{dt}\begin{bmatrix} z \\ \ell \end{bmatrix}
          = \begin{bmatrix} f(z, t) \\ \operatorname{tr}\,\partial f / \partial z \end{bmatrix},
          \qquad z(0) = x,\ \ell(0) = 0,

from :math:`t = 0` to a (learnable) end time :math:`T`; then :math:`z(T)` is the
noise and :math:`\ell(T) = \log|\det \partial z(T) / \partial x|` (instantaneous
change of variables, Chen et al. 2018). The trace is exact (one backward pass
per dimension) in low dimension and Hutchinson's unbiased estimate
:math:`\epsilon^\top (\partial f/\partial z)\,\epsilon` above it (Grathwohl et al. 2019).

A conditional flow :math:`p(x \mid c)` feeds the context to the dynamics, :math:`f(z, t, c)`
(:class:`ODENet` with ``context_features``): it is constant along a solve, so the trace,
and so the log-determinant, is still taken with respect to :math:`z` alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint
from torchdiffeq._impl.odeint import SOLVERS  # the installed version's own table of method names

from unflow_zoo.core.transform import Transform, check_context
from unflow_zoo.errors import DataError, InputOutsideDomain, InverseError
from unflow_zoo.transforms.bisection import raise_inverse_error, residual_tolerance

__all__ = ["ConcatSquashConv2d", "ConcatSquashLinear", "ODENet", "ODETransform", "ode_activation"]

TraceName = Literal["auto", "exact", "hutchinson"]
NoiseName = Literal["gaussian", "rademacher"]

# Fixed-grid solvers take a step size; the others adapt it to atol/rtol.
FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")

#: ``check_inverse`` accepts ``|forward(x) - y| <= sqrt(eps) (1 + |y|) + INVERSE_CHECK_FACTOR (atol + rtol |y|)``:
#: the global error of two adaptive solves (backwards, then forwards) is a modest multiple of their local tolerance.
INVERSE_CHECK_FACTOR = 100.0

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def ode_activation(name: str) -> nn.Module:
    """A smooth activation for an ODE net (``softplus``, ``tanh``, ``elu``, ``silu``/``swish``).

    ReLU is left out on purpose: the dynamics must be smooth for adaptive solvers to
    take large steps and for the trace of the Jacobian to be continuous in ``z``.
    """
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown ODE activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


def _open_gate(gate: nn.Linear, bias: float | None) -> None:
    if bias is not None:
        if not math.isfinite(bias):
            raise ValueError(f"gate_bias must be a finite number or None, got {bias}")
        with torch.no_grad():
            gate.bias.fill_(float(bias))


class ConcatSquashLinear(nn.Module):
    r"""A linear layer modulated by time:

    .. math:: h(x, t) = (W x + b) \odot \sigma(W_t t + b_t) + W_b t .

    With ``context_features = C > 0`` the context is concatenated to the input,
    :math:`W [x, c] + b` (the layer's weight then has ``in_features + C`` columns).

    ``gate_bias`` sets :math:`b_t` at initialisation (``None``: PyTorch's default
    :math:`U(-1, 1)`, the official code's). With the default the gates start at about 0.5 on
    average, so a stack of :math:`L` gated layers starts with dynamics shrunk by about
    :math:`2^{-L}` and the first hundred training steps are spent growing them; an open gate
    (:math:`b_t = 3`, :math:`\sigma = 0.95`) starts from the plain MLP's scale, as zuko's CNF
    does (measured in docs/benchmarks.md, FFJORD).

    Args:
        in_features: width of :math:`x`.
        out_features: width of :math:`h`.
        context_features: width :math:`C` of the context (0: none).
        gate_bias: initial :math:`b_t` of every gate unit (None: PyTorch's default init).

    References:
        Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, "FFJORD: Free-form
        Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019,
        arXiv:1810.01367 (``ConcatSquashLinear`` in the official code).
    """

    def __init__(
        self, in_features: int, out_features: int, context_features: int = 0, gate_bias: float | None = None
    ) -> None:
        super().__init__()
        self.context_features = int(context_features)
        self.layer = nn.Linear(in_features + self.context_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.time_bias = nn.Linear(1, out_features, bias=False)
        _open_gate(self.gate, gate_bias)

    def forward(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        tt = t.reshape(1, 1).to(x.dtype)
        if context is not None:
            x = torch.cat([x, context.to(x.dtype)], dim=1)
        return self.layer(x) * torch.sigmoid(self.gate(tt)) + self.time_bias(tt)


class ConcatSquashConv2d(nn.Module):
    r"""The convolutional :class:`ConcatSquashLinear`, gate and bias per channel:

    .. math:: h(x, t) = (W * x + b) \odot \sigma(W_t t + b_t) + W_b t .

    With ``context_features = C > 0`` a ``(B, C)`` context is broadcast to ``C`` constant
    feature maps and concatenated to the input channels.

    Args:
        in_channels: channels of :math:`x`.
        out_channels: channels of :math:`h`.
        kernel_size: odd size of the convolution.
        context_features: width :math:`C` of the context (0: none).
        gate_bias: initial :math:`b_t` of every gate unit (None: PyTorch's default init; see
            :class:`ConcatSquashLinear`).

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, arXiv:1810.01367.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        context_features: int = 0,
        gate_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.context_features = int(context_features)
        self.layer = nn.Conv2d(in_channels + self.context_features, out_channels, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Linear(1, out_channels)
        self.time_bias = nn.Linear(1, out_channels, bias=False)
        _open_gate(self.gate, gate_bias)

    def forward(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        tt = t.reshape(1, 1).to(x.dtype)
        if context is not None:
            maps = context.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
            x = torch.cat([x, maps], dim=1)
        gate = torch.sigmoid(self.gate(tt)).reshape(1, -1, 1, 1)
        return self.layer(x) * gate + self.time_bias(tt).reshape(1, -1, 1, 1)


class ODENet(nn.Module):
    r"""Time-dependent dynamics :math:`f(z, t)` (:math:`f(z, t, c)` with a context): concatsquash
    layers with a smooth activation.

    ``event_shape`` ``(D,)`` gives :class:`ConcatSquashLinear` layers
    ``D -> hidden[0] -> ... -> D``; ``(C, H, W)`` gives 3x3 :class:`ConcatSquashConv2d`
    layers with ``hidden`` channels. No activation after the last layer. With
    ``context_features > 0`` every layer sees the context concatenated to its input
    (as constant feature maps for images); ``forward(t, z, context)``.

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        hidden: hidden widths (channels for images).
        act: a smooth activation (:func:`ode_activation`).
        context_features: width of the context (0: unconditional dynamics).
        gate_bias: initial bias of every layer's time gate (None: PyTorch's default init; see
            :class:`ConcatSquashLinear`).

    References:
        Grathwohl et al., "FFJORD", ICLR 2019, arXiv:1810.01367 (``ODEnet``).
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        hidden: Sequence[int] = (64, 64, 64),
        act: str = "softplus",
        context_features: int = 0,
        gate_bias: float | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0 (0: unconditional), got {context_features}")
        self.context_features = ctx = int(context_features)
        if len(self.event_shape) == 1:
            sizes = [self.event_shape[0], *hidden, self.event_shape[0]]
            layers: list[nn.Module] = [ConcatSquashLinear(a, b, ctx, gate_bias) for a, b in itertools.pairwise(sizes)]
        elif len(self.event_shape) == 3:
            sizes = [self.event_shape[0], *hidden, self.event_shape[0]]
            layers = [
                ConcatSquashConv2d(a, b, context_features=ctx, gate_bias=gate_bias)
                for a, b in itertools.pairwise(sizes)
            ]
        else:
            raise ValueError(f"ODENet takes event_shape (D,) or (C, H, W), got {self.event_shape}")
        self.layers = nn.ModuleList(layers)
        self.acts = nn.ModuleList(ode_activation(act) for _ in layers[:-1])

    def forward(self, t: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h, context)
            if i < len(self.acts):
                h = self.acts[i](h)
        return h


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class _Dynamics:
    """The augmented right-hand side in rescaled time :math:`s = t / T \\in [0, 1]`.

    A plain callable handed to torchdiffeq (the parameters live on the transform, and the
    adjoint gets them as ``adjoint_params``); it counts its own evaluations.
    """

    def __init__(
        self,
        owner: ODETransform,
        exact: bool,
        noise: Tensor | None,
        regularize: bool,
        context: Tensor | None = None,
        context_in_state: bool = False,
    ) -> None:
        self.owner = owner
        self.exact = exact
        self.noise = noise
        self.regularize = regularize
        # the context: held here, or (adjoint) the last ODE state with zero derivative, so that the
        # adjoint solve returns its gradient (a tensor captured by the closure would get none)
        self.context = context
        self.context_in_state = context_in_state
        self.nfe = 0

    def __call__(self, s: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        owner = self.owner
        z = state[0]
        context = state[-1] if self.context_in_state else self.context
        # Outside autograd (evaluation, or the adjoint's forward pass) the trace still needs
        # one backward pass through f, but not a graph of it.
        build_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            end = owner.end_time  # inside, so the adjoint sees T's parameter in its graph
            t = s.to(z.dtype) * end
            f = owner.net(t, z) if context is None else owner.net(t, z, context)
            if f.shape != z.shape:
                raise ValueError(f"the ODE net must return the shape of z, {tuple(z.shape)}; got {tuple(f.shape)}")
            trace, frob = self._divergence(f, z, build_graph)
            # d/ds = T d/dt: every integrand is scaled by T so that the integral over s in [0, 1]
            # equals the physical one over t in [0, T].
            out = [end * f, end * trace]
            if self.regularize:
                out += [end * f.flatten(1).pow(2).sum(1), end * frob]
            if self.context_in_state:
                out.append(torch.zeros_like(state[-1]))
        if not build_graph:
            out = [o.detach() for o in out]
        return tuple(out)

    def _divergence(self, f: Tensor, z: Tensor, build_graph: bool) -> tuple[Tensor, Tensor | None]:
        """``(tr J, ||J||_F^2)`` with ``J = df/dz``: exact, or Hutchinson with the fixed noise."""
        batch = z.shape[0]
        if self.exact:
            ff, d = f.reshape(batch, -1), z[0].numel()
            trace = z.new_zeros(batch)
            frob = z.new_zeros(batch) if self.regularize else None
            for i in range(d):
                (row,) = torch.autograd.grad(
                    ff[:, i].sum(), z, create_graph=build_graph, retain_graph=True, allow_unused=True
                )
                if row is None:  # f does not depend on z
                    continue
                row = row.reshape(batch, -1)
                trace = trace + row[:, i]
                if frob is not None:
                    frob = frob + row.pow(2).sum(1)
            return trace, frob
        e = self.noise
        assert e is not None
        (vjp,) = torch.autograd.grad((f * e).sum(), z, create_graph=build_graph, allow_unused=True)
        if vjp is None:
            zeros = z.new_zeros(batch)
            return zeros, zeros if self.regularize else None
        trace = (vjp * e).flatten(1).sum(1)
        frob = vjp.flatten(1).pow(2).sum(1) if self.regularize else None
        return trace, frob


class ODETransform(Transform):
    r"""A continuous normalizing flow block: solve :math:`dz/dt = f(z, t)` from 0 to :math:`T`.

    Forward (data -> noise) integrates, from :math:`z(0) = x`,

    .. math:: \frac{dz}{dt} = f(z, t), \qquad
              \frac{d}{dt}\log\left|\det\frac{\partial z(t)}{\partial x}\right|
              = \operatorname{tr}\frac{\partial f}{\partial z}(z(t), t),

    so ``forward`` returns :math:`z(T)` and :math:`\log|\det \partial z(T)/\partial x|
    = \int_0^T \operatorname{tr}\,\partial f/\partial z\, dt` (i.e. :math:`\log p(x) =
    \log p_Z(z(T)) + \int_0^T \operatorname{tr}\,\partial f/\partial z\,dt`, FFJORD's
    :math:`d\log p/dt = -\operatorname{tr}\,\partial f/\partial z` read backwards).
    ``inverse`` solves the same ODE from :math:`T` back to 0. A conditional block
    (``context_features > 0``) solves :math:`dz/dt = f(z, t, c)` with the ``(B, C)`` context
    held fixed along the solve; the trace stays that of :math:`\partial f/\partial z`. **The inverse is
    numerical**: ``inverse(forward(x))`` recovers ``x`` only to the solver's tolerance
    (about ``atol + rtol |x|`` per unit time with an adaptive solver; the tests use
    float64 and ``atol = rtol = 1e-9`` and check the round trip to ``1e-7``).

    The end time is :math:`T = \mathrm{softplus}(\theta_T)`, initialised to
    ``end_time`` (0.5, the official code's ``--time_length``) and learnt when
    ``train_end_time``. The solve runs in rescaled time :math:`s = t/T \in [0, 1]`
    with dynamics :math:`T f(z, sT)`, the same ODE, so that :math:`T` gets its gradient
    through the dynamics with every solver (fixed-grid ones included).

    Trace of the Jacobian:

    - exact: :math:`\sum_i \partial f_i / \partial z_i`, one backward pass per
      dimension (``D`` passes per function evaluation);
    - Hutchinson: :math:`\epsilon^\top (\partial f/\partial z)\,\epsilon` with one
      vector-Jacobian product, unbiased when :math:`E[\epsilon\epsilon^\top] = I`
      (``noise="gaussian"`` or ``"rademacher"``); :math:`\epsilon` is drawn once per
      solve and held fixed during it, so the solver sees a smooth ODE.

    ``trace="auto"`` uses the exact trace when :math:`D \le` ``exact_trace_max_dim``
    and Hutchinson above; ``"hutchinson"`` uses it in training, but evaluation
    (``eval()`` mode) still uses the exact trace where :math:`D \le`
    ``exact_trace_max_dim``, so reported likelihoods are exact; ``"exact"`` always
    uses it. :attr:`last_trace_estimator` says which estimator the last solve used.

    RNODE regularisers (Finlay et al. 2020): with ``regularize=True``, a forward
    solve in training mode also integrates

    .. math:: E_K = \int_0^T \|f(z(t), t)\|^2\, dt, \qquad
              E_J = \int_0^T \|\partial f / \partial z\|_F^2\, dt

    as extra ODE states (:math:`\|J\|_F^2` exactly from the trace's rows with the
    exact trace, else Hutchinson's :math:`\|\epsilon^\top J\|^2`), per sample, in
    :attr:`kinetic_energy` and :attr:`jacobian_frobenius`.

    Solvers: ``solver`` with ``atol``/``rtol`` (adaptive) in evaluation; in training
    ``train_solver`` (default: ``solver``) with ``train_step_size`` for fixed-grid
    solvers (``rk4``, ...), a step in rescaled time (``0.25`` = 4 steps over
    :math:`[0, T]`). :attr:`nfe_forward` counts the function evaluations of the last
    solve and :attr:`nfe_backward` those of the adjoint's backward solve since then.

    The ODE states and the log-determinant are kept in float32 (float64 inputs stay
    float64) and autocast is disabled inside the solve: the trace is a difference of
    large numbers, and adaptive step control needs the precision.

    **Checking the inverse** (opt-in, ``check_inverse=True``): the backward solve has no
    residual of its own, and checking it costs a forward solve of :math:`z` alone (no
    trace, but still about half the inverse's own time in 2-D), so it is off by default.
    When on, :meth:`inverse` integrates its result forwards again and raises
    :class:`~unflow_zoo.errors.InverseError` where
    :math:`|f(x) - y| > \sqrt{\varepsilon}(1 + |y|) + 100\,(\text{atol} + \text{rtol}\,|y|)`
    (:data:`INVERSE_CHECK_FACTOR`; :math:`\varepsilon` of the solve's dtype, float32 under
    autocast), e.g. for a target far outside the range the flow was trained on, where
    the dynamics are stiff. Without it, a solver failure still raises:
    a NaN or inf input raises :class:`~unflow_zoo.errors.InputOutsideDomain`, and a
    step size that underflows (torchdiffeq's ``AssertionError``) raises
    :class:`~unflow_zoo.errors.InverseError` from :meth:`inverse` and
    :class:`~unflow_zoo.errors.DataError` from :meth:`forward`. An empty batch returns
    empty outputs without solving.

    Args:
        net: the dynamics, ``net(t, z) -> dz/dt`` with ``t`` a 0-d tensor (e.g. :class:`ODENet`).
        features: :math:`D`, the number of numbers in one event (for the trace choice).
        end_time: initial :math:`T`.
        train_end_time: learn :math:`T`.
        solver: torchdiffeq method.
        atol: absolute tolerance of ``solver``.
        rtol: relative tolerance of ``solver``.
        train_solver: the solver for training (fixed-grid or adaptive; default ``solver``).
        train_step_size: step of a fixed-grid ``train_solver``, in rescaled time.
        adjoint: use ``odeint_adjoint`` (memory O(1) in the number of steps).
        trace: the trace estimator, ``auto``, ``exact`` or ``hutchinson`` (see above).
        exact_trace_max_dim: largest :math:`D` for the exact trace (see above).
        noise: Hutchinson noise, ``gaussian`` or ``rademacher``.
        regularize: integrate the RNODE energies during training forward solves.
        check_inverse: verify every inverse by a forward solve (see above).
        context_features: width :math:`C` of the context that ``net`` takes as
            ``net(t, z, context)`` (0: unconditional, a context is refused; ``None``: the
            net's ``context_features`` attribute, 0 if it has none).

    References:
        Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential
        Equations", NeurIPS 2018, arXiv:1806.07366.
        Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, "FFJORD: Free-form
        Continuous Dynamics for Scalable Reversible Generative Models", ICLR 2019,
        arXiv:1810.01367.
        Finlay, Jacobsen, Nurbekyan & Oberman, "How to train your neural ODE: the
        world of Jacobian and kinetic regularization", ICML 2020, arXiv:2002.02798.
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for
        Laplacian smoothing splines", 1989.
    """

    def __init__(
        self,
        net: nn.Module,
        features: int,
        end_time: float = 0.5,
        train_end_time: bool = True,
        solver: str = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        train_solver: str | None = None,
        train_step_size: float | None = None,
        adjoint: bool = False,
        trace: TraceName = "auto",
        exact_trace_max_dim: int = 8,
        noise: NoiseName = "gaussian",
        regularize: bool = False,
        check_inverse: bool = False,
        context_features: int | None = None,
    ) -> None:
        super().__init__()
        if context_features is None:
            context_features = int(getattr(net, "context_features", 0))
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0 (0: unconditional), got {context_features}")
        self.context_features = int(context_features)
        for name, value in (("solver", solver), ("train_solver", train_solver)):
            if value is not None and (value not in SOLVERS or value == "scipy_solver"):
                valid = sorted(k for k in SOLVERS if k != "scipy_solver")
                raise ValueError(f"unknown {name} {value!r}; choose one of {valid}")
        if solver in FIXED_STEP_SOLVERS:
            raise ValueError(
                f"solver={solver!r} is a fixed-step method; the evaluation solver must be adaptive "
                "(dopri5, ...). Use train_solver for a fixed-step training solve"
            )
        if train_solver in FIXED_STEP_SOLVERS and train_step_size is None:
            raise ValueError(f"train_solver={train_solver!r} takes a fixed step: set train_step_size (e.g. 0.25)")
        if train_step_size is not None and not 0 < train_step_size <= 1:
            raise ValueError(f"train_step_size is a step in rescaled time s in [0, 1]; got {train_step_size}")
        if not end_time > 0:
            raise ValueError(f"end_time must be > 0, got {end_time}")
        if not (atol > 0 and rtol > 0):
            raise ValueError(f"atol and rtol must be > 0, got {atol}, {rtol}")
        if trace not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"unknown trace {trace!r}; choose 'auto', 'exact' or 'hutchinson'")
        if noise not in ("gaussian", "rademacher"):
            raise ValueError(f"unknown noise {noise!r}; choose 'gaussian' or 'rademacher'")
        if features < 1 or exact_trace_max_dim < 0:
            raise ValueError(f"need features >= 1 and exact_trace_max_dim >= 0, got {features}, {exact_trace_max_dim}")
        self.net = net
        self.features = int(features)
        raw = torch.tensor(_inverse_softplus(float(end_time)))
        if train_end_time:
            self.raw_end_time = nn.Parameter(raw)
        else:
            self.register_buffer("raw_end_time", raw)
        self.solver, self.atol, self.rtol = solver, float(atol), float(rtol)
        self.train_solver = train_solver or solver
        self.train_step_size = train_step_size
        self.adjoint = adjoint
        self.trace, self.exact_trace_max_dim, self.noise = trace, int(exact_trace_max_dim), noise
        self.regularize = regularize
        self.check_inverse = bool(check_inverse)
        # what the last solve did (diagnostics; not part of the state dict)
        self.last_trace_estimator: str | None = None
        self.kinetic_energy: Tensor | None = None
        self.jacobian_frobenius: Tensor | None = None
        self._last_dynamics: _Dynamics | None = None
        self._nfe_forward = 0

    @property
    def end_time(self) -> Tensor:
        """:math:`T = \\mathrm{softplus}(\\theta_T)`."""
        return F.softplus(self.raw_end_time)

    @property
    def nfe_forward(self) -> int:
        """Function evaluations of the last solve (forward or inverse)."""
        return self._nfe_forward

    @property
    def nfe_backward(self) -> int:
        """Function evaluations of the adjoint's backward solve after the last solve (0 without adjoint:
        plain backpropagation through the solver makes no new evaluations)."""
        dyn = self._last_dynamics
        return 0 if dyn is None else dyn.nfe - self._nfe_forward

    def uses_exact_trace(self) -> bool:
        """Whether the next solve uses the exact trace (depends on ``trace``, ``D`` and train/eval mode)."""
        low_dim = self.features <= self.exact_trace_max_dim
        if self.trace == "exact":
            return True
        if self.trace == "hutchinson":
            return low_dim and not self.training
        return low_dim

    def _noise(self, z: Tensor) -> Tensor:
        if self.noise == "gaussian":
            return torch.randn_like(z)
        return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1

    def _solve(self, x: Tensor, context: Tensor | None, reverse: bool, trace: bool = True) -> tuple[Tensor, Tensor]:
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.features:
            raise ValueError(
                f"ODETransform over {self.features} features expected a batch (B, ...) with {self.features} "
                f"numbers per event, got shape {tuple(x.shape)}"
            )
        check_context(context, x.shape[0], self.context_features, type(self).__name__)
        # float32 at least, whatever autocast or a bf16 input would make of it
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        if x.shape[0] == 0:  # nothing to integrate (an adaptive solver's error norm of no numbers is NaN)
            return x.to(dtype).clone(), x.new_zeros(0, dtype=dtype)
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            k = tuple(int(i) for i in (~finite).nonzero()[0])
            raise InputOutsideDomain(
                f"ODETransform.{'inverse' if reverse else 'forward'} got {int((~finite).sum())} non-finite "
                f"value(s), e.g. {float(x[k])} at index {list(k)}: the ODE is defined on finite points only"
            )
        # Lightning evaluates under inference mode, where no autograd runs at all; the trace needs
        # a backward pass through f, so step out of it (without building a graph: grad stays off)
        # and work on a normal copy of the inference-mode input.
        inference = torch.is_inference_mode_enabled()
        # read before leaving inference mode: inference_mode(False) switches grad mode back on
        grad = torch.is_grad_enabled() and not inference
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            if context is not None:
                context = context.to(dtype).clone() if inference else context.to(dtype)
            try:
                z0 = x.to(dtype).clone() if inference else x.to(dtype)
                if not trace:
                    return self._solve_state(z0, reverse, context), z0.new_zeros(0)
                return self._solve_fp(z0, reverse, context)
            except AssertionError as err:  # torchdiffeq: "underflow in dt ..."
                if "underflow" not in str(err):
                    raise
                raise self._solver_failure(reverse, err) from err

    def _solver_failure(self, reverse: bool, err: AssertionError) -> DataError | InverseError:
        what = "inverse (the ODE solved backwards)" if reverse else "forward"
        msg = (
            f"ODETransform.{what}: the {self.solver if not self.training else self.train_solver} solver's step "
            f"size underflowed ({err}): the dynamics are too stiff or blow up along these points, which "
            "usually lie far outside the range the flow was trained on; check the input, loosen atol/rtol "
            "or run in float64"
        )
        return InverseError(msg) if reverse else DataError(msg)

    def _solve_state(self, z0: Tensor, reverse: bool, context: Tensor | None) -> Tensor:
        """Integrate :math:`z` alone (no trace, no penalties), counting evaluations as :meth:`_solve_fp` does."""
        nfe = [0]

        def field(s: Tensor, z: Tensor) -> Tensor:
            nfe[0] += 1
            end = self.end_time
            t = s.to(z.dtype) * end
            return end * (self.net(t, z) if context is None else self.net(t, z, context))

        with torch.autocast(device_type=z0.device.type, enabled=False):
            s = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=z0.dtype, device=z0.device)
            method = self.train_solver if self.training else self.solver
            options = {"step_size": self.train_step_size} if method in FIXED_STEP_SOLVERS else None
            z = odeint(field, z0, s, rtol=self.rtol, atol=self.atol, method=method, options=options)[-1]
        self._nfe_forward = nfe[0]
        return z

    def _solve_fp(self, z0: Tensor, reverse: bool, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type=z0.device.type, enabled=False):
            exact = self.uses_exact_trace()
            regularize = self.regularize and self.training and not reverse
            in_state = self.adjoint and context is not None
            held = None if in_state else context
            dyn = _Dynamics(self, exact, None if exact else self._noise(z0), regularize, held, in_state)
            state: tuple[Tensor, ...] = (z0, z0.new_zeros(z0.shape[0]))
            if regularize:
                state += (z0.new_zeros(z0.shape[0]), z0.new_zeros(z0.shape[0]))
            if in_state:
                assert context is not None
                state += (context,)
            s = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=z0.dtype, device=z0.device)
            method = self.train_solver if self.training else self.solver
            options = {"step_size": self.train_step_size} if method in FIXED_STEP_SOLVERS else None
            kw = {"rtol": self.rtol, "atol": self.atol, "method": method, "options": options}
            if self.adjoint:
                params = tuple(p for p in self.parameters() if p.requires_grad)
                sol = odeint_adjoint(dyn, state, s, adjoint_params=params, **kw)
            else:
                sol = odeint(dyn, state, s, **kw)
            final = [v[-1] for v in sol]
        # the module keeps the dynamics (for nfe_backward); not the context, which may carry a graph
        dyn.context = None
        self._nfe_forward = dyn.nfe
        self._last_dynamics = dyn
        self.last_trace_estimator = "exact" if exact else "hutchinson"
        if regularize:
            self.kinetic_energy, self.jacobian_frobenius = final[2], final[3]
        return final[0], final[1]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(x, context, reverse=False)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ladj = self._solve(y, context, reverse=True)
        if self.check_inverse and x.shape[0] > 0:
            self._check_inverse(x, y, context)
        return x, ladj

    def invert(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """The backward solve of :math:`z` alone: sampling needs no log-determinant, and the trace (one
        vector-Jacobian product per evaluation, ``D`` of them when exact) is most of an evaluation's cost.
        Differentiable through the solver (not the adjoint: with ``adjoint=True`` and gradients on, the
        full :meth:`inverse` runs)."""
        if self.adjoint and torch.is_grad_enabled():
            return self.inverse(y, context)[0]
        x = self._solve(y, context, reverse=True, trace=False)[0]
        if self.check_inverse and x.shape[0] > 0:
            self._check_inverse(x, y, context)
        return x

    def _check_inverse(self, x: Tensor, y: Tensor, context: Tensor | None = None) -> None:
        """Integrate ``x`` forwards (``z`` only, no trace, no graph) and raise InverseError where it misses ``y``."""
        # inference_mode(False) first: entering it turns grad mode back on, no_grad then turns it off
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            z0 = x.detach().clone()
            end = self.end_time.detach().to(z0.dtype)
            c = context.detach().clone().to(z0.dtype) if context is not None else None

            def field(s: Tensor, z: Tensor) -> Tensor:
                t = s.to(z.dtype) * end
                return end * (self.net(t, z) if c is None else self.net(t, z, c))

            s = torch.tensor([0.0, 1.0], dtype=z0.dtype, device=z0.device)
            method = self.train_solver if self.training else self.solver
            options = {"step_size": self.train_step_size} if method in FIXED_STEP_SOLVERS else None
            try:
                z = odeint(field, z0, s, rtol=self.rtol, atol=self.atol, method=method, options=options)[-1]
            except AssertionError as err:
                if "underflow" not in str(err):
                    raise
                raise self._solver_failure(True, err) from err
        target = y.detach().to(z.dtype)
        tol = residual_tolerance(target, dtype=z.dtype) + INVERSE_CHECK_FACTOR * (self.atol + self.rtol * target.abs())
        raise_inverse_error(
            (z - target).abs(),
            target,
            tol,
            owner="ODETransform",
            fix=(
                "The backward ODE solve did not land on a preimage: the point probably lies far outside the "
                "range the flow was trained on, where the dynamics are stiff; tighten atol/rtol, or run in float64."
            ),
        )

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, solver={self.solver}, atol={self.atol:g}, rtol={self.rtol:g}, "
            f"train_solver={self.train_solver}, trace={self.trace}, noise={self.noise}, adjoint={self.adjoint}"
            + (f", context_features={self.context_features}" if self.context_features else "")
        )
