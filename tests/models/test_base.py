import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import unflow_zoo
from unflow_zoo.models import FlowModule, create_model, get_model_class, list_models


def _loader(x, batch_size=64):
    return DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True)


def test_registry_lists_and_creates():
    names = list_models()
    assert {"realnvp", "maf"} <= set(names)
    m = create_model("maf", event_shape=(3,), n_layers=2, hidden=[8])
    assert isinstance(m, FlowModule) and m.event_shape == (3,)
    assert m.hparams.n_layers == 2 and m.hparams.hidden == [8]
    assert unflow_zoo.list_models() == names
    assert get_model_class("realnvp").registry_name == "realnvp"


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'nice'.*maf.*realnvp"):
        create_model("nice")


def test_bad_optimizer_and_scheduler_names():
    from unflow_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        create_model("maf", optimizer="rmsprop")
    with pytest.raises(ConfigError, match="unknown scheduler 'linear'"):
        create_model("maf", scheduler="linear")


def test_batch_shape_mismatch_is_clear(trainer_factory):
    m = create_model("maf", event_shape=(2,))
    with pytest.raises(ValueError, match=r"expected a batch of shape \(B, 2\).*got \(8, 3\)"):
        trainer_factory(max_steps=1).fit(m, _loader(torch.randn(8, 3)))


@pytest.mark.parametrize(
    "optimizer,scheduler", [("adam", "cosine"), ("adamw", "step"), ("sgd", "plateau"), ("sgd", "none")]
)
def test_optimizers_and_schedulers_train(trainer_factory, optimizer, scheduler):
    x = torch.randn(256, 2) * torch.tensor([2.0, 0.5]) + 1.0
    m = create_model(
        "maf",
        event_shape=(2,),
        n_layers=2,
        hidden=[16],
        optimizer=optimizer,
        scheduler=scheduler,
        lr=1e-2,
        momentum=0.9 if optimizer == "sgd" else 0.0,
    )
    before = -m.log_prob(x).mean().item()
    trainer_factory(max_epochs=4).fit(m, _loader(x), _loader(x))
    after = -m.log_prob(x).mean().item()
    assert after < before - 0.1, (before, after)


def test_sample_and_log_prob_shapes():
    m = create_model("realnvp", event_shape=(4,), n_layers=2)
    assert m.sample(5).shape == (5, 4)
    assert m.log_prob(torch.randn(6, 4)).shape == (6,)
    assert m(torch.randn(6, 4)).shape == (6,)


class _Projected(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def project_(self):
        self.calls += 1


def test_projection_hook_runs_after_every_step(trainer_factory):
    m = create_model("maf", event_shape=(2,), n_layers=1, hidden=[4])
    probe = _Projected()
    m.flow.add_module("probe", probe)
    trainer_factory(max_steps=3).fit(m, _loader(torch.randn(64, 2), 16))
    assert probe.calls == 3


def test_regularization_is_added_to_the_loss():
    class Reg(get_model_class("maf")):
        def regularization(self):
            return torch.tensor(5.0)

    m = Reg(event_shape=(2,), n_layers=1, hidden=[4])
    x = torch.randn(16, 2)
    loss = m.training_step((x,), 0)
    assert torch.allclose(loss, -m.log_prob(x).mean() + 5.0)


# ----- the Gaussian baseline ------------------------------------------------------------
# (imports here, not at the top, so that this block stays one appended section)
import math

import lightning as L

from unflow_zoo.data.module import DensityDataModule
from unflow_zoo.metrics import gaussian_nll


def _hand_gaussian_nll(train: torch.Tensor, x: torch.Tensor) -> float:
    """Mean NLL of ``x`` under the ML Gaussian of ``train``, written out in float64."""
    train, x = train.double(), x.double()
    mean = train.mean(0)
    cov = (train - mean).T @ (train - mean) / len(train)
    diff = x - mean
    maha = (diff @ torch.linalg.inv(cov) * diff).sum(1)
    return float((0.5 * maha + 0.5 * torch.logdet(2 * torch.pi * cov)).mean())


def test_test_and_val_log_the_fitted_gaussian_nll(trainer_factory):
    dm = DensityDataModule("moons", n_samples=2000, batch_size=128, eval_batch_size=64, seed=0)
    m = create_model("maf", event_shape=(2,), n_layers=1, hidden=[8])
    result = trainer_factory().test(m, datamodule=dm, verbose=False)[0]
    expected = _hand_gaussian_nll(dm.train_data, dm.test_data)
    assert abs(result["test_gaussian_nll"] - expected) < 1e-5, (result, expected)
    # a Gaussian fitted to the training split is not the test split's own ML fit: it does worse there
    assert expected > gaussian_nll(dm.test_data)
    val = trainer_factory().validate(m, datamodule=dm, verbose=False)[0]
    assert abs(val["val_gaussian_nll"] - _hand_gaussian_nll(dm.train_data, dm.val_data)) < 1e-5
    # a different data module gets its own fit
    dm2 = DensityDataModule("8gaussians", n_samples=1000, seed=1)
    result2 = trainer_factory().test(m, datamodule=dm2, verbose=False)[0]
    assert abs(result2["test_gaussian_nll"] - _hand_gaussian_nll(dm2.train_data, dm2.test_data)) < 1e-5
    # the fit never enters the checkpoint
    assert not any("gaussian" in k for k in m.state_dict())


class _ServeTrainSplit(L.LightningDataModule):
    def __init__(self, train):
        super().__init__()
        self.train_data = train

    def test_dataloader(self):
        return _loader(self.train_data, 50)


def test_gaussian_baseline_on_its_own_training_data_is_gaussian_nll(trainer_factory):
    train = torch.randn(300, 3) @ torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.3, -0.2, 1.0]])
    m = create_model("maf", event_shape=(3,), n_layers=1, hidden=[8])
    result = trainer_factory().test(m, datamodule=_ServeTrainSplit(train), verbose=False)[0]
    assert abs(result["test_gaussian_nll"] - gaussian_nll(train)) < 1e-5


