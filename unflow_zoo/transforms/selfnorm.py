r"""Self-normalizing layers: linear maps that learn their own inverse.

A self-normalizing layer holds a forward map :math:`f(x) = W x + b` (data ->
noise) and a learned approximate inverse :math:`g(z) = R (z - b)`. Training
maximises the self-normalizing objective of Keller et al. (2021), the mixture
of the log-likelihoods that :math:`f` and :math:`g` induce minus a layer-wise
reconstruction penalty,

.. math::

    \mathcal L(x) = \tfrac12 \log p^f_X(x) + \tfrac12 \log p^g_X(x)
                    - \lambda \, \| x - R W x \|_2^2,

and replaces every matrix inverse in its gradient by the learned one (their
gradients of the self-normalizing fully connected layer):

.. math::

    \frac{\partial \mathcal L}{\partial W} &\approx \tfrac12 \big(\delta_z x^\top + R^\top\big)
        - \lambda \frac{\partial \mathcal E}{\partial W}, \qquad
    \frac{\partial \mathcal L}{\partial R} \approx \tfrac12 \big(-\delta_x z^\top - W^\top\big)
        - \lambda \frac{\partial \mathcal E}{\partial R},

with :math:`\delta_z = \partial \log p_Z / \partial z`, :math:`\delta_x = W^\top
\delta_z` (backpropagation), :math:`\mathcal E = \|x - RWx\|^2` and
:math:`R^\top \approx W^{-\top} = \partial \log|\det W| / \partial W`. A step costs
:math:`O(D^2)` instead of the :math:`O(D^3)` of :math:`W^{-\top}`. Both
approximations are exact when :math:`R = W^{-1}`. As in the authors' code, the
layer input is detached in :math:`\mathcal E`: the penalty trains :math:`W` and
:math:`R` of its own layer, not the layers below.

Evaluation is exact: outside training (or with ``exact=True``) the log-determinant
is :func:`torch.linalg.slogdet` of :math:`W` (of the convolution's full matrix for
:class:`SelfNormConv`) and :meth:`inverse` solves :math:`W x = y - b` exactly;
``inverse(..., approximate=True)`` and :meth:`approximate_inverse` use :math:`R`,
the paper's fast sampling. Both the matrix work and the custom gradients run in
float32 or float64 with autocast disabled, so bf16 mixed precision cannot break
a log-determinant or a solve.

A conditional layer (``context_features = C > 0``) adds a context-dependent bias,
:math:`f(x) = W x + b + V c` (per channel for the convolution), :math:`V` zero at
initialisation. A shift leaves the Jacobian :math:`W` alone, so the log-determinant,
its self-normalizing gradient and the reconstruction penalty are those of the
unconditional layer, and the inverses subtract the same shift. That is the one place a
context fits the method: :math:`W` and :math:`R` must stay fixed matrices for the
learned inverse to track :math:`W^{-1}`.

References:
    Keller, Peters, Jaini, Hoogeboom, Forré & Welling, "Self Normalizing Flows",
    ICML 2021, arXiv:2011.07248.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from unflow_zoo.core.transform import Transform, check_context, check_features

__all__ = [
    "LeakyReLU",
    "SelfNormConv",
    "SelfNormLinear",
    "SmoothLeakyReLU",
    "conv_matrix",
    "flip_kernel",
    "selfnorm_conv_logdet",
    "selfnorm_logdet",
]

TrainLogdet = Literal["exact", "skip"]


# ----------------------------------------------------------------------------- autograd pieces
class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass, gradient times ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        return g * ctx.scale, None


class _SelfNormLogDet(torch.autograd.Function):
    """log|det W| with the gradient R^T for W and -W^T for R."""

    @staticmethod
    def forward(ctx: FunctionCtx, weight: Tensor, inverse: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(weight, inverse)
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None]:
        weight, inverse = ctx.saved_tensors
        return g * inverse.mT, -g * weight.mT, None


def selfnorm_logdet(weight: Tensor, inverse: Tensor, value: Tensor | None = None) -> Tensor:
    r"""The term :math:`\log|\det W|` with the self-normalizing gradient.

    Forward: returns ``value`` (pass ``torch.linalg.slogdet(weight)[1]`` for the
    exact number, or nothing for a zero: the paper's training never evaluates it).
    Backward, for an upstream gradient :math:`g`:

    .. math:: \nabla_W = g\, R^\top \;(\approx g\, W^{-\top}), \qquad
              \nabla_R = -g\, W^\top \;(\approx \nabla_R [-\log|\det R|] = -g\, R^{-\top}),

    :math:`O(D^2)`, and exactly the gradients of :math:`\log|\det W|` and of
    :math:`-\log|\det R|` when :math:`R = W^{-1}`.

    References:
        Keller et al., "Self Normalizing Flows", ICML 2021, arXiv:2011.07248.
    """
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1] or inverse.shape != weight.shape:
        raise ValueError(
            f"expected square matrices W and R of the same shape, got {tuple(weight.shape)} and {tuple(inverse.shape)}"
        )
    if value is None:
        value = weight.new_zeros(())
    return _SelfNormLogDet.apply(weight, inverse, value)


class _SelfNormLinearFn(torch.autograd.Function):
    """z = x W^T, with the inverse-direction likelihood gradient -delta_x z^T sent to R."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, inverse: Tensor) -> Tensor:
        z = x @ weight.mT
        ctx.save_for_backward(x, weight, z)
        return z

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, weight, z = ctx.saved_tensors
        grad_x = g @ weight
        # the loss is -log p, so grad_x = -delta_x and d(-log p^g)/dR ~ delta_x z^T = -grad_x^T z
        return grad_x, g.mT @ x, -grad_x.mT @ z


def flip_kernel(kernel: Tensor) -> Tensor:
    """The kernel of the transposed convolution: in and out channels swapped, space mirrored."""
    return kernel.flip(2, 3).transpose(0, 1)


def _multiplicity(kernel_size: int, height: int, width: int, like: Tensor) -> Tensor:
    """m[a, b]: how often kernel tap (a, b) appears in the full matrix of a 'same' convolution."""
    c = kernel_size // 2
    offs = torch.arange(kernel_size, device=like.device) - c
    rows = (height - offs.abs()).clamp(min=0)
    cols = (width - offs.abs()).clamp(min=0)
    return (rows[:, None] * cols[None, :]).to(like.dtype)


class _SelfNormConvLogDet(torch.autograd.Function):
    """log|det T(w)| with the gradient flip(r) * m for w and -flip(w) * m for r."""

    @staticmethod
    def forward(ctx: FunctionCtx, weight: Tensor, inverse: Tensor, value: Tensor, mult: Tensor) -> Tensor:
        ctx.save_for_backward(weight, inverse, mult)
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None, None]:
        weight, inverse, mult = ctx.saved_tensors
        return g * flip_kernel(inverse) * mult, -g * flip_kernel(weight) * mult, None, None


