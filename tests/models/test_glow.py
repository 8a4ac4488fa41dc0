"""glow: the kit on the family's transform (vectors and images), actnorm's data init in
training, save/load, training on two moons and on small images, and bf16 mixed precision."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.models.glow import Glow
from unflow_zoo.models.registry import create_model, list_models
from unflow_zoo.testing import check_normalization, check_transform, randomize_parameters_
from unflow_zoo.transforms.coupling import AffineCoupling
from unflow_zoo.transforms.glow import ActNorm, GlowAffineCoupling, MultiScaleGlow, SplitPrior
from unflow_zoo.transforms.linear import LULinear

GRID = [(-8.0, 8.0)] * 2
IMAGE = {"levels": 2, "steps_per_level": 2, "hidden_channels": 8}


def _images(n: int, seed: int) -> torch.Tensor:
    """Seeded 1x8x8 'images' with structure to learn: a bright blob at a random place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    centre = torch.rand(n, 2, generator=g) * 4 + 2
    d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    return (2 * torch.exp(-d2 / 4) + 0.1 * torch.randn(n, 8, 8, generator=g)).unsqueeze(1)


def test_registered_and_structure():
    assert "glow" in list_models()
    m = create_model("glow", event_shape=(3,), n_layers=3)
    assert isinstance(m, Glow)
    kinds = [type(t) for t in m.flow.transform]
    assert kinds.count(ActNorm) == 3 and kinds.count(AffineCoupling) == 3
    assert sum(isinstance(t, LULinear) for t in m.flow.transform) == 3
    m = create_model("glow", event_shape=(1, 8, 8), levels=2, steps_per_level=3, hidden_channels=8)
    t = m.flow.transform
    assert isinstance(t, MultiScaleGlow)
    assert sum(isinstance(u, GlowAffineCoupling) for u in t.modules()) == 6
    assert sum(isinstance(u, SplitPrior) for u in t.modules()) == 1
    m = create_model("glow", event_shape=(1, 8, 8), split_prior=False, **IMAGE)
    assert not any(isinstance(u, SplitPrior) for u in m.modules())


@pytest.mark.parametrize("dim", [2, 5])
def test_vector_transform_passes_the_kit(dim):
    m = create_model("glow", event_shape=(dim,), n_layers=3, hidden=[16, 16])
    randomize_parameters_(m, 0.1, dim)
    report = check_transform(m.flow.transform, torch.randn(16, dim), grid_bounds=GRID, grid_points=401)
    if dim == 2:
        assert abs(report.normalization - 1) < 0.01


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 8, 8)])
def test_image_transform_passes_the_kit(shape):
    m = create_model("glow", event_shape=shape, levels=2, steps_per_level=1, hidden_channels=8)
    randomize_parameters_(m, 0.1, 0)
    check_transform(m.flow.transform, torch.randn(3, *shape), max_jacobian_points=1)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*2 = 4; got 6x6"):
        create_model("glow", event_shape=(1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="D >= 2"):
        create_model("glow", event_shape=(1,))
    with pytest.raises(ValueError, match=r"\(C, H, W\), or vectors"):
        create_model("glow", event_shape=(2, 3))
    with pytest.raises(ValueError, match="n_layers >= 1"):
        create_model("glow", n_layers=0)


def test_actnorm_initialises_on_first_training_batch_and_survives_load(trainer_factory):
    x = _images(64, 0) * 3 + 5
    m = create_model("glow", event_shape=(1, 8, 8), **IMAGE)
    actnorms = [u for u in m.modules() if isinstance(u, ActNorm)]
    assert len(actnorms) == 4 and not any(bool(a.initialized) for a in actnorms)
    trainer_factory(max_steps=1).fit(m, DataLoader(TensorDataset(x), batch_size=64))
    assert all(bool(a.initialized) for a in actnorms)
    # the first actnorm sees the squeezed data: per channel zero mean, unit std after it (before the step)
    first = actnorms[0]
    with torch.no_grad():
        sq = m.flow.transform.squeeze(x)[0]
        y, _ = first(sq)
    m.eval()
    fresh = create_model("glow", event_shape=(1, 8, 8), **IMAGE)
    fresh.load_state_dict(m.state_dict())
    fresh.train()  # training mode: a not-yet-initialised actnorm would re-initialise here
    with torch.no_grad():
        torch.testing.assert_close(fresh.log_prob(x[:8]), m.log_prob(x[:8]))
    assert abs(float(y.mean())) < 0.2 and abs(float(y.std()) - 1) < 0.2  # one SGD step moved it a little


def test_trains_on_moons(trainer_factory, two_moons):
    x = two_moons(2000, 0)
    m = create_model("glow", event_shape=(2,), n_layers=4, hidden=[32, 32], lr=5e-3)
    with torch.no_grad():
        before = -m.train().log_prob(x).mean().item()  # after actnorm's data init on the whole set
    trainer_factory(max_epochs=4).fit(m, DataLoader(TensorDataset(x), batch_size=100, shuffle=True))
    m.eval()
    with torch.no_grad():
        after = -m.log_prob(x).mean().item()
    # better than the maximum-likelihood Gaussian, the best any affine flow can do
    gaussian_nll = 0.5 * torch.logdet(2 * torch.pi * torch.e * torch.cov(x.double().T)).item()
    assert after < before - 0.2 and after < gaussian_nll - 0.2, (before, after, gaussian_nll)
    assert abs(check_normalization(m.flow.double(), bounds=GRID, points=401) - 1) < 0.01
    s = m.flow.float().sample(500)
    assert s.shape == (500, 2) and torch.isfinite(s).all()


def test_trains_on_small_images(trainer_factory):
    x = _images(256, 1)
    m = create_model("glow", event_shape=(1, 8, 8), lr=3e-3, **IMAGE)
    m.train()
    with torch.no_grad():
        before = -m.log_prob(x).mean().item()  # after actnorm's data init on the whole set
    trainer_factory(max_epochs=5).fit(m, DataLoader(TensorDataset(x), batch_size=32, shuffle=True))
    m.eval()
    with torch.no_grad():
        after = -m.log_prob(x).mean().item()
        s = m.sample(7)
    assert after < before - 10.0, (before, after)
    assert s.shape == (7, 1, 8, 8) and torch.isfinite(s).all()


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_bf16_mixed_precision_gives_a_finite_loss(trainer_factory, two_moons, shape):
    x = two_moons(256, 0) if shape == (2,) else _images(128, 2)
    kw = {"n_layers": 2, "hidden": [16]} if shape == (2,) else IMAGE
    m = create_model("glow", event_shape=shape, lr=1e-3, **kw)
    trainer = trainer_factory(max_steps=3, precision="bf16-mixed")
    trainer.fit(m, DataLoader(TensorDataset(x), batch_size=64))
    loss = trainer.callback_metrics["train_nll"]
    assert torch.isfinite(loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, ladj = m.flow.transform(x[:16])
    assert ladj.dtype == torch.float32  # log-dets are kept in float32 under autocast
    with torch.no_grad():
        ref = m.float().log_prob(x[:16])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = m.log_prob(x[:16])
    assert torch.isfinite(low).all() and (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1.0
