"""An ensemble member is the same run as the package's flow trained alone."""

from __future__ import annotations

import copy

import pytest
import torch

from unflow_zoo.studies.ensemble import ConstrainedEnsemble, UnconstrainedEnsemble
from unflow_zoo.studies.overparam import batch_order, member_transform

SEEDS = (0, 1, 2)


def _data(d: int, n: int = 320, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[: n // 2] += 1.5  # two clusters: a density worth learning
    return x * 0.3


def _train_alone(transform: torch.nn.Module, base_log_prob, x: torch.Tensor, seed: int, steps: int, lr: float) -> None:
    opt = torch.optim.SGD([p for p in transform.parameters() if p.requires_grad], lr=lr)
    n, done, epoch = x.shape[0], 0, 1
    while done < steps:
        order = batch_order(seed, epoch, n)
        for lo in range(0, n, 32):
            if done == steps:
                break
            xb = x[order[lo : lo + 32]]
            y, ladj = transform(xb)
            loss = -(base_log_prob(y) + ladj).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if hasattr(transform, "project_"):
                transform.project_()
            done += 1
        epoch += 1


def _train_ensemble(ens, data: torch.Tensor, steps: int, lr: float) -> None:
    e, n = data.shape[0], data.shape[1]
    rate = torch.full((e,), lr)
    arange = torch.arange(e).unsqueeze(1)
    done, epoch = 0, 1
    while done < steps:
        order = torch.stack([batch_order(s, epoch, n) for s in SEEDS])
        for lo in range(0, n, 32):
            if done == steps:
                break
            loss = -ens.log_prob(data[arange, order[:, lo : lo + 32]]).mean(1).sum()
            loss.backward()
            ens.sgd_step(rate)
            done += 1
        epoch += 1


def _normal(y: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(0.0, 1.0).log_prob(y).sum(-1)


def _exponential(y: torch.Tensor) -> torch.Tensor:
    return torch.where(y >= 0, -y, torch.full_like(y, -torch.inf)).sum(-1)


@pytest.mark.parametrize("d,width", [(1, 50), (2, 16)])
def test_constrained_member_equals_a_separate_run(d: int, width: int) -> None:
    x = _data(d)
    members = [member_transform("constrained", width, d, s) for s in SEEDS]
    alone = [copy.deepcopy(m) for m in members]
    ens = ConstrainedEnsemble.from_transforms(members)
    steps, lr = 300, 5e-3
    _train_ensemble(ens, x.expand(len(SEEDS), -1, -1), steps, lr)
    for k, seed in enumerate(SEEDS):
        _train_alone(alone[k], _normal, x, seed, steps, lr)
        state = ens.member_state_dict(k)
        for name, value in state.items():
            ref = alone[k].state_dict()[name]
            if name in ("w_lower.0", "a_lower"):
                ref = ref * (value != 0)  # the ensemble keeps the masked entries at zero
            moved = float((ref - members[k].state_dict()[name]).abs().max())
            assert moved > 1e-4, f"{name} did not train"
            assert torch.allclose(value, ref, atol=2e-5, rtol=1e-4), (name, float((value - ref).abs().max()))


@pytest.mark.parametrize("d,width", [(1, 64), (2, 32)])
def test_unconstrained_member_equals_a_separate_run(d: int, width: int) -> None:
    x = _data(d)
    x = x / (2 * x.norm(dim=1).max())
    lower = x.min(0).values - 0.05
    members = [member_transform("unconstrained", width, d, s, lower) for s in SEEDS]
    alone = [copy.deepcopy(m) for m in members]
    ens = UnconstrainedEnsemble.from_transforms(members)
    steps, lr = 300, 5e-2
    _train_ensemble(ens, x.expand(len(SEEDS), -1, -1), steps, lr)
    for k, seed in enumerate(SEEDS):
        _train_alone(alone[k], _exponential, x, seed, steps, lr)
        state = ens.member_state_dict(k)
        ref_state = alone[k].state_dict()
        for name in ("W", "w_t", "b"):
            moved = float((ref_state[name] - members[k].state_dict()[name]).abs().max())
            if name != "W" or d > 1:
                assert moved > 1e-4, f"{name} did not train"
            assert torch.allclose(state[name], ref_state[name], atol=2e-5, rtol=1e-4), (
                name,
                float((state[name] - ref_state[name]).abs().max()),
            )
        assert torch.equal(state["a"], ref_state["a"])  # the paper's top layer is fixed


def test_ensemble_rejects_mismatched_members_and_batches() -> None:
    a = member_transform("constrained", 8, 1, 0)
    b = member_transform("constrained", 9, 1, 1)
    with pytest.raises(ValueError, match="same features, width"):
        ConstrainedEnsemble.from_transforms([a, b])
    ens = ConstrainedEnsemble.from_transforms([a, copy.deepcopy(a)])
    with pytest.raises(ValueError, match=r"expects a batch of shape \(2, B, 1\)"):
        ens.log_prob(torch.zeros(3, 4, 1))


def test_movement_and_gradient_norm_are_per_member() -> None:
    members = [member_transform("constrained", 20, 1, s) for s in SEEDS]
    ens = ConstrainedEnsemble.from_transforms(members)
    start = ens.snapshot()
    x = _data(1).expand(3, -1, -1)
    (-ens.log_prob(x).mean(1).sum()).backward()
    g = ens.grad_sq_norm()
    # member 1 alone: the same squared gradient norm
    alone = copy.deepcopy(members[1])
    y, ladj = alone(x[1])
    (-(_normal(y) + ladj).mean()).backward()
    ref = sum(float(p.grad.double().square().sum()) for p in alone.parameters() if p.grad is not None)
    assert float(g[1]) == pytest.approx(ref, rel=1e-4)
    ens.sgd_step(torch.tensor([0.0, 1e-2, 0.0]))
    mv = ens.movement(start)
    assert float(mv["move_W"][0]) == 0.0 and float(mv["move_W"][2]) == 0.0
    assert float(mv["move_W"][1]) > 0.0 and float(mv["rel_move_W"][1]) > 0.0
