"""Optional dependencies: a missing extra names the pip command that installs it."""

from __future__ import annotations

import sys

import pytest

from unflow_zoo.data import uci
from unflow_zoo.errors import MissingDependencyError
from unflow_zoo.extras import require


def test_a_missing_extra_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "unflow-zoo\[uci\]"') as info:
        uci._read_bsds300(tmp_path / "BSDS300.hdf5")
    assert isinstance(info.value, ImportError) and "BSDS300" in str(info.value)


def test_an_installed_module_is_returned():
    import json

    assert require("json", "none", "a test") is json
