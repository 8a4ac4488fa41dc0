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


# ----- checkpoints a run can resume from -------------------------------------------------------------
import lightning as L

from unflow_zoo.callbacks import LastFiniteCheckpoint, RunCheckpoint
from unflow_zoo.errors import DivergenceError
from unflow_zoo.models.maf import MaskedAutoregressiveFlow


class _NaNFrom(MaskedAutoregressiveFlow):
    """A MAF whose training loss turns NaN at optimizer step ``at``."""

    at = 3

    def log_prob(self, x, context=None):
        lp = super().log_prob(x, context)
        if self.training and self._trainer is not None and self.trainer.global_step >= self.at:
            return lp * math.nan
        return lp


def _weights(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(("val_", "test_"))}


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_last_finite_checkpoint_keeps_the_weights_before_divergence(tmp_path, trainer_factory, with_checkpoint):
    model = _NaNFrom(event_shape=(2,), n_layers=1, hidden=[8], lr=0.01)
    cb = LastFiniteCheckpoint()
    callbacks = [cb, RunCheckpoint(dirpath=str(tmp_path / "ckpts"))] if with_checkpoint else [cb]
    trainer = trainer_factory(
        max_epochs=3, callbacks=callbacks, default_root_dir=str(tmp_path), enable_checkpointing=with_checkpoint
    )
    with pytest.raises(DivergenceError) as info:
        trainer.fit(model, _loader(n=64, d=2))  # 2 steps an epoch
    # next to the run's other checkpoints, or in <default_root_dir>/checkpoints without any
    expected = tmp_path / ("ckpts" if with_checkpoint else "checkpoints") / "last-finite.ckpt"
    assert cb.last_path == expected and expected.is_file()
    assert info.value.checkpoint_path == str(expected)
    assert f"The last finite weights are saved in {expected}" in str(info.value)
    assert "global step 3" in str(info.value)
    state = torch.load(expected, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    saved = _weights(state["state_dict"])
    now = _weights(model.state_dict())
    assert saved.keys() == now.keys()
    for key, value in saved.items():
        assert torch.isfinite(value).all() and torch.equal(value, now[key]), key
    # the checkpoint loads back as the model it was
    loaded = MaskedAutoregressiveFlow.load_from_checkpoint(expected)
    x = torch.randn(5, 2)
    assert torch.isfinite(loaded.log_prob(x)).all()


def test_last_finite_checkpoint_ignores_other_errors(tmp_path, trainer_factory):
    class Boom(L.Callback):
        def on_train_batch_end(self, *args):
            raise RuntimeError("not a divergence")

    cb = LastFiniteCheckpoint(dirpath=str(tmp_path))
    model = create_model("maf", event_shape=(2,), n_layers=1, hidden=[8])
    with pytest.raises(RuntimeError, match="not a divergence"):
        trainer_factory(max_epochs=1, callbacks=[cb, Boom()]).fit(model, _loader(n=64, d=2))
    assert cb.last_path is None and not list(tmp_path.iterdir())


def _epochs_saved(folder) -> dict:
    return {p.name: torch.load(p, map_location="cpu", weights_only=True)["global_step"] for p in folder.glob("*.ckpt")}


def test_run_checkpoint_saves_every_epoch_whatever_the_validation_interval(tmp_path, trainer_factory):
    model = create_model("maf", event_shape=(2,), n_layers=1, hidden=[8])
    # validation every 5 epochs: a plain ModelCheckpoint would save nothing in a 2-epoch run
    cb = RunCheckpoint(dirpath=str(tmp_path), save_top_k=-1)
    trainer = trainer_factory(max_epochs=2, callbacks=[cb], enable_checkpointing=True, check_val_every_n_epoch=5)
    trainer.fit(model, _loader(n=64, d=2), _loader(n=32, d=2))
    assert _epochs_saved(tmp_path) == {"epoch=0-step=2.ckpt": 2, "epoch=1-step=4.ckpt": 4, "last.ckpt": 4}


@pytest.mark.parametrize("kwargs,max_epochs,expected", [
    ({"every_n_epochs": 3}, 4, {"epoch=2-step=6.ckpt": 6, "last.ckpt": 8}),
    ({"every_n_train_steps": 3}, 2, {"epoch=1-step=3.ckpt": 3, "last.ckpt": 4}),
])  # fmt: skip
def test_run_checkpoint_also_saves_at_the_end_of_fit(tmp_path, trainer_factory, kwargs, max_epochs, expected):
    model = create_model("maf", event_shape=(2,), n_layers=1, hidden=[8])
    cb = RunCheckpoint(dirpath=str(tmp_path), save_top_k=-1, **kwargs)
    trainer_factory(max_epochs=max_epochs, callbacks=[cb], enable_checkpointing=True).fit(model, _loader(n=64, d=2))
    assert _epochs_saved(tmp_path) == expected
    assert cb.last_model_path == str(tmp_path / "last.ckpt")
