"""Image preprocessing: dequantisation, the scaling/logit map, and its log-determinant."""

from __future__ import annotations

import math

import pytest
import torch

from unflow_zoo.core.transform import InputOutsideDomain
from unflow_zoo.data.preprocess import PixelPreprocess, dequantize
from unflow_zoo.testing import check_transform

ALPHAS = [None, 0.0, 1e-6, 0.05]


def pixels_plus_noise(levels: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return dequantize(torch.randint(0, levels, shape, generator=g), g).double()


def test_dequantize_stays_in_the_pixels_cell_and_is_seeded() -> None:
    k = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    y = dequantize(k, torch.Generator().manual_seed(2))
    assert y.dtype == torch.float32 and y.shape == k.shape
    assert torch.equal(y.floor(), k.float())  # k <= y < k + 1
    u = (y - k.float()).double()
    # U[0, 1): mean 1/2, variance 1/12, within 5 standard errors for 4000 draws
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / 4000)
    assert abs(float(u.var()) - 1 / 12) < 0.01
    torch.testing.assert_close(dequantize(k, torch.Generator().manual_seed(2)), y, rtol=0, atol=0)
    assert not torch.equal(dequantize(k, torch.Generator().manual_seed(3)), y)


def test_dequantize_never_reaches_the_next_level_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    # the largest float32 below 1 added to 255 rounds up to 256; the clamp keeps y < k + 1
    largest = 1 - 2**-24
    assert torch.tensor(255.0) + torch.tensor(largest) == 256
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, largest, dtype=kw.get("dtype")))
    y = dequantize(torch.tensor([0, 255], dtype=torch.uint8))
    assert float(y[0]) == largest and 255 < float(y[1]) < 256


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("levels", [17, 256])
def test_preprocess_passes_the_transform_kit(alpha: float | None, levels: int) -> None:
    """inverse(forward(y)) == y and log-det == log|det| of the autograd Jacobian, on (B, 1, 2, 2) images."""
    t = PixelPreprocess(levels, alpha)
    y = pixels_plus_noise(levels, (6, 1, 2, 2))
    check_transform(t, y, inverse_atol=1e-8 * levels, logdet_atol=1e-8, check_grid=False)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_log_det_from_served_x_equals_the_autograd_jacobian(alpha: float | None) -> None:
    t = PixelPreprocess(256, alpha)
    y = pixels_plus_noise(256, (3, 5))
    for row in y:
        jac = torch.autograd.functional.jacobian(lambda v: t.to_served(v), row)
        expected = torch.linalg.slogdet(jac).logabsdet
        x = t.to_served(row)[None]
        torch.testing.assert_close(t.log_det(x)[0], expected, rtol=0, atol=1e-9)
        # and from float32 served data, as the data module stores them
        torch.testing.assert_close(t.log_det(x.float())[0].double(), expected, rtol=1e-6, atol=1e-4)


def test_one_pixel_by_hand() -> None:
    """y = 100.5 of 256 levels: s = 0.05 + 0.9 * 100.5 / 256, x = log(s / (1 - s)),
    log|dx/dy| = log(0.9 / 256) - log s - log(1 - s)."""
    s = 0.05 + 0.9 * 100.5 / 256
    x_hand = math.log(s / (1 - s))
    ld_hand = math.log(0.9 / 256) - math.log(s) - math.log(1 - s)
    t = PixelPreprocess(256, 0.05)
    x, ld = t(torch.tensor([[100.5]], dtype=torch.float64))
    assert float(x) == pytest.approx(x_hand, rel=1e-12)
    assert float(ld) == pytest.approx(ld_hand, rel=1e-12)
    # without the logit: x = y / 256 - 1/2 and log|dx/dy| = -log 256 per pixel
    x, ld = PixelPreprocess(256)(torch.tensor([[100.5, 3.25]], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([[100.5 / 256 - 0.5, 3.25 / 256 - 0.5]], dtype=torch.float64))
    assert float(ld) == pytest.approx(-2 * math.log(256), rel=1e-12)


def test_served_ranges() -> None:
    y = torch.tensor([[0.0, 16.999]], dtype=torch.float64)
    x = PixelPreprocess(17).to_served(y)
    assert float(x[0, 0]) == -0.5 and float(x[0, 1]) < 0.5
    alpha = 1e-6
    x = PixelPreprocess(17, alpha).to_served(y)
    assert float(x[0, 0]) == pytest.approx(math.log(alpha / (1 - alpha)))


def test_bad_arguments_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        PixelPreprocess(1)
    with pytest.raises(ValueError, match=r"logit_alpha must be in \[0, 0.5\)"):
        PixelPreprocess(256, 0.5)
    with pytest.raises(InputOutsideDomain, match=r"must lie in \[0, 256\)"):
        PixelPreprocess(256, 0.05).to_served(torch.tensor([[300.0]]))
    with pytest.raises(InputOutsideDomain):
        PixelPreprocess(256).to_served(torch.tensor([[-1.0]]))
