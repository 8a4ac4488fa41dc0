"""Pretrained flows: shipped checkpoints reproduce their metrics offline; save/load round trips;
integrity, format and safety errors; resolution order and the cache. Never touches the network."""

from __future__ import annotations

import json
import socket
import zipfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants

from unflow_zoo.core.transform import InputOutsideDomain
from unflow_zoo.data import DensityDataModule
from unflow_zoo.models import list_models
from unflow_zoo.pretrained import (
    FormatError,
    IntegrityError,
    RawDataFlow,
    export_checkpoint,
    list_pretrained,
    load_pretrained,
    markdown_table,
    pretrained_info,
    rebuild_datamodule,
    save_pretrained,
    served_flow,
    sha256_of,
)
from unflow_zoo.pretrained import registry as registry_mod
from unflow_zoo.pretrained import resolve as resolve_mod
from unflow_zoo.pretrained import serialization as serialization_mod
from unflow_zoo.testing import randomize_parameters_, small_model

SHIPPED = list_pretrained()
SIZE_BUDGET = 5_000_000  # bytes, all shipped checkpoints together


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket or a URL fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the network was touched: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(resolve_mod.urllib.request, "urlopen", refuse)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    # Tests never read or write the real ~/.cache/unflow_zoo or ~/.cache/huggingface. huggingface_hub
    # read HF_HUB_CACHE / HF_HUB_OFFLINE into its constants at import: those are what count.
    monkeypatch.setenv("UNFLOW_ZOO_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("UNFLOW_ZOO_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def _dm(dataset: str = "moons", **kw) -> DensityDataModule:
    args = {"n_samples": 300, "standardize": True, "val_fraction": 0.0, "test_fraction": 0.2, "seed": 1}
    args.update(kw)
    dm = DensityDataModule(dataset, **args)
    dm.setup()
    return dm


def _small(family: str, seed: int = 0):
    """Family ``family`` at its own test sizes, seeded and perturbed (not the identity), in eval mode."""
    return randomize_parameters_(small_model(family, seed=seed), std=0.2, seed=seed).eval()


# ----- shipped checkpoints ---------------------------------------------------------------------------
def test_registry_lists_the_shipped_flows_within_the_size_budget():
    names = set(SHIPPED)
    for d in ("mog1d", "beta1d", "grid", "mog5d"):
        assert {f"constrained-{d}", f"unconstrained-{d}"} <= names
    for toy in ("moons", "8gaussians", "checkerboard"):  # the best (or only) family trained on each toy
        assert any(n.endswith(f"-{toy}") and pretrained_info(n)["dataset"] == toy for n in names)
    total = 0
    for name in SHIPPED:
        info = pretrained_info(name)
        folder = registry_mod.CHECKPOINTS_DIR / name
        for file, digest in info["files"].items():
            assert sha256_of(folder / file) == digest
            total += (folder / file).stat().st_size
        config = json.loads((folder / "config.json").read_text())
        assert config["metrics"]["test_nll"] == info["metrics"]["test_nll"]
        assert config["family"] == info["family"]
    assert total < SIZE_BUDGET


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_flow_loads_offline_and_reproduces_its_test_nll(name, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_pretrained(name, cache_dir=tmp_path, offline=True)
    assert not model.training
    config = model.pretrained_config
    dm = rebuild_datamodule(config)
    dm.setup("test")
    served = dm.test_data
    # A flow trained on standardised data takes raw points; image flows take the served
    # (dequantised, logit) points, and their bits/dim are accounted in pixel space by the data module.
    scaled = dm.scaling != "none"  # standardised, or the seed paper's ball scaling
    raw = dm.transform_to_raw(served) if scaled else served
    with torch.no_grad():
        logp_raw = model.log_prob(raw).double()
        nll = float(-logp_raw.mean())
        assert len(served) == config["metrics"]["n_test"]
        assert abs(nll - config["metrics"]["test_nll"]) < 1e-4
        # log p(x) = log q((x - m)/s) - sum log s: the standardisation is inside the loaded flow.
        log_s = torch.log(dm.std).sum().item() if scaled else 0.0
        assert isinstance(model.flow, RawDataFlow) == scaled
        logq = served_flow(model).log_prob(served[:100]).double()  # a subset: the wide flows are slow
        torch.testing.assert_close(logp_raw[:100], logq - log_s, atol=1e-4, rtol=1e-5)
        torch.manual_seed(0)
        try:
            x = model.sample(16)
        except InputOutsideDomain as err:
            # the paper-exact constrained flow (no linear term) maps onto a bounded box: a base draw
            # outside it has no preimage, and sampling says so instead of returning a wrong point
            assert model.hparams.get("linear_term", None) == 0.0 and "linear_term" in str(err)
            x = torch.zeros(16, *model.event_shape)
    assert x.shape == (16, *model.event_shape) and torch.isfinite(x).all()
    assert not any(tmp_path.iterdir())  # a packaged flow never goes through the cache


def test_markdown_table_has_a_row_per_flow_with_its_nll(capsys):
    from unflow_zoo.pretrained.__main__ import main

    main(["--markdown"])
    table = capsys.readouterr().out
    assert table.strip() == markdown_table()
    for name in SHIPPED:
        row = next(line for line in table.splitlines() if f"`{name}`" in line)
        assert f"{pretrained_info(name)['metrics']['test_nll']:.4f}" in row


# ----- round trip ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list_models())
@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_save_load_round_trip_gives_identical_log_prob(family, as_zip, tmp_path):
    model = _small(family)
    x = torch.randn(17, 2)
    path = tmp_path / ("flow.zip" if as_zip else "flow")
    save_pretrained(model, path, metrics={"test_nll": 1.5}, description="round trip")
    loaded = load_pretrained(path)
    assert type(loaded) is type(model) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x), model.log_prob(x))
    assert loaded.pretrained_config["metrics"] == {"test_nll": 1.5}
    assert loaded.pretrained_config["preprocessing"] == {"kind": "none"}


