"""Convert a Lightning ``.ckpt`` into a pretrained folder, without unpickling code.

Lightning checkpoints are pickles. :func:`export_checkpoint` reads them with
``torch.load(..., weights_only=True)``, whose restricted unpickler only builds
tensors and plain containers: a file carrying any other object (a class whose
``__reduce__`` would run a command, say) is refused before that object is
built, so its payload never runs.

References:
    PyTorch, ``torch.load`` and "weights_only" (pytorch.org/docs/stable/notes/serialization.html);
    Lightning, "Saving and loading checkpoints" (``hyper_parameters``, ``datamodule_hyper_parameters``).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from unflow_zoo.errors import FormatError, MissingFileError, UnsafeFileError
from unflow_zoo.pretrained.format import to_json
from unflow_zoo.pretrained.serialization import save_pretrained

__all__ = ["export_checkpoint", "model_from_checkpoint", "read_checkpoint", "refused_pickle"]


def refused_pickle(where: Any, error: BaseException) -> FormatError:
    """The package's error for a checkpoint ``torch.load(..., weights_only=True)`` could not read:
    :class:`UnsafeFileError` when the pickle asks for code (a global outside the allow-list),
    :class:`FormatError` when the file is not a readable checkpoint at all."""
    text = str(error)
    detail = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
    if "Unsupported global" in text:
        return UnsafeFileError(
            f"refusing {where}: it holds objects other than tensors and plain containers, and unpickling them "
            f"could run arbitrary code ({detail or text.splitlines()[0]}). unflow-zoo reads checkpoints with "
            "weights_only=True; load a checkpoint you trust yourself, in Python"
        )
    return FormatError(f"{where} is not a readable torch checkpoint ({detail or text.splitlines()[0][:200]})")


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary, read with ``weights_only=True``.

    Raises:
        UnsafeFileError: the file holds objects other than tensors and plain containers (it is
            refused before they are built).
        FormatError: the file is not a torch checkpoint at all, or not a Lightning one.
        MissingFileError: there is no such file (a FileNotFoundError).
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise MissingFileError(f"no checkpoint at {ckpt_path}")
    if not zipfile.is_zipfile(ckpt_path):
        # torch.save has written zip archives since torch 1.6; anything else (a text file, a
        # truncated download) fails inside the legacy unpickler with a bare KeyError.
        raise FormatError(
            f"{ckpt_path} is not a torch checkpoint: torch.save and Lightning write zip archives, this file is not "
            "one (a truncated download, or the wrong file?)"
        )
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise refused_pickle(ckpt_path, e) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        raise FormatError(f"{ckpt_path} is not a readable torch checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise FormatError(f"{ckpt_path} is not a Lightning checkpoint: no 'state_dict'")
    return ckpt


def _family_class(hparams: dict[str, Any], family: str | None, where: Path) -> type:
    from unflow_zoo.models.registry import get_model_class, list_models, registered_class

    if family is not None:
        return get_model_class(family)
    class_path = hparams.get("_class_path")
    if class_path:
        cls = registered_class(str(class_path))
        if cls is not None:
            return cls
        raise FormatError(f"{where}: model class {class_path!r} is not a registered family; pass family=")
    raise FormatError(
        f"{where}: the checkpoint does not name its model class (it was not written by LightningCLI); "
        f"pass family= (one of {', '.join(list_models())})"
    )


def model_from_checkpoint(ckpt_path: str | Path, family: str | None = None) -> tuple[Any, dict[str, Any]]:
    """``(model, ckpt)``: the family rebuilt from the ckpt's ``hyper_parameters`` with its weights, in eval mode."""
    ckpt_path = Path(ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    cls = _family_class(hparams, family, ckpt_path)
    init = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    try:
        model = cls(**init)
    except TypeError as e:
        raise FormatError(f"{ckpt_path}: cannot build {cls.__name__} from its hyper_parameters ({e})") from None
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise FormatError(
            f"{ckpt_path}: weights do not fit {cls.__name__}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval(), ckpt


def _datamodule_from_hparams(dm_hparams: dict[str, Any]) -> Any:
    from unflow_zoo.data import DensityDataModule

    init = {k: v for k, v in dm_hparams.items() if not str(k).startswith("_")}
    return DensityDataModule(**init)


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    *,
    family: str | None = None,
    description: str = "",
    license: str = "MIT",
    evaluate: bool = True,
) -> Path:
    """Write the Lightning checkpoint ``ckpt_path`` as a pretrained folder (or ``.zip``) ``out_dir``.

    The family comes from the ckpt's ``hyper_parameters`` (``_class_path``, written by
    LightningCLI) or ``family``. When the ckpt also holds ``datamodule_hyper_parameters``
    (LightningCLI runs with a DensityDataModule) the data set, split and standardisation
    are recorded and, with ``evaluate=True``, the test NLL measured on that split.
    """
    from unflow_zoo.pretrained.evaluation import evaluate_split
    from unflow_zoo.pretrained.preprocessing import attach_standardization
    from unflow_zoo.pretrained.serialization import data_record

    model, ckpt = model_from_checkpoint(ckpt_path, family)
    dm_hparams = ckpt.get("datamodule_hyper_parameters")
    dm = _datamodule_from_hparams(dict(dm_hparams)) if dm_hparams else None
    metrics: dict[str, Any] = {}
    data = preprocessing = None
    if dm is not None:
        data, preprocessing = data_record(dm)
        if evaluate and dm.hparams.get("test_fraction", 0) > 0:
            if preprocessing["kind"] == "standardize":
                attach_standardization(model, preprocessing["mean"], preprocessing["std"])
            metrics = evaluate_split(model, dm, "test")
    metrics["epochs"] = ckpt.get("epoch")
    metrics["global_step"] = ckpt.get("global_step")
    return save_pretrained(
        model,
        out_dir,
        data=data,
        preprocessing=preprocessing,
        metrics=to_json({k: v for k, v in metrics.items() if v is not None}),
        license=license,
        description=description or f"exported from {Path(ckpt_path).name}",
    )
