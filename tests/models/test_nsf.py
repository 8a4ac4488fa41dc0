"""nsf: both variants through the kit, the D = 1 rules, and training on two moons."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.models.nsf import NeuralSplineFlow
from unflow_zoo.models.registry import create_model, list_models
from unflow_zoo.testing import check_normalization, check_transform, randomize_parameters_
from unflow_zoo.transforms.spline import RQSAutoregressive, RQSCoupling

VARIANTS = ["coupling", "autoregressive"]
GRID = [(-8.0, 8.0)] * 2


def test_registered():
    assert "nsf" in list_models()
    m = create_model("nsf", event_shape=(3,))
    assert isinstance(m, NeuralSplineFlow)
    assert m.hparams.variant == "autoregressive" and m.hparams.bins == 8 and m.hparams.tail_bound == 4.0
    assert sum(isinstance(t, RQSAutoregressive) for t in m.flow.transform) == 4
    m = create_model("nsf", event_shape=(3,), variant="coupling", n_layers=5)
    assert sum(isinstance(t, RQSCoupling) for t in m.flow.transform) == 5


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_family_transform_passes_the_kit(variant, dim, seed):
    torch.manual_seed(seed)
    m = create_model("nsf", event_shape=(dim,), variant=variant, n_layers=3, hidden=[16, 16], bins=5, tail_bound=3.0)
    randomize_parameters_(m, 0.2, seed)
    # explicit grid: the flow is the identity beyond the tail bound, so N(0, I) mass outside
    # [-8, 8]^2 is negligible, and skipping the sampled bounds keeps the test fast
    report = check_transform(
        m.flow.transform, 2 * torch.randn(16, dim), inverse_atol=1e-8, grid_bounds=GRID, grid_points=401
    )
    if dim == 2:
        assert abs(report.normalization - 1) < 0.01


def test_starts_as_the_identity():
    for variant in VARIANTS:
        m = create_model("nsf", event_shape=(4,), variant=variant)
        x = torch.randn(8, 4)
        z, ladj = m.flow.transform(x)
        torch.testing.assert_close(z, x.flip(1), atol=1e-5, rtol=0)  # 3 reversals between 4 layers
        torch.testing.assert_close(ladj, torch.zeros(8), atol=1e-5, rtol=0)


def test_coupling_transforms_every_feature():
    for dim in (2, 3, 5):
        m = create_model("nsf", event_shape=(dim,), variant="coupling", n_layers=2, hidden=[8])
        randomize_parameters_(m, 0.3, 0)
        x = torch.rand(64, dim) - 0.5  # inside the tail bound
        z, _ = m.flow.transform(x)
        # one reversal between the two layers; every feature went through a spline in one of them
        assert ((z.flip(1) - x).abs() > 1e-4).float().mean(0).min() > 0.9


def test_one_dimension():
    m = create_model("nsf", event_shape=(1,), n_layers=2)
    randomize_parameters_(m, 0.3, 0)
    check_transform(m.flow.transform, 2 * torch.randn(16, 1))
    with pytest.raises(ValueError, match="D >= 2"):
        create_model("nsf", event_shape=(1,), variant="coupling")


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="unknown nsf variant"):
        create_model("nsf", variant="spline")
    with pytest.raises(ValueError, match="bins >= 1"):
        create_model("nsf", bins=0)
    with pytest.raises(ValueError, match="tail_bound > 0"):
        create_model("nsf", tail_bound=-1.0)
    with pytest.raises(ValueError, match="works on vectors"):
        create_model("nsf", event_shape=(1, 4, 4))


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_nll_and_stays_normalised(variant, trainer_factory, two_moons):
    x = two_moons(2000, 0)
    m = create_model(
        "nsf", event_shape=(2,), variant=variant, n_layers=3, hidden=[32, 32], bins=8, tail_bound=3.0, lr=5e-3
    )
    before = -m.log_prob(x).mean().item()
    trainer_factory(max_epochs=4).fit(m, DataLoader(TensorDataset(x), batch_size=100, shuffle=True))
    after = -m.log_prob(x).mean().item()
    assert after < before - 1.0, (before, after)
    assert abs(check_normalization(m.flow.double(), bounds=GRID, points=401) - 1) < 0.01
    s = m.flow.float().sample(500)
    assert s.shape == (500, 2) and torch.isfinite(s).all()
