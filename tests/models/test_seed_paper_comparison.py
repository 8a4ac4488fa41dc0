"""The seed paper's headline on its own mog1d data, through the shipped configs:
under the same epoch budget, the unconstrained flow at its default width reaches a
test NLL no worse than the constrained flow at its default width."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from unflow_zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _test_nll(config: str, epochs: int, batches: float, tmp_path: Path, capsys) -> float:
    old, sys.argv = sys.argv, ["unflow-zoo"]
    try:
        main(["fit", "--config", str(ROOT / config), f"--trainer.max_epochs={epochs}", f"--trainer.limit_train_batches={batches}",
              "--trainer.accelerator=cpu",
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--trainer.enable_checkpointing=false", "--trainer.logger=false", "--plot.enabled=false"])
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("test_nll")))


# The default run trains both for the same 80 SGD steps (the width-6400 integrand costs
# ~50 ms a step on 2 cores); the slow run for the same 10 full epochs.
@pytest.mark.parametrize("epochs,batches", [(1, 80), pytest.param(10, 1.0, marks=pytest.mark.slow)])
def test_unconstrained_no_worse_than_constrained_on_mog1d(epochs, batches, tmp_path, capsys):
    constrained = _test_nll("configs/constrained/mog1d.yaml", epochs, batches, tmp_path / "c", capsys)
    unconstrained = _test_nll("configs/unconstrained/mog1d.yaml", epochs, batches, tmp_path / "u", capsys)
    print(f"mog1d after {epochs} epochs x {batches} batches: constrained (m=100) {constrained:.4f}, unconstrained (m=6400) {unconstrained:.4f}")
    assert unconstrained <= constrained, (constrained, unconstrained)
