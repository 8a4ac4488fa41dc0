"""Self-normalizing layers: the kit in exact mode, the custom gradients, and R learning W^-1."""

import copy

import pytest
import torch

from unflow_zoo.testing import check_transform, randomize_parameters_
from unflow_zoo.transforms.selfnorm import (
    LeakyReLU,
    SelfNormConv,
    SelfNormLinear,
    SmoothLeakyReLU,
    conv_matrix,
    flip_kernel,
    selfnorm_conv_logdet,
    selfnorm_logdet,
)


def _well_conditioned(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)).double()


# ----------------------------------------------------------------------------- the kit, exact mode
@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_linear_passes_the_kit(dim, seed):
    t = randomize_parameters_(SelfNormLinear(dim), 0.3, seed)
    report = check_transform(t, torch.randn(16, dim), grid_bounds=[(-6.0, 6.0)] * dim, grid_points=301)
    if dim <= 2:
        assert abs(report.normalization - 1) < 0.01


@pytest.mark.parametrize("shape,kernel", [((1, 4, 4), 3), ((2, 3, 5), 3), ((3, 4, 4), 1), ((1, 5, 5), 5)])
def test_conv_passes_the_kit(shape, kernel):
    t = randomize_parameters_(SelfNormConv(shape[0], kernel), 0.2, 0)
    check_transform(t, torch.randn(8, *shape))


def test_conv_matrix_is_the_convolution():
    torch.manual_seed(0)
    t = randomize_parameters_(SelfNormConv(2, 3, bias=False), 0.3, 1).double()
    x = torch.randn(5, 2, 3, 4, dtype=torch.float64)
    z, _ = t.eval()(x)
    torch.testing.assert_close(z.flatten(1), x.flatten(1) @ conv_matrix(t.weight, (2, 3, 4)).T)


@pytest.mark.parametrize("act", [SmoothLeakyReLU(0.3), LeakyReLU(0.3), SmoothLeakyReLU(1.0)])
def test_activations_pass_the_kit(act):
    check_transform(act, 4 * torch.randn(16, 3), inverse_atol=1e-10)
    check_transform(act, 2 * torch.randn(8, 1, 2, 2), inverse_atol=1e-10)
    report = check_transform(act, torch.randn(16, 2), grid_bounds=[(-9.0, 9.0)] * 2, grid_points=301)
    assert abs(report.normalization - 1) < 0.01


def test_smooth_leaky_relu_known_values():
    act = SmoothLeakyReLU(0.5)
    x = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    y, ladj = act(x)
    # 0.5 x + 0.5 log(1 + e^x); slope 0.5 + 0.5 sigmoid(x)
    expected = 0.5 * x + 0.5 * torch.log1p(torch.exp(x))
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(ladj, torch.log(0.5 + 0.5 * torch.sigmoid(x)).sum(1))
    # far tails: slope alpha on the left, 1 on the right, no overflow
    y, ladj = act(torch.tensor([[-1e4, 1e4]], dtype=torch.float64))
    torch.testing.assert_close(ladj, torch.tensor([torch.log(torch.tensor(0.5)).item()], dtype=torch.float64))
    x_rec, _ = act.inverse(y)
    torch.testing.assert_close(x_rec, torch.tensor([[-1e4, 1e4]], dtype=torch.float64))


# ----------------------------------------------------------------------------- the custom gradients
def test_logdet_gradient_is_exact_when_R_is_the_inverse():
    w = _well_conditioned(5, 0).requires_grad_()
    r = torch.linalg.inv(w.detach()).requires_grad_()
    value = torch.linalg.slogdet(w.detach())[1]
    out = selfnorm_logdet(w, r, value)
    assert out.item() == pytest.approx(value.item())
    (3.0 * out).backward()
    w_ref = w.detach().clone().requires_grad_()
    (3.0 * torch.linalg.slogdet(w_ref)[1]).backward()
    torch.testing.assert_close(w.grad, w_ref.grad)
    # and the R side is the gradient of -log|det R|
    r_ref = r.detach().clone().requires_grad_()
    (-3.0 * torch.linalg.slogdet(r_ref)[1]).backward()
    torch.testing.assert_close(r.grad, r_ref.grad)


