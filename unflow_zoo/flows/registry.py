"""Names -> flow builders, in the manner of timm's registry of model builders.

A builder is a function ``builder(event_shape, **hparams) -> Flow`` whose keyword arguments are
the family's hyper-parameters, with the family's defaults. :func:`register_flow` names one,
:func:`build` calls it by name, checking the names of the hyper-parameters first.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from unflow_zoo.core.flow import Flow
from unflow_zoo.errors import ConfigError

__all__ = ["build", "flow_hparams", "get_flow_builder", "list_flows", "register_flow"]

_BUILDERS: dict[str, Callable[..., Flow]] = {}
F = TypeVar("F", bound=Callable[..., Flow])


def register_flow(name: str) -> Callable[[F], F]:
    """Decorator: make a builder function available as ``name``.

    Args:
        name: the registry name, e.g. ``"maf"``; the family's LightningModule is registered
            under the same name (:func:`unflow_zoo.models.register_model`), so that a pretrained
            flow's ``family`` names both.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        ConfigError: ``name`` is registered to another builder.
    """

    def wrap(builder: F) -> F:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ConfigError(f"flow name {name!r} is already registered to {_BUILDERS[name].__qualname__}")
        _BUILDERS[name] = builder
        return builder

    return wrap


def list_flows() -> list[str]:
    """Registered builder names, sorted.

    Returns:
        The names :func:`build` takes.
    """
    return sorted(_BUILDERS)


def get_flow_builder(name: str) -> Callable[..., Flow]:
    """The builder registered as ``name``.

    Args:
        name: a registered name (see :func:`list_flows`).

    Returns:
        The builder function.

    Raises:
        ConfigError: an unknown name; the message lists the registered ones.
    """
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ConfigError(f"unknown flow {name!r}; registered flows: {', '.join(list_flows())}") from None


def flow_hparams(name: str) -> dict[str, Any]:
    """The hyper-parameters of the builder ``name`` and their defaults.

    Args:
        name: a registered name.

    Returns:
        ``{hyper-parameter: default}`` in the builder's order; ``event_shape``, which has no
        default, is left out.
    """
    params = inspect.signature(get_flow_builder(name)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def build(name: str, **hparams: Any) -> Flow:
    """Build the flow ``name`` from its hyper-parameters, as a plain ``torch.nn.Module``.

    No Lightning is involved: the result is a :class:`~unflow_zoo.core.flow.Flow` with
    ``log_prob``, ``sample`` and the ``torch.distributions`` view. The family's LightningModule
    (:func:`~unflow_zoo.models.create_model`) wraps the same flow: after the same ``torch.manual_seed``
    both hold the same weights, and ``model.flow.state_dict()`` loads into the built flow.

    Example::

        flow = unflow_zoo.flows.build("maf", event_shape=(2,), context_features=3, hidden=[32, 32])
        flow.log_prob(x, context=c)          # x (B, 2), c (B, 3)

    Args:
        name: a registered name (see :func:`list_flows`).
        **hparams: ``event_shape`` (required) and the family's hyper-parameters (see
            :func:`flow_hparams`), e.g. ``n_layers``, ``hidden``, ``base``, ``context_features``.

    Returns:
        The flow, in training mode, as any new module.

    Raises:
        ConfigError: an unknown name (the message lists the registered ones), a hyper-parameter
            the family does not have (the message lists the ones it has), no ``event_shape``, or
            a value out of range (the message names the hyper-parameter).
    """
    builder = get_flow_builder(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(hparams) - set(params))
        if unknown:
            raise ConfigError(
                f"{name} has no hyper-parameter {', '.join(map(repr, unknown))}; its hyper-parameters are "
                f"{', '.join(params)}"
            )
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in hparams
    ]
    if missing == ["event_shape"]:
        raise ConfigError(f"{name} needs event_shape, the shape of one data point, e.g. event_shape=(2,)")
    if missing:
        raise ConfigError(f"{name} needs the hyper-parameter(s) {', '.join(missing)}")
    return builder(**hparams)
