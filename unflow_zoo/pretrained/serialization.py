r"""Write a FlowModule as a pretrained folder (or ``.zip``) and read one back.

Saving stores the family's registry name and hyper-parameters, the weights as
safetensors, the data module's init arguments (so the exact train/test split
can be rebuilt) and its standardisation, so that the loaded module's
``log_prob`` takes raw data:
:math:`\log p(x) = \log q((x - m)/s) - \sum_d \log s_d`.

References:
    Hugging Face ``save_pretrained``/``from_pretrained`` (transformers,
    huggingface_hub ``ModelHubMixin``): a folder of config + safetensors weights.
"""

from __future__ import annotations

import inspect
import math
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unflow_zoo.core.flow import Flow
from unflow_zoo.errors import ConfigError, DataError, UnsafeFileError
from unflow_zoo.flows import build, list_flows
from unflow_zoo.pretrained.card import CARD_FILE, write_card
from unflow_zoo.pretrained.format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    FormatError,
    check_sha256,
    is_newer,
    package_version,
    read_config,
    sha256_of,
    to_json,
    write_config,
)
from unflow_zoo.pretrained.preprocessing import attach_standardization, served_state_dict, standardized_flow

__all__ = [
    "FLOW_PREFIX",
    "TRAINING_HPARAMS",
    "build_flow",
    "data_record",
    "datamodule_args",
    "load_flow_folder",
    "load_folder",
    "rebuild_datamodule",
    "save_pretrained",
]

#: where a family's module keeps its flow: the weights' names start with it
FLOW_PREFIX = "flow."
#: the hyper-parameters of a pretrained flow that configure its training, not the flow
#: (FlowModule's optimisation and compilation arguments); :func:`build_flow` leaves them out
TRAINING_HPARAMS = (
    "lr",
    "optimizer",
    "weight_decay",
    "momentum",
    "scheduler",
    "scheduler_step_size",
    "scheduler_gamma",
    "scheduler_patience",
    "compile",
    "compile_mode",
)

# The only data module a config may name: importing a class path named in a downloaded file
# would run that module's code, and calling an arbitrary package function (a downloader, say)
# with the file's arguments could write anywhere.
_DATAMODULE_NAMES = ("unflow_zoo.data.module.DensityDataModule", "DensityDataModule")
# Where data are read from and written to, and how many processes read them, are the caller's choice.
CALLER_CHOSEN = ("data_dir", "path", "download", "num_workers")


