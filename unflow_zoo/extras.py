"""Optional dependencies: imported where needed, with the pip command that installs them when missing.

The core install is what the quick start needs; readers of niche formats (BSDS300's HDF5)
live in extras (``pip install "unflow-zoo[uci]"``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from unflow_zoo.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or a :class:`MissingDependencyError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not installed; "
            f'install it with: pip install "unflow-zoo[{extra}]"'
        ) from None
