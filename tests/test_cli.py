"""The LightningCLI entry point: every shipped config, user subclasses, errors."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unflow_zoo.cli import FlowCLI, main
from unflow_zoo.data import DensityDataModule
from unflow_zoo.models import FlowModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

#: event_shape of each data set that must be downloaded, written out here rather than read from the
#: data package, so that a config (or a loader) serving the wrong shape fails.
REMOTE_SHAPES: dict[str, tuple[int, ...]] = {
    "power": (6,),
    "gas": (8,),
    "hepmass": (21,),
    "miniboone": (43,),
    "bsds300": (63,),
    "mnist": (1, 28, 28),
}


def _dataset(config: Path) -> str:
    return yaml.safe_load(config.read_text()).get("data", {}).get("dataset", "moons")


LOCAL_CONFIGS = [c for c in CONFIGS if _dataset(c) not in REMOTE_SHAPES]
REMOTE_CONFIGS = [c for c in CONFIGS if _dataset(c) in REMOTE_SHAPES]


def _ids(configs: list[Path]) -> list[str]:
    return [str(c.relative_to(ROOT / "configs")) for c in configs]


def _run(args: list[str]) -> None:
    # LightningCLI warns when sys.argv holds pytest's own flags next to args=...
    old, sys.argv = sys.argv, ["unflow-zoo"]
    try:
        main(args)
    finally:
        sys.argv = old


@pytest.mark.parametrize("config", LOCAL_CONFIGS, ids=_ids(LOCAL_CONFIGS))
def test_every_config_runs_fast_dev_run(config, tmp_path):
    # Configs whose data must be downloaded (UCI, MNIST) are built, not run, in the next test.
    # The density figure is drawn for one config per family below; here it would only cost time.
    _run(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run=true",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
            "--plot.enabled=false",
            "--trainer.enable_progress_bar=false",
        ]
    )


@pytest.mark.parametrize("config", REMOTE_CONFIGS, ids=_ids(REMOTE_CONFIGS))
def test_config_without_local_data_builds_its_model(config, tmp_path):
    """UCI and MNIST configs parse, instantiate (model, data module, trainer and its callbacks) without
    their data, link the data module's event_shape into the model, and give finite densities."""
    cfg = yaml.safe_load(config.read_text())
    dataset = cfg["data"]["dataset"]
    expected = REMOTE_SHAPES[dataset]
    if dataset == "mnist" and cfg["data"].get("flatten", False):
        expected = (784,)
    old, sys.argv = sys.argv, ["unflow-zoo"]
    try:
        # main()'s FlowCLI, without a subcommand and without running it
        cli = FlowCLI(
            FlowModule,
            DensityDataModule,
            subclass_mode_model=True,
            run=False,
            args=[
                "--config",
                str(config),
                "--trainer.accelerator=cpu",
                f"--trainer.default_root_dir={tmp_path}",
                "--plot.enabled=false",
                "--trainer.enable_progress_bar=false",
                f"--data.data_dir={tmp_path / 'no-data-here'}",
            ],
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = old
    model, dm = cli.model, cli.datamodule
    assert not dm.is_setup  # nothing was read or downloaded
    assert tuple(dm.event_shape) == expected
    assert tuple(model.event_shape) == expected
    assert cli.trainer.default_root_dir == str(tmp_path)
    model.eval()
    x = torch.randn(3, *expected, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        log_prob = model.log_prob(x)
    assert log_prob.shape == (3,)
    assert torch.isfinite(log_prob).all(), log_prob


def test_fit_leaves_checkpoint_and_figure_and_prints_them(tmp_path, capsys, recwarn):
    _run(
        [
            "fit",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=5",
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            "--trainer.check_val_every_n_epoch=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--data.n_samples=2000",
            "--plot.n_samples=300",
            "--plot.points=40",
        ]
    )
    out = capsys.readouterr().out
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    figs = list(tmp_path.rglob("density.png"))
    # the best validated weights, the latest epoch (ModelCheckpoint's top-k file) and last.ckpt,
    # the one to resume from
    assert [c.name for c in ckpts] == ["best.ckpt", "epoch=0-step=5.ckpt", "last.ckpt"] and len(figs) == 1
    assert f"checkpoint: {ckpts[2].resolve()}" in out
    assert f"best:       {ckpts[0].resolve()}" in out and "(tested below)" in out
    assert f"figure:     {figs[0].resolve()}" in out
    assert "test_nll" in out and "test_kl" in out
    assert "non-finite" not in out and "test_nonfinite" not in out  # only shown when above zero
    # the checkpoint reloads without unpickling arbitrary objects
    state = torch.load(ckpts[2], map_location="cpu", weights_only=True)
    assert "state_dict" in state
    # with no logger configured, Lightning's default is TensorBoard (a dependency), without the warning
    # of its CSV fallback; the figure is in its Images tab, at the last training step
    assert not [w for w in recwarn if "CSVLogger" in str(w.message)], [str(w.message) for w in recwarn]
    events = EventAccumulator(str(figs[0].parent))
    events.Reload()
    assert [image.step for image in events.Images("density")] == [5]
    # a plain fit warns of nothing from unflow-zoo's own code
    package = str(ROOT / "unflow_zoo")
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in recwarn if w.filename.startswith(package)]
    assert not ours, ours


def test_fit_logs_the_figure_to_every_configured_logger(tmp_path):
    """A config's own loggers replace the default, and each gets the figure (TensorBoard and a PNG for CSV)."""
    config = tmp_path / "loggers.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            trainer:
              logger:
                - class_path: lightning.pytorch.loggers.CSVLogger
                  init_args: {{save_dir: {tmp_path}, name: csv}}
                - class_path: lightning.pytorch.loggers.TensorBoardLogger
                  init_args: {{save_dir: {tmp_path}, name: tb}}
            """
        )
    )
    _run(
        [
            "fit",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.enable_progress_bar=false",
            "--data.n_samples=1000",
            "--plot.n_samples=200",
            "--plot.points=20",
            "--test_after_fit=false",
        ]
    )
    # the run folder is the first logger's: density.png and the CSV logger's copy of it
    csv_dir = tmp_path / "csv" / "version_0"
    assert (csv_dir / "density.png").is_file() and (csv_dir / "metrics.csv").is_file()
    assert (csv_dir / "figures" / "density-step3.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    assert [image.step for image in events.Images("density")] == [3]


def test_config_typo_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(
            [
                "fit",
                "--config",
                str(ROOT / "configs/maf/moons.yaml"),
                "--model.init_args.n_layer=3",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    assert exc.value.code != 0
    assert "n_layer" in capsys.readouterr().err


def test_unknown_dataset_lists_valid_ones(tmp_path):
    with pytest.raises((ValueError, SystemExit)) as exc:
        _run(
            [
                "fit",
                "--config",
                str(ROOT / "configs/maf/moons.yaml"),
                "--data.dataset=mooons",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    if exc.type is ValueError:
        assert "moons" in str(exc.value)


USER_MODULE = '''
import torch
from unflow_zoo.core import Compose, DiagNormal, Flow, Permutation
from unflow_zoo.models.realnvp import RealNVP
from unflow_zoo.transforms import AffineCoupling, alternating_mask


class ShallowCouplingFlow(RealNVP):
    """A user's family: RealNVP's hyper-parameters, its own flow and a learnable base."""

    built = 0

    def build_flow(self):
        type(self).built += 1
        d = self.event_shape[0]
        layers = []
        for k in range(self.hparams.n_layers):
            layers += [AffineCoupling(alternating_mask(d, 0), [16]), Permutation.reverse(d)]
        return Flow(Compose(layers), DiagNormal(self.event_shape))
'''

USER_CONFIG = """
seed_everything: 1
trainer:
  max_epochs: 8
  accelerator: cpu
  enable_progress_bar: false
model:
  class_path: my_user_flows.ShallowCouplingFlow
  init_args:
    n_layers: 3
    lr: 0.01
data:
  dataset: moons
  n_samples: 3000
  batch_size: 128
"""


def test_user_subclass_trains_from_yaml_class_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_user_flows.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "user.yaml").write_text(textwrap.dedent(USER_CONFIG))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_user_flows", None)
    _run(
        [
            "fit",
            "--config",
            str(tmp_path / "user.yaml"),
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--plot.enabled=false",
        ]
    )
    import my_user_flows

    assert my_user_flows.ShallowCouplingFlow.built == 1
    out = capsys.readouterr().out
    nll = float(next(line.split()[1] for line in out.splitlines() if line.startswith("test_nll")))
    # better than the best Gaussian (the maximum-likelihood optimum of any affine flow)
    from unflow_zoo.data import DensityDataModule

    dm = DensityDataModule("moons", n_samples=3000)
    dm.setup()
    cov = torch.cov(dm.train_data.double().T)
    gaussian_nll = 0.5 * torch.logdet(2 * torch.pi * torch.e * cov).item()
    assert nll < gaussian_nll - 0.2, (nll, gaussian_nll)
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert "flow.base.loc" in state  # the user's DiagNormal base was trained and saved


def test_console_scripts_are_declared_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"unflow-zoo": "unflow_zoo.cli:main", "lightning": "unflow_zoo.cli:lightning_main"}


def test_console_scripts_are_installed():
    """``unflow-zoo`` runs every command; ``lightning`` is a separate entry point that hands
    lightning-sdk's commands over (tests/test_lightning_dispatch.py)."""
    ours = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.module == "unflow_zoo.cli"}
    if not ours:
        pytest.skip("package not installed (pip install -e .)")
    if ours.get("lightning") == "unflow_zoo.cli:main":
        pytest.skip("the installed scripts predate pyproject.toml's: pip install -e .")
    assert ours == {"unflow-zoo": "unflow_zoo.cli:main", "lightning": "unflow_zoo.cli:lightning_main"}


