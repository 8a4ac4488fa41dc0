"""``load_pretrained``: resolve a name, path, URL or ``hf://`` repo to a verified folder and load it.

Resolution order:

1. an existing file or folder path (a folder, or a ``.zip`` of one);
2. a name in the packaged registry whose files ship inside the package;
3. the cache, ``$UNFLOW_ZOO_CACHE`` or ``~/.cache/unflow_zoo`` (or ``cache_dir=``), ``<cache>/<name>/``;
4. the registry entry's ``url`` (a ``.zip``, or a folder URL ending in ``/``) or ``hf`` repo,
   downloaded into the cache, and explicit ``https://``, ``file://`` and ``hf://user/repo[/sub][@rev]``
   arguments.

Every file is checked against its sha256 (the registry's, and for the weights
also config.json's) before anything is loaded. ``offline=True`` or
``HF_HUB_OFFLINE=1`` never opens a connection: what is not local is an error.

References:
    huggingface_hub ``hf_hub_download`` (cache layout, ``HF_HUB_OFFLINE``);
    pip's ``#sha256=`` URL fragments for hash-checked downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from unflow_zoo.errors import ConfigError, MissingDependencyError, MissingFileError
from unflow_zoo.pretrained.format import CONFIG_FILE, WEIGHTS_FILE, FormatError, check_sha256
from unflow_zoo.pretrained.registry import CHECKPOINTS_DIR, load_registry, unknown_name_error
from unflow_zoo.pretrained.serialization import load_folder

__all__ = ["cache_root", "is_offline", "load_pretrained", "resolve_folder", "safe_extract"]

_REMOTE = ("https://", "http://", "file://", "hf://")
_TRUE = {"1", "true", "yes", "on"}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$UNFLOW_ZOO_CACHE``, else ``~/.cache/unflow_zoo``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("UNFLOW_ZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unflow_zoo"


def is_offline(offline: bool = False) -> bool:
    """``offline`` or the environment (``HF_HUB_OFFLINE``, ``UNFLOW_ZOO_OFFLINE``) forbids the network."""
    return offline or any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "UNFLOW_ZOO_OFFLINE")
    )


# ----- zip files ---------------------------------------------------------------------------------
def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` into ``dest`` and return the folder holding ``config.json``.

    Refuses (``FormatError``, before extracting anything) entries with absolute
    paths, ``..`` components, drive letters or backslashes, and symbolic links: a
    zip must not write outside ``dest`` ("zip slip"). The checkpoint may sit at the
    archive's root or inside one top-level folder.
    """
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise FormatError(f"{archive} is not a valid zip file (truncated or corrupt?)") from None
    with zf:
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            if name.startswith(("/", "\\")) or "\\" in name or ":" in name or ".." in parts:
                raise FormatError(f"{archive}: refusing zip entry {name!r}: it would be written outside the folder")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise FormatError(f"{archive}: refusing zip entry {name!r}: symbolic links are not allowed")
        zf.extractall(dest)
    if (dest / CONFIG_FILE).is_file():
        return dest
    subdirs = [p for p in dest.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / CONFIG_FILE).is_file():
        return subdirs[0]
    raise FormatError(f"{archive} holds no {CONFIG_FILE} at its root or in a single top-level folder")


def _load_path(path: Path) -> Any:
    if path.is_dir():
        return load_folder(path)
    if zipfile.is_zipfile(path) or path.suffix == ".zip":
        with tempfile.TemporaryDirectory(prefix="unflow_zoo_zip_") as tmp:
            return load_folder(safe_extract(path, tmp))  # weights are in memory before tmp goes
    raise FormatError(f"{path} is neither a pretrained folder nor a .zip of one")


# ----- downloads ---------------------------------------------------------------------------------
def _download(url: str, target: Path, sha256: str | None) -> Path:
    """Fetch ``url`` to ``target`` (atomically, via a temporary file) and check its sha256 if given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        if sha256 is not None:
            check_sha256(tmp_name, sha256)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _split_fragment(url: str) -> tuple[str, str | None]:
    """``https://x/y.zip#sha256=abc`` -> (``https://x/y.zip``, ``abc``)."""
    base, _, fragment = url.partition("#")
    params = urllib.parse.parse_qs(fragment)
    return base, (params.get("sha256") or [None])[0]


def _cached(target: Path, sha256: str | None) -> bool:
    """Whether ``target`` is already downloaded (and, when a digest is known, intact)."""
    if not target.is_file():
        return False
    if sha256 is not None:
        check_sha256(target, sha256)  # a corrupt cached file is an error naming it, never used
    return True


