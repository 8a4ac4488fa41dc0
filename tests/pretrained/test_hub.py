"""Hugging Face Hub repos: plain ``owner/name`` ids and ``hf://`` specs resolve through huggingface_hub's
own cache; ``push_to_hub`` uploads one verified flow per repo with its model card. Never touches the network:
the Hub is a cache folder built here in huggingface_hub's layout, and ``HfApi`` is a fake."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import sys
import zipfile
from pathlib import Path
from typing import ClassVar

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants as hf_constants

from unflow_zoo import create_model
from unflow_zoo.errors import ConfigError, MissingFileError
from unflow_zoo.models import FlowModule
from unflow_zoo.pretrained import load_pretrained, push_to_hub, render_card, save_pretrained
from unflow_zoo.pretrained import resolve as resolve_mod
from unflow_zoo.pretrained.card import CARD_FILE, PLACEHOLDER_LOAD_LINE
from unflow_zoo.pretrained.hub import push_main
from unflow_zoo.pretrained.serialization import load_folder
from unflow_zoo.testing import randomize_parameters_

ROOT = Path(__file__).resolve().parents[2]
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
X = torch.linspace(-2, 2, 14).reshape(7, 2)


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache under tmp_path, offline, and no socket may connect.

    huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE into ``huggingface_hub.constants``
    once, when it is imported (long before this test), and its functions read those constants at
    call time. Setting the environment alone would change nothing in this process, so the
    constants are patched too (the environment is set for any subprocess and for the record).
    """
    cache = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("UNFLOW_ZOO_CACHE", str(tmp_path / "unflow-cache"))
    monkeypatch.delenv("UNFLOW_ZOO_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the network was touched: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(resolve_mod.urllib.request, "urlopen", refuse)
    return cache


@pytest.fixture
def online(monkeypatch):
    """Hugging Face's offline mode off (push needs it); the fake HfApi is the only "Hub"."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")


def _model(seed: int = 0) -> FlowModule:
    torch.manual_seed(seed)
    model = create_model("nsf", event_shape=(2,), n_layers=2, hidden=[8], bins=4)
    return randomize_parameters_(model, std=0.2, seed=seed).eval()


def _logp(model: FlowModule) -> torch.Tensor:
    with torch.no_grad():
        return model.log_prob(X)


def _saved(tmp_path: Path, name: str = "flow", seed: int = 0, **kwargs) -> tuple[Path, FlowModule]:
    model = _model(seed)
    folder = save_pretrained(model, tmp_path / "saved" / name, **kwargs)
    return folder, model


def _add_to_cache(
    cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",), subfolder: str = ""
) -> Path:
    """Put ``folder``'s files into ``cache`` as huggingface_hub does: blobs by hash, snapshot symlinks, refs."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit / subfolder
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        try:
            (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
        except OSError:  # no symlinks (Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, snapshot / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def downloads(monkeypatch):
    """The calls into huggingface_hub's own resolution (``hf_hub_download``), recorded."""
    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    return calls


# ----- loading ---------------------------------------------------------------------------------------
def test_a_plain_repo_id_loads_through_huggingface_hub_and_its_cache(tmp_path, hub_cache, downloads):
    folder, model = _saved(tmp_path)
    assert (folder / CARD_FILE).is_file()  # the card travels with the flow, and does not get in the way
    snapshot = _add_to_cache(hub_cache, "user/repo", folder, COMMIT_A)
    loaded = load_pretrained("user/repo")
    assert torch.equal(_logp(loaded), _logp(model)) and not loaded.training
    assert torch.equal(_logp(load_pretrained("user/repo", revision=COMMIT_A)), _logp(model))
    via_class = FlowModule.from_pretrained("user/repo")
    assert type(via_class) is type(model) and torch.equal(_logp(via_class), _logp(model))
    assert torch.equal(_logp(FlowModule.from_pretrained("user/repo", revision=COMMIT_A)), _logp(model))
    # every file came from huggingface_hub's resolution, offline, in the standard cache
    assert downloads and all(a[0] == "user/repo" and k["local_files_only"] for a, k in downloads)
    assert {a[1] for a, _ in downloads} == {"config.json", "model.safetensors"}
    assert all("cache_dir" not in k for _, k in downloads)  # huggingface_hub's own cache, not a private copy
    assert (snapshot / "model.safetensors").is_symlink() or os.name == "nt"  # the real layout: links into blobs/
    assert not (tmp_path / "unflow-cache").exists()  # nothing copied into the package cache


def test_revision_picks_a_branch_tag_or_commit(tmp_path, hub_cache):
    old, old_model = _saved(tmp_path, "old", seed=1)
    new, new_model = _saved(tmp_path, "new", seed=2)
    _add_to_cache(hub_cache, "user/repo", old, COMMIT_A, refs=("v1",))
    _add_to_cache(hub_cache, "user/repo", new, COMMIT_B, refs=("main",))
    assert torch.equal(_logp(load_pretrained("user/repo")), _logp(new_model))
    assert torch.equal(_logp(load_pretrained("user/repo", revision="v1")), _logp(old_model))
    assert torch.equal(_logp(load_pretrained("user/repo", revision=COMMIT_A)), _logp(old_model))
    assert torch.equal(_logp(FlowModule.from_pretrained("user/repo", revision="v1")), _logp(old_model))
    assert not torch.equal(_logp(old_model), _logp(new_model))


def test_hf_specs_keep_working_with_subfolders_and_revisions(tmp_path, hub_cache):
    folder, model = _saved(tmp_path)
    _add_to_cache(hub_cache, "user/flows", folder, COMMIT_A, refs=("main", "v2"), subfolder="nsf-moons")
    for spec in ("hf://user/flows/nsf-moons", f"hf://user/flows/nsf-moons@{COMMIT_A}", "hf://user/flows/nsf-moons@v2"):
        assert torch.equal(_logp(load_pretrained(spec)), _logp(model)), spec
    assert torch.equal(_logp(load_pretrained("hf://user/flows/nsf-moons", revision="v2")), _logp(model))
    with pytest.raises(ConfigError, match="pass one"):
        load_pretrained("hf://user/flows/nsf-moons@v2", revision="main")
    with pytest.raises(ConfigError, match="hf://user/repo"):
        load_pretrained("hf://just-one-part")


def test_a_repo_missing_from_the_cache_offline_names_repo_revision_and_cache(hub_cache):
    with pytest.raises(MissingFileError) as info:
        load_pretrained("someone/absent", revision="v3")
    message = str(info.value)
    assert "someone/absent" in message and "v3" in message and str(hub_cache) in message
    assert "network is off" in message
    assert isinstance(info.value, FileNotFoundError)  # `except OSError` keeps working


def test_a_relative_path_that_does_not_exist_names_both_readings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingFileError) as info:
        load_pretrained("runs/x")
    message = str(info.value)
    assert str(tmp_path / "runs" / "x") in message and "local path" in message
    assert "Hugging Face Hub" in message and "repo id 'runs/x'" in message
    with pytest.raises(MissingFileError, match="no such file or folder"):  # not an owner/name: a path only
        load_pretrained("runs/x/y")
    with pytest.raises(MissingFileError, match="no such file or folder"):
        load_pretrained(Path("user/repo"))  # a Path is always a path


def test_an_existing_local_path_wins_over_the_hub(tmp_path, hub_cache, monkeypatch):
    local, local_model = _saved(tmp_path, seed=1)
    remote, remote_model = _saved(tmp_path, "remote", seed=2)
    _add_to_cache(hub_cache, "runs/x", remote, COMMIT_A)
    monkeypatch.chdir(tmp_path)
    assert torch.equal(_logp(load_pretrained("runs/x")), _logp(remote_model))  # no such folder: the Hub repo
    shutil.copytree(local, tmp_path / "runs" / "x")
    assert torch.equal(_logp(load_pretrained("runs/x")), _logp(local_model))  # now the folder wins
    with pytest.raises(ConfigError, match="revision="):
        load_pretrained("runs/x", revision="main")
    with pytest.raises(ConfigError, match="registered name"):
        load_pretrained("constrained-mog1d", revision="main")


def test_a_tampered_hub_file_is_refused(tmp_path, hub_cache):
    folder, _ = _saved(tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    _add_to_cache(hub_cache, "user/repo", folder, COMMIT_A)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_pretrained("user/repo")


@pytest.mark.parametrize("source", ["user/repo", f"hf://user/repo@{COMMIT_A}"])
def test_a_registered_name_with_a_hub_source_is_checked_against_the_registry(tmp_path, hub_cache, monkeypatch, source):
    folder, model = _saved(tmp_path)
    _add_to_cache(hub_cache, "user/repo", folder, COMMIT_A)
    files = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("config.json", "model.safetensors")
    }
    registry = {"hub-flow": {"family": "nsf", "hf": source, "files": files}}
    monkeypatch.setattr(resolve_mod, "load_registry", lambda: registry)
    assert torch.equal(_logp(load_pretrained("hub-flow")), _logp(model))
    registry["hub-flow"]["files"] = {**files, "config.json": "0" * 64}
    with pytest.raises(ValueError, match="0" * 64):
        load_pretrained("hub-flow")


@pytest.mark.parametrize(
    ("spec", "is_repo"),
    [
        ("user/repo", True),
        ("User-1/my.flow_2", True),
        ("nsf-moons", False),
        ("runs/x/y", False),
        ("./runs", False),
        ("user/repo.git", False),
        ("user/re--po", False),
        ("user/", False),
        ("c:/x", False),
        ("a\\b", False),
    ],
)
def test_what_reads_as_a_hub_repo_id(spec, is_repo):
    assert (resolve_mod.hub_repo_id(spec) == spec) is is_repo


def test_offline_mode_is_huggingface_hubs_constant_or_the_packages_switch(monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import, not by this package
    assert not resolve_mod.is_offline()
    assert resolve_mod.is_offline(True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert resolve_mod.is_offline()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("UNFLOW_ZOO_OFFLINE", "yes")
    assert resolve_mod.is_offline()


# ----- the model card --------------------------------------------------------------------------------
def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_save_pretrained_writes_a_card_with_metadata_metrics_and_the_load_snippet(tmp_path):
    metrics = {"test_nll": 1.25, "test_bpd": 0.9, "val_nll": 1.5, "n_test": 60, "epochs": 3, "steps": 30}
    dm_record = {"class_path": "unflow_zoo.data.module.DensityDataModule", "init_args": {"dataset": "moons"}}
    folder, model = _saved(tmp_path, metrics=metrics, license="Apache-2.0", data=dm_record, description="a toy")
    text = (folder / CARD_FILE).read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "unflow-zoo" and meta["license"] == "apache-2.0"
    assert meta["tags"] == ["normalizing-flows", "density-estimation", "nsf", "pytorch", "lightning"]
    assert "datasets" not in meta  # moons is not a Hub data set
    results = meta["model-index"][0]["results"]
    found = {(r["dataset"]["split"], m["type"]): m["value"] for r in results for m in r["metrics"]}
    assert found == {("test", "nll"): 1.25, ("test", "bits-per-dim"): 0.9, ("validation", "nll"): 1.5}
    assert 'unflow_zoo.load_pretrained("user/repo")' in text
    assert "| test | NLL (nats) | 1.2500 |" in text and "epochs 3, steps 30" in text and "`adam`" in text
    assert "a toy" in text
    card = huggingface_hub.ModelCard.load(folder / CARD_FILE)  # huggingface_hub parses it back
    assert card.data.library_name == "unflow-zoo" and card.data.eval_results[0].metric_value == 1.25
    # the card is not among the verified files: the folder loads, before and after editing the card
    assert torch.equal(_logp(load_pretrained(folder)), _logp(model))
    (folder / CARD_FILE).write_text(text + "\nEdited by hand.\n")
    assert torch.equal(_logp(load_pretrained(folder)), _logp(model))
    assert render_card(load_folder(folder).pretrained_config) == text  # deterministic, from config.json alone


def test_the_card_lists_hub_datasets_and_other_licenses():
    config = {
        "family": "realnvp",
        "license": "My Own License",
        "data": {"init_args": {"dataset": "mnist"}},
        "metrics": {"test_bpd": 1.1, "test_nll": float("nan")},  # a NaN is never shown as a result
        "hparams": {},
    }
    text = render_card(config, "me/mnist-flow")
    meta = _front_matter(text)
    assert meta["datasets"] == ["ylecun/mnist"]
    assert meta["license"] == "other" and meta["license_name"] == "my-own-license"
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert [m["type"] for m in metrics] == ["bits-per-dim"]
    assert meta["model-index"][0]["name"] == "mnist-flow"
    assert 'unflow_zoo.load_pretrained("me/mnist-flow")' in text and PLACEHOLDER_LOAD_LINE not in text


def test_a_zip_carries_the_card_and_still_loads(tmp_path):
    model = _model()
    archive = save_pretrained(model, tmp_path / "flow.zip")
    assert set(zipfile.ZipFile(archive).namelist()) == {"config.json", "model.safetensors", CARD_FILE}
    assert torch.equal(_logp(load_pretrained(archive)), _logp(model))
    bare = save_pretrained(model, tmp_path / "bare", model_card=False)
    assert not (bare / CARD_FILE).exists()


# ----- push_to_hub -----------------------------------------------------------------------------------
class FakeApi:
    """Stands for ``huggingface_hub.HfApi``: records the calls and keeps a copy of each uploaded folder."""

    instances: ClassVar[list[FakeApi]] = []
    root: ClassVar[str] = ""

    def __init__(self, token=None, **kwargs):
        self.token, self.calls, self.uploaded = token, [], {}
        FakeApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        copy = Path(FakeApi.root) / f"upload-{len(FakeApi.instances)}-{repo_id.replace('/', '--')}"
        shutil.copytree(folder_path, copy)  # the staged folder is deleted after the upload
        self.uploaded[repo_id] = copy
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT_A}"


@pytest.fixture
def fake_api(monkeypatch, tmp_path, online):
    FakeApi.instances, FakeApi.root = [], str(tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def _uploaded(fake_api, repo_id: str) -> Path:
    [api] = fake_api.instances
    return api.uploaded[repo_id]


def test_model_push_to_hub_uploads_one_verified_flow_with_its_card(fake_api, hub_cache):
    model = _model()
    info = model.push_to_hub("me/my-flow", metrics={"test_nll": 2.0}, token="hf_x", commit_message="first")
    assert info.endswith(f"/commit/{COMMIT_A}")
    [api] = fake_api.instances
    assert api.token == "hf_x"
    assert [c[:2] for c in api.calls] == [("create_repo", "me/my-flow"), ("upload_folder", "me/my-flow")]
    assert api.calls[0][2]["exist_ok"] is True and api.calls[0][2]["private"] is None
    assert api.calls[1][2]["commit_message"] == "first" and api.calls[1][2]["revision"] is None
    uploaded = _uploaded(fake_api, "me/my-flow")
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    text = (uploaded / CARD_FILE).read_text()
    assert _front_matter(text)["library_name"] == "unflow-zoo"
    assert 'unflow_zoo.load_pretrained("me/my-flow")' in text and "| test | NLL (nats) | 2.0000 |" in text
    assert torch.equal(_logp(load_folder(uploaded)), _logp(model))
    # what was uploaded is what a user then loads by the repo id
    _add_to_cache(hub_cache, "me/my-flow", uploaded, COMMIT_A)
    assert torch.equal(_logp(load_pretrained("me/my-flow")), _logp(model))


def test_push_to_a_branch_creates_it_and_private_is_passed(fake_api):
    _model().push_to_hub("hf://me/flow", revision="dev", private=True)
    [api] = fake_api.instances
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2]["private"] is True
    assert api.calls[1][2] == {"branch": "dev", "repo_type": "model", "exist_ok": True}
    assert api.calls[2][2]["revision"] == "dev"


def test_a_loaded_flow_keeps_its_record_when_pushed(fake_api):
    model = load_pretrained("constrained-mog1d")
    push_to_hub(model, "me/mog1d")
    config = load_folder(_uploaded(fake_api, "me/mog1d")).pretrained_config
    assert config["metrics"] == model.pretrained_config["metrics"]
    assert config["data"] == model.pretrained_config["data"] and config["license"] == "MIT"


def test_pushing_a_folder_leaves_it_alone_and_keeps_an_edited_card(tmp_path, fake_api):
    folder, _ = _saved(tmp_path)
    (folder / "notes.txt").write_text("not part of the flow")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    push_to_hub(folder, "me/a")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    uploaded = _uploaded(fake_api, "me/a")
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert 'load_pretrained("me/a")' in (uploaded / CARD_FILE).read_text()
    edited = (folder / CARD_FILE).read_text().replace("## Use", "My own words.\n\n## Use")
    (folder / CARD_FILE).write_text(edited)
    push_to_hub(str(folder), "me/b")
    text = (fake_api.instances[-1].uploaded["me/b"] / CARD_FILE).read_text()
    assert "My own words." in text and 'load_pretrained("me/b")' in text and PLACEHOLDER_LOAD_LINE not in text


def test_pushing_a_name_or_a_zip(tmp_path, fake_api):
    push_to_hub("constrained-mog1d", "me/mog1d")
    uploaded = _uploaded(fake_api, "me/mog1d")
    assert load_folder(uploaded).pretrained_config["family"] == "constrained"
    assert "library_name: unflow-zoo" in (uploaded / CARD_FILE).read_text()  # a card for a folder that had none
    archive = save_pretrained(_model(), tmp_path / "flow.zip")
    push_to_hub(archive, "me/zipped")
    assert (fake_api.instances[-1].uploaded["me/zipped"] / "model.safetensors").is_file()


def test_push_refuses_bad_input_before_uploading(tmp_path, fake_api, monkeypatch):
    model = _model()
    for bad in ("no-owner", "me/repo/sub", "me/repo@v1", "https://huggingface.co/me/repo"):
        with pytest.raises(ConfigError, match="owner/name"):
            push_to_hub(model, bad)
    with pytest.raises(MissingFileError, match="nothing to push"):
        push_to_hub(str(tmp_path / "absent"), "me/x")
    folder, _ = _saved(tmp_path)
    with pytest.raises(ConfigError, match="save arguments"):
        push_to_hub(folder, "me/x", metrics={"test_nll": 1.0})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        push_to_hub(folder, "me/x")
    monkeypatch.setenv("UNFLOW_ZOO_OFFLINE", "1")
    with pytest.raises(ConfigError, match="network is off"):
        push_to_hub(model, "me/x")
    assert all(not api.calls for api in fake_api.instances)  # nothing reached the Hub


def test_push_command_line(tmp_path, fake_api, capsys):
    folder, _ = _saved(tmp_path)
    push_main([str(folder), "me/cli-flow", "--revision", "dev", "--private"])
    out = capsys.readouterr().out
    assert "https://huggingface.co/me/cli-flow" in out and "load_pretrained(\"me/cli-flow\", revision='dev')" in out
    [api] = fake_api.instances
    assert api.calls[0][2]["private"] is True and api.calls[-1][2]["revision"] == "dev"
    push_main([str(folder), "me/public"])
    assert fake_api.instances[-1].calls[0][2]["private"] is None


def test_the_publish_script_pushes_one_flow_per_repo(tmp_path, fake_api, monkeypatch):
    spec = importlib.util.spec_from_file_location("publish_pretrained", ROOT / "scripts" / "publish_pretrained.py")
    publish = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, publish)  # dataclasses look their module up there
    spec.loader.exec_module(publish)
    folders = [_saved(tmp_path, name)[0] for name in ("one", "two")]
    with pytest.raises(SystemExit, match="one flow per repo"):
        publish.push_folders("me/flows", folders)
    pushed = publish.push_folders("hf://me/zoo-{name}", folders)
    assert sorted(pushed) == ["me/zoo-one", "me/zoo-two"]
    assert publish.parse_args(["--push", "me/zoo-{name}"]).push == "me/zoo-{name}"
