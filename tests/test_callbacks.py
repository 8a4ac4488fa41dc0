"""WeightMovementCallback: ||theta_t - theta_0|| per parameter group, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.callbacks import WeightMovementCallback, parameter_groups_of
from unflow_zoo.models import create_model
from unflow_zoo.models.constrained import ConstrainedFlow


def _loader(n: int = 96, d: int = 1, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, d, generator=gen)), batch_size=32)


def _by_hand(now: list[torch.Tensor], before: list[torch.Tensor]) -> tuple[float, float]:
    moved = math.sqrt(sum(float(((a.detach().double() - b.double()) ** 2).sum()) for a, b in zip(now, before)))
    norm0 = math.sqrt(sum(float((b.double() ** 2).sum()) for b in before))
    return moved, moved / norm0


def test_movement_equals_hand_computation(trainer_factory):
    model = ConstrainedFlow(event_shape=(2,), width=8, optimizer="sgd", lr=0.05)
    before = {g: [p.detach().clone() for p in ps] for g, ps in model.parameter_groups().items()}
    cb = WeightMovementCallback()
    trainer = trainer_factory(max_epochs=2, callbacks=[cb])
    trainer.fit(model, _loader(d=2))
    assert [h["epoch"] for h in cb.history] == [0, 1] and cb.history[-1]["step"] == 6
    last = cb.history[-1]
    for g, ps in model.parameter_groups().items():
        moved, rel = _by_hand(list(ps), before[g])
        assert moved > 0, f"group {g} did not train"
        assert last[f"move_{g}"] == pytest.approx(moved, rel=1e-9)
        assert last[f"rel_move_{g}"] == pytest.approx(rel, rel=1e-9)
        # and it went through pl_module.log
        assert float(trainer.callback_metrics[f"move_{g}"]) == pytest.approx(moved, rel=1e-6)


def test_frozen_group_does_not_move(trainer_factory):
    model = ConstrainedFlow(event_shape=(1,), width=16, train_layers=["W", "b"], optimizer="sgd", lr=0.1)
    cb = WeightMovementCallback()
    trainer_factory(max_steps=5, callbacks=[cb]).fit(model, _loader(n=160))
    last = cb.history[-1]
    assert last["move_a"] == 0.0 and last["rel_move_a"] == 0.0
    assert last["move_W"] > 0 and last["move_b"] > 0


def test_every_n_steps_records_steps(trainer_factory):
    model = ConstrainedFlow(event_shape=(1,), width=4, optimizer="sgd", lr=0.05)
    cb = WeightMovementCallback(every_n_steps=2, groups=["W"])
    trainer = trainer_factory(max_epochs=2, callbacks=[cb])
    trainer.fit(model, _loader())
    steps = [(h["stage"], h["step"]) for h in cb.history]
    assert steps == [("step", 2), ("epoch", 3), ("step", 4), ("step", 6), ("epoch", 6)]
    assert set(cb.history[0]) == {"epoch", "step", "stage", "move_W", "rel_move_W"}
    assert "move_W_step" in trainer.callback_metrics and "move_W" in trainer.callback_metrics
    # the movement at a step matches the epoch-end value for the same step
    assert cb.history[3]["move_W"] == pytest.approx(cb.history[4]["move_W"])


def test_fallback_groups_by_parameter_name(trainer_factory):
    model = create_model("maf", event_shape=(2,), optimizer="sgd", lr=0.01)
    assert not callable(getattr(model, "parameter_groups", None))
    groups = parameter_groups_of(model)
    assert set(groups) <= {"W", "b", "other"} and groups["W"] and groups["b"]
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for ps in groups.values() for p in ps) == n_params
    cb = WeightMovementCallback(log=False)
    trainer_factory(max_steps=3, callbacks=[cb]).fit(model, _loader(d=2))
    assert cb.history[-1]["move_W"] > 0


def test_flow_level_parameter_groups():
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def parameter_groups(self) -> dict[str, list[torch.Tensor]]:
            return {"W": [self.w]}

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flow = Inner()

    outer = Outer()
    cb = WeightMovementCallback(log=False)
    cb.snapshot(outer)
    with torch.no_grad():
        outer.flow.w.add_(torch.tensor([3.0, 4.0, 0.0]))
    out = cb.compute(outer)
    assert out == {"move_W": pytest.approx(5.0), "rel_move_W": pytest.approx(5.0 / math.sqrt(3.0))}


def test_errors_say_what_is_wrong():
    model = ConstrainedFlow(event_shape=(1,), width=4)
    with pytest.raises(RuntimeError, match="before snapshot"):
        WeightMovementCallback().compute(model)
    with pytest.raises(ValueError, match=r"no parameter group\(s\) \['z'\]"):
        WeightMovementCallback(groups=["z"]).snapshot(model)
    with pytest.raises(ValueError, match="every_n_steps"):
        WeightMovementCallback(every_n_steps=0)


def test_resumed_run_measures_from_the_first_initialisation(tmp_path, trainer_factory):
    model = ConstrainedFlow(event_shape=(1,), width=8, optimizer="sgd", lr=0.05)
    init = {g: [p.detach().clone() for p in ps] for g, ps in model.parameter_groups().items()}
    trainer = trainer_factory(max_epochs=1, callbacks=[WeightMovementCallback()])
    trainer.fit(model, _loader())
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)

    resumed = ConstrainedFlow(event_shape=(1,), width=8, optimizer="sgd", lr=0.05)
    cb = WeightMovementCallback()
    trainer_factory(max_epochs=2, callbacks=[cb]).fit(resumed, _loader(), ckpt_path=path, weights_only=False)
    moved, _ = _by_hand(list(resumed.parameter_groups()["W"]), init["W"])
    assert [h["epoch"] for h in cb.history] == [0, 1]  # the first epoch's record came with the checkpoint
    assert cb.history[-1]["move_W"] == pytest.approx(moved, rel=1e-9)
