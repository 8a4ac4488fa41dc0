"""``compile=True``: torch.compile of the flow's log-density (and sampling where a family turns it on).

The real compiles take tens of seconds per family on CPU, so the registry-wide comparison is
``slow``; the default run compiles the cheapest family once and tests the plumbing (fallbacks,
state dicts, pickling, the CLI) with ``torch.compile`` replaced by a stand-in.

Tolerance of the compiled-vs-eager comparisons: 1e-5, absolute and relative, on NLLs of a few
nats. Inductor fuses kernels and reorders sums, so the two differ by float32 rounding (measured:
at most a few 1e-7 after three steps, every family); 1e-5 is well above that and far below what
any real difference (a wrong gradient moves the NLL by about the learning rate) would give.
Adam runs with ``eps=1e-3``: with the default 1e-8 its first step is ``lr * sign(g)``, which turns
a gradient that is zero in exact arithmetic but rounding noise in float32 (Glow's actnorm biases
right after their data-dependent initialisation: ~1e-8 either way) into a full step of opposite
sign in the two runs; ``eps=1e-3`` bounds that amplification to ``lr / eps`` while every other
gradient still gets Adam's scaling.
"""

from __future__ import annotations

import copy
import pickle
import sys
import warnings
from pathlib import Path

import pytest
import torch

from unflow_zoo.errors import ConfigError, DataError
from unflow_zoo.models import create_model, get_model_class, list_models
from unflow_zoo.models.base import CompileFallbackWarning
from unflow_zoo.pretrained.serialization import TRAINING_HPARAMS
from unflow_zoo.testing import small_model

ROOT = Path(__file__).resolve().parents[2]
TOL = {"rtol": 1e-5, "atol": 1e-5}
#: what compile=True leaves eager on purpose in the registry (compile_unsupported), measured
KNOWN_EAGER = {"ffjord", "constrained"}
#: the families whose sampling compile=True compiles too (compile_sampling: measured faster)
COMPILED_SAMPLING = {"glow", "maf", "naf", "nsf"}


@pytest.fixture
def inductor_in_process():
    """One compile thread (no worker pool to start on a busy machine); a clean compiler state after."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(compile_threads=1):
        yield
    torch.compiler.reset()


def _batches(n: int = 4, seed: int = 1) -> torch.Tensor:
    """``n`` batches of 64 points of a correlated, shifted 2-D Gaussian."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, 2, generator=g)
    return torch.stack([z[..., 0] + 0.5, 0.8 * z[..., 0] + 0.6 * z[..., 1]], dim=-1)