def test_logdet_gradient_differs_when_R_is_not_the_inverse():
    w = _well_conditioned(5, 0).requires_grad_()
    r = (torch.linalg.inv(w.detach()) + 0.1 * torch.randn(5, 5, dtype=torch.float64)).requires_grad_()
    selfnorm_logdet(w, r).backward()
    exact = torch.linalg.inv(w.detach()).T
    torch.testing.assert_close(w.grad, r.detach().T)  # it is R^T, by definition
    assert (w.grad - exact).abs().max() > 0.05
    with pytest.raises(ValueError, match="square matrices"):
        selfnorm_logdet(torch.ones(2, 3), torch.ones(3, 2))


def test_layer_gradient_is_the_mixture_gradient_when_R_is_the_inverse():
    """Training-mode gradients of -mean log p = 1/2 of the exact forward and inverse likelihood gradients."""
    torch.manual_seed(0)
    d = 4
    layer = SelfNormLinear(d, recon_weight=0.0).double()
    with torch.no_grad():
        layer.weight.copy_(_well_conditioned(d, 3))
        layer.inverse_weight.copy_(torch.linalg.inv(layer.weight))
        layer.bias.normal_()
    x = torch.randn(32, d, dtype=torch.float64)

    def nll(z, ladj):
        return (0.5 * z.pow(2).sum(1) - ladj).mean()

    layer.train()
    nll(*layer(x)).backward()
    # exact forward-direction gradient (W), through slogdet
    w = layer.weight.detach().clone().requires_grad_()
    nll(x @ w.T + layer.bias.detach(), torch.linalg.slogdet(w)[1].expand(32)).backward()
    torch.testing.assert_close(layer.weight.grad, 0.5 * w.grad)
    # exact inverse-direction gradient (R): z = R^{-1} x + b, log|det dz/dx| = -log|det R|
    r = layer.inverse_weight.detach().clone().requires_grad_()
    nll(torch.linalg.solve(r, x.T).T + layer.bias.detach(), -torch.linalg.slogdet(r)[1].expand(32)).backward()
    torch.testing.assert_close(layer.inverse_weight.grad, 0.5 * r.grad)


def test_training_value_modes():
    layer = randomize_parameters_(SelfNormLinear(3), 0.3, 0).train()
    x = torch.randn(4, 3)
    _, exact_value = layer(x)
    torch.testing.assert_close(exact_value, torch.linalg.slogdet(layer.weight)[1].detach().expand(4))
    layer.train_logdet = "skip"
    _, skipped = layer(x)
    assert torch.equal(skipped, torch.zeros(4))
    with pytest.raises(ValueError, match="train_logdet"):
        SelfNormLinear(3, train_logdet="cheap")


def test_conv_logdet_gradient_is_the_toeplitz_contraction():
    """flip(r) * m == d/dw <T(r)^T, T(w)>: the exact gradient with T(w)^-T replaced by T(r)^T."""
    torch.manual_seed(0)
    c, h, w_ = 2, 4, 5
    w = (torch.nn.init.dirac_(torch.empty(c, c, 3, 3)) + 0.2 * torch.randn(c, c, 3, 3)).double().requires_grad_()
    r = (0.3 * torch.randn(c, c, 3, 3)).double().requires_grad_()
    selfnorm_conv_logdet(w, r, (h, w_)).backward()
    w_ref, r_ref = w.detach().clone().requires_grad_(), r.detach().clone().requires_grad_()
    t_r_fixed = conv_matrix(r.detach(), (c, h, w_))
    (t_r_fixed.T * conv_matrix(w_ref, (c, h, w_))).sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad)
    t_w_fixed = conv_matrix(w.detach(), (c, h, w_))
    (-(t_w_fixed.T * conv_matrix(r_ref, (c, h, w_))).sum()).backward()
    torch.testing.assert_close(r.grad, r_ref.grad)


