"""Every registered family under mixed precision (bf16-mixed, 16-mixed) and in float64.

Mixed precision runs the conditioner networks in bfloat16/float16 and must keep what
is numerically delicate in float32: log-determinants and their sums, spline knots and
bin searches, quadrature sums, bisection/Newton inverses. The tests check it three ways:

- every layer's log-determinant comes out float32 under autocast, and one forward pass
  under autocast gives the float32 log-density to bfloat16's resolution;
- a few training steps (same seed, same data) in mixed precision and in ``32-true``
  give finite losses at every step and the same NLL within ``NLL_RTOL``;
- a double-precision copy (``model.double()``, what ``precision="64-true"`` does) gives
  the float32 log-density to float32's resolution, and trains under ``64-true``.

All on the CPU (torch's CPU autocast has both bfloat16 and float16), with each family's own
test sizes (:func:`unflow_zoo.testing.small_model`), so families registered later are covered
without editing this file.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.core.transform import Transform
from unflow_zoo.models import list_models
from unflow_zoo.testing import randomize_parameters_, small_model

MIXED = ["bf16-mixed", "16-mixed"]
AUTOCAST_DTYPE = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
STEPS, BATCH, LR = 8, 64, 1e-2

# Tolerances. bfloat16 keeps 8 significant bits (float16: 11): each conditioner output is
# rounded by up to 2^-9 ~ 2e-3 relative. With log-dets, splines and quadratures in float32,
# that rounding perturbs a layer's parameters, not the accumulation, so one forward pass
# moves log p(x) by ~1e-3 of its scale (LOGP_RTOL, relative to max |log p| over the batch).
# Trained on identical batches, the per-step losses then differ by ~1e-3 at most and the
# final NLLs by less (measured: <= 1e-4 for realnvp/maf/nsf/naf/constrained/unconstrained/
# linear, 8 Adam steps at lr 1e-2); NLL_RTOL = 1e-2 leaves a 10x margin for new families.
# Summing log-dets in bfloat16, or a spline with bfloat16 knots, misses LOGP_RTOL (nsf:
# 3.7e-2 before its parameters were cast to float32).
LOGP_RTOL = 1e-2
NLL_RTOL = 1e-2
# float32 vs float64 on the same weights: float32 rounding (6e-8) amplified through a few
# layers; 1e-4 relative is 1000x float32 epsilon and 10^12 x float64's.
DOUBLE_RTOL = 1e-4


class _Losses(L.Callback):
    """The training loss of every step, and whether each step's forward ran under autocast."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def _record_autocast(model: torch.nn.Module) -> list[tuple[bool, torch.dtype, torch.dtype]]:
    """Forward hooks on every Transform: (autocast on?, its dtype, the log-det's dtype) per call."""
    seen: list[tuple[bool, torch.dtype, torch.dtype]] = []

    def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, tuple) and len(out) == 2 and torch.is_tensor(out[1]):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out[1].dtype))

    for m in model.modules():
        if isinstance(m, Transform):
            m.register_forward_hook(hook)
    return seen


def _precision_args(precision: str) -> dict[str, Any]:
    """Trainer arguments for ``precision`` on the CPU.

    ``Trainer(accelerator="cpu", precision="16-mixed")`` silently falls back to
    bfloat16; the plugin itself runs float16 autocast with a dynamic loss scaler,
    the same path as ``16-mixed`` on a GPU (only the per-op cast lists differ).
    """
    if precision == "16-mixed":
        # GradScaler's default first scale, 2^16, overflows float16 gradients on purpose and
        # skips the first steps while it backs off; start lower so every step is taken and the
        # trajectory can be compared with float32 step by step (overflow is checked below).
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=10**6)
        return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)]}
    return {"precision": precision}


#: the ``32-true`` runs, by family: the reference of both mixed precisions and of ``64-true``
_FLOAT32: dict[str, tuple[list[float], float, Any, float]] = {}


