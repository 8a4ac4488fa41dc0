"""Fetch a file by URL, verify its checksum, and unpack archives safely.

:func:`download` has ``torch.hub.download_url_to_file`` fetch the bytes into a temporary
file next to the destination, checks every published digest of that file in full, and
renames it into place only once they all match, so a destination path either holds the
verified file or nothing: an interrupted or corrupted download never leaves a
half-written file that a later run could mistake for the real one. ``file://`` URLs work
like any other (the tests use them, and a user can point at a copy on a shared disk).

:func:`extract_tar` unpacks with tarfile's ``"data"`` filter (PEP 706), which
refuses members that would land outside the destination (``../``, absolute
paths, links pointing out), device files and set-uid bits.

References:
    PEP 706, "Filter for tarfile.extractall" (Python 3.12, backported to 3.8.17+,
    3.9.17+, 3.10.12+, 3.11.4+).
    ``torch.hub.download_url_to_file`` (PyTorch): the HTTP(S)/``file://`` fetch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch.hub import download_url_to_file

from unflow_zoo.errors import ChecksumError, ConfigError, MissingFileError

__all__ = ["ChecksumError", "download", "extract_tar", "file_digest", "sha256_file"]

_CHUNK = 1 << 20  # 1 MiB: large enough to keep hashing cheap, small enough to stream


def _file_digests(path: str | os.PathLike[str], algorithms: Iterable[str]) -> dict[str, str]:
    """Hex digests of the file at ``path`` for each ``hashlib`` algorithm, in one pass of 1 MiB chunks."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path``, read in 1 MiB chunks.

    Args:
        path: the file.
        algorithm: a ``hashlib`` algorithm name (``"sha256"``, ``"md5"``, ...).

    Returns:
        The lower-case hex digest.
    """
    return _file_digests(path, [algorithm])[algorithm]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of the file at ``path``."""
    return file_digest(path, "sha256")


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    expected = {
        name: value.lower().removeprefix(f"{name}:") for name, value in (("sha256", sha256), ("md5", md5)) if value
    }
    if not expected:
        raise ConfigError(
            "download() needs a checksum to verify against: pass sha256= (or md5= where the publisher lists only that)"
        )
    for name, value in expected.items():
        width = hashlib.new(name).digest_size * 2
        if len(value) != width or any(c not in "0123456789abcdef" for c in value):
            raise ConfigError(f"{name} must be {width} hex digits, got {value!r}")
    return expected


def _check(path: Path, actual: dict[str, str], expected: dict[str, str], what: str) -> None:
    for name, value in expected.items():
        if actual[name] != value:
            raise ChecksumError(
                f"{what} {path.name}: {name} mismatch, expected {value} but got {actual[name]}; "
                "the file is corrupted or was changed upstream, so it was not kept"
            )


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None,
    *,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to the file ``dest`` and verify it; returns ``dest``.

    The bytes go to a temporary file in ``dest``'s folder; only when every given
    digest of it matches is it renamed (atomically, ``os.replace``) to ``dest``.
    A ``dest`` that already exists and matches is kept without downloading; one
    that does not match is replaced.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        dest: the file to create; its folder is created if needed.
        sha256: expected SHA-256 hex digest (``"sha256:"`` prefix allowed), or
            None when only ``md5`` is published.
        md5: expected MD5 hex digest (``"md5:"`` prefix allowed, as Zenodo lists it),
            checked in addition to ``sha256``.
        progress: show a tqdm progress bar on stderr.

    Returns:
        ``dest`` (``~`` expanded), holding the verified file.

    Raises:
        ChecksumError: a digest differs; names the file, the expected and the actual
            digest, and removes the temporary file, so nothing is left at ``dest``.
        ConfigError: neither ``sha256`` nor ``md5`` given, or not hex digits (a ``ValueError``).
        urllib.error.URLError: the URL cannot be opened.
    """
    expected = _expected(sha256, md5)
    dest = Path(dest).expanduser()
    if dest.is_file() and _file_digests(dest, expected) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as dest: os.replace is then a rename within one file system, hence atomic.
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        # torch.hub's fetch (already a dependency, maintained, used for every torchvision weight
        # file) does the transfer: urllib for http(s):// and file://, a tqdm bar, its own
        # ".partial" file that it removes on any error (Ctrl-C included) and moves to `tmp` only
        # once complete. Our checks stay around it, because it cannot do them: its hash_prefix
        # is a SHA-256 *prefix* raising a bare RuntimeError, and it knows no MD5, the only digest
        # some archives publish. So `tmp` is hashed in full afterwards (one more read of a file
        # that is usually still in the page cache) before it may become `dest`.
        # It sets no socket timeout (our old loop used 60 s): a stalled server stalls the
        # download until Ctrl-C, which leaves nothing behind. pooch would do the whole job (any
        # hash, retries) but is one more dependency for one archive and checks one digest per file.
        download_url_to_file(url, str(tmp), hash_prefix=None, progress=progress)
        _check(dest, _file_digests(tmp, expected), expected, f"downloaded {url} ->")
        os.replace(tmp, dest)
    except BaseException:  # also Ctrl-C: never leave the partial file behind
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _member_path(name: str) -> str:
    return name.removeprefix("./")


def _wanted(name: str, prefixes: Sequence[str] | None) -> bool:
    name = _member_path(name)
    if prefixes is None:
        return True
    return any(name == p.rstrip("/") or name.startswith(p.rstrip("/") + "/") for p in prefixes)


def _merge_into(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst``, replacing files and merging folders."""
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge_into(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def extract_tar(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    members: Sequence[str] | None = None,
) -> list[Path]:
    """Unpack the tar archive ``archive`` (any compression tarfile reads) into ``dest``.

    Members are extracted with ``filter="data"`` into a temporary folder inside
    ``dest`` and then moved into place, so an interrupted extraction leaves no
    truncated file where a loader would look.

    Args:
        archive: path of the ``.tar``/``.tar.gz``/``.tar.bz2``/``.tar.xz`` file.
        dest: folder to extract into (created if needed).
        members: only extract members equal to, or inside, one of these archive
            paths (e.g. ``["data/power"]``); all members if None.

    Returns:
        The extracted regular files, as paths under ``dest``.

    Raises:
        tarfile.FilterError: a member would escape ``dest`` (``../``, absolute
            path, outward link) or is a device file; nothing is moved into ``dest``.
        MissingFileError: ``members`` matched nothing in the archive (a ``FileNotFoundError``).
    """
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with tarfile.open(archive, "r:*") as tar:
            chosen = [m for m in tar.getmembers() if _wanted(m.name, members)]
            if not chosen:
                raise MissingFileError(
                    f"{archive}: no member matches {list(members or [])}; "
                    "is this the right archive (list it with `tar tzf`)?"
                )
            tar.extractall(staging, members=chosen, filter="data")
            files = [Path(_member_path(m.name)) for m in chosen if m.isfile()]
        _merge_into(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [dest / f for f in files]
