"""The installed unflow-zoo version, one source of truth: pyproject.toml's, as installed."""

from importlib import metadata as _metadata

__all__ = ["__version__"]

try:
    __version__ = _metadata.version("unflow-zoo")
except _metadata.PackageNotFoundError:  # pragma: no cover - a bare source tree on sys.path
    __version__ = "0+unknown"
