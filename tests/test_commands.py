"""The ``unflow-zoo pretrained|sample|evaluate|export`` commands and ``scripts/publish_pretrained.py``."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unflow_zoo.cli import main
from unflow_zoo.commands import run_command
from unflow_zoo.pretrained import list_pretrained, load_pretrained, pretrained_info, rebuild_datamodule

ROOT = Path(__file__).resolve().parents[1]
ONE_D = "constrained-mog1d"  # cheap to sample and evaluate
TWO_D = "nsf-moons"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path, hf_offline):
    monkeypatch.setenv("UNFLOW_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNFLOW_ZOO_DATA", str(tmp_path / "data"))
    hf_offline(True)  # the commands never need the network here
    monkeypatch.setattr(sys, "argv", ["unflow-zoo"])  # LightningCLI warns about pytest's own argv


def _printed(capsys, key: str) -> float:
    out = capsys.readouterr().out
    match = re.search(rf"^{key}\s+(\S+)", out, re.MULTILINE)
    assert match, out
    return float(match.group(1))


def test_pretrained_list_prints_every_name_with_its_nll(capsys):
    main(["pretrained", "list"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "family", "data"]
    for name in list_pretrained():
        info = pretrained_info(name)
        row = next(line for line in out if line.startswith(name + " "))
        assert info["family"] in row and f"{info['metrics']['test_nll']:.4f}" in row
    main(["pretrained", "info", ONE_D])
    assert json.loads(capsys.readouterr().out)["name"] == ONE_D


def test_sample_npy_has_the_right_shape_and_is_finite(tmp_path):
    out = tmp_path / "x.npy"
    main(["sample", "--pretrained", ONE_D, "--n", "64", "--out", str(out), "--seed", "3"])
    x = np.load(out)
    assert x.shape == (64, 1) and np.isfinite(x).all()
    main(["sample", "--pretrained", ONE_D, "--n", "64", "--out", str(tmp_path / "y.npy"), "--seed", "3"])
    assert np.array_equal(np.load(tmp_path / "y.npy"), x)  # seeded


def test_sample_png_writes_a_figure(tmp_path):
    out = tmp_path / "fig.png"
    main(["sample", "--pretrained", TWO_D, "--n", "200", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_sample_rejects_other_suffixes(tmp_path):
    with pytest.raises(SystemExit, match=r"\.npy"):
        main(["sample", "--pretrained", ONE_D, "--out", str(tmp_path / "x.csv")])


def test_evaluate_prints_the_recorded_test_nll(capsys):
    main(["evaluate", "--pretrained", ONE_D])
    nll = _printed(capsys, "test_nll")
    assert abs(nll - pretrained_info(ONE_D)["metrics"]["test_nll"]) < 1e-4


def test_evaluate_on_another_split_and_data_override(capsys):
    model = load_pretrained(ONE_D)
    dm = rebuild_datamodule(model.pretrained_config, test_fraction=0.2)
    dm.setup()
    with torch.no_grad():
        expected = float(-model.log_prob(dm.transform_to_raw(dm.test_data)).double().mean())
    main(["evaluate", "--pretrained", ONE_D, "--data.test_fraction", "0.2"])
    assert abs(_printed(capsys, "test_nll") - expected) < 1e-5


def test_data_overrides_are_typed_and_listed_by_help(capsys):
    with pytest.raises(SystemExit) as done:
        run_command(["evaluate", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--pretrained NAME" in out and "--data.test_fraction TEST_FRACTION" in out
    assert "type: float" in out and "{float32,float64}" in out and "UNFLOW_ZOO_DATA" in out
    for bad, match in (
        (["--data.test_fraction", "a lot"], "data.test_fraction"),
        (["--data.scaling", "sideways"], "data.scaling"),
        (["--data.no_such_key", "1"], "no_such_key"),
    ):
        with pytest.raises(SystemExit) as done:
            run_command(["evaluate", "--pretrained", ONE_D, *bad])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert "unflow-zoo evaluate: error" in err and match in err, err


def test_data_dir_override_and_a_recorded_data_dir(tmp_path, capsys):
    """The shipped records say data_dir "data" (the old default): a file's folder is never used."""
    model = load_pretrained(ONE_D)
    assert model.pretrained_config["data"]["init_args"]["data_dir"] == "data"
    dm = rebuild_datamodule(model.pretrained_config)
    assert dm.hparams.data_dir is None and dm.data_dir == tmp_path / "data"  # the default: $UNFLOW_ZOO_DATA
    metrics = run_command(["evaluate", "--pretrained", ONE_D, "--data.data_dir", str(tmp_path / "mine")])
    assert abs(metrics["test_nll"] - pretrained_info(ONE_D)["metrics"]["test_nll"]) < 1e-4
    capsys.readouterr()


