"""Names -> flow families, in the manner of timm's model registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from unflow_zoo.errors import ConfigError

if TYPE_CHECKING:
    from unflow_zoo.models.base import FlowModule

__all__ = ["class_path_of", "create_model", "get_model_class", "list_models", "register_model", "registered_class"]

_REGISTRY: dict[str, type[FlowModule]] = {}
T = TypeVar("T")


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: make a FlowModule subclass available as ``name``."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"model name {name!r} is already registered to {_REGISTRY[name].__name__}")
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
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def create_model(name: str, **hparams: Any) -> FlowModule:
    """Instantiate the family registered as ``name`` with ``hparams``."""
    return get_model_class(name)(**hparams)


def class_path_of(cls: type) -> str:
    """``module.QualName`` of a class: how LightningCLI and checkpoints name it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_class(class_path: str) -> type[FlowModule] | None:
    """The registered family whose class path is ``class_path``, else ``None``.

    The string is matched against the registered classes, never imported: it may come from a
    file (a checkpoint's ``_class_path``), and importing a module a file names runs its code.
    """
    return next((cls for cls in _REGISTRY.values() if class_path_of(cls) == class_path), None)