def test_standardisation_is_recorded_and_applied_to_raw_data(tmp_path):
    dm = _dm()
    model = _small("maf")
    model.save_pretrained(str(tmp_path / "f"), datamodule=dm)  # the FlowModule method delegates here
    loaded = type(model).from_pretrained(str(tmp_path / "f"))
    raw = dm.transform_to_raw(dm.test_data)
    with torch.no_grad():
        expected = model.log_prob(dm.test_data) - torch.log(dm.std).sum().float()
        torch.testing.assert_close(loaded.log_prob(raw), expected, atol=1e-5, rtol=1e-5)
        torch.manual_seed(3)
        samples = loaded.sample(500)
    # Samples come back in raw units: their spread is that of the data, not of the standardised data.
    assert abs(samples.std(0) / dm.transform_to_raw(dm.train_data).std(0) - 1).max() < 0.5
    config = loaded.pretrained_config
    assert config["data"]["init_args"]["dataset"] == "moons" and config["data"]["init_args"]["seed"] == 1
    rebuilt = rebuild_datamodule(config)
    rebuilt.setup()
    assert torch.equal(rebuilt.test_data, dm.test_data)  # the exact split comes back
    # Saving a loaded flow writes the served weights and the same standardisation: it round-trips.
    save_pretrained(loaded, tmp_path / "again.zip")
    again = load_pretrained(tmp_path / "again.zip")
    with torch.no_grad():
        assert torch.equal(again.log_prob(raw), loaded.log_prob(raw))


def test_unregistered_class_cannot_be_saved(tmp_path):
    from unflow_zoo.models.maf import MaskedAutoregressiveFlow

    class Mine(MaskedAutoregressiveFlow):
        pass

    with pytest.raises(ValueError, match="register_model"):
        save_pretrained(Mine(event_shape=(2,), n_layers=1, hidden=[4]), tmp_path / "x")


# ----- integrity and format errors -------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "flow"
    save_pretrained(_small("nsf"), path)
    return path


