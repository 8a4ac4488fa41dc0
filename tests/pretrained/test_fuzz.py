"""Mutated config.json and model.safetensors files: each either loads or raises the package's own error.

The weights' sha256 in config.json is rewritten after every mutation of the weights, so the
checks behind the integrity check (the safetensors header, the shapes, the values) are reached.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unflow_zoo import create_model, load_pretrained
from unflow_zoo.errors import UnflowZooError
from unflow_zoo.pretrained import rebuild_datamodule, save_pretrained
from unflow_zoo.pretrained.format import sha256_of

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON values a hostile or broken file may hold; ints stay small (a huge width is a denial of
# service, which SECURITY.md leaves out of scope, not a wrong result)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["moons", "file", "power", "standardize", "none", "DensityDataModule", "nsf", "maf"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz") / "flow"
    model = create_model("maf", event_shape=(2,), n_layers=1, hidden=[4])
    data = {"class_path": "DensityDataModule", "init_args": {"dataset": "moons", "n_samples": 200}}
    pre = {"kind": "standardize", "mean": [0.5, 0.25], "std": [1.0, 0.5]}
    save_pretrained(model, folder, data=data, preprocessing=pre)
    return folder


def _copy(original: Path, tmp_path: Path) -> Path:
    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    shutil.copytree(original, folder)
    return folder


def _load_or_own_error(folder: Path) -> None:
    try:
        model = load_pretrained(folder)
    except UnflowZooError:
        return
    # loaded: then it is a working flow
    with torch.no_grad():
        logp = model.log_prob(torch.zeros(3, *model.event_shape))
    assert logp.shape == (3,) and not torch.isnan(logp).any()
    try:
        rebuild_datamodule(model.pretrained_config)
    except UnflowZooError:
        pass


_SECTIONS = ["family", "hparams", "preprocessing", "data", "weights", "format_version", "metrics", None]


def _mutate_config(folder: Path, section: str | None, key: str | None, value) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if section is None:
        config = value  # the whole file replaced
    elif key is None or not isinstance(config.get(section), dict):
        config[section] = value
    else:
        inner = config[section]
        keys = sorted(inner) or [key]
        target = keys[sum(map(ord, key)) % len(keys)] if key not in inner else key  # deterministic, unlike hash()
        inner[target] = value
    path.write_text(json.dumps(config))


def _config_case(original, tmp_path, section, key, value):
    folder = _copy(original, tmp_path)
    _mutate_config(folder, section, key, value)
    _load_or_own_error(folder)


def _weights_case(original, tmp_path, flips):
    folder = _copy(original, tmp_path)
    weights = folder / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    for position, byte in flips:
        blob[position % len(blob)] = byte
    weights.write_bytes(bytes(blob))
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["sha256"] = sha256_of(weights)  # past the integrity check
    (folder / "config.json").write_text(json.dumps(config))
    _load_or_own_error(folder)


_config_args = {
    "section": st.sampled_from(_SECTIONS),
    "key": st.none()
    | st.text(max_size=8)
    | st.sampled_from(["hidden", "n_layers", "mean", "std", "kind", "class_path", "init_args", "file", "sha256"]),
    "value": _values,
}
# the header (8-byte length, then JSON) sits at the front: most flips land there
_flips = st.lists(st.tuples(st.integers(0, 300) | st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)


@FAST
@given(**_config_args)
def test_mutated_config_json_loads_or_raises_the_packages_error(original, tmp_path, section, key, value):
    _config_case(original, tmp_path, section, key, value)


@FAST
@given(flips=_flips)
def test_mutated_safetensors_loads_or_raises_the_packages_error(original, tmp_path, flips):
    _weights_case(original, tmp_path, flips)


@pytest.mark.slow
@LONG
@given(**_config_args)
def test_mutated_config_json_long(original, tmp_path, section, key, value):
    _config_case(original, tmp_path, section, key, value)


@pytest.mark.slow
@LONG
@given(flips=_flips)
def test_mutated_safetensors_long(original, tmp_path, flips):
    _weights_case(original, tmp_path, flips)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hparams": {"n_layers": 1, "hidden": [7], "event_shape": [2]}}, "has shape"),
        ({"preprocessing": {"kind": "standardize", "mean": [0.0], "std": [1.0, 1.0]}}, "list of 2 numbers"),
        ({"preprocessing": {"kind": "standardize"}}, "'mean' must be a list"),
        ({"preprocessing": {"kind": "standardize", "mean": [0, 0], "std": [1, -1]}}, "positive finite"),
        ({"preprocessing": "standardize"}, "must be a JSON object"),
        ({"hparams": ["n_layers", 1]}, "'hparams' must be a JSON object"),
        ({"family": ["maf"]}, "'family' must be a string"),
    ],
)
def test_config_that_does_not_fit_the_weights_names_the_problem(original, tmp_path, change, match):
    folder = _copy(original, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if key == "hparams" and isinstance(value, dict) else value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnflowZooError, match=match):
        load_pretrained(folder)


def test_corrupt_safetensors_header_names_the_file(original, tmp_path):
    folder = _copy(original, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["sha256"] = sha256_of(weights)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnflowZooError, match="model.safetensors is not a readable safetensors file"):
        load_pretrained(folder)


def test_non_finite_weights_are_refused(original, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(original, tmp_path)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], math.nan)
    save_file(state, str(weights))
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["sha256"] = sha256_of(weights)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnflowZooError, match="NaN or inf"):
        load_pretrained(folder)
