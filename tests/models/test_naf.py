"""naf: registration, the family's transform through the kit, and training on two moons."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.models.naf import NeuralAutoregressiveFlow
from unflow_zoo.models.registry import create_model, list_models
from unflow_zoo.testing import check_normalization, check_transform, randomize_parameters_
from unflow_zoo.transforms.sigmoidal import DSFAutoregressive

INV_ATOL = 1e-6  # the documented float64 bisection accuracy
GRID = [(-9.0, 9.0)] * 2


def test_registered_with_the_documented_defaults():
    assert "naf" in list_models()
    m = create_model("naf", event_shape=(3,))
    assert isinstance(m, NeuralAutoregressiveFlow)
    hp = m.hparams
    assert (hp.n_layers, list(hp.hidden), hp.dsf_units, hp.dsf_depth) == (3, [64, 64], 16, 1)
    layers = [t for t in m.flow.transform if isinstance(t, DSFAutoregressive)]
    assert len(layers) == 3 and all(t.units == 16 and t.depth == 1 for t in layers)
    m = create_model("naf", event_shape=(3,), n_layers=2, dsf_units=5, dsf_depth=2)
    layers = [t for t in m.flow.transform if isinstance(t, DSFAutoregressive)]
    assert len(layers) == 2 and all(t.units == 5 and t.depth == 2 for t in layers)


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_family_transform_passes_the_kit(dim, seed):
    torch.manual_seed(seed)
    m = create_model("naf", event_shape=(dim,), n_layers=2, hidden=[16, 16], dsf_units=6, dsf_depth=2)
    randomize_parameters_(m, 0.2, seed)
    report = check_transform(
        m.flow.transform, 2 * torch.randn(12, dim), inverse_atol=INV_ATOL,
        grid_bounds=GRID[:dim] if dim <= 2 else None, grid_points=(4001 if dim == 1 else 161),
    )
    if dim <= 2:
        assert abs(report.normalization - 1) < 0.01


def test_logdet_matches_autograd_on_the_whole_flow():
    m = create_model("naf", event_shape=(3,), n_layers=3, hidden=[16], dsf_units=4).double()
    randomize_parameters_(m, 0.3, 7)
    x = torch.randn(5, 3, dtype=torch.float64)
    _, ladj = m.flow.transform(x)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: m.flow.transform(v.unsqueeze(0))[0][0], x[i])
        torch.testing.assert_close(ladj[i], torch.linalg.slogdet(jac)[1], atol=1e-10, rtol=1e-10)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="dsf_units >= 1"):
        create_model("naf", dsf_units=0)
    with pytest.raises(ValueError, match="dsf_depth >= 1"):
        create_model("naf", dsf_depth=0)
    with pytest.raises(ValueError, match="works on vectors"):
        create_model("naf", event_shape=(1, 4, 4))


def test_training_lowers_nll_and_stays_normalised(trainer_factory, two_moons):
    x = two_moons(2000, 0)
    m = create_model("naf", event_shape=(2,), n_layers=3, hidden=[32, 32], dsf_units=8, lr=1e-2)
    before = -m.log_prob(x).mean().item()
    trainer_factory(max_epochs=8).fit(m, DataLoader(TensorDataset(x), batch_size=100, shuffle=True))
    after = -m.log_prob(x).mean().item()
    assert after < before - 1.0, (before, after)
    assert abs(check_normalization(m.flow.double(), bounds=[(-6.0, 6.0)] * 2, points=301) - 1) < 0.01
    s = m.flow.float().sample(300)
    assert s.shape == (300, 2) and torch.isfinite(s).all()