def _train(model, batches: torch.Tensor, evaluate: bool = True) -> tuple[torch.Tensor, ...]:
    """The training losses of ``len(batches) - 1`` Adam steps (FlowModule's loss and projection),
    then the NLL of the last batch in training mode and (``evaluate``) in evaluation mode, no grad:
    a second compile."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-3)
    losses = []
    for x in batches[:-1]:
        opt.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).mean() + model.regularization()
        loss.backward()
        opt.step()
        with torch.no_grad():  # FlowModule.optimizer_step's projection (positive weights)
            for m in model.flow.modules():
                if callable(getattr(m, "project_", None)):
                    m.project_()
        losses.append(loss.detach())
    train_nll = -model.log_prob(batches[-1]).mean().detach()
    if not evaluate:
        return torch.stack(losses), train_nll
    model.eval()
    with torch.no_grad():
        eval_nll = -model.log_prob(batches[-1]).mean()
    model.train()
    return torch.stack(losses), train_nll, eval_nll


def _compiled_run(name: str, evaluate: bool = True, **hparams):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileFallbackWarning)
        model = small_model(name, compile=True, **hparams)
        out = _train(model, _batches(), evaluate)
    return model, out, [w for w in caught if issubclass(w.category, CompileFallbackWarning)]


# ----- real compiles ---------------------------------------------------------------------------------
def test_cheapest_family_compiles_and_matches_eager(inductor_in_process, tmp_path):
    """The default run's real compile (one: training mode): linear, a few Adam steps, the same losses
    and NLL as eager, and weights that save and load as the eager model's (the compiled function is
    no part of the state dict). The slow test below adds evaluation mode and every family."""
    eager = small_model("linear")
    expected = _train(eager, _batches(), evaluate=False)
    model, got, fallbacks = _compiled_run("linear", evaluate=False)
    assert not fallbacks and model.compile_fallbacks == {} and "log_prob" in model._compiled
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **TOL)
    assert list(model.state_dict()) == list(eager.state_dict())
    model.save_pretrained(str(tmp_path / "flow"))
    loaded = type(model).from_pretrained(str(tmp_path / "flow"))
    assert loaded.hparams.compile is True and loaded._compiled == {}  # compiles at its own first call
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_family_compiled_matches_eager(name, inductor_in_process):
    """Every registered family under compile=True: the same training losses and NLL (train and
    eval mode) as eager after a few Adam steps, to 1e-5; a family that falls back says why, once."""
    eager = small_model(name)
    expected = _train(eager, _batches())
    model, got, fallbacks = _compiled_run(name)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **TOL)
    assert list(model.state_dict()) == list(eager.state_dict())
    if name in KNOWN_EAGER:
        assert model.compile_fallbacks.keys() == {"log_prob"} and len(fallbacks) == 1
        assert name in str(fallbacks[0].message) and "runs eagerly" in str(fallbacks[0].message)
    else:  # every other family compiles its log-density, training included
        assert not fallbacks and model.compile_fallbacks == {}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMPILED_SAMPLING))
def test_compiled_sampling_draws_the_models_distribution(name, inductor_in_process):
    """Compiled sampling draws other numbers than eager under one seed (inductor's own generator), so
    it is checked by consistency: the draws' log-densities from the compiled inverse pass equal the
    eager model's log-density at those points, and the draws are finite, of the right shape."""
    eager, model = small_model(name), small_model(name, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        with torch.no_grad():
            x, lp = model.sample_and_log_prob(200)
            assert model.sample(50).shape == (50, 2)
    assert x.shape == (200, 2) and torch.isfinite(x).all() and model.compile_fallbacks == {}
    eager.eval()  # in training mode Glow's actnorm would initialise itself from these draws first
    with torch.no_grad():  # 1e-4: NAF's inverse is a bisection, to its tolerance
        torch.testing.assert_close(lp, eager.log_prob(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_constrained_compiles_past_depth_one(inductor_in_process):
    """The B-NAF layout (depth 2) of the constrained family compiles; only the fused depth-1 kernel falls back."""
    eager = small_model("constrained", depth=2)
    expected = _train(eager, _batches())
    model, got, fallbacks = _compiled_run("constrained", depth=2)
    assert not fallbacks and model.compile_fallbacks == {}
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **TOL)


# ----- plumbing, with torch.compile replaced ------------------------------------------------------------
def test_a_failing_compiler_warns_once_and_gives_eager_results(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    eager, model = small_model("maf"), small_model("maf", compile=True)
    x = _batches(1)[0]
    with pytest.warns(CompileFallbackWarning, match=r"maf: compile=True but the flow's log_prob runs eagerly.*"
                                                    r"no C\+\+ compiler found"):  # fmt: skip
        got = model.log_prob(x)
    assert torch.equal(got, eager.log_prob(x))
    assert model.compile_fallbacks.keys() == {"log_prob"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next calls are eager without a word
        assert torch.equal(model.log_prob(x), eager.log_prob(x))


def test_a_compiler_error_at_the_first_call_falls_back(monkeypatch):
    from torch._dynamo.exc import TorchRuntimeError

    def compile_that_fails_at_call(fn, **kwargs):
        def call(*args):
            raise TorchRuntimeError("Dynamo failed to run FX node")

        return call

    monkeypatch.setattr(torch, "compile", compile_that_fails_at_call)
    eager, model = small_model("realnvp"), small_model("realnvp", compile=True)
    x = _batches(1)[0]
    with pytest.warns(CompileFallbackWarning, match="realnvp.*TorchRuntimeError: Dynamo failed"):
        loss = -model.log_prob(x).mean()
    loss.backward()  # the eager result is a training result: it has a graph
    torch.testing.assert_close(loss, -eager.log_prob(x).mean(), rtol=0, atol=0)


def test_the_models_own_errors_are_not_compiler_failures(monkeypatch):
    """A bad batch raises the eager DataError under compile=True too, and does not switch compiling off."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # "compiled" = the function itself
    model = small_model("maf", compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        with pytest.raises(DataError, match="expected a batch of shape"):
            model.log_prob(torch.zeros(4, 3))
    assert model.compile_fallbacks == {}


def test_a_known_unsupported_family_warns_without_trying(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(fn) or fn)
    model = small_model("ffjord", compile=True)
    with pytest.warns(CompileFallbackWarning, match="ffjord: .*FFJORD's ODE solve cannot be compiled"):
        model.log_prob(_batches(1)[0])
    assert calls == [] and "log_prob" in model.compile_fallbacks
    assert "depth=1" in small_model("constrained").compile_unsupported()
    assert small_model("constrained", depth=2).compile_unsupported() is None


def test_compile_mode_reaches_torch_compile_and_sampling_only_where_the_family_turns_it_on(monkeypatch):
    seen = []

    def fake_compile(fn, **kwargs):
        seen.append((fn.__name__, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = small_model("realnvp", compile=True, compile_mode="max-autotune-no-cudagraphs")
    model.log_prob(_batches(1)[0])
    model.sample(5)
    assert seen == [("_flow_log_prob", {"mode": "max-autotune-no-cudagraphs"})]
    assert not type(model).compile_sampling  # sampling measured no faster compiled
    model.compile_sampling = True  # a family that measured a gain sets the class attribute
    x, lp = model.sample_and_log_prob(5)
    assert x.shape == (5, 2) and lp.shape == (5,) and model.sample(3).shape == (3, 2)
    assert [name for name, _ in seen] == ["_flow_log_prob", "_flow_sample"]
    assert {name for name in list_models() if get_model_class(name).compile_sampling} == COMPILED_SAMPLING


def test_each_compiled_model_gets_its_own_code_object(monkeypatch):
    """torch.compile keeps at most 8 graphs per code object: models of different widths must not share one."""
    codes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: codes.append(fn.__code__) or fn)
    for width in (4, 5):
        small_model("maf", compile=True, hidden=[width]).log_prob(_batches(1)[0])
    assert len(codes) == 2 and codes[0] is not codes[1] and codes[0].co_code == codes[1].co_code


def test_a_compiled_model_copies_pickles_and_keeps_eager_state_dict_keys(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: fn(*a))  # a closure: unpicklable
    model = small_model("nsf", compile=True)
    x = _batches(1)[0]
    before = model.log_prob(x).detach()
    assert model._compiled  # built at the first call
    assert list(model.state_dict()) == list(small_model("nsf").state_dict())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._compiled == {}  # compiles anew, its own flow
        torch.testing.assert_close(clone.log_prob(x), before, rtol=0, atol=0)
        assert clone.hparams.compile is True


def test_compile_is_a_training_option_validated_up_front():
    assert {"compile", "compile_mode"} <= set(TRAINING_HPARAMS)
    with pytest.raises(ConfigError, match="compile must be true or false"):
        create_model("maf", compile="yes")
    with pytest.raises(ConfigError, match="unknown compile_mode 'fast'"):
        create_model("maf", compile=True, compile_mode="fast")
    assert create_model("maf").hparams.compile is False  # off by default


def test_the_cli_takes_compile_for_every_family(tmp_path):
    from unflow_zoo.cli import FlowCLI
    from unflow_zoo.data import DensityDataModule
    from unflow_zoo.models import FlowModule

    old, sys.argv = sys.argv, ["unflow-zoo"]
    try:
        for name in list_models():
            cls = type(create_model(name))
            cli = FlowCLI(
                FlowModule,
                DensityDataModule,
                subclass_mode_model=True,
                run=False,
                args=[
                    f"--model={cls.__module__}.{cls.__qualname__}",
                    "--model.init_args.compile=true",
                    "--model.init_args.compile_mode=default",
                    "--data.dataset=moons",
                    "--trainer.accelerator=cpu",
                    f"--trainer.default_root_dir={tmp_path}",
                    "--plot.enabled=false",
                ],
                save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False,
            )
            assert isinstance(cli.model, cls) and cli.model.hparams.compile is True, name
            assert cli.model.hparams.compile_mode == "default" and cli.model._compiled == {}, name
    finally:
        sys.argv = old


@pytest.mark.slow
def test_a_compiled_model_fits_with_the_trainer(inductor_in_process, trainer_factory):
    """Lightning's own loop: training steps, then validation under inference mode (a second compile)."""
    from unflow_zoo.data import DensityDataModule

    dm = DensityDataModule("moons", n_samples=1000, batch_size=128)
    metrics = {}
    for compiled in (False, True):
        model = small_model("maf", compile=compiled, lr=1e-2)
        trainer = trainer_factory(max_epochs=1, limit_train_batches=3)
        trainer.fit(model, datamodule=dm)
        metrics[compiled] = float(trainer.callback_metrics["val_nll"])
        assert model.compile_fallbacks == {}
    assert metrics[True] == pytest.approx(metrics[False], rel=1e-5, abs=1e-5)
