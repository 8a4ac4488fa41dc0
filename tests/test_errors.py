"""Every error unflow-zoo raises on purpose is an :class:`~unflow_zoo.errors.UnflowZooError`
that is also the built-in it used to be, and the command line prints it without a traceback."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from unflow_zoo import errors
from unflow_zoo.errors import (
    ConfigError,
    DataError,
    DataTypeError,
    MissingFileError,
    UnflowZooError,
)


def test_cli_prints_an_empty_split_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from unflow_zoo.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNFLOW_ZOO_CACHE", str(tmp_path))
    monkeypatch.delenv("UNFLOW_ZOO_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["unflow-zoo"])
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--pretrained", "constrained-mog1d", "--split", "val"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "unflow-zoo: error:" in err
    assert "val_fraction" in err
    assert "--data.val_fraction 0.1" in err
    assert "Traceback" not in err


def _make_base() -> Any:
    from unflow_zoo.core.distributions import make_base

    return make_base("no-such-base", 2)


def _create_model() -> Any:
    from unflow_zoo.models import create_model

    return create_model("no-such-model")


def _synthetic_source() -> Any:
    from unflow_zoo.data.synthetic import get_source

    return get_source("no-such-source")


def _ood_outlier_kind() -> Any:
    from unflow_zoo.ood import make_outliers

    return make_outliers("no-such-kind", torch.zeros(4, 2))


def _ood_score_kind() -> Any:
    from unflow_zoo.ood import score

    return score(None, torch.zeros(4, 2), kind="no-such-kind")


def _permutation() -> Any:
    from unflow_zoo.core.transform import Permutation

    return Permutation([0, 0])


def _compose() -> Any:
    from unflow_zoo.core.transform import Compose

    return Compose([object()])


def _gaussian_nll() -> Any:
    from unflow_zoo.metrics import gaussian_nll

    return gaussian_nll(torch.zeros(1, 2))


def _bad_idx(tmp_path: Path) -> Any:
    from unflow_zoo.data.images import read_idx

    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x01\x02\x03\x04")
    return read_idx(path)


def _no_mnist(tmp_path: Path) -> Any:
    from unflow_zoo.data.images import load_mnist

    return load_mnist(tmp_path)


CASES: list[tuple[str, Callable[..., Any], type[UnflowZooError], type[Exception], str]] = [
    ("make_base", _make_base, ConfigError, ValueError, "unknown base distribution"),
    ("create_model", _create_model, ConfigError, ValueError, "unknown model"),
    ("synthetic", _synthetic_source, ConfigError, ValueError, "unknown synthetic source"),
    ("ood-outliers", _ood_outlier_kind, ConfigError, ValueError, "unknown outlier kind"),
    ("ood-score", _ood_score_kind, ConfigError, ValueError, "unknown score kind"),
    ("permutation", _permutation, ConfigError, ValueError, "not a permutation"),
    ("compose", _compose, DataTypeError, TypeError, "Compose expects Transform objects"),
    ("gaussian_nll", _gaussian_nll, DataError, ValueError, "at least two points"),
    ("read_idx", _bad_idx, DataError, ValueError, "not an IDX file"),
    ("load_mnist", _no_mnist, MissingFileError, FileNotFoundError, "--data.download true"),
]


@pytest.mark.parametrize(("make", "cls", "builtin", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_errors_are_unflow_zoo_errors(
    make: Callable[..., Any],
    cls: type[UnflowZooError],
    builtin: type[Exception],
    match: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = (tmp_path,) if inspect.signature(make).parameters else ()
    with pytest.raises(cls, match=match) as info:
        make(*args)
    assert isinstance(info.value, UnflowZooError)
    assert isinstance(info.value, builtin)  # `except ValueError` (etc.) keeps working


def test_all_lists_every_error_class() -> None:
    classes = {name for name, obj in vars(errors).items() if inspect.isclass(obj) and obj.__module__ == errors.__name__}
    assert set(errors.__all__) == classes
    assert len(errors.__all__) == len(set(errors.__all__))
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), UnflowZooError), name
