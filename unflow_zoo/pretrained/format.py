r"""The on-disk format of a pretrained flow, and the integrity checks on it.

A checkpoint is a folder (or a ``.zip`` of one) with two files:

- ``model.safetensors``: the module's ``state_dict`` over the *served*
  coordinates (the flow exactly as it was trained), written by
  :func:`safetensors.torch.save_file`; never a pickle.
- ``config.json``: everything else needed to rebuild and trust it::

    {"format_version": 1, "family": "nsf", "hparams": {...},
     "preprocessing": {"kind": "standardize", "mean": [...], "std": [...]} | {"kind": "none"},
     "data": {"class_path": "unflow_zoo.data.module.DensityDataModule", "init_args": {...}},
     "metrics": {"test_nll": ..., ...}, "package_version": "0.1.0", "license": "MIT",
     "description": "...", "weights": {"file": "model.safetensors", "sha256": "..."}}

With standardisation :math:`\tilde x = (x - m)/s` the loaded module evaluates
raw data: :math:`\log p(x) = \log q(\tilde x) - \sum_d \log s_d`.

References:
    Hugging Face safetensors (github.com/huggingface/safetensors): a tensor
    file format that cannot execute code on load.
    timm ``_hub.py`` / torchvision ``_api.py``: weights with metadata and hashes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from unflow_zoo.errors import DataTypeError, FormatError, IntegrityError
from unflow_zoo.version import __version__

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "FormatError",
    "IntegrityError",
    "check_sha256",
    "read_config",
    "sha256_of",
    "to_json",
    "write_config",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_REQUIRED = ("format_version", "family", "hparams", "weights")


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`IntegrityError` naming ``path``, the expected and the actual digest unless they agree."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise IntegrityError(
            f"{path}: sha256 mismatch, expected {expected.lower()} but the file has {actual} "
            f"({Path(path).stat().st_size} bytes); the file is corrupt, truncated or was modified. "
            "Delete it (and its cache entry) and download or re-export it; nothing was loaded"
        )


def to_json(value: Any) -> Any:
    """Hyper-parameters as plain JSON: tuples become lists, tensors and NumPy scalars become numbers."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_json(value.tolist())
    raise DataTypeError(
        f"cannot store a {type(value).__name__} ({value!r}) in config.json; hyper-parameters must be "
        "numbers, strings, booleans, None, or lists/dicts of them"
    )


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / CONFIG_FILE
    path.write_text(json.dumps(to_json(config), indent=2, sort_keys=True) + "\n")
    return path


def read_config(folder: Path) -> dict[str, Any]:
    """Read and validate ``config.json`` from ``folder``.

    Raises:
        FormatError: missing or malformed file, missing keys, or a format
            version newer than :data:`FORMAT_VERSION`.
    """
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FormatError(f"{folder} is not a pretrained flow: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path} must hold a JSON object, got {type(config).__name__}")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise FormatError(f"{path} lacks {', '.join(missing)}; it was not written by save_pretrained")
    version = config["format_version"]
    if not isinstance(version, int) or version < 1:
        raise FormatError(f"{path}: format_version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{path} uses checkpoint format version {version}, written by unflow-zoo "
            f"{config.get('package_version', '?')}; this unflow-zoo ({package_version()}) reads format "
            f"versions up to {FORMAT_VERSION}. Upgrade unflow-zoo (pip install -U unflow-zoo)"
        )
    weights = config["weights"]
    if not isinstance(weights, dict) or not isinstance(weights.get("sha256"), str):
        raise FormatError(f"{path}: 'weights' must be {{'file': ..., 'sha256': ...}}, got {weights!r}")
    return config


def package_version() -> str:
    """The installed unflow-zoo version (``unflow_zoo.__version__``)."""
    return __version__


def is_newer(version: str, than: str) -> bool:
    """Whether ``version`` is a later release than ``than`` (PEP 440); a version string that is not
    PEP 440 (a hand-edited config) counts as not newer."""
    try:
        return Version(str(version)) > Version(str(than))
    except InvalidVersion:
        return False