def test_console_script_runs(tmp_path):
    # the venv's own script first: pytest may run from a venv that is not on PATH
    sibling = Path(sys.executable).with_name("unflow-zoo")
    exe = str(sibling) if sibling.is_file() else shutil.which("unflow-zoo")
    if exe is None:
        pytest.skip("package not installed (pip install -e .)")
    proc = subprocess.run(
        [
            exe,
            "fit",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            "--plot.enabled=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_nll" in proc.stdout
    # our CLI wiring adds no warning of its own (LightningCLI warns when `args` duplicates sys.argv),
    # and the default logger is TensorBoard, not the CSV fallback with its warning
    assert "`args`" not in proc.stderr and "LightningCLI" not in proc.stderr, proc.stderr[-3000:]
    assert "CSVLogger" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_quickstart_reaches_the_true_entropy(tmp_path, capsys):
    """The README's claim: the quick start ends within 0.15 nats of the true entropy."""
    _run(
        [
            "fit",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    out = capsys.readouterr().out
    kl = float(next(line.split()[1] for line in out.splitlines() if line.startswith("test_kl")))
    assert 0 <= kl < 0.15, out


# ----- divergence, checkpoints that survive a kill, honest printed metrics ----------------------------
_SMALL_MOONS = ["--config", str(ROOT / "configs/maf/moons.yaml"), "--data.n_samples=600", "--trainer.accelerator=cpu",
                "--plot.enabled=false", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                "--trainer.enable_model_summary=false"]  # fmt: skip


def test_divergence_exits_nonzero_and_keeps_the_last_finite_weights(tmp_path, capsys):
    # lr = 10: the MAF's NLL overflows within a few steps
    with pytest.raises(SystemExit) as exc:
        _run(["fit", *_SMALL_MOONS, "--model.init_args.lr=10", "--trainer.max_epochs=3",
              f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "unflow-zoo: error: training diverged" in err and "Traceback" not in err, err
    assert "global step" in err and "epoch" in err and "The last finite loss was" in err, err
    assert "lower the learning rate (model lr=10)" in err and "trainer.gradient_clip_val" in err, err
    saved = tmp_path / "checkpoints" / "last-finite.ckpt"
    assert f"The last finite weights are saved in {saved}" in err, err
    state = torch.load(saved, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_short_run_saves_a_checkpoint_every_epoch(tmp_path):
    # the config validates every 5 epochs; a 2-epoch run still leaves one checkpoint per epoch
    _run(["fit", *_SMALL_MOONS, "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}",
          "--checkpoint.save_top_k=-1", "--test_after_fit=false"])  # fmt: skip
    folder = tmp_path / "checkpoints"
    saved = {p.name: torch.load(p, map_location="cpu", weights_only=True)["epoch"] for p in folder.glob("*.ckpt")}
    assert saved == {"epoch=0-step=2.ckpt": 0, "epoch=1-step=4.ckpt": 1, "last.ckpt": 1}, saved


def test_checkpointing_off_or_configured_replaces_the_default(tmp_path):
    _run(["fit", *_SMALL_MOONS, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path / 'off'}",
          "--trainer.enable_checkpointing=false", "--test_after_fit=false"])  # fmt: skip
    assert not list((tmp_path / "off").rglob("*.ckpt"))
    config = tmp_path / "own.yaml"
    config.write_text(
        textwrap.dedent(f"""
        trainer:
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args:
                dirpath: {tmp_path / "own"}
                filename: mine
    """)
    )
    # (a plain ModelCheckpoint saves after validation: here, every epoch)
    _run(["fit", *_SMALL_MOONS, "--config", str(config), "--trainer.max_epochs=1", "--test_after_fit=false",
          "--trainer.check_val_every_n_epoch=1", f"--trainer.default_root_dir={tmp_path / 'run'}"])  # fmt: skip
    assert [p.name for p in (tmp_path / "own").iterdir()] == ["mine.ckpt"]
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def _final_state(root: Path) -> dict:
    state = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {"epoch": state["epoch"], "step": state["global_step"], **state["state_dict"]}


def test_resume_from_last_ckpt_matches_an_uninterrupted_run(tmp_path):
    # a per-epoch decay makes the scheduler's state part of what must resume exactly
    args = [*_SMALL_MOONS, "--model.init_args.scheduler=step", "--model.init_args.scheduler_step_size=1",
            "--model.init_args.scheduler_gamma=0.7", "--test_after_fit=false"]  # fmt: skip
    _run(["fit", *args, "--trainer.max_epochs=4", f"--trainer.default_root_dir={tmp_path / 'straight'}"])
    _run(["fit", *args, "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path / 'cut'}"])
    _run(["fit", *args, "--trainer.max_epochs=4", f"--trainer.default_root_dir={tmp_path / 'cut'}",
          f"--ckpt_path={tmp_path / 'cut' / 'checkpoints' / 'last.ckpt'}"])  # fmt: skip
    straight, resumed = _final_state(tmp_path / "straight"), _final_state(tmp_path / "cut")
    assert straight["epoch"] == resumed["epoch"] == 3 and straight["step"] == resumed["step"]
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


HOLEY_MODULE = '''
import torch
from unflow_zoo.models.maf import MaskedAutoregressiveFlow


class HoleyMAF(MaskedAutoregressiveFlow):
    """A MAF whose log-density is NaN at every point with x_0 > 1.5 (outside training)."""

    def log_prob(self, x, context=None):
        lp = super().log_prob(x, context)
        return lp if self.training else torch.where(x[:, 0] > 1.5, torch.full_like(lp, float("nan")), lp)
'''


def test_nonfinite_test_metrics_are_printed(tmp_path, monkeypatch, capsys):
    (tmp_path / "holey_flows.py").write_text(textwrap.dedent(HOLEY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("holey_flows", None)
    _run(["fit", *_SMALL_MOONS, "--model=holey_flows.HoleyMAF", "--model.init_args.n_layers=2",
          "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path / 'run'}"])  # fmt: skip
    out = capsys.readouterr().out
    from unflow_zoo.data import DensityDataModule

    dm = DensityDataModule("moons", n_samples=600, seed=0)
    dm.setup("test")
    bad = int((dm.test_data[:, 0] > 1.5).sum())
    assert bad > 0
    assert f"test_nll    inf ({bad} non-finite rows)" in out, out
    assert f"test_bpd    inf ({bad} non-finite rows)" in out, out
    assert f"test_nonfinite {bad} rows with a non-finite log-density" in out, out
    assert "test_gaussian_nll" in out  # the baseline is finite and still printed


def test_printed_summary_keeps_inf_and_nan():
    from unflow_zoo.cli import _format_results

    text = _format_results({"test_nll": math.inf, "test_bpd": math.nan, "test_nonfinite": 12.0, "val_nll": 1.5,
                            "val_nonfinite": 0.0})  # fmt: skip
    assert text.splitlines() == [
        "test_nll    inf (12 non-finite rows)",
        "test_bpd    nan (12 non-finite rows)",
        "test_nonfinite 12 rows with a non-finite log-density",
        "val_nll     1.5000",
    ]


def test_help_lists_every_command_and_no_predict(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["unflow-zoo"])  # LightningCLI warns when sys.argv holds pytest's flags
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "pretrained", "sample", "evaluate", "export", "study overparam"):
        assert command in out, command
    assert "predict" not in out


def test_fit_tests_the_best_validated_weights(tmp_path, capsys):
    """The test after fit scores best.ckpt (lowest val_nll), not the last weights."""
    argv = ["--config", str(ROOT / "configs/quickstart.yaml"), "--trainer.max_epochs=4",
            "--trainer.limit_train_batches=3", "--trainer.check_val_every_n_epoch=1",
            "--trainer.enable_progress_bar=false", "--data.n_samples=1000", "--plot.enabled=false",
            "--model.init_args.lr=0.05"]  # fmt: skip
    _run(["fit", *argv, f"--trainer.default_root_dir={tmp_path / 'a'}"])
    printed = capsys.readouterr().out
    (best,) = (tmp_path / "a").rglob("best.ckpt")
    tested = float(next(line for line in printed.splitlines() if line.startswith("test_nll")).split()[1])
    _run(["test", *argv, f"--trainer.default_root_dir={tmp_path / 'b'}", f"--ckpt_path={best}"])
    assert f"{tested:.4f}" in capsys.readouterr().out  # the same number as testing best.ckpt itself
    _run(["fit", *argv, f"--trainer.default_root_dir={tmp_path / 'c'}", "--best_checkpoint=false"])
    assert not list((tmp_path / "c").rglob("best.ckpt")) and "best:" not in capsys.readouterr().out
