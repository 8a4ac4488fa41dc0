"""Conditional flows p(x | c): one contract over every registered family (issue 13).

Each family is built with ``context_features=3`` (and once with ``context_embedding=[8, 4]``)
at small widths and checked for: ``log_prob(x, c)`` of shape ``(B,)``, finite, and depending on
the context once the zero-initialised context parts are perturbed; an exact (or, for numerical
inverses, tolerance-bound) round trip, a log-determinant that matches the autograd Jacobian with
the context held fixed and, for 2-D events, a normalised :math:`p(x \\mid c)` per context
(:func:`unflow_zoo.testing.check_transform`); sample shapes; the context errors; and that a few
Adam steps on a conditional toy lower the NLL and make the model use the context.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.errors import ConfigError, DataError
from unflow_zoo.models import FlowModule, create_model, list_models
from unflow_zoo.nn.made import MADE
from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.integral import UnconstrainedMonotoneTransform

C = 3  # context width
B = 6  # batch

_FAST_ODE = {"hidden": [16, 16], "train_solver": "rk4", "train_step_size": 0.25}

#: (family, small hyper-parameters, check_transform options); the first case of each family keeps
#: its defaults apart from widths, the others cover a second layout or an image event.
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # the linear term's slope 0.01 spreads the tails over hundreds of units: no small grid holds them
    "constrained": ("constrained", {"width": 8, "std_a": 0.5}, {"check_grid": False}),
    "constrained-depth2": ("constrained", {"width": 6, "depth": 2, "std_a": 0.5}, {"check_grid": False}),
    "unconstrained": (
        "unconstrained",
        {"hidden": [16], "embedding": 4, "conditioner_hidden": [16], "n_layers": 2, "n_nodes": 16},
        {"inverse_atol": 1e-5},
    ),
    "unconstrained-paper": (
        "unconstrained",
        {"layout": "paper", "integrand": "paper", "width": 16, "n_layers": 2, "min_slope": 1e-3},
        {"inverse_atol": 1e-5, "check_grid": False},  # tails of slope min_slope: too wide for a small grid
    ),
    # bisection inverse: the grid's bounds given, not found from 5000 samples
    "naf": ("naf", {"hidden": [16], "n_layers": 2, "dsf_units": 4}, {"grid_bounds": [(-7.0, 7.0)] * 2}),
    "nsf": ("nsf", {"hidden": [16], "n_layers": 2, "bins": 4}, {}),
    "nsf-coupling": ("nsf", {"variant": "coupling", "hidden": [16], "n_layers": 2, "bins": 4, "event": (3,)}, {}),
    "maf": ("maf", {"hidden": [16], "n_layers": 2}, {}),
    "realnvp": ("realnvp", {"hidden": [16], "n_layers": 2}, {}),
    "realnvp-gate": ("realnvp", {"hidden": [16], "n_layers": 2, "gate": True}, {}),
    "glow": ("glow", {"hidden": [16], "n_layers": 2}, {}),
    "glow-image": ("glow", {"levels": 2, "steps_per_level": 1, "hidden_channels": 8, "event": (2, 4, 4)}, {}),
    # vectors only: a solve per step makes images slow here (the conv net's context maps are checked
    # in tests/transforms/test_ode.py); the solver tolerance bounds the round trip and the log-det
    "ffjord": (
        "ffjord",
        _FAST_ODE,
        {"inverse_atol": 1e-3, "logdet_atol": 1e-3, "check_grid": False, "max_jacobian_points": 3},
    ),
    "linear": ("linear", {"context_hidden": [16]}, {}),
    "snf": ("snf", {}, {"inverse_atol": 1e-5}),
    "snf-image": ("snf", {"n_layers": 2, "event": (1, 2, 2)}, {"inverse_atol": 1e-5}),
}


#: Adam steps of the training test, 30 unless given (FFJORD solves an ODE per step)
STEPS = {"ffjord": 15}


def _build(case: str, **extra: Any) -> FlowModule:
    family, hp, _ = CASES[case]
    hp = dict(hp)
    event = hp.pop("event", (2,))
    return create_model(family, event_shape=event, **hp, **extra)


def _conditioner_context(model: FlowModule, c: torch.Tensor) -> torch.Tensor:
    """The context the transforms see: through the model's embedding, if it has one."""
    emb = model.flow.context_embedding
    return c if emb is None else emb(c)