def test_gaussian_baseline_ridges_a_singular_covariance_and_skips_plain_loaders(trainer_factory):
    train = torch.randn(200, 2)
    train[:, 1] = 3.0  # a constant coordinate: the ML covariance is singular
    m = create_model("maf", event_shape=(2,), n_layers=1, hidden=[8])
    result = trainer_factory().test(m, datamodule=_ServeTrainSplit(train), verbose=False)[0]
    assert math.isfinite(result["test_gaussian_nll"])
    # without a data module there is no training split to fit: no baseline is logged
    result = trainer_factory().test(m, _loader(torch.randn(64, 2)), verbose=False)[0]
    assert "test_gaussian_nll" not in result and "test_nll" in result


def test_gaussian_baseline_refits_after_in_place_edits(trainer_factory):
    train = torch.randn(300, 2)
    dm = _ServeTrainSplit(train)
    m = create_model("maf", event_shape=(2,), n_layers=1, hidden=[8])
    before = trainer_factory().test(m, datamodule=dm, verbose=False)[0]["test_gaussian_nll"]
    train.mul_(3.0)  # the same tensor, rescaled: every NLL of its ML Gaussian grows by 2 log 3
    after = trainer_factory().test(m, datamodule=dm, verbose=False)[0]["test_gaussian_nll"]
    assert abs(after - before - 2 * math.log(3.0)) < 1e-5


# ----- hostile and careless input: honest metrics, divergence, optimiser settings -----------------
from unflow_zoo.errors import ConfigError, DivergenceError
from unflow_zoo.models.maf import MaskedAutoregressiveFlow


class _Holes(MaskedAutoregressiveFlow):
    """A MAF whose log-density is NaN where x_0 > 50 and -inf (no density) where x_0 < -50."""

    def log_prob(self, x, context=None):
        lp = super().log_prob(x, context)
        lp = torch.where(x[:, 0] > 50, torch.full_like(lp, math.nan), lp)
        return torch.where(x[:, 0] < -50, torch.full_like(lp, -math.inf), lp)


