"""The Lightning-free builders (issue 13): one per family, registered by name, building the very flow
the family's LightningModule wraps, weight for weight; their errors; and that nothing in
``unflow_zoo.flows`` needs Lightning."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from unflow_zoo import create_flow
from unflow_zoo import list_flows as top_level_list_flows
from unflow_zoo.core.distributions import DiagNormal, StandardExponential
from unflow_zoo.core.flow import Flow
from unflow_zoo.errors import ConfigError
from unflow_zoo.flows import build, flow_hparams, get_flow_builder, list_flows, register_flow
from unflow_zoo.flows import registry as flow_registry
from unflow_zoo.flows.common import finish_flow
from unflow_zoo.models import FlowModule, create_model, get_model_class, list_models
from unflow_zoo.models.maf import MaskedAutoregressiveFlow
from unflow_zoo.nn.mlp import MLP
from unflow_zoo.pretrained.serialization import TRAINING_HPARAMS
from unflow_zoo.testing import randomize_parameters_, small_hparams
from unflow_zoo.transforms.affine import Affine

B = 4  # batch
C = 3  # context width
#: every family at its own test sizes (its ``small_hparams``), then a second layout or an image
#: event for some, as overrides of those sizes: (family, overrides)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: (name, {}) for name in list_models()},
    "constrained-depth2": ("constrained", {"event_shape": (3,), "width": 4, "depth": 2, "n_layers": 2}),
    "ffjord-image": ("ffjord", {"hidden": [4], "event_shape": (1, 4, 4)}),
    "glow-image": ("glow", {"event_shape": (2, 4, 4), "hidden_channels": 4}),
    "nsf-coupling": ("nsf", {"event_shape": (3,), "variant": "coupling"}),
    "realnvp-gate": ("realnvp", {"gate": True}),
    "snf-image": ("snf", {"event_shape": (1, 4, 4), "n_blocks": 2}),
    "unconstrained-paper": (
        "unconstrained",
        {"layout": "paper", "integrand": "paper", "width": 8, "base": "exponential", "lower_limit": [-3.0, -3.0]},
    ),
}


def _case(key: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    family, hp = CASES[key]
    return family, {"event_shape": (2,), **small_hparams(family, **hp, **extra)}


def _inputs(event_shape: tuple[int, ...], context: int = 0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = (0.5 * torch.randn(B, *event_shape, generator=g)).abs()  # >= 0: inside an exponential base's support
    return x, (torch.randn(B, context, generator=g) if context else None)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----- the registry ---------------------------------------------------------------------------------


def test_every_family_has_a_builder_under_its_model_name():
    assert list_flows() == list_models()
    assert top_level_list_flows() == list_flows()
    assert {family for family, _ in CASES.values()} == set(list_flows())


def test_unknown_name_lists_the_registered_flows():
    with pytest.raises(ConfigError, match="unknown flow 'mf'") as err:
        build("mf", event_shape=(2,))
    for name in list_flows():
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="registered flows: constrained, ffjord"):
        get_flow_builder("cnf")


def test_unknown_hyper_parameter_is_named_with_the_family_s_own():
    with pytest.raises(ConfigError, match=r"maf has no hyper-parameter 'n_layer'.*n_layers") as err:
        build("maf", event_shape=(2,), n_layer=3)
    assert "context_features" in str(err.value)  # the list is the builder's signature
    with pytest.raises(ConfigError, match="'lr'"):  # a training option is not a flow's
        build("nsf", event_shape=(2,), lr=1e-3)


@pytest.mark.parametrize(
    ("name", "hparams", "match"),
    [
        ("maf", {"n_layers": 0}, r"maf needs n_layers >= 1 \(an int\), got n_layers=0"),
        ("nsf", {"bins": 1000}, r"nsf needs bins >= 1 and <= 999"),
        ("realnvp", {"hidden": [64, 0]}, r"hidden.*bad: 0"),
        ("glow", {"event_shape": (1,)}, r"glow couples halves of a vector"),
        ("maf", {"event_shape": (1, 4, 4)}, r"maf works on vectors, event_shape \(D,\); got \(1, 4, 4\)"),
        ("unconstrained", {"layout": "paper"}, r"layout='paper'.*needs\s+integrand='paper'"),
        ("snf", {"act": "relu"}, r"unknown snf act 'relu'"),
        ("ffjord", {"event_shape": (2, 2)}, r"ffjord takes event_shape \(D,\) or \(C, H, W\)"),
        ("maf", {"context_embedding": [4]}, r"maf: context_embedding needs context_features > 0"),
        ("maf", {"context_features": -1}, r"maf needs context_features >= 0"),
        ("maf", {"event_shape": (0,)}, r"maf needs event_shape"),
        ("linear", {"base": "cauchy"}, r"unknown base distribution 'cauchy'"),
    ],
)
def test_bad_hyper_parameters_are_config_errors_naming_them(name, hparams, match):
    with pytest.raises(ConfigError, match=match):
        build(name, **{"event_shape": (2,), **hparams})


def test_event_shape_is_required_and_an_int_means_a_vector():
    with pytest.raises(
        ConfigError, match=r"maf needs event_shape, the shape of one data point, e.g. event_shape=\(2,\)"
    ):
        build("maf")
    assert build("maf", event_shape=3, n_layers=1, hidden=[4]).event_shape == (3,)


def test_register_flow_adds_a_builder_and_refuses_a_second_one_under_the_same_name(monkeypatch):
    monkeypatch.setattr(flow_registry, "_BUILDERS", dict(flow_registry._BUILDERS))

    @register_flow("affine-only")
    def affine_only(event_shape, *, scale: float = 2.0, base="normal", context_features=0, context_embedding=None):
        shape = tuple(event_shape)
        return finish_flow(Affine(torch.zeros(shape), torch.full(shape, scale)), base, shape, context_features)

    assert "affine-only" in list_flows()
    flow = build("affine-only", event_shape=(2,), scale=4.0)
    assert torch.allclose(flow.log_prob(torch.zeros(1, 2)), torch.tensor([-math.log(2 * math.pi) - 2 * math.log(4.0)]))
    assert flow_hparams("affine-only") == {
        "scale": 2.0,
        "base": "normal",
        "context_features": 0,
        "context_embedding": None,
    }
    with pytest.raises(ConfigError, match="'affine-only' is already registered to"):
        register_flow("affine-only")(lambda event_shape: None)
    register_flow("affine-only")(affine_only)  # the same builder again: no error


# ----- the flows they build -------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(CASES))
def test_build_gives_a_plain_flow_with_torch_shapes(key):
    family, hp = _case(key)
    flow = build(family, **hp)
    assert type(flow) is Flow and not isinstance(flow, FlowModule)
    shape = tuple(hp["event_shape"])
    assert flow.event_shape == shape and flow.context_features == 0
    x, _ = _inputs(shape)
    flow.eval()
    lp = flow.log_prob(x)
    assert lp.shape == (B,) and torch.isfinite(lp).all()
    assert flow.sample(3).shape == (3, *shape)


@pytest.mark.parametrize("key", sorted(CASES))
def test_a_conditional_build_takes_a_context(key):
    family, hp = _case(key, context_features=C)
    flow = build(family, **hp).eval()
    shape = tuple(hp["event_shape"])
    x, c = _inputs(shape, C)
    assert flow.context_features == C
    assert flow.log_prob(x, c).shape == (B,)
    assert flow.sample(2, c).shape == (2, B, *shape)
    assert flow(c[0]).sample((5,)).shape == (5, *shape)  # the torch.distributions view


@pytest.mark.parametrize("key", sorted(CASES))
@pytest.mark.parametrize("context", ["none", "context", "embedding"])
def test_build_matches_the_lightning_module_weight_for_weight(key, context):
    """Same seed, same weights under the same names (the module's without ``flow.``), same random
    numbers drawn, same density: the module wraps exactly the builder's flow."""
    extra = {
        "none": {},
        "context": {"context_features": C},
        "embedding": {"context_features": C, "context_embedding": [5, 4]},
    }
    family, hp = _case(key, **extra[context])
    torch.manual_seed(0)
    model = create_model(family, **hp)
    after_module = torch.random.get_rng_state()
    torch.manual_seed(0)
    flow = build(family, **hp)
    assert torch.equal(torch.random.get_rng_state(), after_module)
    module_state = _state(model)
    assert all(k.startswith("flow.") for k in module_state)
    flow_state = _state(flow)
    assert list(flow_state) == [k.removeprefix("flow.") for k in module_state]
    for k, v in flow_state.items():
        assert torch.equal(v, module_state["flow." + k]), k
    assert [(n, type(m)) for n, m in flow.named_modules()] == [(n, type(m)) for n, m in model.flow.named_modules()]
    assert [p.requires_grad for p in flow.parameters()] == [p.requires_grad for p in model.flow.parameters()]
    model.eval(), flow.eval()
    x, c = _inputs(tuple(hp["event_shape"]), hp.get("context_features", 0))
    torch.manual_seed(1)  # the same Hutchinson noise for ffjord on images
    expected = model.log_prob(x, c)
    torch.manual_seed(1)
    assert torch.equal(flow.log_prob(x, c), expected)


@pytest.mark.parametrize("key", ["maf", "unconstrained", "glow-image"])
def test_a_module_s_trained_weights_load_into_the_built_flow(key):
    family, hp = _case(key, context_features=C)
    model = create_model(family, **hp).eval()
    randomize_parameters_(model.flow, 0.3, 1)
    x, c = _inputs(tuple(hp["event_shape"]), C)
    model.log_prob(x, c)  # initialises data-dependent layers (actnorm) before the weights are copied
    flow = build(family, **hp).eval()
    flow.load_state_dict({k.removeprefix("flow."): v for k, v in model.state_dict().items()})
    assert torch.equal(flow.log_prob(x, c), model.log_prob(x, c))
    assert model.flow is not flow


def test_a_base_may_be_given_as_a_module():
    base = DiagNormal((2,))
    flow = build("maf", event_shape=(2,), n_layers=1, hidden=[4], base=base)
    assert flow.base is base
    # the unconstrained family reads "exponential" from the module as from the name: no offset beta
    by_name = build("unconstrained", event_shape=(1,), n_layers=1, hidden=[4], embedding=0, base="exponential")
    by_module = build(
        "unconstrained", event_shape=(1,), n_layers=1, hidden=[4], embedding=0, base=StandardExponential((1,))
    )
    assert list(_state(by_name)) == list(_state(by_module))


def test_the_builders_defaults_are_the_modules_defaults():
    """One vocabulary: a builder takes the family module's own hyper-parameters (minus the training
    options), with the same defaults, so ``build(name, **hparams)`` and ``create_model(name, **hparams)``
    agree on every argument neither sets."""
    common = set(inspect.signature(FlowModule.__init__).parameters) - {"self"}
    assert set(TRAINING_HPARAMS) == common - {"event_shape", "base", "context_features", "context_embedding"}
    module_defaults = {k: p.default for k, p in inspect.signature(FlowModule.__init__).parameters.items()}
    for name in list_flows():
        own = inspect.signature(get_model_class(name).__init__).parameters
        module = {k: p.default for k, p in own.items() if k not in ("self", "kwargs", "event_shape")}
        module.update({k: module_defaults[k] for k in ("base", "context_features", "context_embedding")})
        builder = flow_hparams(name)
        assert set(builder) == set(module), name
        for k, default in builder.items():
            expected = module[k]
            if isinstance(default, tuple):
                default, expected = list(default), list(expected)
            assert default == expected, (name, k)


def test_a_plain_torch_training_loop_fits_a_built_flow(two_moons):
    x = two_moons(256, 0)
    flow = create_flow("maf", event_shape=(2,), **small_hparams("maf"))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    first = -flow.log_prob(x).mean().item()
    for _ in range(30):
        opt.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.2


# ----- the module's hooks still shape the flow ---------------------------------------------------


def test_a_subclass_s_make_base_and_embedding_hooks_are_used():
    class MyMAF(MaskedAutoregressiveFlow):
        def make_base(self):
            return DiagNormal(self.event_shape)

        def make_context_embedding(self):
            return MLP(C, 6, [8])

        @property
        def flow_context_features(self) -> int:
            return 6

    model = MyMAF(event_shape=(2,), n_layers=1, hidden=[4], context_features=C)
    assert isinstance(model.flow.base, DiagNormal)
    assert model.flow.context_features == C and isinstance(model.flow.context_embedding, MLP)
    x, c = _inputs((2,), C)
    assert model.log_prob(x, c).shape == (B,)


def test_build_with_passes_overrides_and_keeps_defaults_for_missing_hparams():
    model = create_model("realnvp", event_shape=(2,), n_layers=2, hidden=[4])
    del model.hparams["gate"]  # a checkpoint from before the option: the builder's default
    flow = model.build_with(get_flow_builder("realnvp"), n_layers=1)
    assert len(flow.transform.transforms) == 1


# ----- no Lightning --------------------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[2] / "unflow_zoo"


def _module_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _path_of(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (PACKAGE.parent / rel.with_suffix(".py"), PACKAGE.parent / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_nothing_the_builders_import_needs_lightning():
    """Every module ``unflow_zoo.flows`` imports, directly or not (at the top or in a function),
    is free of ``lightning`` and ``torchmetrics``: the builders are plain torch."""
    todo = [
        f"unflow_zoo.flows.{p.stem}" if p.stem != "__init__" else "unflow_zoo.flows"
        for p in (PACKAGE / "flows").glob("*.py")
    ]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        path = _path_of(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        imports = _module_imports(path)
        heavy = sorted(n for n in imports if n.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics"))
        assert not heavy, f"{module} imports {heavy}"
        todo += [n for n in imports if n.startswith("unflow_zoo.")]
    assert "unflow_zoo.transforms.spline" in seen and not any(m.startswith("unflow_zoo.models") for m in seen)