def test_conv_logdet_gradient_is_exact_for_an_invertible_1x1_kernel():
    c, h, w_ = 3, 4, 4
    w = _well_conditioned(c, 1).reshape(c, c, 1, 1).requires_grad_()
    r = torch.linalg.inv(w.detach()[:, :, 0, 0]).reshape(c, c, 1, 1).requires_grad_()
    selfnorm_conv_logdet(w, r, (h, w_)).backward()
    w_ref = w.detach().clone().requires_grad_()
    torch.linalg.slogdet(conv_matrix(w_ref, (c, h, w_)))[1].backward()
    torch.testing.assert_close(w.grad, w_ref.grad)
    assert torch.equal(flip_kernel(flip_kernel(w.detach())), w.detach())


# ----------------------------------------------------------------------------- modes and inverses
def test_eval_mode_is_exact_and_training_mode_is_not_differentiated_through_slogdet():
    layer = randomize_parameters_(SelfNormLinear(3), 0.3, 0)
    layer.eval()
    assert layer.use_exact()
    layer.train()
    assert not layer.use_exact()
    layer.exact = True
    assert layer.use_exact()


def test_approximate_inverse_uses_R():
    torch.manual_seed(0)
    layer = randomize_parameters_(SelfNormLinear(4), 0.3, 0).double()
    y = torch.randn(6, 4, dtype=torch.float64)
    x_fast, ladj_fast = layer.inverse(y, approximate=True)
    torch.testing.assert_close(x_fast, (y - layer.bias) @ layer.inverse_weight.T)
    torch.testing.assert_close(ladj_fast, torch.linalg.slogdet(layer.inverse_weight)[1].expand(6))
    x_exact, _ = layer.inverse(y)
    assert (x_fast - x_exact).abs().max() > 1e-3  # R was perturbed away from W^-1
    with torch.no_grad():
        layer.inverse_weight.copy_(torch.linalg.inv(layer.weight))
    torch.testing.assert_close(layer.inverse(y, approximate=True)[0], x_exact)

    conv = randomize_parameters_(SelfNormConv(2), 0.2, 0).double()
    yc = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    xc, _ = conv.inverse(yc, approximate=True)
    torch.testing.assert_close(xc, conv.approximate_inverse(yc))


def test_reconstruction_loss_is_recorded_in_training_only():
    layer = randomize_parameters_(SelfNormLinear(3, recon_weight=2.0), 0.3, 0)
    x = torch.randn(10, 3)
    layer.train()(x)
    copied = copy.deepcopy(layer)  # the pending penalty (a graph node) is not copied
    assert copied.reconstruction_loss() == 0.0
    expected = 2.0 * (x - x @ layer.weight.T @ layer.inverse_weight.T).pow(2).sum(1).mean()
    torch.testing.assert_close(layer.reconstruction_loss(), expected)
    assert layer.reconstruction_loss() == 0.0  # read once
    layer.eval()(x)
    assert layer.reconstruction_loss() == 0.0


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        SelfNormLinear(3)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="odd"):
        SelfNormConv(2, kernel_size=2)
    with pytest.raises(ValueError, match="max_exact_features"):
        SelfNormConv(1, max_exact_features=10).eval()(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="recon_weight"):
        SelfNormLinear(2, recon_weight=-1.0)


