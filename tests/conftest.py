"""Shared test fixtures: deterministic seeds and a quiet, CPU-only Trainer factory."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from hypothesis import settings

# The test tensors are small: one intra-op thread is as fast, and on a busy 2-core machine a
# second OpenMP thread makes every parallel op wait for a time slice (measured: up to 50x slower).
torch.set_num_threads(1)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")

# The default run draws the same Hypothesis examples every time, so that a red CI is a change in
# the code and not a new draw; `pytest --hypothesis-profile=explore` (or the slow *_long fuzz
# tests) search afresh, and a failure they find becomes an explicit @example.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("default")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def quiet_trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


@pytest.fixture
def trainer_factory():
    return quiet_trainer


def _two_moons(n: int, seed: int) -> torch.Tensor:
    """Two noisy half-circles (like scikit-learn's moons), seeded, float32 ``(n, 2)``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3.1416
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.stack([torch.cos(t), torch.sin(t)], 1)
    x = torch.where(upper[:, None], x, torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1))
    return (x + 0.1 * torch.randn(n, 2, generator=g)).float()


@pytest.fixture
def two_moons():
    return _two_moons


def set_hf_offline(monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    """Hugging Face offline mode on or off for one test: the ``HF_HUB_OFFLINE`` variable *and* the
    constants huggingface_hub and datasets read from it once, when first imported (so a test that only
    sets the variable would depend on whether an earlier test imported them first)."""
    import datasets.config
    import huggingface_hub.constants

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch):
    """``hf_offline(True | False)``: :func:`set_hf_offline` for this test."""
    return lambda offline: set_hf_offline(monkeypatch, offline)