def _data(model: FlowModule, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A conditional toy: x = A c + 0.3 noise, A fixed, so that p(x | c) depends on c."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(C, model.dim, generator=torch.Generator().manual_seed(123))
    c = torch.randn(n, C, generator=g)
    x = (c @ a / math.sqrt(C) + 0.3 * torch.randn(n, model.dim, generator=g)).reshape(n, *model.event_shape)
    return x, c


def test_every_registered_family_has_a_case() -> None:
    assert {family for family, _, _ in CASES.values()} == set(list_models())


@pytest.mark.parametrize("embedding", [None, [8, 4]], ids=["raw", "embedded"])
@pytest.mark.parametrize("case", list(CASES))
def test_log_prob_depends_on_the_context_and_the_transform_passes_the_kit(case: str, embedding: Any) -> None:
    torch.manual_seed(0)
    model = _build(case, context_features=C, context_embedding=embedding).eval()
    assert model.flow_context_features == (4 if embedding else C)
    randomize_parameters_(model, 0.1, seed=1)  # the context parts start at zero in several families
    x, c = _data(model, B, seed=0)
    with torch.no_grad():
        lp = model.log_prob(x, c)
        lp_other = model.log_prob(x, c.flip(0) + 1.0)
        lp_row = model.log_prob(x, c[0])  # one (C,) row for every point
        lp_rows = model.log_prob(x, c[:1].expand(B, C))
    assert lp.shape == (B,) and torch.isfinite(lp).all()
    assert not torch.allclose(lp, lp_other, atol=1e-5), "the context does not enter the density"
    torch.testing.assert_close(lp_row, lp_rows)
    _, _, kit = CASES[case]
    kit = {"grid_points": 201, "grid_contexts": 2, **kit}
    if embedding is not None:
        # the raw case checks the normalisation; the embedding changes nothing there
        kit.update(check_grid=False, max_jacobian_points=2)
    with torch.no_grad():
        context = _conditioner_context(model, c)
    check_transform(model.flow.transform, x, context, **kit)


@pytest.mark.parametrize("case", list(CASES))
def test_sample_shapes_with_a_context(case: str) -> None:
    torch.manual_seed(0)
    model = _build(case, context_features=C).eval()
    randomize_parameters_(model, 0.05, seed=2)
    c = torch.randn(3, C)
    with torch.no_grad():
        x = model.sample(5, context=c)
        one = model.sample(4, context=c[0])
        d = model.distribution(c)
        drawn = d.sample((2,))
        lp = d.log_prob(drawn)
    assert x.shape == (5, 3, *model.event_shape) and torch.isfinite(x).all()
    assert one.shape == (4, *model.event_shape)
    assert drawn.shape == (2, 3, *model.event_shape)
    assert lp.shape == (2, 3) and torch.isfinite(lp).all()


@pytest.mark.parametrize("case", list(CASES))
def test_context_errors_say_what_is_wrong(case: str) -> None:
    model = _build(case, context_features=C).eval()
    x, c = _data(model, 4, seed=0)
    with pytest.raises(DataError, match=r"p\(x \| c\)"):
        model.log_prob(x)
    with pytest.raises(DataError, match=f"width {C}"):
        model.log_prob(x, torch.randn(4, C + 1))
    with pytest.raises(DataError, match=r"p\(x \| c\)"):
        model.sample(2)
    unconditional = _build(case).eval()
    with pytest.raises(DataError, match="unconditional"):
        unconditional.log_prob(x, c)
    with pytest.raises(DataError, match="unconditional"):
        unconditional.sample(2, context=c)
    with pytest.raises(DataError, match="no context"):
        model.training_step(x, 0)


@pytest.mark.parametrize("case", list(CASES))
def test_training_with_a_context_lowers_the_nll_and_uses_the_context(case: str, trainer_factory) -> None:
    torch.manual_seed(0)
    model = _build(case, context_features=C, lr=1e-2)
    x, c = _data(model, 256, seed=0)
    x_val, c_val = _data(model, 256, seed=1)
    with torch.no_grad():
        before = -model.log_prob(x_val, c_val).mean().item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer_factory(max_steps=STEPS.get(case, 30), limit_val_batches=0).fit(
            model, DataLoader(TensorDataset(x, c), batch_size=64, shuffle=True)
        )
    model.eval()
    with torch.no_grad():
        after = -model.log_prob(x_val, c_val).mean().item()
        shuffled = -model.log_prob(x_val, c_val.roll(1, 0)).mean().item()
    assert after < before, (before, after)
    assert after < shuffled, f"the trained model ignores the context: {after} vs {shuffled} with shuffled contexts"


def test_unconstrained_without_a_conditioner_refuses_a_context() -> None:
    with pytest.raises(ConfigError, match="embedding >= 1"):
        create_model("unconstrained", event_shape=(1,), embedding=0, base="exponential", context_features=C)


def test_one_dimensional_unconstrained_conditions_on_the_context() -> None:
    """In 1-D the unconditional flow's conditioner is a learned constant; a conditional one needs a MADE."""
    model = create_model("unconstrained", event_shape=(1,), hidden=[8], conditioner_hidden=[8], context_features=C)
    layers = [m for m in model.flow.modules() if isinstance(m, UnconstrainedMonotoneTransform)]
    assert layers and all(isinstance(t.conditioner, MADE) for t in layers)
    randomize_parameters_(model, 0.1, seed=0)
    x, c = torch.randn(5, 1), torch.randn(5, C)
    with torch.no_grad():
        assert not torch.allclose(model.log_prob(x, c), model.log_prob(x, c.flip(0)))
    check_transform(model.flow.transform, x, c, inverse_atol=1e-5, grid_points=2001)