def _train(name: str, precision: str, trainer_factory, data: torch.Tensor):
    if precision == "32-true" and name in _FLOAT32:
        return _FLOAT32[name]  # deterministic (same seed, same batches): trained once per family
    L.seed_everything(0, verbose=False)
    model = small_model(name, lr=LR)
    with torch.no_grad():  # the full-data NLL before training: the first batch alone may be easy
        nll_init = -model.log_prob(data).mean().item()
    seen = _record_autocast(model)
    rec = _Losses()
    trainer = trainer_factory(max_steps=STEPS, callbacks=[rec], **_precision_args(precision))
    trainer.fit(model, DataLoader(TensorDataset(data), batch_size=BATCH, shuffle=False))
    scaler = getattr(trainer.strategy.precision_plugin, "scaler", None)
    if scaler is not None:
        # every float16 step was taken: a step with inf/NaN gradients halves the scale
        assert scaler.get_scale() == 2.0**8, f"{name}: float16 gradients overflowed (scale {scaler.get_scale()})"
    if precision == "64-true":
        assert all(p.dtype == torch.float64 for p in model.parameters())
        data = data.double()
    model.eval()
    with torch.no_grad():
        nll = -model.log_prob(data).mean().item()
    if precision == "32-true":
        _FLOAT32[name] = (rec.losses, nll, seen, nll_init)
    return rec.losses, nll, seen, nll_init


@pytest.fixture
def moons(two_moons) -> torch.Tensor:
    return two_moons(256, seed=3)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("precision", MIXED)
def test_log_dets_are_float32_under_autocast(name, precision, moons):
    model = small_model(name)
    randomize_parameters_(model.flow, 0.1, seed=1)
    x = moons[:128]
    seen = _record_autocast(model)
    with torch.no_grad():
        ref = model.log_prob(x)
        seen.clear()
        with torch.autocast("cpu", dtype=AUTOCAST_DTYPE[precision]):
            logp = model.log_prob(x)
    assert seen and all(on for on, _, _ in seen), "the hooks did not see the autocast region"
    assert {dt for _, _, dt in seen} == {torch.float32}, f"{name}: log-dets under autocast: {seen}"
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    err = (logp - ref).abs().max() / ref.abs().max()
    assert err < LOGP_RTOL, f"{name} {precision}: log p off by {err:.2e} (relative) from float32"


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("precision", MIXED)
def test_mixed_precision_training_matches_float32(name, precision, trainer_factory, moons):
    losses32, nll32, _, init32 = _train(name, "32-true", trainer_factory, moons)
    losses, nll, seen, _ = _train(name, precision, trainer_factory, moons)
    # the training forward really ran under autocast at the requested dtype
    assert any(on and dt == AUTOCAST_DTYPE[precision] for on, dt, _ in seen)
    assert len(losses) == len(losses32) == STEPS
    assert all(math.isfinite(v) for v in losses), f"{name} {precision}: non-finite loss in {losses}"
    for step, (a, b) in enumerate(zip(losses, losses32)):
        assert abs(a - b) <= NLL_RTOL * abs(b), f"{name} {precision} step {step}: loss {a:.5f} vs {b:.5f}"
    assert math.isfinite(nll) and abs(nll - nll32) <= NLL_RTOL * abs(nll32), (name, precision, nll, nll32)
    assert nll32 < init32, f"{name}: {STEPS} steps did not lower the NLL; the comparison would be vacuous"


@pytest.mark.parametrize("name", list_models())
def test_double_precision_matches_float32(name, moons):
    model = small_model(name)
    randomize_parameters_(model.flow, 0.1, seed=2)
    x = moons[:128]
    double = copy.deepcopy(model).double()
    assert all(p.dtype == torch.float64 for p in double.parameters())
    with torch.no_grad():
        lp32 = model.log_prob(x)
        lp64 = double.log_prob(x.double())
    assert lp64.dtype == torch.float64
    torch.testing.assert_close(lp32.double(), lp64, rtol=DOUBLE_RTOL, atol=DOUBLE_RTOL * lp64.abs().max().item())


@pytest.mark.parametrize("name", ["maf", "unconstrained"])
def test_trains_under_64_true(name, trainer_factory, moons):
    losses32, nll32, _, _ = _train(name, "32-true", trainer_factory, moons)
    losses64, nll64, _, _ = _train(name, "64-true", trainer_factory, moons)
    assert len(losses64) == STEPS and all(math.isfinite(v) for v in losses64)
    # same trajectory: Adam's steps are insensitive to the float32 rounding of the gradients
    for a, b in zip(losses64, losses32):
        assert abs(a - b) <= DOUBLE_RTOL * abs(b)
    assert abs(nll64 - nll32) <= DOUBLE_RTOL * abs(nll32)
