"""The contract every registered family meets, with and without a context (issue 13).

Parametrised over :func:`~unflow_zoo.models.list_models`: a family registered tomorrow is in
every test here, built from the test sizes it declares itself
(:attr:`~unflow_zoo.models.base.FlowModule.small_hparams`, checked with the
:func:`~unflow_zoo.testing.check_transform` options it declares,
:attr:`~unflow_zoo.models.base.FlowModule.check_options`), and one that declares none fails
the first test. A few extra cases cover a second layout or an image event, as overrides on top
of the family's sizes.

Each case is checked for: the small module and the Lightning-free builder's flow
(:func:`~unflow_zoo.testing.small_flow`) agree; the transform passes the kit unconditionally and
with ``context_features=3`` (and once with ``context_embedding=[8, 4]``): an exact (or, for
numerical inverses, tolerance-bound) round trip, a log-determinant that matches the autograd
Jacobian with the context held fixed and, for 2-D events, a normalised :math:`p(x \\mid c)` per
context; ``log_prob(x, c)`` of shape ``(B,)``, finite, and depending on the context once the
zero-initialised context parts are perturbed; sample shapes; the context errors; and that a few
Adam steps on a conditional toy lower the NLL and make the model use the context. (Unconditional
training lowering the NLL is checked for every family in tests/test_precision.py; the builders'
weight-for-weight match with the modules, in tests/flows/test_builders.py.)
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unflow_zoo.errors import ConfigError, DataError
from unflow_zoo.flows import flow_hparams
from unflow_zoo.models import FlowModule, get_model_class, list_models
from unflow_zoo.models import registry as model_registry
from unflow_zoo.models.maf import MaskedAutoregressiveFlow
from unflow_zoo.nn.made import MADE
from unflow_zoo.testing import check_model, check_transform, randomize_parameters_, small_flow, small_model
from unflow_zoo.transforms.integral import UnconstrainedMonotoneTransform

C = 3  # context width
B = 6  # batch

#: (family, overrides of its small_hparams, extra check_transform options): one case per family
#: at its own small sizes, then second layouts and image events
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    **{name: (name, {}, {}) for name in list_models()},
    "constrained-depth2": ("constrained", {"width": 6, "depth": 2, "std_a": 0.5}, {}),
    # tails of slope min_slope: too wide for a small grid
    "unconstrained-paper": ("unconstrained", {"layout": "paper", "integrand": "paper"}, {"check_grid": False}),
    "nsf-coupling": ("nsf", {"variant": "coupling", "event_shape": (3,)}, {}),
    "realnvp-gate": ("realnvp", {"gate": True}, {}),
    "glow-image": ("glow", {"event_shape": (2, 4, 4)}, {}),
    "snf-image": ("snf", {"event_shape": (1, 2, 2)}, {}),
    # ffjord on images: a solve per step makes it slow here (the conv net's context maps are
    # checked in tests/transforms/test_ode.py, its builder in tests/flows/test_builders.py)
}

#: the kit's test-speed options (a family's own check_options and a case's come on top)
KIT = {"grid_points": 201, "grid_contexts": 2}

#: Adam steps of the training test, 30 unless given (FFJORD solves an ODE per step)
STEPS = {"ffjord": 15}


def _build(case: str, *, flow: bool = False, **extra: Any) -> Any:
    family, hp, _ = CASES[case]
    hp = {**hp, **extra}
    event = hp.pop("event_shape", (2,))
    return (small_flow if flow else small_model)(family, event, **hp)


def _data(model: FlowModule, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A conditional toy: x = A c + 0.3 noise, A fixed, so that p(x | c) depends on c."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(C, model.dim, generator=torch.Generator().manual_seed(123))
    c = torch.randn(n, C, generator=g)
    x = (c @ a / math.sqrt(C) + 0.3 * torch.randn(n, model.dim, generator=g)).reshape(n, *model.event_shape)
    return x, c


# ----- every family declares its test sizes ----------------------------------------------------------


def test_every_registered_family_has_a_case() -> None:
    assert {family for family, _, _ in CASES.values()} == set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_family_declares_its_small_hparams(name: str) -> None:
    """On the class itself, not inherited: a family with other knobs needs other sizes. Flow
    hyper-parameters only, so the builder takes them; check options the kit knows."""
    cls = get_model_class(name)
    assert "small_hparams" in vars(cls) and cls.small_hparams, (
        f"{cls.__qualname__} declares no small_hparams: give it the class attribute "
        "small_hparams: ClassVar[dict[str, Any]] = {...} (a 2-D instance that trains in well under a second)"
    )
    assert set(cls.small_hparams) <= set(flow_hparams(name)), sorted(set(cls.small_hparams) - set(flow_hparams(name)))
    kit = set(inspect.signature(check_transform).parameters) - {"transform", "x", "context"}
    assert set(cls.check_options) <= kit, sorted(set(cls.check_options) - kit)


def test_a_family_without_small_hparams_is_named_with_the_fix(monkeypatch) -> None:
    class Unsized(MaskedAutoregressiveFlow):
        small_hparams = {}  # noqa: RUF012  (what a family that forgot them inherits from FlowModule)

    monkeypatch.setattr(model_registry, "_REGISTRY", dict(model_registry._REGISTRY))
    model_registry.register_model("unsized")(Unsized)
    with pytest.raises(ConfigError, match=r"unsized \(.*Unsized\) declares no small_hparams: give the class"):
        small_model("unsized")


def test_small_model_is_seeded_and_leaves_the_caller_s_random_numbers_alone() -> None:
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    a, b = small_model("maf"), small_model("maf", hidden=[8], lr=1e-2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.hparams.hidden == get_model_class("maf").small_hparams["hidden"] and a.hparams.lr != 1e-2
    assert b.hparams.hidden == [8] and b.hparams.lr == 1e-2
    same, other = small_model("maf").state_dict(), small_model("maf", seed=1).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in a.state_dict().items())
    assert not all(torch.equal(v, other[k]) for k, v in a.state_dict().items())
    a.hparams.hidden.append(3)
    assert a.hparams.hidden != get_model_class("maf").small_hparams["hidden"]  # a copy, never the class's


# ----- the contract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_the_small_module_matches_its_builder_and_passes_the_kit_without_a_context(case: str) -> None:
    model = _build(case).eval()
    flow = _build(case, flow=True).eval()
    x, _ = _data(model, B, seed=0)
    with torch.no_grad():
        torch.manual_seed(1)
        lp = model.log_prob(x)
        torch.manual_seed(1)
        assert torch.equal(flow.log_prob(x), lp), "the module's flow and the builder's differ"
    assert lp.shape == (B,) and torch.isfinite(lp).all()
    randomize_parameters_(model, 0.1, seed=1)  # a freshly built flow is often the identity
    check_model(model, x, **{**KIT, **CASES[case][2]})


@pytest.mark.parametrize("embedding", [None, [8, 4]], ids=["raw", "embedded"])
@pytest.mark.parametrize("case", list(CASES))
def test_log_prob_depends_on_the_context_and_the_transform_passes_the_kit(case: str, embedding: Any) -> None:
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
    kit = {**KIT, **CASES[case][2]}
    if embedding is not None:
        # the raw case checks the normalisation; the embedding changes nothing there
        kit.update(check_grid=False, max_jacobian_points=2)
    check_model(model, x, c, **kit)


@pytest.mark.parametrize("case", list(CASES))
def test_sample_shapes_with_a_context(case: str) -> None:
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
    model = _build(case, context_features=C, lr=1e-2)
    x, c = _data(model, 256, seed=0)
    x_val, c_val = _data(model, 256, seed=1)
    with torch.no_grad():
        before = -model.log_prob(x_val, c_val).mean().item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer_factory(max_steps=STEPS.get(CASES[case][0], 30), limit_val_batches=0).fit(
            model, DataLoader(TensorDataset(x, c), batch_size=64, shuffle=True)
        )
    model.eval()
    with torch.no_grad():
        after = -model.log_prob(x_val, c_val).mean().item()
        shuffled = -model.log_prob(x_val, c_val.roll(1, 0)).mean().item()
    assert after < before, (before, after)
    assert after < shuffled, f"the trained model ignores the context: {after} vs {shuffled} with shuffled contexts"


# ----- family-specific context rules -------------------------------------------------------------------


def test_unconstrained_without_a_conditioner_refuses_a_context() -> None:
    with pytest.raises(ConfigError, match="embedding >= 1"):
        small_model("unconstrained", (1,), embedding=0, base="exponential", context_features=C)


def test_one_dimensional_unconstrained_conditions_on_the_context() -> None:
    """In 1-D the unconditional flow's conditioner is a learned constant; a conditional one needs a MADE."""
    model = small_model("unconstrained", (1,), context_features=C)
    layers = [m for m in model.flow.modules() if isinstance(m, UnconstrainedMonotoneTransform)]
    assert layers and all(isinstance(t.conditioner, MADE) for t in layers)
    randomize_parameters_(model, 0.1, seed=0)
    x, c = torch.randn(5, 1), torch.randn(5, C)
    with torch.no_grad():
        assert not torch.allclose(model.log_prob(x, c), model.log_prob(x, c.flip(0)))
    check_model(model, x, c, grid_points=2001)
