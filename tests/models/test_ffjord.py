"""ffjord: registry, the kit on the stacked blocks, training (adaptive, rk4, RNODE, adjoint, bf16)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.cli import main
from unflow_zoo.errors import ConfigError
from unflow_zoo.models.ffjord import FFJORD
from unflow_zoo.models.registry import create_model, list_models
from unflow_zoo.testing import check_transform, randomize_parameters_, small_model
from unflow_zoo.transforms.ode import ODETransform

#: the adaptive solver in training too (the family's test sizes train with a fixed-step rk4)
ADAPTIVE = {"train_solver": None, "train_step_size": None}


def _loader(x: torch.Tensor, batch_size: int = 100) -> DataLoader:
    return DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_registered_with_the_paper_toy_defaults():
    assert "ffjord" in list_models()
    m = create_model("ffjord", event_shape=(2,))
    assert isinstance(m, FFJORD)
    hp = m.hparams
    assert (hp.n_blocks, list(hp.hidden), hp.act, hp.solver, hp.atol, hp.rtol) == (
        1,
        [64, 64, 64],
        "tanh",
        "dopri5",
        1e-5,
        1e-5,
    )
    assert len(m.blocks) == 1 and m.end_times() == pytest.approx([1.0])
    m = create_model("ffjord", event_shape=(3,), n_blocks=3, train_end_time=False)
    assert len(m.blocks) == 3 and not any("raw_end_time" in n for n, _ in m.named_parameters())


def test_stacked_blocks_pass_the_kit():
    m = create_model("ffjord", event_shape=(2,), n_blocks=2, hidden=[8], end_time=1.0, atol=1e-9, rtol=1e-9)
    randomize_parameters_(m, 0.3, 0)
    check_transform(
        m.flow.transform,
        torch.randn(4, 2),
        inverse_atol=1e-7,
        logdet_atol=1e-6,
        max_jacobian_points=1,
        check_grid=False,
    )


def test_trains_on_two_moons_and_logs_nfe(trainer_factory, two_moons):
    x = two_moons(400, 0)
    m = small_model("ffjord", lr=1e-2, **ADAPTIVE)
    before = -m.log_prob(x).mean().item()
    trainer = trainer_factory(max_epochs=2, log_every_n_steps=1)
    trainer.fit(m, _loader(x, batch_size=50))
    m.eval()
    after = -m.log_prob(x).mean().item()
    assert after < before - 0.2, (before, after)
    logged = trainer.logged_metrics
    assert logged["nfe_forward"] >= 8 and "nfe_backward" not in logged  # dopri5: at least one step (6 stages) + setup
    assert "end_time_0" in logged and float(logged["end_time_0"]) != m.hparams.end_time  # T is learnt
    s = m.sample(200)
    assert s.shape == (200, 2) and torch.isfinite(s).all()


def test_rk4_training_with_rnode_penalties(trainer_factory, two_moons):
    """Fixed-step training (4 rk4 steps = 16 evaluations), regularised loss goes down, energies logged."""
    x = two_moons(600, 1)
    m = small_model(
        "ffjord", train_solver="rk4", train_step_size=0.25, kinetic_weight=0.1, jacobian_weight=0.1, lr=1e-2
    )
    m.train()
    nll0 = -m.log_prob(x).mean()
    loss0 = float((nll0 + m.regularization()).detach())
    assert m.regularization() == 0.0  # consumed: it never returns the energies of an old step twice
    trainer = trainer_factory(max_epochs=2, log_every_n_steps=1)
    trainer.fit(m, _loader(x))
    logged = trainer.logged_metrics
    assert logged["nfe_forward"] == 16
    assert {"train_kinetic_energy", "train_jacobian_frobenius", "train_loss"} <= set(logged)
    assert float(logged["train_loss"]) > float(logged["train_nll"])  # the penalties are added
    m.train()
    loss1 = float(-m.log_prob(x).mean() + m.regularization())
    assert loss1 < loss0 - 0.2, (loss0, loss1)
    # evaluation uses the adaptive solver and tracks no energies
    m.eval()
    with torch.no_grad():
        m.log_prob(x)
    assert all(b.kinetic_energy is None for b in m.blocks) and m.nfe_forward != 16


def test_adjoint_logs_backward_nfe(trainer_factory, two_moons):
    m = small_model("ffjord", adjoint=True, lr=1e-2, **ADAPTIVE)
    trainer = trainer_factory(max_steps=2, log_every_n_steps=1)
    trainer.fit(m, _loader(two_moons(200, 0)))
    assert trainer.logged_metrics["nfe_backward"] > 0


def test_bf16_mixed_matches_float32(trainer_factory, two_moons):
    x = two_moons(100, 0)
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        m = small_model("ffjord", lr=1e-2, **ADAPTIVE)  # tests/test_precision.py trains the rk4 one
        trainer = trainer_factory(max_steps=1, precision=precision, log_every_n_steps=1)
        trainer.fit(m, _loader(x))
        losses[precision] = float(trainer.logged_metrics["train_nll"])
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # the solve is in float32 under autocast, so the two agree to float32 rounding
    assert abs(losses["bf16-mixed"] - losses["32-true"]) < 1e-4, losses


def test_hutchinson_above_the_threshold():
    torch.manual_seed(0)
    m = create_model("ffjord", event_shape=(10,), hidden=[16], noise="rademacher")
    x = torch.randn(32, 10)
    loss = -m.log_prob(x).mean()
    loss.backward()
    assert all(b.last_trace_estimator == "hutchinson" for b in m.blocks)
    assert all(p.grad is not None for p in m.parameters())


def test_blocks_are_ode_transforms_and_image_events_work():
    m = create_model("ffjord", event_shape=(1, 2, 2), hidden=[4], exact_trace_max_dim=4)
    assert all(isinstance(b, ODETransform) for b in m.blocks)
    x = torch.randn(3, 1, 2, 2)
    lp = m.log_prob(x)
    assert lp.shape == (3,) and torch.isfinite(lp).all()


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="n_blocks >= 1"):
        create_model("ffjord", n_blocks=0)
    with pytest.raises(ValueError, match="hidden width"):
        create_model("ffjord", hidden=[])
    with pytest.raises(ValueError, match="RNODE weights"):
        create_model("ffjord", kinetic_weight=-1.0)
    with pytest.raises(ValueError, match="train_step_size"):
        create_model("ffjord", train_solver="rk4")
    with pytest.raises(ValueError, match=r"\(D,\) or \(C, H, W\)"):
        create_model("ffjord", event_shape=(2, 2))


@pytest.mark.slow
def test_8gaussians_config_reaches_the_true_entropy(tmp_path, capsys):
    """configs/ffjord/8gaussians.yaml ends within 0.2 nats of the true entropy (about 10 min on 1 core)."""
    config = Path(__file__).resolve().parents[2] / "configs/ffjord/8gaussians.yaml"
    old, sys.argv = sys.argv, ["unflow-zoo"]
    try:
        main(
            [
                "fit",
                "--config",
                str(config),
                f"--trainer.default_root_dir={tmp_path}",
                "--plot.enabled=false",
                "--trainer.enable_progress_bar=false",
            ]
        )
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    kl = float(next(line.split()[1] for line in out.splitlines() if line.startswith("test_kl")))
    assert 0 <= kl < 0.2, out


def test_gates_start_open_unless_asked_for_the_official_init():
    """``gate_bias`` (default 3) opens every concatsquash gate at initialisation: with PyTorch's
    default U(-1, 1) bias (``gate_bias=None``, the official code's) the gates start near 0.5 and a
    deep net's initial dynamics are shrunk by about 2^-L (docs/benchmarks.md, FFJORD)."""
    from unflow_zoo.transforms.ode import ConcatSquashLinear

    def gates(model):
        return [m.gate.bias for m in model.modules() if isinstance(m, ConcatSquashLinear)]

    torch.manual_seed(0)
    opened = gates(create_model("ffjord", event_shape=(3,), hidden=[8, 8]))
    assert len(opened) == 3 and all(torch.equal(b, torch.full_like(b, 3.0)) for b in opened)
    torch.manual_seed(0)
    default = gates(create_model("ffjord", event_shape=(3,), hidden=[8, 8], gate_bias=None))
    assert all(float(b.abs().max()) <= 1.0 for b in default)  # nn.Linear(1, n): U(-1, 1)
    # on the same weights otherwise, open gates pass the dependence on z that closed ones squash
    torch.manual_seed(1)
    a = create_model("ffjord", event_shape=(3,), hidden=[8, 8])
    torch.manual_seed(1)
    b = create_model("ffjord", event_shape=(3,), hidden=[8, 8], gate_bias=-3.0)
    z, t = torch.randn(64, 3), torch.tensor(0.3)
    fa, fb = a.blocks[0].net(t, z), b.blocks[0].net(t, z)
    assert float(fa.std(0).sum()) > 100 * float(fb.std(0).sum())
    with pytest.raises(ConfigError, match="gate_bias"):
        create_model("ffjord", event_shape=(3,), gate_bias=float("nan"))