def _refuses_to_load(path, monkeypatch, match):
    calls = []
    real = serialization_mod.load_file
    monkeypatch.setattr(serialization_mod, "load_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises((IntegrityError, FormatError), match=match) as info:
        load_pretrained(path)
    assert calls == []  # refused before a single tensor was read
    return str(info.value)


def test_flipped_byte_is_refused_with_both_digests(saved, monkeypatch):
    weights = saved / "model.safetensors"
    expected = json.loads((saved / "config.json").read_text())["weights"]["sha256"]
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    weights.write_bytes(bytes(blob))
    message = _refuses_to_load(saved, monkeypatch, "sha256 mismatch")
    assert expected in message and sha256_of(weights) in message and "model.safetensors" in message


def test_truncated_file_is_refused(saved, monkeypatch):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    message = _refuses_to_load(saved, monkeypatch, "sha256 mismatch")
    assert sha256_of(weights) in message


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_newer_format_version_is_a_clear_error(saved, monkeypatch):
    _edit_config(saved, format_version=99, package_version="9.0.0")
    message = _refuses_to_load(saved, monkeypatch, "format version 99")
    assert "Upgrade unflow-zoo" in message and "9.0.0" in message


def test_unknown_family_is_a_clear_error(saved, monkeypatch):
    _edit_config(saved, family="hyperflow")
    with pytest.raises(FormatError, match="unknown flow family 'hyperflow'") as info:
        load_pretrained(saved)
    assert "nsf" in str(info.value)  # lists what it knows
    _edit_config(saved, package_version="99.0")
    with pytest.raises(FormatError, match="newer than this"), pytest.warns(UserWarning, match="newer"):
        load_pretrained(saved)


def test_newer_package_with_known_format_loads_with_a_warning(saved):
    _edit_config(saved, package_version="99.0.0")
    with pytest.warns(UserWarning, match="newer than this"):
        load_pretrained(saved)


def test_zip_with_path_traversal_is_refused(tmp_path, saved):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(saved / "config.json", "config.json")
        zf.write(saved / "model.safetensors", "model.safetensors")
        zf.writestr("../escaped.txt", "gotcha")
    with pytest.raises(FormatError, match="outside the folder"):
        load_pretrained(archive)
    assert not (tmp_path / "escaped.txt").exists() and not list(tmp_path.rglob("escaped.txt"))


def test_unknown_name_lists_the_available_names(monkeypatch):
    with pytest.raises(ValueError, match="unknown pretrained flow 'no-such-flow'") as info:
        load_pretrained("no-such-flow", offline=True)
    for name in SHIPPED:
        assert name in str(info.value)


# ----- Lightning checkpoints --------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``path``: stands for any code an attacker would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_ckpt_with_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(marker)}}, ckpt)
    with pytest.raises(FormatError, match="refusing"):
        export_checkpoint(ckpt, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The payload is live: an unrestricted unpickler would have run it.
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_export_rebuilds_a_family_from_a_plain_lightning_ckpt(tmp_path, trainer_factory):
    model, dm = _small("realnvp").train(), _dm()
    trainer = trainer_factory(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(FormatError, match="pass family="):
        export_checkpoint(ckpt, tmp_path / "out")  # a plain Trainer does not record the class
    export_checkpoint(ckpt, tmp_path / "out", family="realnvp")
    loaded = load_pretrained(tmp_path / "out")
    model.eval()
    with torch.no_grad():
        # The ckpt's data module hyper-parameters carry the standardisation into the export.
        expected = model.log_prob(dm.test_data) - torch.log(dm.std).sum().float()
        torch.testing.assert_close(loaded.log_prob(dm.transform_to_raw(dm.test_data)), expected)
        assert loaded.pretrained_config["metrics"]["test_nll"] == pytest.approx(float(-expected.double().mean()))


# ----- resolution and cache ------------------------------------------------------------------------
@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """A registry with one packaged flow 'toy-flow' (model A) in a temporary package folder."""
    pkg = tmp_path / "pkg"
    save_pretrained(_small("maf", seed=1), pkg / "toy-flow")
    files = {f: sha256_of(pkg / "toy-flow" / f) for f in ("config.json", "model.safetensors")}
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"format_version": 1, "flows": {"toy-flow": {"family": "maf", "files": files}}}))
    monkeypatch.setattr(registry_mod, "REGISTRY_FILE", reg)
    monkeypatch.setattr(resolve_mod, "CHECKPOINTS_DIR", pkg)
    return pkg


def test_a_path_beats_a_registered_name(fake_registry, tmp_path, monkeypatch):
    other = _small("maf", seed=2)
    work = tmp_path / "work"
    save_pretrained(other, work / "toy-flow")
    x = torch.randn(5, 2)
    with torch.no_grad():
        assert torch.equal(load_pretrained("toy-flow").log_prob(x), _small("maf", seed=1).log_prob(x))
        monkeypatch.chdir(work)
        assert torch.equal(load_pretrained("toy-flow").log_prob(x), other.log_prob(x))


