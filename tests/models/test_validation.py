"""Hostile and careless input to every family (issue 15): bad hyper-parameters, bad batches.

Each bad call must raise one of the package's errors (``unflow_zoo.errors``) whose message
names the argument, the value and the fix; nothing may escape as a raw torch exception.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unflow_zoo.errors import ConfigError, DataError, DataTypeError, InputOutsideDomain, UnflowZooError
from unflow_zoo.models import validate
from unflow_zoo.models.registry import create_model, list_models
from unflow_zoo.testing import randomize_parameters_, small_model

FAMILIES = list_models()
EVENT = (2,)

# ffjord solves one ODE for the whole batch, and a NaN or inf row would collapse its adaptive step
# for every row: it refuses such a batch (InputOutsideDomain); the other families give those rows NaN.
RAISES_ON_NON_FINITE = {"ffjord"}


@functools.cache
def tiny(name: str, dtype: torch.dtype = torch.float32):
    """Family ``name`` at its own test sizes, seeded, perturbed (not the identity), in eval mode."""
    model = small_model(name, EVENT)
    randomize_parameters_(model.flow, 0.3, 0)
    return model.to(dtype).eval()


# ----- bad batches ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_batch_gives_an_empty_log_prob(name):
    model = tiny(name)
    x = torch.zeros(0, *EVENT)
    lp = model.log_prob(x)
    assert lp.shape == (0,) and lp.dtype == torch.float32
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_prob(x).sum(), x)  # still on the graph
    assert grad.shape == x.shape
    assert model.flow.transform_to_noise(torch.zeros(0, *EVENT)).shape == (0, *EVENT)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: np.zeros((3, *EVENT), dtype=np.float32), id="numpy"),
        pytest.param(lambda: [[0.0] * EVENT[0]] * 3, id="list"),
    ],
)
def test_not_a_tensor_is_a_data_type_error(name, make):
    with pytest.raises(DataTypeError, match=r"torch\.Tensor.*torch\.as_tensor\(x, dtype=torch\.float32\)"):
        tiny(name).log_prob(make())


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_tensor_is_a_data_type_error(name, dtype):
    with pytest.raises(DataTypeError, match=rf"floating-point.*{dtype}.*x\.float\(\)"):
        tiny(name).log_prob(torch.zeros(3, *EVENT, dtype=dtype))


@pytest.mark.parametrize("name", FAMILIES)
def test_float64_batch_for_a_float32_model_names_both_dtypes_and_fixes(name):
    with pytest.raises(DataTypeError, match=r"torch\.float64.*torch\.float32.*x\.float\(\).*model\.double\(\)"):
        tiny(name).log_prob(torch.zeros(3, *EVENT, dtype=torch.float64))
    # and the other way round
    with pytest.raises(DataTypeError, match=r"torch\.float32.*torch\.float64.*x\.double\(\).*model\.float\(\)"):
        tiny(name, torch.float64).log_prob(torch.zeros(3, *EVENT))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("shape", [(3, 3), (3,), (2,), (3, 2, 1)])
def test_wrong_shape_is_a_data_error_with_both_shapes(name, shape):
    with pytest.raises(DataError, match=r"expected a batch of shape \(B, 2\).*got " + re.escape(str(shape))):
        tiny(name).log_prob(torch.zeros(shape))


def test_a_single_point_is_told_to_unsqueeze():
    with pytest.raises(DataError, match=r"x\.unsqueeze\(0\)"):
        tiny("maf").log_prob(torch.zeros(EVENT))


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_zero_is_empty(name):
    model = tiny(name)
    x = model.sample(0)
    assert x.shape == (0, *EVENT) and x.dtype == torch.float32
    x, lp = model.flow.sample_and_log_prob(0)
    assert x.shape == (0, *EVENT) and lp.shape == (0,)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("n", [-1, 2.5, 2.0, "3", None, True])
def test_bad_sample_count_is_a_config_error(name, n):
    with pytest.raises(ConfigError, match=r"number of samples n must be .*>= 0, got n=") as info:
        tiny(name).sample(n)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError):
        tiny(name).flow.sample_and_log_prob(n)


def test_sample_count_accepts_numpy_and_tensor_integers():
    model = tiny("maf")
    assert model.sample(np.int64(3)).shape == (3, *EVENT)
    assert model.sample(torch.tensor(2)).shape == (2, *EVENT)


def test_snf_approximate_sampling_checks_the_count_too():
    model = tiny("snf")
    assert model.sample(0, approximate=True).shape == (0, *EVENT)
    with pytest.raises(ConfigError, match="n must be >= 0"):
        model.sample(-1, approximate=True)


# ----- bad hyper-parameters --------------------------------------------------------------------

IMAGE = (1, 4, 4)
BAD_HPARAMS = [
    # (family, kwargs, the argument the message must name)
    ("realnvp", {"n_layers": 0}, "n_layers"),
    ("realnvp", {"n_layers": 2.5}, "n_layers"),
    ("realnvp", {"n_layers": True}, "n_layers"),
    ("realnvp", {"hidden": [0]}, "hidden"),
    ("realnvp", {"hidden": [-3]}, "hidden"),
    ("realnvp", {"hidden": [8, 2.5]}, "hidden"),
    ("realnvp", {"act": "nope"}, "act"),
    ("realnvp", {"scale_clamp": 0.0}, "scale_clamp"),
    ("maf", {"n_layers": 0}, "n_layers"),
    ("maf", {"hidden": [-3]}, "hidden"),
    ("maf", {"scale_clamp": -1.0}, "scale_clamp"),
    ("maf", {"event_shape": (0,)}, "event_shape"),
    ("linear", {"n_layers": 0}, "n_layers"),
    ("nsf", {"bins": 0}, "bins"),
    ("nsf", {"bins": 1000}, "bins"),
    ("nsf", {"tail_bound": 0.0}, "tail_bound"),
    ("nsf", {"tail_bound": math.inf}, "tail_bound"),
    ("nsf", {"hidden": [0]}, "hidden"),
    ("nsf", {"n_layers": -1}, "n_layers"),
    ("nsf", {"variant": "spline"}, "variant"),
    ("naf", {"n_layers": 0}, "n_layers"),
    ("naf", {"hidden": [0]}, "hidden"),
    ("naf", {"dsf_units": 0}, "dsf_units"),
    ("naf", {"dsf_depth": 0}, "dsf_depth"),
    ("constrained", {"width": 0}, "width"),
    ("constrained", {"depth": 0}, "depth"),
    ("constrained", {"n_layers": 0}, "n_layers"),
    ("constrained", {"std_a": 0.0}, "std_a"),
    ("constrained", {"eps": 0.0}, "eps"),
    ("constrained", {"eps": math.nan}, "eps"),
    ("constrained", {"linear_term": -1.0}, "linear_term"),
    ("constrained", {"positivity": "abs"}, "positivity"),
    ("constrained", {"init": "zeros"}, "init"),
    ("constrained", {"train_layers": ["c"]}, "train_layers"),
    ("glow", {"n_layers": 0}, "n_layers"),
    ("glow", {"hidden": [0]}, "hidden"),
    ("glow", {"scale_clamp": 0.0}, "scale_clamp"),
    ("glow", {"event_shape": IMAGE, "levels": 0}, "levels"),
    ("glow", {"event_shape": IMAGE, "steps_per_level": 0}, "steps_per_level"),
    ("glow", {"event_shape": IMAGE, "hidden_channels": 0}, "hidden_channels"),
    ("glow", {"event_shape": IMAGE, "coupling_scale": "exp"}, "coupling_scale"),
    ("ffjord", {"n_blocks": 0}, "n_blocks"),
    ("ffjord", {"hidden": []}, "hidden"),
    ("ffjord", {"hidden": [0]}, "hidden"),
    ("ffjord", {"act": "relu"}, "act"),
    ("ffjord", {"end_time": 0.0}, "end_time"),
    ("ffjord", {"atol": 0.0}, "atol"),
    ("ffjord", {"rtol": -1.0}, "rtol"),
    ("ffjord", {"train_solver": "rk4", "train_step_size": 2.0}, "train_step_size"),
    ("ffjord", {"exact_trace_max_dim": -1}, "exact_trace_max_dim"),
    ("ffjord", {"kinetic_weight": math.nan}, "kinetic_weight"),
    ("ffjord", {"trace": "none"}, "trace"),
    ("ffjord", {"noise": "uniform"}, "noise"),
    ("ffjord", {"solver": "nope"}, "solver"),
    ("snf", {"n_layers": 0}, "n_layers"),
    ("snf", {"act_alpha": 0.0}, "act_alpha"),
    ("snf", {"act_alpha": 1.5}, "act_alpha"),
    ("snf", {"act": "leaky_relu", "act_alpha": -1.0}, "act_alpha"),
    ("snf", {"recon_weight": -1.0}, "recon_weight"),
    ("snf", {"train_logdet": "never"}, "train_logdet"),
    ("snf", {"event_shape": IMAGE, "n_blocks": 0}, "n_blocks"),
    ("snf", {"event_shape": IMAGE, "kernel_size": 0}, "kernel_size"),
    ("snf", {"event_shape": IMAGE, "kernel_size": 2}, "kernel_size"),
    ("unconstrained", {"n_layers": 0}, "n_layers"),
    ("unconstrained", {"n_nodes": 0}, "n_nodes"),
    ("unconstrained", {"n_nodes": 1}, "n_nodes"),  # Clenshaw-Curtis needs both end points
    ("unconstrained", {"hidden": []}, "hidden"),
    ("unconstrained", {"hidden": [-3]}, "hidden"),
    ("unconstrained", {"embedding": -1}, "embedding"),
    ("unconstrained", {"conditioner_hidden": [0]}, "conditioner_hidden"),
    ("unconstrained", {"integrand": "paper", "width": 0}, "width"),
    ("unconstrained", {"integrand": "paper", "std_a": -1.0}, "std_a"),
    ("unconstrained", {"min_slope": -1.0}, "min_slope"),
    ("unconstrained", {"phi": "relu"}, "phi"),
    ("unconstrained", {"quadrature": "simpson"}, "quadrature"),
    ("unconstrained", {"lower_limit": math.nan}, "lower_limit"),
    ("unconstrained", {"permutation": "shuffle"}, "permutation"),
    ("unconstrained", {"layout": "grid"}, "layout"),
    ("unconstrained", {"integrand": "spline"}, "integrand"),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"), BAD_HPARAMS, ids=[f"{n}-{'-'.join(map(str, k.items()))}" for n, k, _ in BAD_HPARAMS]
)
def test_bad_hyperparameter_is_a_config_error_naming_it(name, kwargs, arg):
    kwargs = {"event_shape": EVENT, **kwargs}
    with pytest.raises(ConfigError) as info:
        create_model(name, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert arg in message, message
    value = kwargs[arg]
    shown = [repr(value), str(value)] + ([repr(tuple(value)), repr(list(value))] if isinstance(value, tuple) else [])
    assert any(s in message for s in shown), f"the message does not show the value {value!r}: {message}"


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("shape", [(-2,), (0,), (2, -1, 4)])
def test_every_family_rejects_a_non_positive_event_shape(name, shape):
    with pytest.raises(ConfigError, match=r"event_shape.*ints >= 1.*got event_shape=.*e\.g\. event_shape=\(2,\)"):
        create_model(name, event_shape=shape)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_rejects_zero_layers(name):
    arg = "n_blocks" if name == "ffjord" else "n_layers"
    with pytest.raises(ConfigError, match=rf"{arg} >= 1 \(an int\), got {arg}=0; pass a whole number >= 1"):
        create_model(name, event_shape=EVENT, **{arg: 0})


def test_validate_helpers():
    assert validate.positive_int("k", np.int64(3)) == 3
    assert validate.positive_ints("h", (4, np.int32(2))) == [4, 2]
    assert validate.in_range("p", 0, 0, 1, high_open=True) == 0.0
    with pytest.raises(ConfigError, match=r"dropout in \[0, 1\) \(a finite number\), got dropout=1"):
        validate.in_range("dropout", 1, 0, 1, high_open=True, owner="mlp")
    with pytest.raises(ConfigError, match=r"needs k >= 1 \(an int\), got k=True"):
        validate.positive_int("k", True)
    with pytest.raises(ConfigError, match="needs at least one hidden width in h"):
        validate.positive_ints("h", [], allow_empty=False)
    with pytest.raises(ConfigError, match=r"unknown mlp act 'nope'; choose one of \['relu', 'tanh'\]"):
        validate.one_of("act", "nope", ["relu", "tanh"], owner="mlp")
    assert validate.optional_positive_float("c", None) is None
    with pytest.raises(ConfigError, match="my-flow: boom"), validate.config_errors("my-flow"):
        raise ValueError("boom")


# ----- fuzz ------------------------------------------------------------------------------------

EDGE = [0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 1.0, -3.0, math.nan, math.inf, -math.inf]


@st.composite
def batches(draw, name: str):
    """(model dtype, a batch of 0..5 points) with edge values, in the model's dtype, the other float or int64."""
    model_dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    other = torch.float64 if model_dtype == torch.float32 else torch.float32
    dtype = draw(st.sampled_from([model_dtype, model_dtype, other, torch.int64]))  # mostly the right one
    b = draw(st.integers(0, 5))
    n = b * math.prod(EVENT)
    if dtype == torch.int64:
        values = draw(st.lists(st.integers(-(10**6), 10**6), min_size=n, max_size=n))
    else:
        edge = EDGE
        value = st.sampled_from(edge) | st.floats(-1e3, 1e3, allow_nan=False)
        values = draw(st.lists(value, min_size=n, max_size=n))
    return model_dtype, torch.tensor(values, dtype=dtype).reshape(b, *EVENT)


