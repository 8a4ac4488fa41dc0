import numpy as np
import pytest
import torch

from unflow_zoo.core import Flow, Permutation, StandardNormal
from unflow_zoo.core.flow import check_sample_count
from unflow_zoo.errors import ConfigError, DataError, DataTypeError
from unflow_zoo.testing import randomize_parameters_
from unflow_zoo.transforms import MaskedAffineAutoregressive


def _flow(seed=0):
    torch.manual_seed(seed)
    t = MaskedAffineAutoregressive(3, [16])
    randomize_parameters_(t, 0.2, seed)
    return Flow(t, StandardNormal(3)).double()


def test_log_prob_is_base_plus_logdet():
    f = _flow()
    x = torch.randn(5, 3, dtype=torch.float64)
    z, ladj = f.transform(x)
    assert torch.allclose(f.log_prob(x), f.base.log_prob(z) + ladj)
    assert torch.allclose(f.transform_to_noise(x), z)


def test_sample_and_log_prob_agrees_with_log_prob():
    f = _flow(1)
    torch.manual_seed(0)
    x, lp = f.sample_and_log_prob(64)
    assert x.shape == (64, 3)
    assert torch.allclose(lp, f.log_prob(x), atol=1e-10)
    assert f.sample(10).shape == (10, 3)


def test_wrong_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"expected a batch of shape \(B, 3\).*got \(4, 2\)"):
        _flow().log_prob(torch.zeros(4, 2, dtype=torch.float64))


# ----- careless input (issue 15) ---------------------------------------------------------------


def _flow32():
    torch.manual_seed(0)
    return Flow(MaskedAffineAutoregressive(3, [8]), StandardNormal(3))


def test_wrong_shape_is_a_data_error():
    with pytest.raises(DataError, match=r"got \(4, 2\); reshape it to \(B, 3\)"):
        _flow32().log_prob(torch.zeros(4, 2))
    with pytest.raises(DataError, match=r"single point.*x\.unsqueeze\(0\)"):
        _flow32().transform_to_noise(torch.zeros(3))


@pytest.mark.parametrize(
    "x", [np.zeros((2, 3), dtype=np.float32), [[0.0, 0.0, 0.0]], 1.0], ids=["numpy", "list", "float"]
)
def test_non_tensor_input_says_how_to_convert(x):
    with pytest.raises(DataTypeError, match=r"torch\.Tensor.*got a (numpy\.ndarray|list|float).*torch\.as_tensor\(x"):
        _flow32().log_prob(x)


def test_integer_input_is_a_data_type_error():
    with pytest.raises(DataTypeError, match=r"floating-point tensor, got x of dtype torch\.int64.*x\.float\(\)"):
        _flow32().log_prob(torch.zeros(2, 3, dtype=torch.long))


def test_dtype_mismatch_names_both_dtypes_and_both_fixes():
    with pytest.raises(
        DataTypeError,
        match=r"torch\.float64 but the flow's parameters are torch\.float32.*"
        r"x\.float\(\) or the model with model\.double\(\)",
    ):
        _flow32().log_prob(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(DataTypeError, match=r"x\.double\(\) or the model with model\.float\(\)"):
        _flow().transform_to_noise(torch.zeros(2, 3))
    with pytest.raises(TypeError):  # DataTypeError is a TypeError and a ValueError
        _flow32().log_prob(torch.zeros(2, 3, dtype=torch.float64))


def test_a_parameterless_flow_takes_its_dtype_from_the_base():
    flow = Flow(Permutation.reverse(2), StandardNormal(2))
    assert next(iter(flow.buffers())).is_floating_point()  # the flow's anchor comes first
    flow.double()
    assert flow.log_prob(torch.zeros(4, 2, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(DataTypeError, match="torch.float32 but"):
        flow.log_prob(torch.zeros(4, 2))
    assert flow.sample(0).dtype == torch.float64


def test_device_mismatch_is_a_data_error():
    flow = _flow32().to("meta")
    with pytest.raises(DataError, match=r"on device 'cpu' but the flow is on 'meta'.*x\.to\('meta'\)"):
        flow.log_prob(torch.zeros(2, 3))


def test_autocast_accepts_the_low_precision_dtype():
    flow = _flow32()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = flow.log_prob(torch.randn(4, 3).bfloat16())
    assert lp.shape == (4,)


def test_empty_batch_is_empty_and_differentiable():
    flow = _flow32()
    x = torch.zeros(0, 3, requires_grad=True)
    lp = flow.log_prob(x)
    assert lp.shape == (0,) and lp.dtype == torch.float32
    lp.sum().backward()  # zero gradients, not "does not require grad"
    assert x.grad.shape == (0, 3)
    assert all(p.grad is not None and not p.grad.any() for p in flow.parameters())
    with torch.no_grad():
        assert flow.log_prob(torch.zeros(0, 3)).shape == (0,)
    assert flow.transform_to_noise(torch.zeros(0, 3)).shape == (0, 3)


def test_sample_zero_and_bad_counts():
    flow = _flow32()
    assert flow.sample(0).shape == (0, 3)
    x, lp = flow.sample_and_log_prob(0)
    assert x.shape == (0, 3) and lp.shape == (0,)
    assert flow.sample(np.int64(2)).shape == (2, 3)
    for n, match in [(-1, "n must be >= 0, got n=-1"), (2.5, r"int >= 0, got n=2\.5 \(float\)"), (True, "got n=True")]:
        with pytest.raises(ConfigError, match=match):
            flow.sample(n)
        with pytest.raises(ValueError, match=match):
            flow.sample_and_log_prob(n)
    assert check_sample_count(torch.tensor(3)) == 3
    with pytest.raises(ConfigError):
        check_sample_count(torch.tensor(3.0))


def test_context_must_be_a_tensor():
    with pytest.raises(DataTypeError, match=r"context as a torch\.Tensor or None, got a list"):
        _flow32().log_prob(torch.zeros(2, 3), context=[1.0])
