"""``load_pretrained``: resolve a name, path, URL or Hugging Face Hub repo to a verified folder and load it.

Resolution order:

1. an existing file or folder path (a folder, or a ``.zip`` of one);
2. a name in the packaged registry whose files ship inside the package;
3. the cache, ``$UNFLOW_ZOO_CACHE`` or ``~/.cache/unflow_zoo`` (or ``cache_dir=``), ``<cache>/<name>/``;
4. the registry entry's ``url`` (a ``.zip``, or a folder URL ending in ``/``) or ``hf`` repo,
   downloaded into the cache, and explicit ``https://``, ``file://`` and ``hf://user/repo[/sub][@rev]``
   arguments;
5. a Hugging Face Hub repo id ``owner/name`` (exactly one slash, the Hub's characters, and not an
   existing path): ``load_pretrained("user/repo", revision="v1")``.

Hub repos (4 and 5) go through ``huggingface_hub.hf_hub_download`` and its standard cache
(``HF_HUB_CACHE``, or ``HF_HOME/hub``, default ``~/.cache/huggingface/hub``), shared with every
other Hugging Face library; URLs are downloaded into this package's cache.

Every file is checked against its sha256 (the registry's, and for the weights
also config.json's) before anything is loaded. ``offline=True``,
``UNFLOW_ZOO_OFFLINE=1`` or Hugging Face's offline mode (``HF_HUB_OFFLINE=1``) never opens a
connection: what is not local is an error.

References:
    huggingface_hub ``hf_hub_download`` (cache layout, ``HF_HUB_OFFLINE``);
    pip's ``#sha256=`` URL fragments for hash-checked downloads.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from unflow_zoo.core.flow import Flow
from unflow_zoo.errors import ConfigError, MissingDependencyError, MissingFileError
from unflow_zoo.pretrained.format import CONFIG_FILE, WEIGHTS_FILE, FormatError, check_sha256, read_config
from unflow_zoo.pretrained.registry import CHECKPOINTS_DIR, load_registry, unknown_name_error
from unflow_zoo.pretrained.serialization import load_flow_folder, load_folder

__all__ = [
    "cache_root",
    "hub_cache_dir",
    "hub_repo_id",
    "is_offline",
    "load_flow",
    "load_pretrained",
    "parse_hf_spec",
    "resolve_folder",
    "safe_extract",
]

_REMOTE = ("https://", "http://", "file://", "hf://")
_TRUE = {"1", "true", "yes", "on"}
# A Hub repo id as a plain argument: owner/name, one slash, the characters the Hub allows
# (huggingface_hub.utils.validate_repo_id checks the rest: length, "--", "..", ".git").
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _hf() -> Any:
    """The ``huggingface_hub`` module (a core dependency; the error covers a broken install)."""
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - a core dependency
        raise MissingDependencyError(
            "Hugging Face Hub repos need huggingface_hub: pip install huggingface_hub"
        ) from None
    return huggingface_hub


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The package's own cache, for registry names and URL downloads (not for Hub repos).

    Args:
        cache_dir: an explicit folder; it wins over the environment.

    Returns:
        ``cache_dir``, else ``$UNFLOW_ZOO_CACHE``, else ``~/.cache/unflow_zoo``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("UNFLOW_ZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unflow_zoo"


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache that Hub repos are downloaded into and read from.

    This is ``huggingface_hub.constants.HF_HUB_CACHE``, read at call time: huggingface_hub
    computes it from ``HF_HUB_CACHE`` / ``HF_HOME`` when it is imported, and uses it for every
    Hugging Face library in the process. The package never parses those variables itself, so
    it cannot disagree with them.

    Returns:
        The cache folder (it may not exist yet).
    """
    return Path(_hf().constants.HF_HUB_CACHE)


