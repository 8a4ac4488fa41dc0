"""``load_flow``: a pretrained flow as a plain torch Flow, resolved and verified as ``load_pretrained``
does, without building a LightningModule (issue 13). Never touches the network."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from huggingface_hub import constants as hf_constants

import unflow_zoo
from unflow_zoo.core.flow import Flow
from unflow_zoo.models import FlowModule, create_model
from unflow_zoo.pretrained import (
    FormatError,
    IntegrityError,
    RawDataFlow,
    list_pretrained,
    load_flow,
    load_pretrained,
    save_pretrained,
    served_flow,
)
from unflow_zoo.pretrained import resolve as resolve_mod
from unflow_zoo.testing import randomize_parameters_

SHIPPED = list_pretrained()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Private caches, Hugging Face offline, and no socket may connect (``file://`` URLs need none)."""
    monkeypatch.setenv("UNFLOW_ZOO_CACHE", str(tmp_path / "unflow-cache"))
    monkeypatch.delenv("UNFLOW_ZOO_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the network was touched: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _raw_points(model: FlowModule, n: int = 16) -> torch.Tensor:
    """Points in the raw units of the model's data: around its training mean, within a few stds."""
    g = torch.Generator().manual_seed(3)
    flow = model.flow
    if isinstance(flow, RawDataFlow):
        loc, scale = flow.standardization.loc, flow.standardization.scale
    else:
        loc, scale = torch.zeros(model.event_shape), torch.ones(model.event_shape)
    return (loc + 0.8 * scale * torch.randn(n, *model.event_shape, generator=g)).float()


@pytest.mark.parametrize("name", SHIPPED)
def test_load_flow_gives_the_shipped_flows_density(name):
    model = load_pretrained(name)
    flow = load_flow(name)
    assert isinstance(flow, Flow) and not isinstance(flow, L.LightningModule)
    assert not flow.training
    assert type(flow) is type(model.flow)  # RawDataFlow where the flow carries its standardisation
    assert flow.pretrained_config == model.pretrained_config
    expected = {k.removeprefix("flow."): v for k, v in model.state_dict().items()}
    state = flow.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in state)
    x = _raw_points(model)
    with torch.no_grad():
        lp, ref = flow.log_prob(x), model.log_prob(x)
    assert torch.isfinite(ref).any()
    assert torch.equal(lp, ref)
    with torch.no_grad():  # the flow over standardised data, as the module's
        assert torch.equal(served_flow(flow).log_prob(x[:4]), served_flow(model).log_prob(x[:4]))


def test_load_flow_builds_no_lightning_module(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a LightningModule was built")

    monkeypatch.setattr(L.LightningModule, "__init__", refuse)
    for name in ("nsf-moons", "unconstrained-mog1d"):  # plain, and behind a standardisation
        assert isinstance(load_flow(name), Flow)
    with pytest.raises(AssertionError, match="a LightningModule was built"):
        load_pretrained("nsf-moons")


def test_the_top_level_package_exports_it():
    assert unflow_zoo.load_flow is load_flow
    assert "load_flow" in unflow_zoo.__all__ and "create_flow" in unflow_zoo.__all__


# ----- every way to name a flow -------------------------------------------------------------------


def _trained(seed: int = 0) -> FlowModule:
    torch.manual_seed(seed)
    model = create_model("maf", event_shape=(2,), n_layers=2, hidden=[8], context_features=2, context_embedding=[4])
    return randomize_parameters_(model, std=0.2, seed=seed).eval()


X = torch.linspace(-2, 2, 14).reshape(7, 2)
CTX = torch.linspace(-1, 1, 14).reshape(7, 2)


def _same_density(flow: Flow, model: FlowModule) -> None:
    with torch.no_grad():
        assert torch.equal(flow.log_prob(X, CTX), model.log_prob(X, CTX))


def _hub_cache(repo_id: str, folder: Path) -> None:
    """``folder``'s files in huggingface_hub's cache layout (blobs, a snapshot, refs/main)."""
    commit = "c" * 40
    repo = Path(hf_constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_load_flow_resolves_folders_zips_urls_the_cache_and_hub_repos(tmp_path, monkeypatch):
    model = _trained()
    folder = save_pretrained(model, tmp_path / "saved" / "flow")
    archive = save_pretrained(model, tmp_path / "saved" / "flow.zip")
    _same_density(load_flow(folder), model)  # a Path
    _same_density(load_flow(str(archive)), model)  # a .zip
    with monkeypatch.context() as online:
        online.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        _same_density(load_flow(archive.as_uri()), model)  # a file:// URL, downloaded into the cache
    shutil.copytree(folder, tmp_path / "unflow-cache" / "my-flow")
    _same_density(load_flow("my-flow"), model)  # a name in the package cache
    _hub_cache("me/my-flow", folder)
    monkeypatch.chdir(tmp_path)  # no local path "me/my-flow"
    _same_density(load_flow("me/my-flow"), model)  # a Hub repo id, from the Hugging Face cache
    _same_density(load_flow("hf://me/my-flow@main"), model)


# ----- the checks are load_pretrained's ---------------------------------------------------------


def _copy(name: str, tmp_path: Path) -> Path:
    src = Path(resolve_mod.CHECKPOINTS_DIR) / name
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "hparams":
            config["hparams"].update(value)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_tampered_weights_are_refused_before_anything_loads(tmp_path):
    folder = _copy("nsf-moons", tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError):
        load_flow(folder)


def test_a_family_without_a_builder_is_a_format_error_pointing_to_load_pretrained(tmp_path):
    folder = _copy("nsf-moons", tmp_path)
    _edit_config(folder, family="my-own-flow")
    with pytest.raises(FormatError, match=r"no flow builder for the family 'my-own-flow'.*load_pretrained"):
        load_flow(folder)


def test_unknown_or_bad_hparams_are_format_errors(tmp_path):
    folder = _copy("nsf-moons", tmp_path)
    _edit_config(folder, hparams={"n_layer": 4})
    with pytest.raises(FormatError, match=r"cannot build nsf from its hparams.*'n_layer'"):
        load_flow(folder)
    folder = _copy("realnvp-digits", tmp_path)
    _edit_config(folder, hparams={"n_layers": 3})
    with pytest.raises(FormatError, match="does not fit a realnvp"):
        load_flow(folder)


def test_a_bad_standardisation_record_is_a_format_error(tmp_path):
    folder = _copy("constrained-mog1d", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    _edit_config(folder, preprocessing={**config["preprocessing"], "std": [0.0]})
    with pytest.raises(FormatError, match="positive finite stds"):
        load_flow(folder)