def selfnorm_conv_logdet(
    weight: Tensor, inverse: Tensor, spatial: tuple[int, int], value: Tensor | None = None
) -> Tensor:
    r"""The term :math:`\log|\det T(w)|` of a stride-1 'same' convolution with kernel
    :math:`w`, with the self-normalizing gradient of Keller et al. (2021, the
    convolutional layer): for an upstream gradient :math:`g`,

    .. math:: \nabla_w = g\, \mathrm{flip}(r) \odot m, \qquad \nabla_r = -g\, \mathrm{flip}(w) \odot m,

    :math:`\mathrm{flip}` the transposed-convolution kernel (:func:`flip_kernel`) and
    :math:`m_{ab}` the number of times tap :math:`(a, b)` appears in the full matrix
    :math:`T(w)` of the convolution on an image of size ``spatial``. This is
    :math:`g\,\langle T(r)^\top, \partial T(w) / \partial w \rangle`: the exact gradient
    with :math:`T(w)^{-\top}` replaced by :math:`T(r)^\top`. The forward value is
    ``value`` (zero when not given).

    References:
        Keller et al., "Self Normalizing Flows", ICML 2021, arXiv:2011.07248.
    """
    if weight.ndim != 4 or weight.shape[0] != weight.shape[1] or inverse.shape != weight.shape:
        raise ValueError(
            f"expected square kernels (C, C, k, k) of the same shape, got {tuple(weight.shape)} and "
            f"{tuple(inverse.shape)}"
        )
    mult = _multiplicity(weight.shape[-1], spatial[0], spatial[1], weight)
    if value is None:
        value = weight.new_zeros(())
    return _SelfNormConvLogDet.apply(weight, inverse, value, mult)