# ----------------------------------------------------------------------------- learning the inverse
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_training_drives_R_towards_the_inverse(kind):
    """Self-normalizing training of one layer on correlated Gaussian data: ||RW - I|| falls."""
    torch.manual_seed(0)
    if kind == "linear":
        layer = SelfNormLinear(6)
        q, _ = torch.linalg.qr(torch.randn(6, 6))
        mix = q @ torch.diag(torch.linspace(0.6, 2.0, 6)) @ q.T  # well-conditioned covariance
        data = torch.randn(512, 6) @ mix.T + 0.5
        shape = None
    else:
        layer = SelfNormConv(1, 3)
        data = torch.randn(512, 1, 4, 4)
        data = data + 0.5 * torch.roll(data, 1, dims=3)
        shape = (1, 4, 4)
    with torch.no_grad():  # start R well away from W^-1
        layer.inverse_weight.add_(0.3 * torch.randn_like(layer.inverse_weight))

    def defect() -> float:
        return float(layer.inverse_defect() if shape is None else layer.inverse_defect(shape))

    before = defect()
    opt = torch.optim.Adam(layer.parameters(), lr=5e-3)
    layer.train()
    for _ in range(200):
        x = data[torch.randint(0, len(data), (64,))]
        z, ladj = layer(x)
        nll = (0.5 * z.pow(2).flatten(1).sum(1) - ladj).mean()
        loss = nll + layer.reconstruction_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = defect()
    assert after < 0.25 * before, (before, after)
    # and W moved: the layer learned something about the data
    layer.eval()
    z, ladj = layer(data)
    assert (0.5 * z.pow(2).flatten(1).sum(1) - ladj).mean() < (0.5 * data.pow(2).flatten(1).sum(1)).mean()


def test_conv_layer_gradient_is_the_mixture_gradient_for_an_exactly_inverted_1x1_kernel():
    """A 1x1 kernel is inverted exactly by a 1x1 kernel: training gradients = 1/2 the exact ones."""
    torch.manual_seed(0)
    c, h, w_ = 3, 4, 5
    layer = SelfNormConv(c, kernel_size=1, recon_weight=0.0).double()
    with torch.no_grad():
        layer.weight.copy_(_well_conditioned(c, 4).reshape(c, c, 1, 1))
        layer.inverse_weight.copy_(torch.linalg.inv(layer.weight[:, :, 0, 0]).reshape(c, c, 1, 1))
        layer.bias.normal_()
    x = torch.randn(16, c, h, w_, dtype=torch.float64)
    b = layer.bias.detach().view(1, -1, 1, 1)

    def nll(z, ladj):
        return (0.5 * z.pow(2).flatten(1).sum(1) - ladj).mean()

    layer.train()
    nll(*layer(x)).backward()
    w = layer.weight.detach().clone().requires_grad_()
    nll(torch.nn.functional.conv2d(x, w) + b, torch.linalg.slogdet(conv_matrix(w, (c, h, w_)))[1]).backward()
    torch.testing.assert_close(layer.weight.grad, 0.5 * w.grad)
    r = layer.inverse_weight.detach().clone().requires_grad_()
    t_r = conv_matrix(r, (c, h, w_))
    z = torch.linalg.solve(t_r, x.flatten(1).T).T.reshape(x.shape) + b
    nll(z, -torch.linalg.slogdet(t_r)[1]).backward()
    torch.testing.assert_close(layer.inverse_weight.grad, 0.5 * r.grad)


# ----------------------------------------------------------------------------- context bias
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_context_bias_shifts_the_output_only(kind):
    torch.manual_seed(0)
    if kind == "linear":
        t, x = SelfNormLinear(3, context_features=2), torch.randn(8, 3)
    else:
        t, x = SelfNormConv(2, 3, context_features=2), torch.randn(8, 2, 3, 3)
    c = torch.randn(8, 2)
    t.eval()
    randomize_parameters_(t, 0.3, 1)
    check_transform(t, x, c, check_grid=False)
    z, ladj = t(x, c)
    z_other, ladj_other = t(x, c.flip(0))
    assert not torch.allclose(z, z_other)
    torch.testing.assert_close(ladj, ladj_other)  # a shift: the log-det does not depend on c
    shift = c @ t.context_weight.mT
    torch.testing.assert_close(z - z_other, (shift - shift.flip(0)).reshape(8, -1, *([1] * (x.ndim - 2))).expand_as(z))
    if kind == "linear":  # the learned inverse subtracts the same shift
        with torch.no_grad():
            t.inverse_weight.copy_(torch.linalg.inv(t.weight))
        torch.testing.assert_close(t.approximate_inverse(z, c), x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"p\(x \| c\)"):
        t(x)
