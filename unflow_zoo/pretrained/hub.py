"""Publish a pretrained flow on the Hugging Face Hub: one flow per repo, loadable by its repo id.

    model.push_to_hub("user/nsf-moons")                  # a FlowModule
    push_to_hub("runs/my-flow", "user/my-flow")          # a folder written by save_pretrained (or a .zip)
    push_to_hub("nsf-moons", "user/nsf-moons")           # a registered (packaged or cached) name
    unflow_zoo.load_pretrained("user/nsf-moons")         # anyone, afterwards

The repo receives exactly ``config.json``, ``model.safetensors`` and the model card
``README.md`` (:mod:`unflow_zoo.pretrained.card`), staged in a temporary folder and
verified (sha256, rebuild, finite weights) before anything is uploaded; the source folder
is never modified. The upload is ``HfApi.create_repo(exist_ok=True)`` then
``HfApi.upload_folder``, one commit. The token is huggingface_hub's: ``token=``, else
``HF_TOKEN``, else the one saved by ``hf auth login``.

Why not huggingface_hub's ``ModelHubMixin`` / ``PyTorchModelHubMixin``: the mixin would
have to become a base class of :class:`~unflow_zoo.models.FlowModule` (a LightningModule
with its own ``from_pretrained``/``save_pretrained``), and it brings its own format (the
``__init__`` arguments at the top of ``config.json``, loaded into ``cls(**config)`` of the
class it is called on). The package keeps its own: a versioned ``config.json`` that names
the family (so ``FlowModule.from_pretrained`` returns the right subclass), records the data
standardisation and the weights' sha256 (checked before loading), is loaded with a fixed
vocabulary and never imports or unpickles what a file names. What the mixin would add, the
Hub's file layout, cache and upload calls, is used here directly.

References:
    huggingface_hub ``HfApi.create_repo`` / ``upload_folder`` and ``ModelHubMixin.push_to_hub``;
    timm ``push_to_hf_hub`` (one model per repo, with its config and card).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from unflow_zoo.errors import ConfigError, FormatError, MissingFileError
from unflow_zoo.pretrained.card import CARD_FILE, PLACEHOLDER_LOAD_LINE, load_line, render_card, write_card
from unflow_zoo.pretrained.format import CONFIG_FILE, WEIGHTS_FILE, read_config
from unflow_zoo.pretrained.registry import load_registry
from unflow_zoo.pretrained.resolve import (
    _hf,
    _verify_files,
    hub_repo_id,
    is_offline,
    resolve_folder,
    safe_extract,
)
from unflow_zoo.pretrained.serialization import load_folder, save_pretrained

__all__ = ["DEFAULT_COMMIT_MESSAGE", "add_push_arguments", "push_command", "push_main", "push_to_hub"]

DEFAULT_COMMIT_MESSAGE = "Upload unflow-zoo pretrained flow"


def _repo_id(repo_id: str) -> str:
    """``owner/name`` from ``owner/name`` or ``hf://owner/name``; anything else is a :class:`ConfigError`."""
    plain = str(repo_id).removeprefix("hf://").strip("/")
    if hub_repo_id(plain) is None:
        raise ConfigError(
            f"push_to_hub needs a Hub repo id owner/name (one flow per repo, no subfolder or @revision: "
            f"pass revision= for a branch), got {repo_id!r}"
        )
    return plain


def _source_folder(source: str | os.PathLike[str], tmp: Path, cache_dir: str | Path | None) -> Path:
    """The local pretrained folder of ``source``: a folder, a ``.zip`` (extracted into ``tmp``) or a name."""
    spec = os.fspath(source)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise FormatError(f"{path} is neither a pretrained folder nor a .zip of one")
        return safe_extract(path, tmp / "zip")
    entry = load_registry().get(spec)
    folder = resolve_folder(spec, cache_dir) if "/" not in spec and "\\" not in spec else None
    if folder is not None:
        if entry is not None:
            _verify_files(folder, dict(entry.get("files", {})))
        return folder
    if entry is not None:
        raise MissingFileError(
            f"{spec!r} is registered but its files are not local; load it once (unflow_zoo.load_pretrained"
            f"({spec!r})) and push the model, or push its folder"
        )
    raise MissingFileError(
        f"nothing to push at {spec!r}: no such file or folder ({path.absolute()}), and not a registered or "
        "cached name; pass a folder written by save_pretrained, a .zip of one, a name, or a FlowModule"
    )


def _stage_folder(source: Path, stage: Path, repo_id: str) -> None:
    """Copy the flow's files from ``source`` into ``stage``, with a card for ``repo_id``.

    A folder without ``README.md`` gets a generated card; an untouched generated card is
    regenerated for the repo; a card the user edited is kept, its placeholder load line (if
    any) filled in with the repo id.
    """
    config = read_config(source)
    weights = str(config["weights"].get("file", WEIGHTS_FILE))
    for name in (CONFIG_FILE, weights):
        if (source / name).is_file():  # load_folder(stage) names what is missing or misplaced
            shutil.copyfile(source / name, stage / name)
    card = source / CARD_FILE
    text = card.read_text(encoding="utf-8") if card.is_file() else None
    if text is None or text == render_card(config):
        write_card(stage, config, repo_id)
    else:
        (stage / CARD_FILE).write_text(text.replace(PLACEHOLDER_LOAD_LINE, load_line(repo_id)), encoding="utf-8")