class _SelfNormConvFn(torch.autograd.Function):
    """z = w * x ('same' convolution) with the gradient -delta_x * z for the inverse kernel r."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, inverse: Tensor) -> Tensor:
        pad = weight.shape[-1] // 2
        z = F.conv2d(x, weight, padding=pad)
        ctx.save_for_backward(x, weight, z)
        ctx.pad = pad  # type: ignore[attr-defined]
        return z

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, weight, z = ctx.saved_tensors
        grad_x = torch.nn.grad.conv2d_input(x.shape, weight, g, padding=ctx.pad)
        grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, g, padding=ctx.pad)
        # the inverse map is x = r * z: d(-log p^g)/dr ~ delta_x * z with delta_x = -grad_x
        grad_r = torch.nn.grad.conv2d_weight(z, weight.shape, -grad_x, padding=ctx.pad)
        return grad_x, grad_w, grad_r


def conv_matrix(kernel: Tensor, shape: tuple[int, int, int]) -> Tensor:
    r"""The :math:`D \times D` matrix :math:`T` of the stride-1 'same' convolution with
    ``kernel`` on images of ``shape`` ``(C, H, W)``, :math:`D = CHW`:
    ``conv(x).flatten() == T @ x.flatten()``. Built by convolving the ``D`` basis
    images: :math:`O(D^2 k^2)` time and :math:`O(D^2)` memory, for exact
    log-determinants and inverses of small images."""
    c, h, w = shape
    d = c * h * w
    basis = torch.eye(d, dtype=kernel.dtype, device=kernel.device).reshape(d, c, h, w)
    return F.conv2d(basis, kernel, padding=kernel.shape[-1] // 2).reshape(d, d).mT


# ----------------------------------------------------------------------------- shared layer logic
class _SelfNormBase(Transform):
    weight: nn.Parameter
    inverse_weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self, recon_weight: float, exact: bool | None, train_logdet: TrainLogdet, context_features: int = 0
    ) -> None:
        super().__init__()
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0 (0: unconditional), got {context_features}")
        self.context_features = int(context_features)
        if recon_weight < 0:
            raise ValueError(f"recon_weight (lambda) must be >= 0, got {recon_weight}")
        if train_logdet not in ("exact", "skip"):
            raise ValueError(f"unknown train_logdet {train_logdet!r}; choose 'exact' or 'skip'")
        self.recon_weight = float(recon_weight)
        self.exact = exact
        self.train_logdet = train_logdet
        self._recon: Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # the pending penalty is a graph node: never copy or pickle it (deepcopy would refuse)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_recon"] = None
        return state

    def use_exact(self) -> bool:
        """Exact log-det and its slogdet gradient: ``exact=True``, or ``exact=None`` outside training."""
        return self.exact if self.exact is not None else not self.training

    def reconstruction_loss(self, clear: bool = True) -> Tensor | float:
        r""":math:`\lambda \,\mathrm{mean}_b \|x_b - R W x_b\|^2` of the last training-mode forward
        pass (0 if there was none); ``clear`` forgets it, so that it is added once."""
        out = self._recon if self._recon is not None else 0.0
        if clear:
            self._recon = None
        return out

    def _record_reconstruction(self, x: Tensor) -> None:
        if self.training and self.recon_weight > 0 and torch.is_grad_enabled():
            self._recon = self.recon_weight * self.reconstruction_error(x)
        else:
            self._recon = None

    def reconstruction_error(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _init_context(self, outputs: int) -> None:
        # the context bias V c: zeros, and no random draw, so that an unconditional layer is built as before
        self.context_weight: nn.Parameter | None = (
            nn.Parameter(torch.zeros(outputs, self.context_features)) if self.context_features else None
        )

    def _check_context(self, x: Tensor, context: Tensor | None) -> None:
        check_context(context, x.shape[0], self.context_features, type(self).__name__)

    def _context_bias(self, context: Tensor | None, like: Tensor) -> Tensor | None:
        """:math:`V c`, ``(B, outputs)`` (None without a context)."""
        if context is None or self.context_weight is None:
            return None
        return context.to(like.dtype) @ self.context_weight.mT

    def extra_repr(self) -> str:
        ctx = f", context_features={self.context_features}" if self.context_features else ""
        return f"recon_weight={self.recon_weight}, exact={self.exact}, train_logdet={self.train_logdet!r}{ctx}"


def _half(p: Tensor) -> Tensor:
    # the 1/2 of the mixture objective: W is trained by log p^f, R by log p^g, each weighted 1/2
    return _ScaleGrad.apply(p, 0.5)


# ----------------------------------------------------------------------------- fully connected
class SelfNormLinear(_SelfNormBase):
    r"""Self-normalizing fully connected layer :math:`z = W x + b`, with a learned
    approximate inverse :math:`x \approx R (z - b)` (module docstring for the objective).

    - Training (``exact=None`` or ``False``): gradients of the mixture objective with
      :math:`W^{-1}` replaced by :math:`R`, :math:`O(D^2)` per step; the log-det value
      is exact (``train_logdet="exact"``, one LU for the logged NLL, no inverse) or
      zero (``"skip"``, the authors' code: then the training NLL misses
      :math:`\log|\det W|`, gradients are unchanged). :meth:`reconstruction_loss`
      holds :math:`\lambda \|x - RWx\|^2` for the model to add to the loss.
    - Evaluation (or ``exact=True``): :math:`\log|\det W|` by
      :func:`torch.linalg.slogdet`, differentiable (the exact-gradient baseline).
    - :meth:`inverse` is exact (:func:`torch.linalg.solve`, :math:`O(D^3)`);
      ``approximate=True`` maps through :math:`R` (and returns the exact
      :math:`\log|\det R|` of the map it applied).

    Starts at :math:`W = R = I`, :math:`b = 0` (the authors' square-layer init).

    Args:
        features: ``D``; batches are ``(B, D)``.
        bias: learn :math:`b`.
        recon_weight: :math:`\lambda` (the paper uses 1).
        exact: force the exact (``True``) or self-normalizing (``False``) log-det
            gradient; ``None``: self-normalizing in training, exact otherwise.
        train_logdet: ``"exact"`` or ``"skip"``, the training-time log-det value.
        context_features: width :math:`C` of the context of the bias :math:`V c` (0: unconditional).

    References:
        Keller, Peters, Jaini, Hoogeboom, Forré & Welling, "Self Normalizing Flows",
        ICML 2021, arXiv:2011.07248.
    """

    def __init__(
        self,
        features: int,
        bias: bool = True,
        recon_weight: float = 1.0,
        exact: bool | None = None,
        train_logdet: TrainLogdet = "exact",
        context_features: int = 0,
    ) -> None:
        super().__init__(recon_weight, exact, train_logdet, context_features)
        if features < 1:
            raise ValueError(f"features must be a positive int, got {features}")
        self.features = int(features)
        self.weight = nn.Parameter(torch.eye(features))
        self.inverse_weight = nn.Parameter(torch.eye(features))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None
        self._init_context(self.features)

    def _check(self, x: Tensor, context: Tensor | None = None) -> None:
        check_features(x, self.features, type(self).__name__)
        self._check_context(x, context)

    def _shift(self, z: Tensor, sign: float, context: Tensor | None = None) -> Tensor:
        z = z if self.bias is None else z + sign * self.bias
        vc = self._context_bias(context, z)
        return z if vc is None else z + sign * vc

    def logabsdet(self) -> Tensor:
        r"""Exact :math:`\log|\det W|` (a differentiable scalar, :math:`O(D^3)`)."""
        return torch.linalg.slogdet(self.weight)[1]

    def inverse_defect(self) -> Tensor:
        r""":math:`\|R W - I\|_F`: how far :math:`R` is from the inverse of :math:`W`."""
        with torch.no_grad():
            eye = torch.eye(self.features, dtype=self.weight.dtype, device=self.weight.device)
            return torch.linalg.matrix_norm(self.inverse_weight @ self.weight - eye)

    def reconstruction_error(self, x: Tensor) -> Tensor:
        r""":math:`\mathrm{mean}_b \|x_b - R W x_b\|^2` with :math:`x` detached (gradients reach W and R)."""
        x = x.detach()
        x_hat = (x @ self.weight.mT) @ self.inverse_weight.mT
        return (x - x_hat).pow(2).sum(1).mean()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.weight.dtype)
            if self.use_exact():
                z = self._shift(x @ self.weight.mT, 1.0, context)
                ladj = self.logabsdet()
            else:
                w, r = _half(self.weight), _half(self.inverse_weight)
                z = self._shift(_SelfNormLinearFn.apply(x, w, r), 1.0, context)
                value = None
                if self.train_logdet == "exact":
                    with torch.no_grad():
                        value = torch.linalg.slogdet(self.weight)[1]
                ladj = selfnorm_logdet(w, r, value)
            self._record_reconstruction(x)
        return z, ladj.expand(x.shape[0])

    def approximate_inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """:math:`R (y - b - V c)`: the learned inverse, :math:`O(D^2)` per point, no log-det."""
        self._check(y, context)
        with torch.autocast(y.device.type, enabled=False):
            return self._shift(y.to(self.weight.dtype), -1.0, context) @ self.inverse_weight.mT

    def inverse(self, y: Tensor, context: Tensor | None = None, *, approximate: bool = False) -> tuple[Tensor, Tensor]:
        self._check(y, context)
        with torch.autocast(y.device.type, enabled=False):
            if approximate:
                x = self.approximate_inverse(y, context)
                return x, torch.linalg.slogdet(self.inverse_weight)[1].expand(y.shape[0])
            v = self._shift(y.to(self.weight.dtype), -1.0, context)
            x = torch.linalg.solve(self.weight, v.mT).mT
            return x, (-self.logabsdet()).expand(y.shape[0])

    def extra_repr(self) -> str:
        return f"features={self.features}, bias={self.bias is not None}, " + super().extra_repr()


# ----------------------------------------------------------------------------- convolutional
class SelfNormConv(_SelfNormBase):
    r"""Self-normalizing convolution :math:`z = w \star x + b` (stride 1, zero padding
    ``k // 2``, so the image keeps its size), with a learned inverse convolution
    :math:`x \approx r \star (z - b)` of the same size.

    Training uses the paper's convolutional gradients (:func:`selfnorm_conv_logdet`
    and, for the data term, :math:`-\delta_x \star z` for :math:`r`) plus
    :math:`\lambda \|x - r \star (w \star x)\|^2`: :math:`O(C^2 k^2 HW)` per image,
    no determinant. Evaluation is exact by the full :math:`D \times D` matrix of
    the convolution (:func:`conv_matrix`, :math:`D = CHW`): its ``slogdet`` and
    ``solve``, :math:`O(D^3)`; this suits MNIST-sized images (:math:`D = 784`).
    A circular convolution would allow an FFT, but zero padding (the paper's
    choice) does not, so the dense matrix is what makes evaluation exact. It is
    rebuilt on every call (the parameters may have moved); ``max_exact_features``
    guards against an accidental :math:`D^3` on a large image.

    Starts at :math:`w = \delta + \epsilon` (identity tap plus Xavier-normal noise of
    gain 0.01) and :math:`r = \mathrm{flip}(w)`, as the authors do.

    Args:
        channels: ``C``; batches are ``(B, C, H, W)``.
        kernel_size: odd ``k``.
        bias: learn a per-channel :math:`b`.
        recon_weight: :math:`\lambda`.
        exact: as in :class:`SelfNormLinear`.
        train_logdet: as in :class:`SelfNormLinear` (``"exact"`` builds the dense matrix).
        max_exact_features: largest :math:`D = CHW` for the dense exact path.
        context_features: width :math:`C_c` of the context of the per-channel bias
            :math:`V c` (0: unconditional).

    References:
        Keller, Peters, Jaini, Hoogeboom, Forré & Welling, "Self Normalizing Flows",
        ICML 2021, arXiv:2011.07248.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        recon_weight: float = 1.0,
        exact: bool | None = None,
        train_logdet: TrainLogdet = "exact",
        max_exact_features: int = 4096,
        context_features: int = 0,
    ) -> None:
        super().__init__(recon_weight, exact, train_logdet, context_features)
        if channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the padding keeps the image size), got {kernel_size}")
        self.channels, self.kernel_size = int(channels), int(kernel_size)
        self.max_exact_features = int(max_exact_features)
        shape = (channels, channels, kernel_size, kernel_size)
        w = nn.init.dirac_(torch.empty(shape)) + nn.init.xavier_normal_(torch.empty(shape), gain=0.01)
        self.weight = nn.Parameter(w)
        self.inverse_weight = nn.Parameter(flip_kernel(w).clone())
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self._init_context(self.channels)

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def _check(self, x: Tensor, context: Tensor | None = None) -> None:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected a batch of images (B, {self.channels}, H, W) for SelfNormConv({self.channels}), "
                f"got {tuple(x.shape)}"
            )
        self._check_context(x, context)

    def _shift(self, z: Tensor, sign: float, context: Tensor | None = None) -> Tensor:
        z = z if self.bias is None else z + sign * self.bias.view(1, -1, 1, 1)
        vc = self._context_bias(context, z)
        return z if vc is None else z + sign * vc[:, :, None, None]

    def matrix(self, shape: tuple[int, int, int], kernel: Tensor | None = None) -> Tensor:
        """The dense matrix of the convolution (``kernel`` defaults to :math:`w`) on ``(C, H, W)`` images."""
        d = shape[0] * shape[1] * shape[2]
        if d > self.max_exact_features:
            raise ValueError(
                f"the exact log-det / inverse of SelfNormConv on images {shape} builds a {d}x{d} matrix "
                f"(D = C*H*W > max_exact_features={self.max_exact_features}); raise max_exact_features "
                "if you can afford O(D^3), or train with train_logdet='skip' and sample approximately"
            )
        return conv_matrix(self.weight if kernel is None else kernel, shape)

    def logabsdet(self, shape: tuple[int, int, int]) -> Tensor:
        r"""Exact :math:`\log|\det T(w)|` on ``(C, H, W)`` images (differentiable scalar)."""
        return torch.linalg.slogdet(self.matrix(shape))[1]

    def inverse_defect(self, shape: tuple[int, int, int]) -> Tensor:
        r""":math:`\|T(r) T(w) - I\|_F` on ``(C, H, W)`` images."""
        with torch.no_grad():
            t_w, t_r = self.matrix(shape), self.matrix(shape, self.inverse_weight)
            eye = torch.eye(t_w.shape[0], dtype=t_w.dtype, device=t_w.device)
            return torch.linalg.matrix_norm(t_r @ t_w - eye)

    def reconstruction_error(self, x: Tensor) -> Tensor:
        r""":math:`\mathrm{mean}_b \|x_b - r \star (w \star x_b)\|^2` with :math:`x` detached."""
        x = x.detach()
        x_hat = F.conv2d(F.conv2d(x, self.weight, padding=self.padding), self.inverse_weight, padding=self.padding)
        return (x - x_hat).pow(2).flatten(1).sum(1).mean()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        shape = (x.shape[1], x.shape[2], x.shape[3])
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.weight.dtype)
            if self.use_exact():
                z = self._shift(F.conv2d(x, self.weight, padding=self.padding), 1.0, context)
                ladj = self.logabsdet(shape)
            else:
                w, r = _half(self.weight), _half(self.inverse_weight)
                z = self._shift(_SelfNormConvFn.apply(x, w, r), 1.0, context)
                value = None
                if self.train_logdet == "exact":
                    with torch.no_grad():
                        value = self.logabsdet(shape)
                ladj = selfnorm_conv_logdet(w, r, shape[1:], value)
            self._record_reconstruction(x)
        return z, ladj.expand(x.shape[0])

    def approximate_inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        r""":math:`r \star (y - b - V c)`: the learned inverse convolution, no log-det."""
        self._check(y, context)
        with torch.autocast(y.device.type, enabled=False):
            v = self._shift(y.to(self.weight.dtype), -1.0, context)
            return F.conv2d(v, self.inverse_weight, padding=self.padding)

    def inverse(self, y: Tensor, context: Tensor | None = None, *, approximate: bool = False) -> tuple[Tensor, Tensor]:
        self._check(y, context)
        shape = (y.shape[1], y.shape[2], y.shape[3])
        with torch.autocast(y.device.type, enabled=False):
            if approximate:
                x = self.approximate_inverse(y, context)
                ladj = torch.linalg.slogdet(self.matrix(shape, self.inverse_weight))[1]
                return x, ladj.expand(y.shape[0])
            v = self._shift(y.to(self.weight.dtype), -1.0, context)
            x = torch.linalg.solve(self.matrix(shape), v.flatten(1).mT).mT.reshape(v.shape)
            return x, (-self.logabsdet(shape)).expand(y.shape[0])

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}, "
            + super().extra_repr()
        )


