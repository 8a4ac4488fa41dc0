"""InFlow's gated affine coupling: the kit for fixed, learned and data-dependent gates."""

import copy

import pytest
import torch

from unflow_zoo.models import create_model
from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.coupling import AffineCoupling, alternating_mask
from unflow_zoo.transforms.gated import GatedAffineCoupling


def _layer(gate="fixed", gate_init=1.0, d=4, seed=0, **kw):
    torch.manual_seed(seed)
    layer = GatedAffineCoupling(alternating_mask(d, seed % 2), hidden=[16, 16], gate=gate, gate_init=gate_init, **kw)
    return randomize_parameters_(layer, 0.3, seed)


@pytest.mark.parametrize("gate_init", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("d", [2, 5])
def test_fixed_gates_pass_the_kit(gate_init, d):
    check_transform(_layer("fixed", gate_init, d), torch.randn(16, d))


@pytest.mark.parametrize("gate", ["learned", "data"])
@pytest.mark.parametrize("seed", [0, 1])
def test_learned_and_data_dependent_gates_pass_the_kit(gate, seed):
    layer = _layer(gate, 0.6, 3, seed)
    if gate == "data":
        randomize_parameters_(layer.gate_net, 0.5, seed + 10)  # a gate that really varies with x_A
        g = layer.gate(torch.randn(64, 3) * 2)
        assert g.std() > 0.02 and ((g >= 0) & (g <= 1)).all()
    check_transform(layer, torch.randn(16, 3) * 1.5)


def test_data_gate_with_context_passes_the_kit():
    layer = GatedAffineCoupling(alternating_mask(3, 0), hidden=[8], context_features=2, gate="data")
    randomize_parameters_(layer, 0.5, 3)
    check_transform(layer, torch.randn(8, 3), torch.randn(8, 2))


def test_the_log_det_scales_with_the_gate():
    # the published InFlow code returns sum(sigma) whatever the gate; ours is g * sum(sigma)
    x = torch.randn(10, 4, dtype=torch.float64)
    full = _layer("fixed", 1.0).double()
    _, ladj_full = full(x)
    for g in (0.0, 0.3, 0.7):
        layer = copy.deepcopy(full)
        layer.set_gate(g)
        _, ladj = layer(x)
        torch.testing.assert_close(ladj, g * ladj_full)


def test_gate_one_is_the_plain_affine_coupling_and_gate_zero_the_identity():
    torch.manual_seed(0)
    plain = randomize_parameters_(AffineCoupling(alternating_mask(4, 1), hidden=[16, 16]), 0.3, 0)
    gated = GatedAffineCoupling(alternating_mask(4, 1), hidden=[16, 16], gate="fixed", gate_init=1.0)
    gated.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(12, 4)
    for a, b in zip(gated(x), plain(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(gated.inverse(x), plain.inverse(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    gated.set_gate(0.0)
    y, ladj = gated(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    assert (ladj == 0).all()
    gated.set_gate(None)
    torch.testing.assert_close(gated(x)[0], plain(x)[0], rtol=0, atol=0)


def test_gate_parameters_get_gradients():
    layer = _layer("learned", 0.5)
    _, ladj = layer(torch.randn(8, 4))
    ladj.sum().backward()
    assert layer.gate_logit.grad is not None and layer.gate_logit.grad != 0


def test_bad_gates_are_explained():
    with pytest.raises(ValueError, match="unknown gate"):
        GatedAffineCoupling(alternating_mask(2, 0), gate="soft")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        GatedAffineCoupling(alternating_mask(2, 0), gate="learned", gate_init=1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _layer().set_gate(1.5)


def test_realnvp_gate_option(trainer_factory, two_moons):
    from torch.utils.data import DataLoader, TensorDataset

    m = create_model("realnvp", event_shape=(2,), n_layers=4, hidden=[16], gate=True, lr=3e-3)
    layers = [t for t in m.flow.transform.transforms if isinstance(t, GatedAffineCoupling)]
    assert len(layers) == 4 and all(t.gate_mode == "data" for t in layers)
    assert not any(isinstance(t, GatedAffineCoupling) for t in create_model("realnvp").flow.transform.transforms)
    randomize_parameters_(m, 0.2, 0)
    report = check_transform(m.flow.transform, torch.randn(16, 2))
    assert abs(report.normalization - 1) < 0.01
    x = two_moons(512, 0)
    before = -m.log_prob(x).mean().item()
    trainer_factory(max_epochs=2).fit(m, DataLoader(TensorDataset(x), batch_size=64, shuffle=True))
    assert -m.log_prob(x).mean().item() < before
