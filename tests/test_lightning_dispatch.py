"""The ``lightning`` script: fit/validate/test through unflow-zoo, every other command to lightning-sdk.

lightning-sdk is not a dependency: a stand-in package plays it, installed into ``tmp_path`` with real
distribution metadata (so ``importlib.metadata`` finds it the way it finds the real one) or handed
over as a bare entry point.
"""

from __future__ import annotations

import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

from unflow_zoo.cli import LIGHTNING_SUBCOMMANDS, lightning_main, lightning_sdk_entry_point, main

ROOT = Path(__file__).resolve().parents[1]
SDK_VALUE = "lightning_sdk.cli.entrypoint:main_cli"  # lightning-sdk's pyproject: both its scripts point here

ENTRYPOINT_PY = """\
import sys

calls = []


def main_cli():
    calls.append(list(sys.argv))
    if "--fail" in sys.argv:
        raise SystemExit(2)  # click's way out
    return 0
"""


def _drop_sdk_modules() -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "lightning_sdk"]:
        del sys.modules[name]


@pytest.fixture
def installed_sdk(tmp_path, monkeypatch):
    """A stand-in lightning-sdk on ``sys.path``: its package and its ``.dist-info`` with both scripts."""
    site = tmp_path / "site"
    cli = site / "lightning_sdk" / "cli"
    cli.mkdir(parents=True)
    (site / "lightning_sdk" / "__init__.py").write_text("")
    (cli / "__init__.py").write_text("")
    (cli / "entrypoint.py").write_text(ENTRYPOINT_PY)
    info = site / "lightning_sdk-2026.7.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lightning_sdk\nVersion: 2026.7.3\n")
    (info / "entry_points.txt").write_text(f"[console_scripts]\nlightning = {SDK_VALUE}\nlightning-sdk = {SDK_VALUE}\n")
    _drop_sdk_modules()
    monkeypatch.syspath_prepend(str(site))
    yield
    _drop_sdk_modules()


def _calls() -> list[list[str]]:
    return sys.modules["lightning_sdk.cli.entrypoint"].calls if "lightning_sdk.cli.entrypoint" in sys.modules else []


def _only(monkeypatch, *eps: metadata.EntryPoint) -> None:
    """``importlib.metadata.entry_points`` sees only ``eps``."""
    monkeypatch.setattr(
        metadata, "entry_points", lambda **kw: list(eps) if kw.get("group") == "console_scripts" else []
    )


OURS = metadata.EntryPoint(name="lightning", value="unflow_zoo.cli:lightning_main", group="console_scripts")


def test_the_sdk_is_found_in_the_installed_metadata(installed_sdk):
    ep = lightning_sdk_entry_point()
    assert ep is not None and ep.name == "lightning" and ep.value == SDK_VALUE
    assert ep.dist is not None and ep.dist.name == "lightning_sdk"


