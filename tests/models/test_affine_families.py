"""realnvp and maf: the kit on their transforms, and normalisation before and after training."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.models import create_model
from unflow_zoo.testing import check_normalization, check_transform, randomize_parameters_


@pytest.mark.parametrize("name", ["realnvp", "maf"])
@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_family_transform_passes_the_kit(name, dim, seed):
    torch.manual_seed(seed)
    m = create_model(name, event_shape=(dim,), n_layers=4, hidden=[16, 16])
    randomize_parameters_(m, 0.1, seed)
    report = check_transform(m.flow.transform, torch.randn(16, dim))
    if dim == 2:
        assert abs(report.normalization - 1) < 0.01


def test_maf_in_one_dimension():
    m = create_model("maf", event_shape=(1,), n_layers=2)
    randomize_parameters_(m, 0.3, 0)
    check_transform(m.flow.transform, torch.randn(16, 1))


def test_realnvp_needs_two_features():
    with pytest.raises(ValueError, match="D >= 2"):
        create_model("realnvp", event_shape=(1,))


@pytest.mark.parametrize("name", ["realnvp", "maf"])
def test_normalised_after_training(name, trainer_factory, two_moons):
    x = two_moons(2000, 0)
    m = create_model(name, event_shape=(2,), n_layers=4, hidden=[32, 32], lr=3e-3)
    assert abs(check_normalization(m.flow) - 1) < 0.01
    before = -m.log_prob(x).mean().item()
    trainer_factory(max_epochs=6).fit(m, DataLoader(TensorDataset(x), batch_size=128, shuffle=True))
    after = -m.log_prob(x).mean().item()
    assert after < before - 0.8, (before, after)  # it learnt something
    assert abs(check_normalization(m.flow.double()) - 1) < 0.01
