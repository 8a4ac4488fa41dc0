"""No file unflow-zoo reads chooses code: pickled checkpoints (local, URL), pretrained folders and zips.

Each payload below is live (an unrestricted unpickler, or a loader that calls what a file names,
would run it); every entry point must refuse it with the package's own error and leave no trace.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from unflow_zoo import load_pretrained
from unflow_zoo.cli import main
from unflow_zoo.errors import FormatError, UnsafeFileError
from unflow_zoo.models import FlowModule
from unflow_zoo.pretrained import rebuild_datamodule, save_pretrained
from unflow_zoo.pretrained.convert import export_checkpoint, read_checkpoint
from unflow_zoo.testing import small_model

MAF = "unflow_zoo.models.maf.MaskedAutoregressiveFlow"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path, hf_offline):
    monkeypatch.setenv("UNFLOW_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # where torch.hub stores URL checkpoints
    hf_offline(True)
    monkeypatch.delenv("UNFLOW_ZOO_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["unflow-zoo"])


class _Payload:
    """Unpickling this creates ``path``: it stands for any code an attacker would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def evil_ckpt(tmp_path, marker) -> Path:
    """A Lightning-shaped checkpoint of a real MAF whose pickle also builds a payload."""
    model = small_model("maf")
    ckpt = tmp_path / "served" / "evil.ckpt"
    ckpt.parent.mkdir()
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {**dict(model.hparams), "_class_path": MAF},
            "pytorch-lightning_version": "2.6.0",
            "gift": _Payload(marker),
        },
        ckpt,
    )
    return ckpt