def _stage_model(model: Any, stage: Path, repo_id: str, save_kwargs: dict[str, Any]) -> None:
    """``save_pretrained(model)`` into ``stage``; a loaded flow keeps its record (metrics, data, license)."""
    record = getattr(model, "pretrained_config", None)
    if isinstance(record, dict):
        for key in ("metrics", "license", "description"):
            if key not in save_kwargs and record.get(key) is not None:
                save_kwargs[key] = record[key]
        if "data" not in save_kwargs and save_kwargs.get("datamodule") is None and record.get("data"):
            save_kwargs["data"] = record["data"]
    save_pretrained(model, stage, model_card=False, **save_kwargs)
    write_card(stage, read_config(stage), repo_id)


def push_to_hub(
    model_or_folder: Any,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    cache_dir: str | Path | None = None,
    **save_kwargs: Any,
) -> Any:
    """Upload a pretrained flow to its own Hugging Face Hub repo.

    Args:
        model_or_folder: a registered FlowModule (saved with :func:`save_pretrained` and
            ``save_kwargs``; one loaded with ``load_pretrained`` keeps its recorded metrics, data
            and license), or a folder written by ``save_pretrained``, a ``.zip`` of one, or a
            registered or cached name.
        repo_id: the repo, ``owner/name`` (or ``hf://owner/name``); created if missing.
        revision: the branch to commit to (created from ``main`` if missing); default ``main``.
        private: make a new repo private (``None``: the Hub's default); an existing repo keeps
            its visibility.
        token: a Hub token with write access (default: ``HF_TOKEN`` or ``hf auth login``'s).
        commit_message: the commit's message.
        cache_dir: the package cache in which to look up a cached name.
        **save_kwargs: for a model, :func:`save_pretrained`'s arguments (``datamodule``,
            ``metrics``, ``license``, ``description``...).

    Returns:
        huggingface_hub's ``CommitInfo`` of the upload (a ``str``: the commit's URL).

    Raises:
        ConfigError: a repo id that is not ``owner/name``, save arguments for a folder, the
            network is off, or the Hub refused the upload (not logged in, no write access).
        MissingFileError: the folder, zip or name does not exist locally.
        FormatError, IntegrityError: the flow does not verify; nothing is uploaded.
    """
    repo_id = _repo_id(repo_id)
    if is_offline():
        raise ConfigError(
            f"cannot push to {repo_id}: the network is off (UNFLOW_ZOO_OFFLINE=1 or HF_HUB_OFFLINE=1); unset it"
        )
    is_path = isinstance(model_or_folder, (str, os.PathLike))
    if is_path and save_kwargs:
        raise ConfigError(
            f"save arguments ({', '.join(sorted(save_kwargs))}) apply to a model; a folder is pushed as it was saved"
        )
    hf = _hf()
    from huggingface_hub.utils import HfHubHTTPError

    with tempfile.TemporaryDirectory(prefix="unflow_zoo_push_") as tmp:
        stage = Path(tmp) / "flow"
        stage.mkdir()
        if is_path:
            _stage_folder(_source_folder(model_or_folder, Path(tmp), cache_dir), stage, repo_id)
        else:
            _stage_model(model_or_folder, stage, repo_id, dict(save_kwargs))
        load_folder(stage)  # sha256, rebuild, finite weights: never upload a flow that does not load
        api = hf.HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
            if revision is not None and revision != "main":
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=str(stage),
                repo_type="model",
                revision=revision,
                commit_message=commit_message,
            )
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                raise ConfigError(
                    f"the Hub refused to write to {repo_id} (HTTP {status}): log in with `hf auth login` or set "
                    "HF_TOKEN to a token with write access to that namespace"
                ) from e
            raise


# ----- command line ---------------------------------------------------------------------------------
def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``unflow-zoo pretrained push`` to ``parser`` (its handler: :func:`push_command`).

    Args:
        parser: a parser or subparser.
    """
    parser.add_argument("source", metavar="FOLDER_OR_NAME", help="a folder from save_pretrained, a .zip, or a name")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the Hub repo, owner/name (created if missing)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument(
        "--private", action="store_true", default=None, help="create the repo private (an existing one is unchanged)"
    )
    parser.add_argument("--commit_message", default=DEFAULT_COMMIT_MESSAGE, help="the commit's message")
    parser.add_argument("--cache_dir", default=None, help="cache folder for names (default $UNFLOW_ZOO_CACHE)")


def push_command(args: argparse.Namespace) -> Any:
    """Run ``unflow-zoo pretrained push`` from parsed :func:`add_push_arguments` arguments.

    Args:
        args: ``source``, ``repo_id``, ``revision``, ``private``, ``commit_message``, ``cache_dir``.

    Returns:
        The upload's ``CommitInfo``.
    """
    info = push_to_hub(
        args.source,
        args.repo_id,
        revision=args.revision,
        private=args.private,
        commit_message=args.commit_message,
        cache_dir=args.cache_dir,
    )
    repo_id = _repo_id(args.repo_id)
    print(f"pushed {args.source} to https://huggingface.co/{repo_id} ({getattr(info, 'commit_url', info)})")
    print(
        f'load it with: unflow_zoo.load_pretrained("{repo_id}"'
        + (f", revision={args.revision!r})" if args.revision else ")")
    )
    return info


def push_main(argv: list[str] | None = None) -> Any:
    """``unflow-zoo pretrained push FOLDER_OR_NAME REPO_ID [--revision R] [--private]`` as a function.

    Args:
        argv: the arguments after ``push`` (default ``sys.argv[1:]``).

    Returns:
        The upload's ``CommitInfo``.
    """
    parser = argparse.ArgumentParser(
        prog="unflow-zoo pretrained push", description="upload a pretrained flow to its own Hugging Face Hub repo"
    )
    add_push_arguments(parser)
    return push_command(parser.parse_args(argv))
