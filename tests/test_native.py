"""The fused kernels build on demand, and their absence only costs speed."""

from __future__ import annotations

import pytest

from unflow_zoo import native


def test_disabled_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("UNFLOW_ZOO_NATIVE", "0")
    assert native.library() is None and not native.available()


def test_missing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setattr(native, "_compiler", lambda: None)
    monkeypatch.setenv("UNFLOW_ZOO_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("UNFLOW_ZOO_NATIVE", "auto")
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native.library() is None
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setenv("UNFLOW_ZOO_NATIVE", "1")  # required: the failure is an error
    with pytest.raises(RuntimeError, match="no C compiler"):
        native.library()


def test_builds_into_the_cache(monkeypatch, tmp_path) -> None:
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setenv("UNFLOW_ZOO_NATIVE_CACHE", str(tmp_path))
    lib = native.library()
    assert lib is not None and list(tmp_path.glob("native/*/kernels.so"))
