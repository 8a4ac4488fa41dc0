"""default_data_dir(): the user's cache, chosen from the environment when asked, never at import."""

from __future__ import annotations

from pathlib import Path

import pytest

from unflow_zoo.data import DensityDataModule
from unflow_zoo.data.paths import default_data_dir, resolve_data_dir

_VARS = ("UNFLOW_ZOO_DATA", "UNFLOW_ZOO_CACHE", "XDG_CACHE_HOME")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_default_data_dir_order(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_data_dir() == tmp_path / "home" / ".cache" / "unflow_zoo" / "data"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "unflow_zoo" / "data"
    clean_env.setenv("UNFLOW_ZOO_CACHE", str(tmp_path / "pkg"))
    assert default_data_dir() == tmp_path / "pkg" / "data"  # the package cache, moved, takes its data along
    clean_env.setenv("UNFLOW_ZOO_DATA", "~/mydata")
    assert default_data_dir() == tmp_path / "home" / "mydata"
    clean_env.setenv("UNFLOW_ZOO_DATA", "")  # empty: as if unset
    assert default_data_dir() == tmp_path / "pkg" / "data"


def test_resolve_data_dir_keeps_an_explicit_folder(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("UNFLOW_ZOO_DATA", str(tmp_path / "default"))
    assert resolve_data_dir(None) == tmp_path / "default"
    assert resolve_data_dir("data") == Path("data")  # relative: to the working directory, as given
    assert resolve_data_dir(tmp_path / "mine") == tmp_path / "mine"


def test_the_module_reads_the_default_when_it_looks_for_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dm = DensityDataModule(dataset="miniboone")
    assert dm.hparams.data_dir is None  # recorded as "the default", not as this machine's folder
    monkeypatch.setenv("UNFLOW_ZOO_DATA", str(tmp_path / "later"))
    assert dm.data_dir == tmp_path / "later"
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    message = str(err.value)
    assert str(tmp_path / "later") in message and "UNFLOW_ZOO_DATA" in message
    assert DensityDataModule(dataset="miniboone", data_dir=str(tmp_path / "x")).data_dir == tmp_path / "x"


def test_a_relative_path_is_found_in_the_working_directory_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cwd, cache = tmp_path / "cwd", tmp_path / "cache"
    for folder, rows in ((cwd, "1 2\n3 4\n5 6\n"), (cache, "1 2 3\n4 5 6\n7 8 9\n")):
        folder.mkdir()
        (folder / "points.txt").write_text(rows)
    (cache / "only_cached.txt").write_text("1\n2\n3\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("UNFLOW_ZOO_DATA", str(cache))
    assert DensityDataModule(dataset="file", path="points.txt").event_shape == (2,)  # the working directory's
    assert DensityDataModule(dataset="file", path="only_cached.txt").event_shape == (1,)  # then data_dir
    with pytest.raises(FileNotFoundError, match="UNFLOW_ZOO_DATA") as err:
        DensityDataModule(dataset="file", path="nowhere.txt")
    assert str(cache / "nowhere.txt") in str(err.value) and str(cwd / "nowhere.txt") in str(err.value)
