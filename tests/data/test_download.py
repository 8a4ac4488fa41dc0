"""download(), sha256_file() and extract_tar(), on local files reached by file:// URLs (never the network)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from unflow_zoo.data.download import ChecksumError, download, extract_tar, file_digest, sha256_file

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: more than one read chunk


def _source(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src, hashlib.sha256(PAYLOAD).hexdigest()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sha256_file_matches_hashlib(tmp_path):
    src, digest = _source(tmp_path)
    assert sha256_file(src) == digest
    assert file_digest(src, "md5") == hashlib.md5(PAYLOAD).hexdigest()


def test_download_file_url_verifies_and_places_file(tmp_path):
    src, digest = _source(tmp_path)
    dest = tmp_path / "out" / "blob.bin"
    assert download(src.as_uri(), dest, digest, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]  # no temporary file left


def test_download_accepts_prefixed_and_md5_digests(tmp_path):
    src, digest = _source(tmp_path)
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    dest = download(src.as_uri(), tmp_path / "a.bin", f"sha256:{digest}", md5=f"md5:{md5}", progress=False)
    assert dest.read_bytes() == PAYLOAD
    only_md5 = download(src.as_uri(), tmp_path / "b.bin", None, md5=md5, progress=False)
    assert only_md5.read_bytes() == PAYLOAD


def test_download_checksum_mismatch_names_both_digests_and_leaves_nothing(tmp_path):
    src, digest = _source(tmp_path)
    wrong = "0" * 64
    out = tmp_path / "out"
    with pytest.raises(ChecksumError) as err:
        download(src.as_uri(), out / "blob.bin", wrong, progress=False)
    message = str(err.value)
    assert "blob.bin" in message and wrong in message and digest in message
    assert list(out.iterdir()) == []


def test_download_md5_mismatch_is_refused(tmp_path):
    src, digest = _source(tmp_path)
    with pytest.raises(ChecksumError, match="md5"):
        download(src.as_uri(), tmp_path / "o" / "x.bin", digest, md5="f" * 32, progress=False)
    assert list((tmp_path / "o").iterdir()) == []


def test_download_needs_a_well_formed_checksum(tmp_path):
    src, _ = _source(tmp_path)
    with pytest.raises(ValueError, match="needs a checksum"):
        download(src.as_uri(), tmp_path / "x", None, progress=False)
    with pytest.raises(ValueError, match="64 hex digits"):
        download(src.as_uri(), tmp_path / "x", "abc", progress=False)


def test_download_keeps_a_verified_file_without_fetching(tmp_path):
    src, digest = _source(tmp_path)
    dest = download(src.as_uri(), tmp_path / "blob.bin", digest, progress=False)
    src.unlink()  # the URL is now dead: only a skipped fetch can succeed
    assert download(src.as_uri(), dest, digest, progress=False) == dest


def test_download_replaces_a_corrupt_file(tmp_path):
    src, digest = _source(tmp_path)
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"truncated")
    download(src.as_uri(), dest, digest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_extract_tar_extracts_and_filters_members(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", {"data/power/data.npy": b"p", "data/gas/g.pickle": b"g", "data/x.txt": b"x"})
    files = extract_tar(archive, tmp_path / "all")
    assert sorted(f.relative_to(tmp_path / "all").as_posix() for f in files) == [
        "data/gas/g.pickle",
        "data/power/data.npy",
        "data/x.txt",
    ]
    assert (tmp_path / "all" / "data" / "power" / "data.npy").read_bytes() == b"p"
    some = tmp_path / "some"
    extract_tar(archive, some, members=["data/power"])
    assert sorted(p.relative_to(some).as_posix() for p in some.rglob("*") if p.is_file()) == ["data/power/data.npy"]
    assert not any(p.name.startswith(".extract-") for p in some.iterdir())  # staging folder removed
    with pytest.raises(FileNotFoundError, match="no member matches"):
        extract_tar(archive, some, members=["data/hepmass"])


@pytest.mark.parametrize("evil", ["../evil.txt", "data/../../evil.txt"])
def test_extract_tar_refuses_path_traversal(tmp_path, evil):
    archive = _tar(tmp_path / "evil.tar.gz", {"data/ok.txt": b"ok", evil: b"pwned"})
    dest = tmp_path / "dest"
    with pytest.raises(tarfile.FilterError):
        extract_tar(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert list(dest.iterdir()) == []  # nothing moved into place, not even the harmless member


def test_extract_tar_keeps_absolute_member_paths_inside_dest(tmp_path):
    target = tmp_path / "abs_evil.txt"  # an absolute member name pointing at this file
    archive = _tar(tmp_path / "abs.tar.gz", {str(target): b"pwned"})
    dest = tmp_path / "dest"
    extract_tar(archive, dest)
    assert not target.exists()  # the "data" filter strips the leading "/"
    assert (dest / str(target).lstrip("/")).read_bytes() == b"pwned"


def test_extract_tar_refuses_links_pointing_outside(tmp_path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("data/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../outside"
        tar.addfile(link)
    with pytest.raises(tarfile.FilterError):
        extract_tar(archive, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_download_then_extract_roundtrip(tmp_path):
    archive = _tar(tmp_path / "src.tar.gz", {"data/miniboone/data.npy": b"123"})
    digest = sha256_file(archive)
    data_dir = tmp_path / "data_dir"
    local = download(archive.as_uri(), data_dir / "data.tar.gz", digest, progress=False)
    extract_tar(local, data_dir)
    assert (data_dir / "data" / "miniboone" / "data.npy").read_bytes() == b"123"


def test_download_of_a_dead_url_raises_and_leaves_nothing(tmp_path):
    import urllib.error

    out = tmp_path / "out"
    with pytest.raises(urllib.error.URLError):
        download((tmp_path / "gone.bin").as_uri(), out / "blob.bin", "0" * 64, progress=False)
    assert list(out.iterdir()) == []  # neither our .part nor torch.hub's .partial file


def test_download_over_http_with_torch_hub(tmp_path):
    """The fetch is torch.hub's: check it against a real (local) HTTP server, not only file://."""
    import functools
    import http.server
    import threading

    src, digest = _source(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{src.name}"
        dest = download(
            url, tmp_path / "http" / "blob.bin", digest, md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False
        )
        assert dest.read_bytes() == PAYLOAD
        with pytest.raises(ChecksumError, match="sha256 mismatch"):
            download(url, tmp_path / "bad" / "blob.bin", "1" * 64, progress=False)
        assert list((tmp_path / "bad").iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()