def test_sample_takes_data_overrides_too(tmp_path):
    out = tmp_path / "x.npy"
    run_command(["sample", "--pretrained", ONE_D, "--n", "8", "--out", str(out), "--data.test_fraction=0.2"])
    assert np.load(out).shape == (8, 1)
    with pytest.raises(SystemExit):
        run_command(["export", "a.ckpt", "b", "--data.seed", "1"])  # export loads no data: not its argument


def test_evaluate_ood_reports_scores_and_draws_the_histogram(tmp_path, capsys):
    fig = tmp_path / "ood.png"
    metrics = run_command(
        ["evaluate", "--pretrained", TWO_D, "--data.n_samples", "2000", "--ood", "noise", "--ood_figure", str(fig)]
    )
    assert fig.is_file()
    assert set(metrics["ood"]) == {"likelihood", "typicality"}
    # Uniform noise over the bounding box of two moons is mostly off the moons: easy to spot.
    assert metrics["ood"]["likelihood"]["auroc"] > 0.7


def test_evaluate_ood_against_another_data_set(capsys):
    metrics = run_command(["evaluate", "--pretrained", "constrained-beta1d", "--ood", "mog1d"])
    # beta1d lives on [0, 1], mog1d's modes lie mostly outside it (measured AUROC 0.977)
    assert metrics["ood"]["likelihood"]["auroc"] > 0.9
    assert "ood vs mog1d (likelihood)" in capsys.readouterr().out


# ----- export and evaluate of a Lightning checkpoint ------------------------------------------------
def _fit_ckpt(root: Path, config: str, *extra: str) -> Path:
    """The last.ckpt of a 1-epoch, 3-batch ``unflow-zoo fit`` of ``config`` under ``root``."""
    old, sys.argv = sys.argv, ["unflow-zoo"]
    try:
        main([
            "fit", "--config", str(ROOT / config), "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1", "--data.n_samples=600", f"--trainer.default_root_dir={root}",
            "--plot.enabled=false", "--trainer.enable_progress_bar=false", "--test_after_fit=false",
            "--trainer.accelerator=cpu", *extra,
        ])  # fmt: skip
    finally:
        sys.argv = old
    (ckpt,) = root.rglob("last.ckpt")  # (next to the latest epoch's own file)
    return ckpt


@pytest.fixture(scope="module")
def fitted_ckpt(tmp_path_factory):
    """A .ckpt from a 1-epoch ``unflow-zoo fit`` (LightningCLI: it records the class and the data module)."""
    root = tmp_path_factory.mktemp("fit")
    return _fit_ckpt(root, "configs/maf/moons.yaml", "--trainer.check_val_every_n_epoch=1", "--data.standardize=true")


def test_export_of_a_fitted_ckpt_is_loadable_and_evaluates_the_same(fitted_ckpt, tmp_path, capsys):
    out = tmp_path / "exported"
    main(["export", str(fitted_ckpt), str(out)])
    capsys.readouterr()
    model = load_pretrained(out, offline=True)
    config = model.pretrained_config
    assert config["family"] == "maf" and config["data"]["init_args"]["n_samples"] == 600
    assert config["preprocessing"]["kind"] == "standardize"
    main(["evaluate", "--ckpt", str(fitted_ckpt)])
    assert abs(_printed(capsys, "test_nll") - config["metrics"]["test_nll"]) < 1e-5
    main(["evaluate", "--pretrained", str(out)])
    assert abs(_printed(capsys, "test_nll") - config["metrics"]["test_nll"]) < 1e-5


def test_evaluate_counts_and_names_nonfinite_rows(fitted_ckpt, monkeypatch, capsys):
    from unflow_zoo.models import FlowModule

    clean = run_command(["evaluate", "--ckpt", str(fitted_ckpt)])
    assert clean["test_nonfinite"] == 0 and "test_nonfinite_rows" not in clean
    assert "non-finite" not in capsys.readouterr().out
    honest = FlowModule.log_prob

    def holey(self, x, context=None):
        lp = honest(self, x, context).clone()
        lp[[3, 7, 8, 20, 33, 41]] = math.nan  # six NaN rows ...
        lp[50] = -math.inf  # ... and one outside the support
        return lp

    monkeypatch.setattr(FlowModule, "log_prob", holey)
    metrics = run_command(["evaluate", "--ckpt", str(fitted_ckpt)])
    out = capsys.readouterr().out
    assert metrics["test_nonfinite"] == 7 and metrics["test_nonfinite_rows"] == [3, 7, 8, 20, 33]
    # not the mean over the other rows: inf
    assert metrics["test_nll"] == math.inf and metrics["test_bpd"] == math.inf
    assert re.search(r"^test_nll\s+inf nats \(7 non-finite rows\)$", out, re.MULTILINE), out
    assert re.search(r"^test_bpd\s+inf bits/dim \(7 non-finite rows\)$", out, re.MULTILINE), out
    assert "7 rows with a non-finite log-density (rows 3, 7, 8, 20, 33, ...)" in out, out