def _fetch_url(url: str, cache: Path, offline: bool, sha256: str | None, files: dict[str, str]) -> Any:
    base, frag_sha = _split_fragment(url)
    sha256 = sha256 or frag_sha
    key = hashlib.sha256(base.encode()).hexdigest()[:16]
    where = cache / "downloads" / key
    if base.endswith("/"):  # a folder URL: its two files, checked against the registry's hashes
        targets = {
            name: (urllib.parse.urljoin(base, name), where / name, files.get(name))
            for name in (CONFIG_FILE, WEIGHTS_FILE)
        }
    else:
        name = PurePosixPath(urllib.parse.urlparse(base).path).name or "checkpoint.zip"
        targets = {name: (base, where / name, sha256)}
    missing = {k: v for k, v in targets.items() if not _cached(v[1], v[2])}
    if missing and offline:
        raise MissingFileError(
            f"{base} is not in the cache ({where}) and the network is off (offline=True or HF_HUB_OFFLINE=1); "
            "download it once online, or pass a local path"
        )
    for source, target, digest in missing.values():
        _download(source, target, digest)
    return load_folder(where) if base.endswith("/") else _load_path(next(iter(targets.values()))[1])


def _fetch_hf(spec: str, cache: Path, offline: bool, files: dict[str, str]) -> Any:
    """``hf://user/repo[/subfolder][@revision]`` through ``huggingface_hub.hf_hub_download``."""
    rest = spec[len("hf://") :]
    rest, _, revision = rest.partition("@")
    parts = rest.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"expected hf://user/repo[/subfolder][@revision], got {spec!r}")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - installed with datasets
        raise MissingDependencyError("hf:// names need huggingface_hub: pip install huggingface_hub") from None
    folder: Path | None = None
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            local = Path(
                hf_hub_download(
                    repo_id,
                    name,
                    subfolder=subfolder,
                    revision=revision or None,
                    cache_dir=str(cache / "hf"),
                    local_files_only=offline,
                )
            )
        except (OSError, ValueError) as e:  # huggingface_hub's errors derive from these; all: "not available"
            where = "in the local cache (offline)" if offline else "on the Hub"
            raise MissingFileError(f"cannot get {name} of {spec} {where}: {e}") from None
        if name in files:
            check_sha256(local, files[name])
        folder = local.parent
    assert folder is not None
    return load_folder(folder)


# ----- names ------------------------------------------------------------------------------------
def _verify_files(folder: Path, files: dict[str, str]) -> None:
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise FormatError(f"{folder} lacks {name}, which the registry lists")
        check_sha256(path, digest)


def resolve_folder(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The local folder of a registered or cached ``name`` (packaged first, then the cache), or ``None``."""
    packaged = CHECKPOINTS_DIR / name
    if (packaged / CONFIG_FILE).is_file():
        return packaged
    cached = cache_root(cache_dir) / name
    if (cached / CONFIG_FILE).is_file():
        return cached
    return None


def load_pretrained(name_or_path: str | Path, *, cache_dir: str | Path | None = None, offline: bool = False) -> Any:
    """Load a pretrained flow, verified, in eval mode.

    ``name_or_path`` is a folder or ``.zip`` path, a registered name (see
    :func:`~unflow_zoo.pretrained.list_pretrained`), a name in the cache, an
    ``https://`` / ``file://`` URL (``#sha256=<hex>`` checks the download) or
    ``hf://user/repo[/subfolder][@revision]``. The returned FlowModule's
    ``log_prob`` and ``sample`` work in the raw units of its data (any
    standardisation it was trained with is inside it), and its
    ``pretrained_config`` holds the record (metrics, data, license).

    Raises:
        ConfigError: unknown name (the message lists the available ones; a ``ValueError``).
        IntegrityError: a file's sha256 differs from the recorded one; nothing is loaded.
        FormatError: a newer format version, an unknown family, an unsafe zip.
        MissingFileError: the flow is not available locally and the network is off (an ``OSError``).
    """
    offline = is_offline(offline)
    cache = cache_root(cache_dir)
    spec = os.fspath(name_or_path)
    if spec.startswith(_REMOTE):
        return (
            _fetch_hf(spec, cache, offline, {})
            if spec.startswith("hf://")
            else _fetch_url(spec, cache, offline, None, {})
        )
    path = Path(spec).expanduser()
    if path.exists():
        return _load_path(path)
    registry = load_registry()
    entry = registry.get(spec)
    if entry is None:
        if "/" not in spec and "\\" not in spec and (cache / spec / CONFIG_FILE).is_file():
            return load_folder(cache / spec)
        raise unknown_name_error(spec)
    files = dict(entry.get("files", {}))
    folder = resolve_folder(spec, cache)
    if folder is not None:
        _verify_files(folder, files)
        return load_folder(folder)
    if entry.get("hf"):
        return _fetch_hf(str(entry["hf"]), cache, offline, files)
    if entry.get("url"):
        return _fetch_url(str(entry["url"]), cache, offline, entry.get("sha256"), files)
    raise MissingFileError(
        f"{spec!r} is registered but has no packaged files, no cached copy in {cache} and no url/hf source"
    )