def is_offline(offline: bool = False) -> bool:
    """Whether the network is off for pretrained flows.

    Args:
        offline: the caller's own switch.

    Returns:
        ``True`` when ``offline`` is, when ``UNFLOW_ZOO_OFFLINE`` is set to 1/true/yes/on (the
        package's switch), or when Hugging Face's offline mode is on
        (``huggingface_hub.constants.HF_HUB_OFFLINE``: ``HF_HUB_OFFLINE=1`` as huggingface_hub read
        it at import, so set it before importing, as for any Hugging Face library).
    """
    if offline or os.environ.get("UNFLOW_ZOO_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a core dependency
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_repo_id(spec: str) -> str | None:
    """``spec`` if it reads as a Hugging Face Hub repo id ``owner/name``, else ``None``.

    Exactly one slash, the Hub's characters (letters, digits, ``-``, ``_``, ``.``), and what
    ``huggingface_hub.utils.validate_repo_id`` accepts. Whether a path of that form exists is
    the caller's question: an existing path always wins.

    Args:
        spec: the string to classify.

    Returns:
        The repo id, or ``None``.
    """
    if not _HUB_ID.fullmatch(spec):
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return None
    return spec


def parse_hf_spec(spec: str, revision: str | None = None) -> tuple[str, str | None, str | None]:
    """Split ``hf://owner/name[/subfolder][@revision]`` (or a plain ``owner/name``).

    Args:
        spec: the repo, with or without the ``hf://`` prefix.
        revision: a revision given separately (``revision=``); it must agree with ``@revision``.

    Returns:
        ``(repo_id, subfolder or None, revision or None)``.

    Raises:
        ConfigError: a malformed spec, or two different revisions.
    """
    rest = spec.removeprefix("hf://")
    rest, at, tag = rest.partition("@")
    if at and not tag:
        raise ConfigError(f"{spec!r}: empty revision after '@'; expected hf://user/repo[/subfolder][@revision]")
    if tag and revision and tag != revision:
        raise ConfigError(f"{spec!r} names revision {tag!r} but revision={revision!r} was also given; pass one")
    parts = rest.strip("/").split("/")
    repo_id = "/".join(parts[:2])
    if len(parts) < 2 or not all(parts) or hub_repo_id(repo_id) is None:
        raise ConfigError(f"expected hf://user/repo[/subfolder][@revision] with a valid Hub repo id, got {spec!r}")
    return repo_id, "/".join(parts[2:]) or None, revision or tag or None


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


#: what loads a verified folder: the family's module (load_folder) or its plain flow (load_flow_folder)
Loader = Callable[[Path], Any]


def _load_path(path: Path, loader: Loader = load_folder) -> Any:
    if path.is_dir():
        return loader(path)
    if zipfile.is_zipfile(path) or path.suffix == ".zip":
        with tempfile.TemporaryDirectory(prefix="unflow_zoo_zip_") as tmp:
            return loader(safe_extract(path, tmp))  # weights are in memory before tmp goes
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


def _fetch_url(
    url: str, cache: Path, offline: bool, sha256: str | None, files: dict[str, str], loader: Loader = load_folder
) -> Any:
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
    return loader(where) if base.endswith("/") else _load_path(next(iter(targets.values()))[1], loader)


def _hub_failure(
    e: BaseException, repo_id: str, subfolder: str | None, revision: str | None, name: str, offline: bool
) -> str:
    """Why ``name`` of the repo could not be had, in words, from huggingface_hub's error."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}{'/' + subfolder if subfolder else ''} at revision {revision or 'main'}"
    cache = hub_cache_dir()
    if isinstance(e, GatedRepoError):
        return f"{repo_id} is a gated repo: accept its terms on the Hub and log in (`hf auth login` or HF_TOKEN)"
    if isinstance(e, RevisionNotFoundError):
        return f"the Hub repo {repo_id} has no revision {revision!r} (a branch, tag or commit hash)"
    if isinstance(e, RepositoryNotFoundError):
        return (
            f"there is no Hub repo {repo_id}, or it is private and you are not logged in (`hf auth login` or HF_TOKEN)"
        )
    if isinstance(e, LocalEntryNotFoundError) or offline:
        why = (
            "the network is off (offline=True, UNFLOW_ZOO_OFFLINE=1 or HF_HUB_OFFLINE=1)"
            if offline
            else f"the Hub could not be reached ({e})"
        )
        return (
            f"{name} of {where} is not in the Hugging Face cache {cache} and {why}; download it once online, "
            "or point HF_HUB_CACHE (or HF_HOME) at the cache that holds it"
        )
    if isinstance(e, EntryNotFoundError):
        return (
            f"{where} has no {name}: it is not an unflow-zoo flow (save_pretrained and push_to_hub write "
            f"{CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    return f"cannot get {name} of {where} from the Hub: {e}"


def _fetch_hub(
    repo_id: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    offline: bool = False,
    files: dict[str, str] | None = None,
    spec: str | None = None,
    local: Path | None = None,
    loader: Loader = load_folder,
) -> Any:
    """Load a flow from a Hub repo through ``huggingface_hub.hf_hub_download`` and its cache.

    ``config.json`` is resolved first; the weights are then fetched at the commit that
    config came from (its snapshot folder's name), so a branch that moves in between cannot
    pair one commit's config with another's weights. ``files`` are the registry's digests.
    ``spec``/``local``: the argument as given, and the path it would have been, for the
    error message when a plain ``owner/name`` was meant as a local path.
    """
    hf = _hf()
    from huggingface_hub.utils import EntryNotFoundError, HFValidationError

    def get(name: str, rev: str | None) -> Path:
        # cache_dir is left to huggingface_hub (constants.HF_HUB_CACHE, from HF_HUB_CACHE/HF_HOME):
        # the standard cache that every Hugging Face library shares, never a private copy.
        return Path(hf.hf_hub_download(repo_id, name, subfolder=subfolder, revision=rev, local_files_only=offline))

    name = CONFIG_FILE
    try:
        folder = get(CONFIG_FILE, revision).parent
        snapshot = folder.parents[subfolder.count("/")] if subfolder else folder
        pinned = snapshot.name if _COMMIT.fullmatch(snapshot.name) else revision
        weights = str(read_config(folder)["weights"].get("file", WEIGHTS_FILE))
        name = weights
        if PurePosixPath(weights).name == weights and weights not in ("", ".", ".."):
            get(weights, pinned)  # otherwise load_folder refuses the config, naming the file
    except HFValidationError as e:
        raise ConfigError(f"{spec or repo_id!r}: {e}") from None
    except (OSError, ValueError, EntryNotFoundError) as e:  # huggingface_hub's errors derive from these
        if isinstance(e, FormatError):
            raise
        message = _hub_failure(e, repo_id, subfolder, revision, name, offline)
        if local is not None:
            message = (
                f"{spec!r} is neither a local path ({local} does not exist) nor a flow on the Hugging Face Hub "
                f"(read as the repo id {repo_id!r}: {message})"
            )
        raise MissingFileError(message) from None
    _verify_files(folder, files or {})
    return loader(folder)


def _fetch_hf(
    spec: str, offline: bool, files: dict[str, str], revision: str | None = None, loader: Loader = load_folder
) -> Any:
    """``hf://user/repo[/subfolder][@revision]`` (or a registry's plain ``user/repo``) from the Hub."""
    repo_id, subfolder, revision = parse_hf_spec(spec, revision)
    return _fetch_hub(
        repo_id, subfolder=subfolder, revision=revision, offline=offline, files=files, spec=spec, loader=loader
    )


# ----- names ------------------------------------------------------------------------------------
def _verify_files(folder: Path, files: dict[str, str]) -> None:
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise FormatError(f"{folder} lacks {name}, which the registry lists")
        check_sha256(path, digest)


def resolve_folder(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The local folder of a registered or cached name.

    Args:
        name: a registry name (or a name in the package's cache).
        cache_dir: the package cache to look in (default :func:`cache_root`).

    Returns:
        The packaged folder, else the cached one, else ``None``.
    """
    packaged = CHECKPOINTS_DIR / name
    if (packaged / CONFIG_FILE).is_file():
        return packaged
    cached = cache_root(cache_dir) / name
    if (cached / CONFIG_FILE).is_file():
        return cached
    return None


def _no_revision(revision: str | None, spec: str, what: str) -> None:
    if revision is not None:
        raise ConfigError(
            f"revision={revision!r} applies to Hugging Face Hub repos only, but {spec!r} is {what}; "
            "drop revision= (registered names and files are pinned by their sha256)"
        )


def load_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool = False,
) -> Any:
    """Load a pretrained flow, verified, in eval mode.

    A registered name or an existing local path always wins; a string ``owner/name`` that is
    neither is a Hugging Face Hub repo id. The returned FlowModule's ``log_prob`` and
    ``sample`` work in the raw units of its data (any standardisation it was trained with is
    inside it), and its ``pretrained_config`` holds the record (metrics, data, license).

    Example::

        flow = load_pretrained("nsf-moons")                  # a registered name
        flow = load_pretrained("user/repo", revision="v1")   # a Hub repo, in the standard HF cache
        flow = load_pretrained("runs/my-flow")               # a folder (it exists, so it wins)

    Args:
        name_or_path: a folder or ``.zip`` path (a ``Path`` is always a path), a registered name
            (see :func:`~unflow_zoo.pretrained.list_pretrained`), a name in the package cache, a Hub
            repo id ``owner/name``, ``hf://owner/name[/subfolder][@revision]``, or an ``https://`` /
            ``file://`` URL (``#sha256=<hex>`` checks the download).
        revision: for a Hub repo, the branch, tag or commit hash (default ``main``).
        cache_dir: the package's cache for registered names and URL downloads (default
            ``$UNFLOW_ZOO_CACHE`` or ``~/.cache/unflow_zoo``); Hub repos use the Hugging Face cache.
        offline: never use the network (also ``UNFLOW_ZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``).

    Returns:
        The FlowModule, in eval mode.

    Raises:
        ConfigError: unknown name (the message lists the available ones; a ``ValueError``), a
            malformed ``hf://`` spec, or ``revision=`` for something that is not a Hub repo.
        IntegrityError: a file's sha256 differs from the recorded one; nothing is loaded.
        FormatError: a newer format version, an unknown family, an unsafe zip.
        MissingFileError: a path that does not exist, or a flow that is not available locally
            while the network is off (the message names the repo, revision and cache; an ``OSError``).
    """
    return _resolve_and_load(name_or_path, revision, cache_dir, offline, load_folder)


def load_flow(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool = False,
) -> Flow:
    """Load a pretrained flow as a plain torch :class:`~unflow_zoo.core.flow.Flow`, verified, in eval mode.

    Resolves and verifies exactly as :func:`load_pretrained` (registered names, paths, the cache,
    URLs, Hub repos; every sha256 checked before anything is loaded), but builds no LightningModule:
    the family's Lightning-free builder (:func:`unflow_zoo.flows.build`) makes the flow from the
    recorded hyper-parameters and the weights load into it. Its ``log_prob`` and ``sample`` work in
    the raw units of the data, as :func:`load_pretrained`'s do: a standardisation the flow was
    trained with sits in front of it (:class:`~unflow_zoo.pretrained.preprocessing.RawDataFlow`;
    :func:`~unflow_zoo.pretrained.preprocessing.served_flow` gives the flow over standardised data).

    Example::

        flow = load_flow("nsf-moons")
        flow.log_prob(x)                    # == load_pretrained("nsf-moons").log_prob(x)
        flow(context=None).sample((100,))   # the torch.distributions view (sbi, Pyro)

    Args:
        name_or_path: what :func:`load_pretrained` takes: a folder or ``.zip`` path, a registered
            name, a name in the package cache, a Hub repo id ``owner/name``,
            ``hf://owner/name[/subfolder][@revision]`` or an ``https://`` / ``file://`` URL.
        revision: for a Hub repo, the branch, tag or commit hash (default ``main``).
        cache_dir: the package's cache for registered names and URL downloads.
        offline: never use the network (also ``UNFLOW_ZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``).

    Returns:
        The flow, in eval mode; ``flow.pretrained_config`` holds the record (metrics, data, license).

    Raises:
        ConfigError: as :func:`load_pretrained`.
        IntegrityError: a file's sha256 differs from the recorded one; nothing is loaded.
        FormatError: as :func:`load_pretrained`, and for a family without a registered flow builder
            (a user's own LightningModule: load it with :func:`load_pretrained`, whose ``.flow`` is the Flow).
        MissingFileError: as :func:`load_pretrained`.
    """
    flow: Flow = _resolve_and_load(name_or_path, revision, cache_dir, offline, load_flow_folder)
    return flow


def _resolve_and_load(
    name_or_path: str | os.PathLike[str],
    revision: str | None,
    cache_dir: str | Path | None,
    offline: bool,
    loader: Loader,
) -> Any:
    """Resolve ``name_or_path`` (see the module docstring), verify it and hand the folder to ``loader``."""
    offline = is_offline(offline)
    cache = cache_root(cache_dir)
    spec = os.fspath(name_or_path)
    if spec.startswith("hf://"):
        return _fetch_hf(spec, offline, {}, revision, loader)
    if spec.startswith(_REMOTE):
        _no_revision(revision, spec, "a URL")
        return _fetch_url(spec, cache, offline, None, {}, loader)
    path = Path(spec).expanduser()
    if path.exists():
        _no_revision(revision, spec, "a local path")
        return _load_path(path, loader)
    entry = load_registry().get(spec)
    if entry is not None:
        _no_revision(revision, spec, "a registered name")
        files = dict(entry.get("files", {}))
        folder = resolve_folder(spec, cache)
        if folder is not None:
            _verify_files(folder, files)
            return loader(folder)
        if entry.get("hf"):
            return _fetch_hf(str(entry["hf"]), offline, files, loader=loader)
        if entry.get("url"):
            return _fetch_url(str(entry["url"]), cache, offline, entry.get("sha256"), files, loader)
        raise MissingFileError(
            f"{spec!r} is registered but has no packaged files, no cached copy in {cache} and no url/hf source"
        )
    plain_name = "/" not in spec and "\\" not in spec
    if plain_name and (cache / spec / CONFIG_FILE).is_file():
        _no_revision(revision, spec, "a name in the cache")
        return loader(cache / spec)
    repo_id = None if isinstance(name_or_path, os.PathLike) else hub_repo_id(spec)
    if repo_id is not None:
        return _fetch_hub(repo_id, revision=revision, offline=offline, spec=spec, local=path.absolute(), loader=loader)
    if isinstance(name_or_path, os.PathLike) or not plain_name or spec.endswith(".zip"):
        raise MissingFileError(
            f"no such file or folder: {path.absolute()} (and {spec!r} is not a registered name"
            + (" nor a Hugging Face Hub repo id owner/name)" if not plain_name else ")")
        )
    raise unknown_name_error(spec)
