"""Conformance kit for transforms and flows, public so users test their own.

>>> from unflow_zoo.testing import check_transform
>>> check_transform(MyCoupling(features=2), torch.randn(16, 2))

:func:`check_transform` asserts, in float64 on a copy of the transform:

1. ``forward`` and ``inverse`` return the documented shapes and finite values;
2. ``inverse(forward(x)) == x`` (to ``inverse_atol``);
3. the forward and inverse log-determinants cancel;
4. the forward log-determinant equals ``log|det J|`` of the autograd Jacobian;
5. for events with at most two numbers, ``exp(log_prob)`` of
   ``Flow(transform, base)`` integrates to 1 on a grid (to ``grid_tol``).

A conditional transform is checked with a ``context`` batch, one row per point: the
round trip and the log-determinants at each point's own context, the Jacobian with
respect to ``x`` with the context held fixed, and the normalisation of
:math:`p(x \\mid c)` for each of the first ``grid_contexts`` context rows.

Small members of every family, for tests::

    from unflow_zoo.testing import check_model, small_flow, small_model

    model = small_model("nsf", context_features=3)        # a seeded FlowModule, 2-D events
    check_model(model, torch.randn(8, 2), torch.randn(8, 3))
    flow = small_flow("nsf", context_features=3)          # the same weights, no Lightning
    small_model("glow", event_shape=(2, 4, 4), lr=1e-2)   # an image event; a training option

Each registered family declares its test sizes where it is defined, as the class attribute
:attr:`~unflow_zoo.models.base.FlowModule.small_hparams` of its
:class:`~unflow_zoo.models.base.FlowModule` subclass (flow hyper-parameters only: a 2-D
instance, and an image one where the family takes images, builds and trains a few steps in
well under a second), and the :func:`check_transform` options its small instance needs as
:attr:`~unflow_zoo.models.base.FlowModule.check_options` (a numerical inverse's tolerance, no
grid for tails too wide for one). :func:`small_hparams` returns the first with overrides,
:func:`small_model` and :func:`small_flow` build from it, :func:`check_model` applies the second.
A family of your own registered with :func:`~unflow_zoo.models.register_model` declares them
the same way and gets the same helpers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from unflow_zoo.core.distributions import BaseDistribution, StandardNormal
from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Transform
from unflow_zoo.errors import ConfigError, DataError
from unflow_zoo.flows import build
from unflow_zoo.models import FlowModule, get_model_class

__all__ = [
    "TransformReport",
    "check_model",
    "check_normalization",
    "check_transform",
    "randomize_parameters_",
    "small_flow",
    "small_hparams",
    "small_model",
]


def randomize_parameters_(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add seeded Gaussian noise of scale ``std`` to every parameter, in place.

    Freshly built flows often start at the identity (zero-initialised last
    layers), where every check passes trivially; perturbing the parameters
    makes the checks test the general case.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
    return module


@dataclass
class TransformReport:
    """What :func:`check_transform` measured (all maxima over the checked points)."""

    inverse_error: float
    logdet_cancel_error: float
    jacobian_logdet_error: float
    normalization: float | None = None
    notes: list[str] = field(default_factory=list)


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def check_normalization(
    flow: Flow,
    *,
    bounds: list[tuple[float, float]] | None = None,
    points: int | None = None,
    tol: float = 0.01,
    context: Tensor | None = None,
    n_bound_samples: int = 5000,
    seed: int = 0,
) -> float:
    """Integrate ``exp(flow.log_prob)`` on a grid (trapezoid rule) and assert it is 1 within ``tol``.

    Works for events of one or two numbers. ``bounds`` default to the 0.05% and
    99.95% quantiles of ``n_bound_samples`` samples of the flow, widened by half
    that range on each side; pass them for flows that cannot be sampled or have
    very heavy tails. ``points`` per axis default to 20001 (1-D) or 601 (2-D).

    For a conditional flow pass ``context``: one row ``(C,)`` integrates
    :math:`p(x \\mid c)` for that row; a ``(K, C)`` batch checks each of the ``K`` rows in
    turn (the default bounds are then found per row).

    Args:
        flow: the flow; evaluated in ``eval()`` mode, its mode restored afterwards.
        bounds: ``(low, high)`` per axis of the grid (default: from samples, see above).
        points: grid points per axis.
        tol: largest accepted ``|integral - 1|``.
        context: None, one context row ``(C,)`` or a batch of rows ``(K, C)``.
        n_bound_samples: samples drawn to find the default bounds.
        seed: seed of those samples.

    Returns:
        the integral; for several context rows, the one farthest from 1.

    Raises:
        ConfigError: events of more than two numbers, or a context that is not ``(C,)`` or ``(K, C)``.
        AssertionError: an integral off by more than ``tol``, or a non-finite density on the grid.
    """
    d = math.prod(flow.event_shape)
    if d > 2:
        raise ConfigError(f"grid normalisation needs events of at most 2 numbers, got shape {flow.event_shape}")
    rows: list[Tensor | None] = [None]
    if context is not None:
        if context.ndim not in (1, 2):
            raise ConfigError(
                f"check_normalization takes one context row (C,) or a batch of rows (K, C), got {tuple(context.shape)}"
            )
        rows = list(context.reshape(-1, context.shape[-1]).unbind(0))
    was_training = flow.training
    flow.eval()
    try:
        totals = [_integrate(flow, d, bounds, points, tol, n_bound_samples, seed, row) for row in rows]
    finally:
        flow.train(was_training)
    return max(totals, key=lambda v: abs(v - 1.0))


def _integrate(
    flow: Flow,
    d: int,
    bounds: list[tuple[float, float]] | None,
    points: int | None,
    tol: float,
    n_bound_samples: int,
    seed: int,
    context: Tensor | None = None,
) -> float:
    # the first floating tensor: a Permutation's index buffer (int64) says nothing of the dtype
    ref = next((t for t in (*flow.parameters(), *flow.buffers()) if t.is_floating_point()), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else torch.device("cpu")
    with torch.no_grad():
        if bounds is None:
            torch.manual_seed(seed)
            s = flow.sample(n_bound_samples, context).reshape(n_bound_samples, d)
            s = s[torch.isfinite(s).all(dim=1)]
            # quantiles rather than min/max: one far outlier would stretch the grid and blur the bulk
            lo, hi = torch.quantile(s, 0.0005, dim=0), torch.quantile(s, 0.9995, dim=0)
            pad = 0.5 * (hi - lo) + 1e-3
            bounds = [(float(a), float(b)) for a, b in zip(lo - pad, hi + pad)]
        if len(bounds) != d:
            raise ConfigError(f"need {d} (low, high) bounds, got {len(bounds)}")
        points = points or (20001 if d == 1 else 601)
        axes = [torch.linspace(lo, hi, points, dtype=dtype, device=device) for lo, hi in bounds]
        mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d)
        chunks = mesh.split(65536)
        logp = torch.cat([flow.log_prob(chunk.reshape(-1, *flow.event_shape), context) for chunk in chunks])
        dens = torch.exp(logp).reshape([points] * d)
        if not torch.isfinite(dens).all():
            _fail("exp(log_prob) is not finite everywhere on the normalisation grid")
        total = dens
        for ax in axes:
            total = torch.trapezoid(total, ax, dim=0)
        total = float(total)
    if abs(total - 1.0) > tol:
        given = "" if context is None else f" given the context {[round(float(v), 4) for v in context]}"
        _fail(f"exp(log_prob){given} integrates to {total:.5f} on the grid {bounds}, not 1 (tolerance {tol})")
    return total


def check_transform(
    transform: Transform,
    x: Tensor,
    context: Tensor | None = None,
    *,
    inverse_atol: float = 1e-6,
    logdet_atol: float = 1e-6,
    logdet_rtol: float = 1e-6,
    max_jacobian_points: int = 8,
    check_grid: bool | None = None,
    grid_bounds: list[tuple[float, float]] | None = None,
    grid_points: int | None = None,
    grid_tol: float = 0.01,
    grid_contexts: int = 2,
    base: BaseDistribution | None = None,
    dtype: torch.dtype = torch.float64,
) -> TransformReport:
    """Assert that ``transform`` honours the Transform contract on the batch ``x``.

    Args:
        transform: the transform under test; a float64 copy is checked, the
            original is left untouched.
        x: a batch ``(B, *event_shape)`` of points inside the transform's domain.
        context: for a conditional transform, the context batch ``(B, C)``, one row per
            point of ``x``.
        inverse_atol: max |inverse(forward(x)) - x| allowed (numerical inverses
            state a larger one).
        logdet_atol: absolute tolerance of the log-determinant checks.
        logdet_rtol: relative tolerance of the log-determinant checks.
        max_jacobian_points: how many points get a full autograd Jacobian.
        check_grid: integrate exp(log_prob) on a grid; default: when an event
            holds at most two numbers.
        grid_bounds: ``bounds`` of :func:`check_normalization`.
        grid_points: ``points`` of :func:`check_normalization`.
        grid_tol: ``tol`` of :func:`check_normalization`.
        grid_contexts: with a context, the grid check integrates :math:`p(x \\mid c)` for
            each of the first ``grid_contexts`` rows.
        base: base distribution for the grid check (default standard normal).
        dtype: precision of the checks.

    Returns:
        a :class:`TransformReport` with the measured errors.

    Raises:
        AssertionError: the transform breaks the contract; the message says how.
        DataError: ``x`` is not a batch.
    """
    if x.ndim < 2:
        raise DataError(f"x must be a batch (B, *event_shape), got shape {tuple(x.shape)}")
    t = copy.deepcopy(transform).to(dtype).eval()
    x = x.detach().to(dtype)
    ctx = context.detach().to(dtype) if context is not None else None
    batch, event_shape = x.shape[0], tuple(x.shape[1:])
    d = math.prod(event_shape)
    notes: list[str] = []

    with torch.no_grad():
        y, ladj = t(x, ctx)
        if y.shape != x.shape:
            _fail(f"forward changed the shape: {tuple(x.shape)} -> {tuple(y.shape)}")
        if ladj.shape != (batch,):
            _fail(f"forward log-det must have shape ({batch},), got {tuple(ladj.shape)}")
        if not (torch.isfinite(y).all() and torch.isfinite(ladj).all()):
            _fail("forward returned non-finite values")
        x_rec, ladj_inv = t.inverse(y, ctx)
        if x_rec.shape != x.shape or ladj_inv.shape != (batch,):
            _fail(f"inverse returned shapes {tuple(x_rec.shape)}, {tuple(ladj_inv.shape)}")
        inv_err = float((x_rec - x).abs().max())
        if not inv_err <= inverse_atol:
            _fail(f"inverse(forward(x)) differs from x by {inv_err:.3e} (tolerance {inverse_atol:.1e})")
        cancel_err = float((ladj + ladj_inv).abs().max())
        if not cancel_err <= logdet_atol + logdet_rtol * float(ladj.abs().max()):
            _fail(f"forward and inverse log-dets do not cancel: max |sum| = {cancel_err:.3e}")

    jac_err = 0.0
    for i in range(min(batch, max_jacobian_points)):
        xi = x[i : i + 1]
        ci = ctx[i : i + 1] if ctx is not None else None

        def f(flat: Tensor, ci: Tensor | None = ci) -> Tensor:
            return t(flat.reshape(1, *event_shape), ci)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        sign, logabs = torch.linalg.slogdet(jac.reshape(d, d))
        if sign == 0:
            _fail(f"autograd Jacobian at point {i} is singular")
        err = abs(float(logabs) - float(ladj[i]))
        if err > logdet_atol + logdet_rtol * abs(float(logabs)):
            _fail(
                f"log-det at point {i} is {float(ladj[i]):.8f}, autograd Jacobian gives "
                f"{float(logabs):.8f} (difference {err:.3e})"
            )
        jac_err = max(jac_err, err)

    norm = None
    if check_grid is None:
        check_grid = d <= 2
    if check_grid:
        b = copy.deepcopy(base).to(dtype) if base is not None else StandardNormal(event_shape).to(dtype)
        rows = ctx[: max(int(grid_contexts), 1)] if ctx is not None else None
        norm = check_normalization(Flow(t, b), bounds=grid_bounds, points=grid_points, tol=grid_tol, context=rows)
    else:
        notes.append("grid normalisation skipped")
    return TransformReport(inv_err, cancel_err, jac_err, norm, notes)


def small_hparams(name: str, **overrides: Any) -> dict[str, Any]:
    """The registered family ``name``'s test-size hyper-parameters, with ``overrides`` on top.

    Args:
        name: a registered family (see :func:`~unflow_zoo.models.list_models`).
        **overrides: hyper-parameters that replace or add to the family's
            :attr:`~unflow_zoo.models.base.FlowModule.small_hparams`.

    Returns:
        A fresh dict (a deep copy: changing it changes nothing in the family).

    Raises:
        ConfigError: an unknown family, or one that declares no ``small_hparams``.
    """
    cls = get_model_class(name)
    if not cls.small_hparams:
        raise ConfigError(
            f"{name} ({cls.__qualname__}) declares no small_hparams: give the class the attribute "
            "small_hparams: ClassVar[dict[str, Any]] = {...}, hyper-parameters under which a 2-D instance "
            "builds and trains a few steps in well under a second"
        )
    return {**copy.deepcopy(cls.small_hparams), **overrides}


def _seeded(seed: int | None, make: Any) -> Any:
    """``make()`` after ``torch.manual_seed(seed)``, leaving the caller's random state as it was
    (``seed=None``: on the caller's random state, advancing it)."""
    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def small_model(name: str, event_shape: Sequence[int] = (2,), *, seed: int | None = 0, **overrides: Any) -> FlowModule:
    """A small, seeded member of the registered family ``name``, as its LightningModule.

    Built from the family's :attr:`~unflow_zoo.models.base.FlowModule.small_hparams` with
    ``overrides`` on top, so a test names only what it varies::

        small_model("maf")                                    # 2-D, unconditional
        small_model("nsf", context_features=3, lr=1e-2)       # conditional, a training option
        small_model("realnvp", gate=True)                     # a second layout
        small_model("glow", event_shape=(2, 4, 4))            # an image event

    Args:
        name: a registered family.
        event_shape: shape of one data point.
        seed: the weights are drawn after ``torch.manual_seed(seed)``, on a forked random state:
            the caller's random numbers are not touched. ``None``: drawn from the caller's state.
        **overrides: hyper-parameters of the family or of
            :class:`~unflow_zoo.models.base.FlowModule` (``lr``, ``context_features``, ...).

    Returns:
        The module, in training mode, as any new module; a freshly built flow is often close to
        the identity (see :func:`randomize_parameters_`).

    Raises:
        ConfigError: an unknown family, one without ``small_hparams``, or a bad hyper-parameter.
    """
    hparams = small_hparams(name, **overrides)
    cls = get_model_class(name)
    return _seeded(seed, lambda: cls(event_shape=tuple(event_shape), **hparams))


def small_flow(name: str, event_shape: Sequence[int] = (2,), *, seed: int | None = 0, **overrides: Any) -> Flow:
    """The same small member of family ``name`` as :func:`small_model`, as a plain torch
    :class:`~unflow_zoo.core.flow.Flow` from the family's Lightning-free builder
    (:func:`unflow_zoo.flows.build`).

    Under the same ``seed`` and ``overrides`` it holds the weights of ``small_model(...).flow``
    (the builders draw the module's random numbers). ``overrides`` are flow hyper-parameters
    only: a training option such as ``lr`` is a :class:`~unflow_zoo.errors.ConfigError` here.

    Args:
        name: a registered family.
        event_shape: shape of one data point.
        seed: as for :func:`small_model`.
        **overrides: the family's flow hyper-parameters (``context_features``, ``bins``, ...).

    Returns:
        The flow, in training mode.

    Raises:
        ConfigError: an unknown family, one without ``small_hparams``, or a bad hyper-parameter.
    """
    hparams = small_hparams(name, **overrides)
    return _seeded(seed, lambda: build(name, event_shape=tuple(event_shape), **hparams))


def check_model(model: FlowModule, x: Tensor, context: Tensor | None = None, **options: Any) -> TransformReport:
    """:func:`check_transform` on a family module's transform, with the family's options.

    The options are the family's :attr:`~unflow_zoo.models.base.FlowModule.check_options`
    with ``options`` on top. A context goes through the model's context embedding first (when
    it has one), as it does in :meth:`~unflow_zoo.models.base.FlowModule.log_prob`: the
    transform is checked at the context its conditioners see.

    Args:
        model: a :class:`~unflow_zoo.models.base.FlowModule` (it is not changed).
        x: a batch ``(B, *event_shape)``.
        context: the context batch ``(B, C)`` of a conditional model, else None.
        **options: :func:`check_transform` keyword arguments.

    Returns:
        The :class:`TransformReport`.

    Raises:
        AssertionError: the transform breaks the contract; the message says how.
    """
    flow = model.flow
    if context is not None and flow.context_embedding is not None:
        with torch.no_grad():
            context = flow.context_embedding(context)
    return check_transform(flow.transform, x, context, **{**type(model).check_options, **options})
