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