def test_export_and_evaluate_refuse_a_pickle_payload(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"p": Payload()}}, ckpt)
    from unflow_zoo.pretrained import FormatError

    for argv in (["export", str(ckpt), str(tmp_path / "out")], ["evaluate", "--ckpt", str(ckpt)]):
        with pytest.raises(FormatError, match="refusing"):
            run_command(argv)
    assert not marker.exists()


# ----- publish script ----------------------------------------------------------------------------------
def _publish_module():
    spec = importlib.util.spec_from_file_location("publish_pretrained", ROOT / "scripts/publish_pretrained.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_publish_quick_writes_a_loadable_folder_with_reproducible_metrics(tmp_path):
    publish = _publish_module()
    entries = publish.main(["--quick", "--out", str(tmp_path), "--only", "constrained-mog1d"])
    registry = json.loads((tmp_path / "registry.json").read_text())
    assert set(registry["flows"]) == set(entries) == {"constrained-mog1d"}
    model = load_pretrained(tmp_path / "constrained-mog1d", offline=True)
    dm = rebuild_datamodule(model.pretrained_config)
    dm.setup()
    with torch.no_grad():
        nll = float(-model.log_prob(dm.transform_to_raw(dm.test_data)).double().mean())
    assert abs(nll - registry["flows"]["constrained-mog1d"]["metrics"]["test_nll"]) < 1e-4
    assert model.pretrained_config["metrics"]["steps"] == 3  # the --quick budget


def test_publish_arguments_are_checked():
    publish = _publish_module()
    with pytest.raises(SystemExit):
        publish.parse_args(["--only", "no-such-entry"])
    with pytest.raises(SystemExit):
        publish.parse_args(["--push", "https://example.com/repo"])
    assert publish.parse_args(["--push", "hf://me/flows"]).push == "hf://me/flows"
    names = [s.name for s in publish.SPECS]
    assert len(names) == len(set(names)) and all((ROOT / c).is_file() for s in publish.SPECS for c in s.configs)


@pytest.mark.parametrize("kind", ["noise", "shift"])
def test_evaluate_ood_on_digits(kind, tmp_path, capsys):
    """The shipped digits flow against uniform noise and against digits rolled by 3 pixels."""
    fig = tmp_path / "ood.png"
    metrics = run_command(["evaluate", "--pretrained", "realnvp-digits", "--ood", kind, "--ood_figure", str(fig)])
    assert fig.is_file() and set(metrics["ood"]) == {"likelihood", "typicality"}
    for scores in metrics["ood"].values():
        assert 0.0 <= scores["fpr95"] <= 1.0 and 0.0 <= scores["aupr"] <= 1.0
    # noise is far off the digit manifold; shifted digits are harder but still mostly spotted
    assert metrics["ood"]["likelihood"]["auroc"] > (0.99 if kind == "noise" else 0.8)


@pytest.fixture(scope="module")
def conditional_ckpt(tmp_path_factory):
    """A .ckpt of a conditional MAF from a 1-epoch ``unflow-zoo fit`` of the shipped by-label config."""
    return _fit_ckpt(tmp_path_factory.mktemp("fit-conditional"), "configs/maf/8gaussians-by-label.yaml")


def test_sample_with_a_context(conditional_ckpt, tmp_path, capsys):
    rows = "[[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]"
    out = tmp_path / "x.npy"
    samples = run_command(
        ["sample", "--ckpt", str(conditional_ckpt), "--n", "40", "--context", rows, "--out", str(out)]
    )
    assert samples.shape == (40, 3, 2) and np.load(out).shape == (40, 3, 2)
    one = run_command(
        ["sample", "--ckpt", str(conditional_ckpt), "--n", "7", "--context", "[0, 1, 0, 0]", "--out", str(out)]
    )
    assert one.shape == (7, 2)
    # a .npy of rows works too, and the figure shows p(x | c) for each row
    np.save(tmp_path / "c.npy", np.eye(4)[:2])
    png = tmp_path / "c.png"
    run_command(
        [
            "sample",
            "--ckpt",
            str(conditional_ckpt),
            "--n",
            "50",
            "--context",
            str(tmp_path / "c.npy"),
            "--out",
            str(png),
        ]
    )
    assert png.stat().st_size > 0
    capsys.readouterr()
    # a missing context, the wrong width, and malformed input each say what is wrong
    with pytest.raises(ValueError, match="context of width 4"):
        run_command(["sample", "--ckpt", str(conditional_ckpt), "--n", "5", "--out", str(out)])
    with pytest.raises(ValueError, match="width 4"):
        run_command(["sample", "--ckpt", str(conditional_ckpt), "--n", "5", "--context", "[1, 0]", "--out", str(out)])
    with pytest.raises(ValueError, match="JSON row"):
        run_command(["sample", "--ckpt", str(conditional_ckpt), "--n", "5", "--context", "one-hot", "--out", str(out)])