def data_record(datamodule: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, preprocessing)`` records of a data module: its class path and init arguments,
    and its standardisation (fitted by ``setup()``, which this calls when needed)."""
    cls = type(datamodule)
    # "_instantiator" and the like are LightningCLI bookkeeping, not init arguments
    hparams = {k: v for k, v in dict(getattr(datamodule, "hparams", {}) or {}).items() if not str(k).startswith("_")}
    data = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": to_json(hparams)}
    preprocessing: dict[str, Any] = {"kind": "none"}
    # "standardize" records any per-coordinate affine scaling (x - mean) / std: the paper's
    # "ball" scaling is mean 0 and std = twice the largest training norm
    if hparams.get("standardize") or hparams.get("scaling") in ("standardize", "ball"):
        if getattr(datamodule, "train_data", None) is None:
            datamodule.setup("fit")
        preprocessing = {
            "kind": "standardize",
            "mean": datamodule.mean.reshape(-1).tolist(),
            "std": datamodule.std.reshape(-1).tolist(),
        }
    return data, preprocessing


def save_pretrained(
    model: Any,
    path: str | Path,
    *,
    datamodule: Any = None,
    metrics: dict[str, float] | None = None,
    license: str = "MIT",
    description: str = "",
    data: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    model_card: bool = True,
) -> Path:
    """Write ``model`` (a registered FlowModule) as a pretrained folder, or a ``.zip`` of one.

    The folder holds ``config.json``, ``model.safetensors`` and a model card ``README.md``
    (:mod:`unflow_zoo.pretrained.card`: the Hub's metadata, the metrics, how it was trained and
    how to load it). The card is not among the sha256-checked files: loading never reads it.

    Args:
        model: the flow; its class must be registered (``@register_model``) so that
            ``config.json`` can name its family.
        path: the folder to create (overwritten files inside), or a path ending in ``.zip``.
        datamodule: the data module it was trained on: its init arguments and
            standardisation are recorded (so ``log_prob`` of the loaded flow takes raw data).
        metrics: measured numbers to publish, e.g. ``{"test_nll": 1.23}``.
        license: license of the weights.
        description: one line shown by ``unflow-zoo pretrained list``.
        data: the data record itself, when there is no data module object
            (:func:`~unflow_zoo.pretrained.convert.export_checkpoint` uses it).
        preprocessing: the preprocessing record itself, likewise without a data module object.
        model_card: write ``README.md``; ``False`` leaves a ``README.md`` already in the folder alone.

    Returns:
        The folder or zip written.
    """
    from unflow_zoo.models.registry import get_model_class

    family = getattr(type(model), "registry_name", "custom")
    try:
        registered = get_model_class(family)
    except ValueError:
        registered = None
    if registered is not type(model):
        raise ConfigError(
            f"cannot save a {type(model).__name__}: its class is not a registered family, so a loader could "
            "not rebuild it. Decorate it with @unflow_zoo.models.register_model('name') (and import it before "
            "loading)"
        )
    state, carried = served_state_dict(model)
    dm_pre: dict[str, Any] = {"kind": "none"}
    if datamodule is not None:
        data, dm_pre = data_record(datamodule)
    if preprocessing is None:
        # A flow loaded from a checkpoint carries its standardisation (the one it was trained with);
        # a freshly trained one gets its data module's.
        preprocessing = carried if carried["kind"] != "none" else dm_pre
    hparams = {k: v for k, v in dict(model.hparams).items() if not str(k).startswith("_")}

    path = Path(path)
    as_zip = path.suffix == ".zip"
    folder = Path(tempfile.mkdtemp(prefix="unflow_zoo_save_")) if as_zip else path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # safetensors refuses shared or non-contiguous storage; clone gives each tensor its own.
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "family": family})
        config = {
            "format_version": FORMAT_VERSION,
            "family": family,
            "hparams": to_json(hparams),
            "preprocessing": preprocessing,
            "data": data,
            "metrics": to_json(metrics or {}),
            "package_version": package_version(),
            "license": license,
            "description": description,
            "weights": {"file": WEIGHTS_FILE, "sha256": sha256_of(folder / WEIGHTS_FILE)},
        }
        write_config(folder, config)
        if model_card:
            write_card(folder, read_config(folder))  # from the record as written: JSON values only
        if as_zip:
            path.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE):
                    if (folder / name).is_file():
                        zf.write(folder / name, arcname=name)
    finally:
        if as_zip:
            shutil.rmtree(folder, ignore_errors=True)
    return path


def build_model(config: dict[str, Any], where: Path) -> Any:
    """The family named in ``config`` built from its hyper-parameters (random weights)."""
    from unflow_zoo.models.registry import get_model_class, list_models

    family = config["family"]
    if not isinstance(family, str):
        raise FormatError(f"{where / CONFIG_FILE}: 'family' must be a string, got {family!r}")
    try:
        cls = get_model_class(family)
    except ValueError:
        newer = is_newer(str(config.get("package_version", "0")), package_version())
        hint = (
            f" It was written by unflow-zoo {config.get('package_version')}, newer than this "
            f"{package_version()}: upgrade unflow-zoo."
            if newer
            else " If it is your own family, import the module that registers it before loading."
        )
        raise FormatError(
            f"{where / CONFIG_FILE}: unknown flow family {family!r}; this unflow-zoo knows "
            f"{', '.join(list_models())}.{hint}"
        ) from None
    hparams = config["hparams"]
    if not isinstance(hparams, dict):
        raise FormatError(f"{where / CONFIG_FILE}: 'hparams' must be a JSON object, got {type(hparams).__name__}")
    try:
        return cls(**hparams)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where / CONFIG_FILE}: cannot build {family} from its hparams ({e})") from None


def _verified_weights(folder: Path, config: dict[str, Any]) -> Path:
    """The weights file of ``folder``, checked: a plain name inside the folder, present, its sha256 the
    one ``config.json`` records. Warns when the folder was written by a newer unflow-zoo."""
    if is_newer(str(config.get("package_version", "0")), package_version()):
        warnings.warn(
            f"{folder} was written by unflow-zoo {config['package_version']}, newer than this "
            f"{package_version()}; it uses a format this version reads, but consider upgrading",
            stacklevel=4,
        )
    name = str(config["weights"].get("file", WEIGHTS_FILE))
    weights = folder / name
    # A plain file name, checked lexically: resolve() would follow the symbolic links of the
    # Hugging Face cache (snapshots/<commit>/model.safetensors -> ../../blobs/<hash>) out of the folder.
    if name in ("", ".", "..") or PurePosixPath(name).name != name or any(c in name for c in "\\:"):
        raise FormatError(f"{folder / CONFIG_FILE}: the weights file must lie in the folder, got {name!r}")
    if not weights.is_file():
        raise FormatError(f"{folder} has a {CONFIG_FILE} but no weights file {weights.name}")
    check_sha256(weights, config["weights"]["sha256"])
    return weights


def _read_weights(weights: Path) -> dict[str, Any]:
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{weights} is not a readable safetensors file ({e})") from None


def load_folder(folder: str | Path) -> Any:
    """Load the pretrained folder ``folder``: check the weights' sha256, rebuild the family,
    load the weights, attach the preprocessing; return the module in eval mode."""
    folder = Path(folder)
    config = read_config(folder)
    weights = _verified_weights(folder, config)
    model = build_model(config, folder)
    state = _read_weights(weights)
    _load_weights(model, state, weights, str(config["family"]))
    _attach_preprocessing(model, config.get("preprocessing"), folder / CONFIG_FILE)
    model.pretrained_config = config  # the record it came from: metrics, data, license
    return model.eval()


def build_flow(config: dict[str, Any], where: Path) -> Flow:
    """The plain flow of the family named in ``config``, built by its Lightning-free builder
    (:func:`unflow_zoo.flows.build`) from the flow's hyper-parameters (random weights).

    ``config["hparams"]`` are the family's LightningModule's: its optimisation settings
    (:data:`TRAINING_HPARAMS`) are left out, every other key goes to the builder.
    """
    family = config["family"]
    if not isinstance(family, str):
        raise FormatError(f"{where / CONFIG_FILE}: 'family' must be a string, got {family!r}")
    if family not in list_flows():
        newer = is_newer(str(config.get("package_version", "0")), package_version())
        hint = (
            f" It was written by unflow-zoo {config.get('package_version')}, newer than this "
            f"{package_version()}: upgrade unflow-zoo."
            if newer
            else " If it is your own family, register a builder for it (unflow_zoo.flows.register_flow), "
            "or load it with load_pretrained, whose .flow is the Flow."
        )
        raise FormatError(
            f"{where / CONFIG_FILE}: no flow builder for the family {family!r}; this unflow-zoo builds "
            f"{', '.join(list_flows())}.{hint}"
        )
    hparams = config["hparams"]
    if not isinstance(hparams, dict):
        raise FormatError(f"{where / CONFIG_FILE}: 'hparams' must be a JSON object, got {type(hparams).__name__}")
    try:
        return build(family, **{k: v for k, v in hparams.items() if k not in TRAINING_HPARAMS})
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where / CONFIG_FILE}: cannot build {family} from its hparams ({e})") from None


def load_flow_folder(folder: str | Path) -> Flow:
    """Load the pretrained folder ``folder`` as a plain :class:`~unflow_zoo.core.flow.Flow`, no Lightning.

    The same checks as :func:`load_folder` (the weights' sha256, a plain weights file inside the
    folder, every tensor's name, shape and finiteness), but the flow is built by the family's
    builder (:func:`build_flow`) and gets the module's weights without their ``flow.`` prefix.
    A standardisation the flow was trained with goes in front of it (:class:`RawDataFlow`), so
    its ``log_prob`` takes raw data, as the module's does.

    Args:
        folder: the pretrained folder.

    Returns:
        The flow in eval mode; ``flow.pretrained_config`` holds the record (metrics, data, license).
    """
    folder = Path(folder)
    config = read_config(folder)
    weights = _verified_weights(folder, config)
    flow = build_flow(config, folder)
    state = {k.removeprefix(FLOW_PREFIX): v for k, v in _read_weights(weights).items()}
    _load_weights(flow, state, weights, str(config["family"]))
    standardization = _standardization(config.get("preprocessing"), flow.event_shape, folder / CONFIG_FILE)
    if standardization is not None:
        try:
            flow = standardized_flow(flow, *standardization)
        except ValueError as e:
            raise FormatError(f"{folder / CONFIG_FILE}: {e}") from None
    flow.pretrained_config = config  # type: ignore[assignment]  # the record: metrics, data, license
    return flow.eval()


def _load_weights(model: Any, state: dict[str, Any], weights: Path, family: str) -> None:
    """``state`` into ``model``, every mismatch a :class:`FormatError` naming the tensors."""
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise FormatError(
            f"{weights} does not fit a {family} built from {CONFIG_FILE}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise FormatError(
                f"{weights}: tensor {key} has shape {tuple(value.shape)}, but the {family} built from "
                f"{CONFIG_FILE}'s hparams needs {tuple(expected[key].shape)}; the config and the weights do not match"
            )
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise FormatError(f"{weights}: tensor {key} holds NaN or inf (saved from a diverged run?)")
    model.load_state_dict(state)


def _standardization(pre: Any, event_shape: tuple[int, ...], where: Path) -> tuple[list[Any], list[Any]] | None:
    """The ``(mean, std)`` of a checked ``preprocessing`` record, or None for ``kind: none``."""
    pre = pre or {"kind": "none"}
    if not isinstance(pre, dict):
        raise FormatError(f"{where}: 'preprocessing' must be a JSON object, got {type(pre).__name__}")
    kind = pre.get("kind")
    if kind == "none":
        return None
    if kind != "standardize":
        raise FormatError(f"{where}: unknown preprocessing {kind!r}; upgrade unflow-zoo")
    dim = math.prod(event_shape)
    for key in ("mean", "std"):
        values = pre.get(key)
        numbers = isinstance(values, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        )
        if not numbers or len(values) != dim:
            raise FormatError(
                f"{where}: preprocessing {key!r} must be a list of {dim} numbers (one per coordinate), got {values!r}"
            )
    return pre["mean"], pre["std"]


def _attach_preprocessing(model: Any, pre: Any, where: Path) -> None:
    """Check the ``preprocessing`` record and put its standardisation in front of the flow."""
    standardization = _standardization(pre, model.event_shape, where)
    if standardization is None:
        return
    try:
        attach_standardization(model, *standardization)
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from None


def datamodule_args(init_args: Any, where: str) -> dict[str, Any]:
    """The init arguments of a recorded data module that a file may choose, checked.

    A config.json or checkpoint names the data its flow was trained on, so that ``evaluate``
    rebuilds the exact split, but it is not trusted to choose where data is read from or
    written to: ``data_dir``, ``path``, ``download`` and ``num_workers`` are dropped (the
    caller passes them), and every other key must be a :class:`DensityDataModule` argument
    with a plain JSON value. The values' ranges are checked by the data module itself.

    Raises:
        UnsafeFileError: an unknown argument or a value that is not a JSON scalar.
    """
    from unflow_zoo.data import DensityDataModule

    if not isinstance(init_args, dict):
        raise UnsafeFileError(f"{where}: the data record's init_args must be a mapping, got {type(init_args).__name__}")
    allowed = set(inspect.signature(DensityDataModule.__init__).parameters) - {"self"}
    unknown = sorted(str(k) for k in init_args if k not in allowed)
    if unknown:
        raise UnsafeFileError(
            f"{where}: unknown data module argument(s) {', '.join(unknown)}; a recorded data module may only "
            f"set DensityDataModule's arguments ({', '.join(sorted(allowed))})"
        )
    for key, value in init_args.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise UnsafeFileError(f"{where}: data module argument {key}={value!r} is not a plain JSON value")
    return {k: v for k, v in init_args.items() if k not in CALLER_CHOSEN}


def rebuild_datamodule(config: dict[str, Any], **overrides: Any) -> Any:
    """The data module recorded in ``config`` (with ``overrides`` of its init arguments), not yet set up.

    The record names the data module by a fixed vocabulary, never by an import path: only
    :class:`~unflow_zoo.data.DensityDataModule` is rebuilt, from the arguments
    :func:`datamodule_args` lets through (where the data live and whether to download them
    are the caller's ``overrides``, never the file's). ``None`` when nothing was recorded.

    Raises:
        UnsafeFileError: the record names another class, or arguments outside the vocabulary.
        DataError: ``dataset="file"`` was recorded but no ``path`` override was given.
    """
    from unflow_zoo.data import DensityDataModule

    data = config.get("data")
    if not data:
        return None
    where = "config.json"
    if not isinstance(data, dict):
        raise UnsafeFileError(f"{where}: the data record must be a mapping, got {type(data).__name__}")
    class_path = str(data.get("class_path", ""))
    if class_path not in _DATAMODULE_NAMES:
        raise UnsafeFileError(
            f"{where}: refusing to rebuild data module {class_path!r}: a pretrained flow may only name "
            "DensityDataModule (files never choose code to import); build your data module yourself and pass it"
        )
    args = {**datamodule_args(data.get("init_args", {}), where), **overrides}
    if args.get("dataset") == "file" and not args.get("path"):
        raise DataError(
            f"{where}: the flow was trained on the user's own file, which is not shipped with it; "
            "pass the file as an override (path=..., or --data.path on the command line)"
        )
    try:
        return DensityDataModule(**args)
    except DataError:
        raise
    except (TypeError, ValueError) as e:
        given = f" with the overrides {', '.join(f'{k}={v!r}' for k, v in overrides.items())}" if overrides else ""
        raise FormatError(f"{where}: cannot rebuild the recorded data module{given} ({e})") from None