# ----------------------------------------------------------------------------- elementwise non-linearities
class SmoothLeakyReLU(Transform):
    r"""Elementwise :math:`y = \alpha x + (1 - \alpha)\,\mathrm{softplus}(x)`, the
    paper's activation between self-normalizing layers ("SLR", :math:`\alpha = 0.3`).

    :math:`y' = \alpha + (1-\alpha)\,\sigma(x) \in (\alpha, 1)`, so the map is a
    smooth increasing bijection of :math:`\mathbb R` with
    :math:`\log|\det| = \sum_i \log y'(x_i)`. The inverse is numerical: Newton's
    method safeguarded by bisection inside the bracket that the slope bounds give,
    :math:`x \in [y - c, (y - c)/\alpha]` (or reversed) with :math:`c = (1-\alpha)\log 2`,
    until no step moves an entry by more than :math:`4\epsilon(|x| + 1)` (machine
    precision; the tests hold it to 1e-10).
    Works on any batch shape.

    Args:
        alpha: the slope for :math:`x \to -\infty`, in ``(0, 1]``.

    References:
        Keller et al., "Self Normalizing Flows", ICML 2021, arXiv:2011.07248 (the
        smooth leaky ReLU of their fully connected MNIST flows).
    """

    def __init__(self, alpha: float = 0.3) -> None:
        super().__init__()
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)

    def _f(self, x: Tensor) -> Tensor:
        return self.alpha * x + (1 - self.alpha) * F.softplus(x)

    def _log_slope(self, x: Tensor) -> Tensor:
        # log(alpha + (1 - alpha) sigmoid(x)), stable for large |x|
        log_rest = math.log1p(-self.alpha) if self.alpha < 1 else -math.inf
        return torch.logaddexp(torch.full_like(x, math.log(self.alpha)), log_rest + F.logsigmoid(x))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._f(x), self._log_slope(x).flatten(1).sum(1)

    @torch.no_grad()
    def _solve(self, y: Tensor) -> Tensor:
        c = (1 - self.alpha) * math.log(2.0)
        a, b = y - c, (y - c) / self.alpha
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        x = a  # f is convex: Newton from any start lands right of the root, then decreases to it
        eps = torch.finfo(y.dtype).eps
        for _ in range(100):
            fx = self._f(x) - y
            hi = torch.where(fx > 0, x, hi)
            lo = torch.where(fx > 0, lo, x)
            step = x - fx / torch.exp(self._log_slope(x))
            # safeguard: stay inside the bracket, bisect otherwise
            step = torch.where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
            done = (step - x).abs() <= 4 * eps * (x.abs() + 1)
            x = step
            if bool(done.all()):
                break
        return x

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._solve(y)
        return x, -self._log_slope(x).flatten(1).sum(1)


class LeakyReLU(Transform):
    r"""Elementwise :math:`y = x` for :math:`x \ge 0`, :math:`\alpha x` otherwise: a
    piecewise-linear bijection with :math:`\log|\det| = \log\alpha \cdot \#\{x_i < 0\}`
    and a closed-form inverse. Works on any batch shape.

    Args:
        alpha: the negative slope, ``> 0``.

    References:
        Maas, Hannun & Ng, "Rectifier Nonlinearities Improve Neural Network Acoustic
        Models", ICML 2013 workshop.
    """

    def __init__(self, alpha: float = 0.3) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 for an invertible leaky ReLU, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        neg = x < 0
        ladj = neg.flatten(1).to(x.dtype).sum(1) * math.log(self.alpha)
        return torch.where(neg, self.alpha * x, x), ladj

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        neg = y < 0
        ladj = -neg.flatten(1).to(y.dtype).sum(1) * math.log(self.alpha)
        return torch.where(neg, y / self.alpha, y), ladj

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
