"""Shared test fixtures: deterministic seeds and a quiet, CPU-only Trainer factory."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

# The test tensors are small: one intra-op thread is as fast, and on a busy 2-core machine a
# second OpenMP thread makes every parallel op wait for a time slice (measured: up to 50x slower).
torch.set_num_threads(1)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")


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