@pytest.mark.parametrize(
    "argv",
    [["login"], ["run", "app", "app.py", "--cloud"], ["studio", "start", "--name", "x"], [], ["--help"]],
    ids=["login", "run", "studio", "nothing", "help"],
)
def test_other_commands_go_to_the_sdk(installed_sdk, monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/lightning", *argv])
    assert lightning_main() == 0
    assert _calls() == [["/usr/bin/lightning", *argv]]
    assert sys.argv == ["/usr/bin/lightning", *argv]


def test_args_from_python_reach_the_sdk_and_sys_argv_is_restored(installed_sdk, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    lightning_main(["login", "--key", "k"])
    assert _calls() == [["lightning", "login", "--key", "k"]]
    assert sys.argv == ["lightning"]


def test_the_sdk_exit_status_passes_through(installed_sdk, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit) as info:
        lightning_main(["login", "--fail"])
    assert info.value.code == 2
    assert sys.argv == ["lightning"]


@pytest.mark.parametrize("subcommand", LIGHTNING_SUBCOMMANDS)
def test_lightning_subcommands_stay_ours_with_the_sdk_installed(installed_sdk, monkeypatch, capsys, subcommand):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit) as info:
        lightning_main([subcommand, "--help"])
    assert info.value.code == 0
    assert "--ckpt_path" in capsys.readouterr().out  # LightningCLI's help for the subcommand
    assert _calls() == []


def test_lightning_fit_trains_with_the_sdk_installed(installed_sdk, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    config = str(ROOT / "configs/quickstart.yaml")
    lightning_main(["fit", "--config", config, "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
                    "--plot.enabled=false", "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert "test_nll" in capsys.readouterr().out
    assert _calls() == []


def test_unflow_zoo_never_dispatches(installed_sdk, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["unflow-zoo"])
    with pytest.raises(SystemExit) as info:
        main(["login"])
    assert info.value.code == 2  # LightningCLI: invalid choice
    assert "login" in capsys.readouterr().err
    assert _calls() == []


def test_entry_points_are_chosen_by_distribution_and_script_name(monkeypatch):
    sdk = metadata.EntryPoint(name="lightning", value=SDK_VALUE, group="console_scripts")
    sdk_alias = metadata.EntryPoint(name="lightning-sdk", value=SDK_VALUE, group="console_scripts")
    other = metadata.EntryPoint(name="lightning", value="someone_else.cli:main", group="console_scripts")
    _only(monkeypatch, OURS)
    assert lightning_sdk_entry_point() is None  # never our own script: no loop
    _only(monkeypatch, OURS, other)
    assert lightning_sdk_entry_point() is None  # a `lightning` that is not lightning-sdk's
    _only(monkeypatch, OURS, sdk_alias)
    assert lightning_sdk_entry_point() == sdk_alias  # its `lightning-sdk` alias is the same CLI
    _only(monkeypatch, sdk_alias, OURS, sdk)
    assert lightning_sdk_entry_point() == sdk  # `lightning` preferred


def test_a_bare_entry_point_loads_a_module_in_sys_modules(monkeypatch):
    seen = []
    stand_in = types.ModuleType("lightning_sdk.cli.entrypoint")
    stand_in.main_cli = lambda: seen.append(list(sys.argv)) or 0
    for name in ("lightning_sdk", "lightning_sdk.cli"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "lightning_sdk.cli.entrypoint", stand_in)
    _only(monkeypatch, OURS, metadata.EntryPoint(name="lightning", value=SDK_VALUE, group="console_scripts"))
    monkeypatch.setattr(sys, "argv", ["lightning"])
    assert lightning_main(["logout"]) == 0
    assert seen == [["lightning", "logout"]]


def test_without_the_sdk_other_commands_say_what_to_install(monkeypatch, capsys):
    _only(monkeypatch, OURS)
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit) as info:
        lightning_main(["login"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("lightning: error: `lightning login` is not an unflow-zoo command")
    assert "lightning-sdk" in err and "pip install lightning-sdk" in err and "unflow-zoo" in err
    assert "Traceback" not in err


def test_without_the_sdk_a_typo_names_the_subcommand(monkeypatch, capsys):
    _only(monkeypatch, OURS)
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit):
        lightning_main(["fitt", "--config", "x.yaml"])
    assert "did you mean `lightning fit`?" in capsys.readouterr().err


def test_without_the_sdk_package_commands_point_to_unflow_zoo(monkeypatch, capsys):
    _only(monkeypatch, OURS)
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit) as info:
        lightning_main(["pretrained", "list"])
    assert info.value.code == 1
    assert "run `unflow-zoo pretrained ...` instead" in capsys.readouterr().err


def test_without_the_sdk_help_is_ours_and_says_so(monkeypatch, capsys):
    _only(monkeypatch, OURS)
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(SystemExit) as info:
        lightning_main(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the epilog
    assert "fit" in out and "lightning-sdk" in out and "`unflow-zoo`'s" in out


def test_the_errors_are_unflow_zoo_errors(monkeypatch):
    from unflow_zoo.errors import ConfigError, MissingDependencyError

    _only(monkeypatch, OURS)
    monkeypatch.setenv("UNFLOW_ZOO_TRACEBACK", "1")
    monkeypatch.setattr(sys, "argv", ["lightning"])
    with pytest.raises(MissingDependencyError, match="pip install lightning-sdk"):
        lightning_main(["login"])
    with pytest.raises(ConfigError, match="unflow-zoo export"):
        lightning_main(["export", "a.ckpt", "out"])