@pytest.fixture
def http_url(evil_ckpt):
    """``evil_ckpt`` served over HTTP on localhost; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil_ckpt.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_payload_is_live(evil_ckpt, marker):
    # Without the safeguards the payload runs: the tests below are not vacuous.
    torch.load(evil_ckpt, weights_only=False)
    assert marker.exists()


def _cli_refuses(argv: list[str], capsys, match: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "unflow-zoo: error:" in err and match in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_lightning_subcommands_refuse_a_local_pickle_payload(subcommand, evil_ckpt, marker, capsys, tmp_path):
    argv = [subcommand, "--model", MAF, "--data.dataset", "moons", "--data.n_samples", "200"]
    argv += ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    _cli_refuses([*argv, "--ckpt_path", str(evil_ckpt)], capsys, "refusing")
    assert not marker.exists()


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_lightning_subcommands_refuse_a_pickle_payload_by_url(subcommand, http_url, marker, capsys, tmp_path):
    argv = [subcommand, "--model", MAF, "--data.dataset", "moons", "--data.n_samples", "200"]
    argv += ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    argv += ["--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1"]
    _cli_refuses([*argv, "--ckpt_path", f"{http_url}/evil.ckpt"], capsys, "refusing")
    assert not marker.exists()


def test_weights_only_false_is_refused_on_the_command_line(evil_ckpt, marker, capsys, tmp_path, http_url):
    argv = ["test", "--model", MAF, "--data.dataset", "moons", "--data.n_samples", "200"]
    argv += ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    _cli_refuses([*argv, "--ckpt_path", f"{http_url}/evil.ckpt", "--weights_only", "false"], capsys, "weights_only")
    assert not marker.exists()


def test_load_from_checkpoint_reads_urls_and_files_with_weights_only(evil_ckpt, http_url, marker):
    # Lightning's own default for a URL is weights_only=False
    for source in (f"{http_url}/evil.ckpt", str(evil_ckpt)):
        with pytest.raises(Exception, match="Weights only load failed"):
            FlowModule.load_from_checkpoint(source)
        assert not marker.exists()


def test_evaluate_and_export_refuse_a_pickle_payload(evil_ckpt, marker, capsys, tmp_path):
    _cli_refuses(["evaluate", "--ckpt", str(evil_ckpt)], capsys, "refusing")
    _cli_refuses(["export", str(evil_ckpt), str(tmp_path / "out")], capsys, "refusing")
    with pytest.raises(UnsafeFileError, match="tensors and plain containers"):
        export_checkpoint(evil_ckpt, tmp_path / "out.zip")
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "out.zip").exists()


def test_a_checkpoint_never_chooses_the_class_to_import(tmp_path, capsys, monkeypatch):
    model = small_model("maf")
    ckpt = tmp_path / "odd.ckpt"
    named = "antigravity_like_module.Flow"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"_class_path": named}}, ckpt)
    imported: list[str] = []
    real_import = __import__

    def spy(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", spy)
    argv = ["test", "--model", MAF, "--data.dataset", "moons", "--data.n_samples", "200", "--trainer.logger", "false"]
    _cli_refuses([*argv, "--ckpt_path", str(ckpt)], capsys, "not a registered unflow-zoo family")
    assert not any(name.startswith("antigravity_like_module") for name in imported)


def test_a_file_that_is_not_a_checkpoint_gets_a_clear_error(tmp_path, capsys):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, not a checkpoint\n")
    _cli_refuses(["export", str(text), str(tmp_path / "out")], capsys, "is not a torch checkpoint")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(FormatError, match="not a torch checkpoint"):
        read_checkpoint(junk)


# ----- pretrained folders ----------------------------------------------------------------------------
@pytest.fixture
def pretrained_folder(tmp_path) -> Path:
    path = tmp_path / "flow"
    save_pretrained(
        small_model("maf"),
        path,
        data={"class_path": "DensityDataModule", "init_args": {"dataset": "moons", "n_samples": 200}},
    )
    return path


def _set_data(folder: Path, data) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["data"] = data
    (folder / "config.json").write_text(json.dumps(config))


DOWNLOADER = {
    "class_path": "unflow_zoo.data.download.download",
    "init_args": {"url": "file:///etc/hostname", "destination": "PLACEHOLDER", "sha256": None},
}


def test_config_json_cannot_call_a_package_function(pretrained_folder, tmp_path, capsys):
    target = tmp_path / "site-packages" / "evil.pth"
    data = json.loads(json.dumps(DOWNLOADER).replace("PLACEHOLDER", str(target)))
    _set_data(pretrained_folder, data)
    with pytest.raises(UnsafeFileError, match="DensityDataModule"):
        rebuild_datamodule(load_pretrained(pretrained_folder).pretrained_config)
    _cli_refuses(["evaluate", "--pretrained", str(pretrained_folder)], capsys, "refusing to rebuild")
    assert not target.exists() and not target.parent.exists()


@pytest.mark.parametrize(
    "data, match",
    [
        ({"class_path": "unflow_zoo.data.module.DensityDataModule", "init_args": {"evil": 1}}, "unknown data module"),
        ({"class_path": "DensityDataModule", "init_args": {"dataset": {"class_path": "os.system"}}}, "plain JSON"),
        ({"class_path": "DensityDataModule", "init_args": ["moons"]}, "mapping"),
        ({"class_path": "builtins.eval", "init_args": {}}, "refusing"),
        ("unflow_zoo.data.download.download", "mapping"),
    ],
)
def test_data_records_outside_the_vocabulary_are_refused(pretrained_folder, data, match):
    _set_data(pretrained_folder, data)
    with pytest.raises(UnsafeFileError, match=match):
        rebuild_datamodule(load_pretrained(pretrained_folder).pretrained_config)


def test_where_data_live_is_the_callers_choice(pretrained_folder, tmp_path):
    _set_data(
        pretrained_folder,
        {
            "class_path": "DensityDataModule",
            "init_args": {
                "dataset": "power",
                "data_dir": str(tmp_path / "elsewhere"),
                "download": True,
                "num_workers": 64,
            },
        },
    )
    dm = rebuild_datamodule(load_pretrained(pretrained_folder).pretrained_config, data_dir=str(tmp_path / "mine"))
    assert dm.hparams.data_dir == str(tmp_path / "mine")
    assert dm.hparams.download is False and dm.hparams.num_workers == 0
    _set_data(
        pretrained_folder, {"class_path": "DensityDataModule", "init_args": {"dataset": "file", "path": "/etc/passwd"}}
    )
    with pytest.raises(ValueError, match="pass the file"):
        rebuild_datamodule(load_pretrained(pretrained_folder).pretrained_config)


def test_a_zip_by_url_with_a_malicious_record_is_refused(pretrained_folder, tmp_path, capsys, hf_offline):
    target = tmp_path / "written-by-zip.pth"
    _set_data(pretrained_folder, json.loads(json.dumps(DOWNLOADER).replace("PLACEHOLDER", str(target))))
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("config.json", "model.safetensors"):
            zf.write(pretrained_folder / name, name)
    shutil.rmtree(pretrained_folder)
    hf_offline(False)  # a file:// URL is fetched like any download
    _cli_refuses(["evaluate", "--pretrained", archive.as_uri()], capsys, "refusing to rebuild")
    assert not target.exists()
