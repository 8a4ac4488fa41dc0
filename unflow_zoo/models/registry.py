"""Names -> flow families, in the manner of timm's model registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from unflow_zoo.models.base import FlowModule

__all__ = ["create_model", "get_model_class", "list_models", "register_model"]

_REGISTRY: dict[str, type[FlowModule]] = {}
T = TypeVar("T")


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: make a FlowModule subclass available as ``name``."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls  # type: ignore[assignment]
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def list_models() -> list[str]:
    """Registered family names, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[FlowModule]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def create_model(name: str, **hparams: Any) -> FlowModule:
    """Instantiate the family registered as ``name`` with ``hparams``."""
    return get_model_class(name)(**hparams)