def test_packaged_files_are_checked_against_the_registry(fake_registry):
    config = fake_registry / "toy-flow" / "config.json"
    config.write_text(config.read_text().replace('"description": ""', '"description": "edited"'))
    with pytest.raises(IntegrityError, match="config.json: sha256 mismatch"):
        load_pretrained("toy-flow")


def test_cache_dir_argument_and_env_var_are_respected(tmp_path, monkeypatch, no_network):
    model = _small("nsf")
    save_pretrained(model, tmp_path / "mine" / "my-flow")
    with pytest.raises(ValueError, match="unknown pretrained flow"):
        load_pretrained("my-flow")
    x = torch.randn(4, 2)
    with torch.no_grad():
        assert torch.equal(load_pretrained("my-flow", cache_dir=tmp_path / "mine").log_prob(x), model.log_prob(x))
        monkeypatch.setenv("UNFLOW_ZOO_CACHE", str(tmp_path / "mine"))
        assert torch.equal(load_pretrained("my-flow", offline=True).log_prob(x), model.log_prob(x))


@pytest.mark.parametrize("url", ["https://example.com/flow.zip", "http://example.com/f/", "hf://someone/flows"])
def test_urls_are_never_fetched_offline(url, tmp_path, monkeypatch, no_network):
    with pytest.raises(OSError, match="offline|network is off"):
        load_pretrained(url, cache_dir=tmp_path, offline=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, as huggingface_hub read it
    with pytest.raises(OSError, match="offline|network is off"):
        load_pretrained(url, cache_dir=tmp_path)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("UNFLOW_ZOO_OFFLINE", "1")  # the package's own switch
    with pytest.raises(OSError, match="offline|network is off"):
        load_pretrained(url, cache_dir=tmp_path)


def test_file_url_download_lands_in_the_cache_and_is_verified(tmp_path, saved, monkeypatch):
    archive = tmp_path / "flow.zip"
    save_pretrained(load_pretrained(saved), archive)
    digest = sha256_of(archive)
    with pytest.raises(OSError, match="network is off"):
        load_pretrained(archive.as_uri(), cache_dir=tmp_path / "c", offline=True)
    loaded = load_pretrained(f"{archive.as_uri()}#sha256={digest}", cache_dir=tmp_path / "c")
    cached = list((tmp_path / "c" / "downloads").rglob("flow.zip"))
    assert len(cached) == 1 and sha256_of(cached[0]) == digest
    archive.unlink()  # from now on only the cached copy exists, and offline is enough
    load_pretrained(f"{archive.as_uri()}#sha256={digest}", cache_dir=tmp_path / "c", offline=True)
    with pytest.raises(IntegrityError, match="0" * 64):  # a cached file is checked too
        load_pretrained(f"{archive.as_uri()}#sha256={'0' * 64}", cache_dir=tmp_path / "c", offline=True)
    save_pretrained(load_pretrained(saved), archive)
    x = torch.randn(3, 2)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x), load_pretrained(saved).log_prob(x))
    wrong = "0" * 64
    with pytest.raises(IntegrityError, match=wrong):
        load_pretrained(f"{archive.as_uri()}#sha256={wrong}", cache_dir=tmp_path / "d")
    assert not list((tmp_path / "d").rglob("flow.zip"))  # nothing unverified is kept


def test_cache_root_defaults_to_home_and_yields_to_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("UNFLOW_ZOO_CACHE")
    assert resolve_mod.cache_root() == tmp_path / "home" / ".cache" / "unflow_zoo"
    assert resolve_mod.cache_root(tmp_path / "x") == tmp_path / "x"
    assert not (tmp_path / "home").exists()


def test_readme_table_is_the_registry_table():
    """README's "Pretrained flows" table is generated (python -m unflow_zoo.pretrained --markdown)."""
    from unflow_zoo.pretrained import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("<!-- pretrained:start -->\n", 1)[1].split("\n<!-- pretrained:end -->", 1)[0]
    assert section == markdown_table(), "regenerate: python -m unflow_zoo.pretrained --markdown"
