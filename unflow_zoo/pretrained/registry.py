"""The registry of published flows: ``registry.json`` shipped with the package.

Each entry names a flow and records where its files are (``checkpoints/<name>/``
inside the package, or a ``url`` / ``hf://`` repository) with the sha256 of
every file, its family, data set, description and measured metrics::

    {"format_version": 1, "flows": {"nsf-moons": {"family": "nsf", "dataset": "moons",
        "description": "...", "metrics": {"test_nll": 1.1}, "license": "MIT",
        "files": {"config.json": "<sha256>", "model.safetensors": "<sha256>"},
        "url": "https://.../nsf-moons.zip", "sha256": "<sha256 of the zip>", "hf": "hf://user/repo"}}}

References:
    timm ``_registry.py`` and torchvision ``_api.py`` (``Weights`` enums with
    their metadata): names bound to weights, their provenance and their scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unflow_zoo.errors import ConfigError, DataTypeError

__all__ = [
    "CHECKPOINTS_DIR",
    "REGISTRY_FILE",
    "list_pretrained",
    "load_registry",
    "markdown_table",
    "pretrained_info",
    "unknown_name_error",
]

PACKAGE_DIR = Path(__file__).resolve().parent
REGISTRY_FILE = PACKAGE_DIR / "registry.json"
CHECKPOINTS_DIR = PACKAGE_DIR / "checkpoints"


def load_registry(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``name -> entry`` from ``registry.json`` (the packaged one by default)."""
    path = Path(path) if path is not None else REGISTRY_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    flows = data.get("flows", {})
    if not isinstance(flows, dict):
        raise DataTypeError(f"{path}: 'flows' must be an object of name -> entry")
    return flows


def list_pretrained() -> list[str]:
    """Names of the published flows, sorted; ``load_pretrained(name)`` loads each."""
    return sorted(load_registry())


def unknown_name_error(name: str, extra: str = "") -> ConfigError:
    names = list_pretrained()
    return ConfigError(
        f"unknown pretrained flow {name!r}: it is not a file or folder, not a registered name and not in the "
        f"cache{extra}. Available names: {', '.join(names) if names else '(none)'}; or pass a path, an "
        "https:// URL or hf://user/repo"
    )


def pretrained_info(name: str) -> dict[str, Any]:
    """The registry entry of ``name``: family, dataset, description, metrics, license, files' sha256.

    Raises:
        ConfigError: ``name`` is not registered; the message lists the names that are (a ``ValueError``).
    """
    registry = load_registry()
    if name not in registry:
        raise unknown_name_error(name)
    return {"name": name, **registry[name]}


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def markdown_table() -> str:
    """The README's "Pretrained flows" table: name, family, data set, test NLL (nats), bits/dim, description."""
    lines = [
        "| name | family | data set | test NLL (nats) | bits/dim | description |",
        "|---|---|---|---:|---:|---|",
    ]
    for name in list_pretrained():
        e = load_registry()[name]
        m = e.get("metrics", {})
        lines.append(
            f"| `{name}` | {e.get('family', '?')} | {e.get('dataset', '?')} | {_fmt(m.get('test_nll'))} | "
            f"{_fmt(m.get('test_bpd'))} | {e.get('description', '')} |"
        )
    return "\n".join(lines)