def _fuzz_log_prob(name: str, model_dtype: torch.dtype, x: torch.Tensor) -> None:
    model = tiny(name, model_dtype)
    try:
        with torch.no_grad():
            lp = model.log_prob(x)
    except InputOutsideDomain:
        assert name in RAISES_ON_NON_FINITE and x.dtype == model_dtype and not torch.isfinite(x).all()
        return
    except UnflowZooError:
        assert x.dtype != model_dtype  # every family evaluates any real batch of its own dtype
        return
    assert x.dtype == model_dtype
    assert lp.shape == (x.shape[0],)
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    # all families here live on all of R^D: a finite point never gets NaN or +inf (huge ones may
    # underflow to -inf, e.g. 1e30 in float32, whose square overflows)
    assert not torch.isnan(lp[finite]).any(), (x, lp)
    assert not (lp[finite] == math.inf).any(), (x, lp)


def _fuzz(name: str, max_examples: int, derandomize: bool = True):
    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=derandomize,
    )
    @given(batches(name))
    def run(case):
        _fuzz_log_prob(name, *case)

    run()


@pytest.mark.parametrize("name", FAMILIES)
def test_fuzz_log_prob_works_or_raises_a_package_error(name):
    _fuzz(name, max_examples=30)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_fuzz_log_prob_long(name):
    _fuzz(name, max_examples=400, derandomize=False)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("row", [[-1e30, 1e30], [-1e20, 1e20], [1e30, -1e30]])
def test_a_far_point_whose_image_overflows_gets_a_vanishing_log_density_not_nan(name, row):
    # found by the fuzz above: x_1 = -1e20 pushed the unconstrained flow's first layer to inf
    # (its integral grows like x^2), and the next layer's conditioner turned the inf into NaN
    x = torch.tensor([row])
    _fuzz_log_prob(name, torch.float32, x)
    with torch.no_grad():
        lp = tiny(name, torch.float32).log_prob(x)
    assert lp.item() <= -1e30, lp  # -inf where the image overflowed, else a huge negative number


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=8, deadline=None)
@given(n=st.integers(-3, 4) | st.floats(-2, 4) | st.none() | st.text(max_size=2))
def test_fuzz_sample_count(name, n):
    model = tiny(name)
    try:
        with torch.no_grad():
            x = model.sample(n)
    except ConfigError:
        assert not (isinstance(n, int) and n >= 0)
        return
    assert isinstance(n, int) and x.shape == (n, *EVENT) and x.dtype == torch.float32