class _WithTruth(L.LightningDataModule):
    """Serves ``data`` for val and test, with the standard normal as the true density."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.data), batch_size=32)

    test_dataloader = val_dataloader

    def true_log_prob(self, x):
        return torch.distributions.Normal(0.0, 1.0).log_prob(x.double()).sum(1)


def _holey_data(n=100, nan_rows=(3, 40, 41, 97), neg_inf_rows=(5, 60)):
    x = torch.randn(n, 2)
    x[list(nan_rows), 0] = 100.0
    x[list(neg_inf_rows), 0] = -100.0
    return x


def test_nonfinite_log_densities_are_counted_and_make_the_nll_inf(trainer_factory):
    m = _Holes(event_shape=(2,), n_layers=1, hidden=[8])
    dm = _WithTruth(_holey_data())
    for stage, run in (("test", trainer_factory().test), ("val", trainer_factory().validate)):
        result = run(m, datamodule=dm, verbose=False)[0]
        assert result[f"{stage}_nonfinite"] == 6  # 4 NaN rows and 2 rows outside the support
        # not a mean over the 94 finite rows: the NLL, bits/dim and KL are all +inf
        for key in ("nll", "bpd", "kl"):
            assert result[f"{stage}_{key}"] == math.inf, (key, result)
    # finite data: nothing counted, the NLL is the plain mean
    clean = torch.randn(100, 2)
    result = trainer_factory().test(m, datamodule=_WithTruth(clean), verbose=False)[0]
    assert result["test_nonfinite"] == 0
    with torch.no_grad():
        expected = float(-m.log_prob(clean).double().mean())
    assert abs(result["test_nll"] - expected) < 1e-5


def test_metrics_follow_a_float64_model(trainer_factory):
    m = create_model("maf", event_shape=(2,), n_layers=2, hidden=[8])
    x = torch.randn(300, 2, dtype=torch.float64) * 3
    result = trainer_factory(precision="64-true").test(m, DataLoader(TensorDataset(x), batch_size=64), verbose=False)
    assert next(m.parameters()).dtype == torch.float64
    with torch.no_grad():
        expected = float(-m.log_prob(x).mean())
    # float32 metric states would be off by ~1e-7
    assert abs(result[0]["test_nll"] - expected) < 1e-12, (result[0]["test_nll"], expected)


class _Snapshots(L.Callback):
    """The parameters after every optimizer step (and before the first)."""

    def __init__(self):
        self.after = {}

    def on_train_start(self, trainer, pl_module):
        self.after[0] = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]


class _BlowsUp(MaskedAutoregressiveFlow):
    """Trains normally, then (from optimizer step ``at``) gives a NaN loss, or a finite loss with a NaN
    gradient (``what="grad"``: d sqrt(u)/du at u = 0 is inf, times 0)."""

    at, what = 3, "loss"

    def log_prob(self, x, context=None):
        lp = super().log_prob(x, context)
        if self.training and self._trainer is not None and self.trainer.global_step >= self.at:
            if self.what == "loss":
                return lp * math.nan
            p = next(self.parameters())
            return lp + 0.0 * torch.sqrt(p - p.detach()).sum()
        return lp


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_divergence_stops_before_the_bad_step_changes_the_weights(trainer_factory, what):
    m = _BlowsUp(event_shape=(2,), n_layers=1, hidden=[8], lr=1e-2)
    m.what = what
    snaps = _Snapshots()
    trainer = trainer_factory(max_epochs=3, callbacks=[snaps], gradient_clip_val=1.0 if what == "grad" else None)
    with pytest.raises(DivergenceError) as info:
        trainer.fit(m, _loader(torch.randn(64, 2), 32))  # 2 steps an epoch: step 3 is in epoch 1
    message = str(info.value)
    assert "global step 3 (epoch 1, batch 1)" in message, message
    assert "the last finite loss was" in message.lower() and "(global step 2)" in message, message
    assert "lr=0.01" in message and "gradient_clip_val" in message, message
    assert ("training loss is nan" in message) if what == "loss" else ("gradient of" in message), message
    assert trainer.global_step == 3
    # the weights are those after step 3, all finite: the bad step (and the clipping) never ran
    for now, before in zip(m.parameters(), snaps.after[3]):
        assert torch.isfinite(now).all() and torch.equal(now.detach(), before)


def test_divergence_at_the_first_step_blames_the_data_not_the_learning_rate(trainer_factory):
    m = _BlowsUp(event_shape=(2,), n_layers=1, hidden=[8])
    m.at = 0
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(DivergenceError, match="global step 0 .*No finite step came before it.*Check the data"):
        trainer_factory(max_epochs=1).fit(m, _loader(torch.randn(64, 2), 32))
    assert all(torch.equal(a.detach(), b) for a, b in zip(m.parameters(), before))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lr": 0.0}, r"lr > 0 .*got lr=0\.0"),
        ({"lr": -1e-3}, r"lr > 0 .*got lr=-0\.001"),
        ({"lr": math.nan}, r"lr > 0 \(a finite number\), got lr=nan"),
        ({"lr": math.inf}, r"lr > 0 \(a finite number\), got lr=inf"),
        ({"weight_decay": -1e-4}, r"weight_decay >= 0 .*got weight_decay=-0\.0001"),
        ({"weight_decay": math.nan}, r"weight_decay >= 0 .*got weight_decay=nan"),
        ({"optimizer": "sgd", "momentum": 1.0}, r"momentum in \[0, 1\) .*got momentum=1\.0"),
        ({"momentum": -0.5}, r"momentum in \[0, 1\) .*got momentum=-0\.5"),
        ({"scheduler": "step", "scheduler_gamma": -1.0}, r"scheduler_gamma in \(0, 1\] .*got scheduler_gamma=-1\.0"),
        ({"scheduler_gamma": 0.0}, r"scheduler_gamma in \(0, 1\]"),
        ({"scheduler_gamma": 2.0}, r"scheduler_gamma in \(0, 1\] .*got scheduler_gamma=2\.0"),
        ({"scheduler": "plateau", "scheduler_gamma": 1.0}, r"scheduler_gamma in \(0, 1\) .*got scheduler_gamma=1\.0"),
        ({"scheduler_step_size": 0}, r"scheduler_step_size >= 1 .*got scheduler_step_size=0"),
        ({"scheduler_step_size": 2.5}, r"scheduler_step_size >= 1 \(an int\)"),
        ({"scheduler_patience": -1}, r"scheduler_patience >= 0 .*got scheduler_patience=-1"),
        ({"event_shape": (2, 0)}, r"event_shape .*ints >= 1.*got event_shape=\(2, 0\)"),
        ({"event_shape": (-2,)}, r"event_shape .*ints >= 1"),
    ],
)
def test_nonsense_optimiser_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model("maf", **kwargs)


def test_valid_edge_settings_are_accepted():
    for kwargs in ({"scheduler": "step", "scheduler_gamma": 1.0}, {"momentum": 0.0, "weight_decay": 0.0},
                   {"scheduler_patience": 0, "scheduler_step_size": 1}, {"lr": 1}):  # fmt: skip
        assert isinstance(create_model("maf", **kwargs), FlowModule)
