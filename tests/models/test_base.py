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
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        create_model("maf", optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown scheduler 'linear'"):
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
    m = create_model("maf", event_shape=(2,), n_layers=2, hidden=[16], optimizer=optimizer,
                     scheduler=scheduler, lr=1e-2, momentum=0.9 if optimizer == "sgd" else 0.0)
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
