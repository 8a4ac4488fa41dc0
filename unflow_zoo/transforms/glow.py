r"""Glow's building blocks: actnorm, invertible 1x1 convolutions, squeeze, affine
coupling on channels, and the multi-scale architecture with a learned split prior.

Everything here maps data to noise and returns ``(output, log|det J|)`` per the
:class:`~unflow_zoo.core.transform.Transform` contract; image batches are
``(B, C, H, W)``.

The multi-scale architecture (:class:`MultiScaleGlow`) is *one* transform whose
output has the input's shape and is standard normal under the model. Glow
factors out half of the channels after each level and models them with a
Gaussian whose mean and log-std a network computes from the other half,

.. math:: \log p(z_2 \mid z_1) = \log \mathcal N\big(z_2;\, \mu(z_1), \mathrm{diag}\, e^{2\log\sigma(z_1)}\big)
          = \log \mathcal N\big(u;\, 0, I\big) - \textstyle\sum \log\sigma(z_1),
          \qquad u = (z_2 - \mu(z_1))\, e^{-\log\sigma(z_1)},

which is exactly a standard normal on :math:`u` plus the log-det of the
transform :math:`z_2 \mapsto u` (:class:`SplitPrior`). So the learned prior
is a transform, the factored-out :math:`u` are reassembled (un-squeezed) into
an output of the input's shape, and :class:`~unflow_zoo.core.flow.Flow` with a
standard normal base gives Glow's likelihood unchanged.

References:
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
    Convolutions", NeurIPS 2018, arXiv:1807.03039; official code
    github.com/openai/glow (``model.py``: ``actnorm``, ``invertible_1x1_conv``,
    ``f``, ``split2d``).
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP",
    ICLR 2017 (squeeze, affine coupling, multi-scale architecture).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unflow_zoo.core.transform import Compose, Transform, check_context
from unflow_zoo.transforms.affine import soft_clamp
from unflow_zoo.transforms.linear import LULinear

__all__ = [
    "ActNorm",
    "GlowAffineCoupling",
    "InvertibleConv1x1",
    "MultiScaleGlow",
    "SplitPrior",
    "Squeeze",
    "glow_step",
    "rotation_init_",
]

CouplingScale = Literal["sigmoid", "clamp"]


def _log_dtype(t: Tensor) -> torch.dtype:
    """At least float32: under bf16/fp16 autocast the conv outputs are half precision,
    and log-dets summed over thousands of pixels would lose every digit."""
    return torch.promote_types(t.dtype, torch.float32)


def _check_image(name: str, x: Tensor, channels: int | None = None) -> None:
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        want = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
        raise ValueError(f"{name} expects an image batch of shape {want}, got {tuple(x.shape)}")


# ----- actnorm ----------------------------------------------------------------------------------


class ActNorm(Transform):
    r"""Per-channel affine normalisation with data-dependent initialisation,

    .. math:: y_{c} = (x_{c} + b_c)\, e^{s_c}, \qquad
              \log|\det J| = H W \textstyle\sum_c s_c

    on ``(B, C, H, W)`` batches (``H W = 1`` for ``(B, C)`` vectors). The first
    forward pass in training mode sets :math:`b = -\mathrm{mean}(x)` and
    :math:`s = -\log(\mathrm{std}(x) + \epsilon)` per channel (statistics over
    batch and pixels), so that the output of that batch has zero mean and unit
    variance per channel; after that :math:`b, s` are ordinary parameters.
    Whether that happened is the boolean buffer ``initialized``: it travels in
    the ``state_dict``, so a loaded model is never re-initialised. A batch with
    a single value per channel only sets :math:`b` (its std is 0). Evaluation
    mode and :meth:`inverse` never initialise.

    Args:
        features: ``C``, the number of channels (or features of a vector).
        eps: added to the std before the log.

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018, Section 3.1.
        Salimans & Kingma, "Weight Normalization", NeurIPS 2016 (data-dependent init).
    """

    initialized: Tensor

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"ActNorm needs features >= 1, got {features}")
        self.features = int(features)
        self.eps = float(eps)
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    def _check(self, x: Tensor) -> None:
        if x.ndim not in (2, 4) or x.shape[1] != self.features:
            raise ValueError(
                f"ActNorm({self.features}) expects a batch of shape (B, {self.features}) or "
                f"(B, {self.features}, H, W), got {tuple(x.shape)}"
            )

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.ndim - 2)))

    def _ladj(self, x: Tensor) -> Tensor:
        pixels = math.prod(x.shape[2:])  # H * W for images, 1 for vectors (also for an empty batch)
        return (pixels * self.log_scale.sum()).to(_log_dtype(x)).expand(x.shape[0])

    @torch.no_grad()
    def initialize_(self, x: Tensor) -> None:
        """Set ``b`` and ``s`` so that ``forward(x)`` has zero mean and unit std per channel."""
        self._check(x)
        dims = [0, *range(2, x.ndim)]
        xf = x.detach().to(_log_dtype(x))
        self.bias.copy_(-xf.mean(dims))
        if xf.numel() // self.features >= 2:
            self.log_scale.copy_(-torch.log(xf.std(dims, unbiased=False) + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self.training and not bool(self.initialized) and x.shape[0] > 0:  # an empty batch has no statistics
            self.initialize_(x)
        y = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        return y, self._ladj(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        x = y * torch.exp(-self._view(self.log_scale, y)) - self._view(self.bias, y)
        return x, -self._ladj(y)

    def extra_repr(self) -> str:
        return f"features={self.features}, initialized={bool(self.initialized)}"


# ----- invertible 1x1 convolution ----------------------------------------------------------------


@torch.no_grad()
def rotation_init_(layer: LULinear, seed: int | None = None) -> LULinear:
    r"""Set an :class:`~unflow_zoo.transforms.linear.LULinear` to a random rotation, in place.

    Glow draws :math:`W_0 = Q` from the QR decomposition of a Gaussian matrix and
    factorises it as :math:`W_0 = P L U` (:func:`torch.linalg.lu`). ``LULinear``
    keeps the diagonal of :math:`U` positive, :math:`e^{s}`; with
    :math:`S = \mathrm{diag}(\mathrm{sign}\, u_{ii})`,

    .. math:: W_0 = P L U = P S\, (S L S)\, (S U),

    so the layer gets :math:`L' = S L S` (still unit lower-triangular),
    :math:`U' = S U` (diagonal :math:`|u_{ii}|`) and starts at
    :math:`W = P L' U' = (P S P^\top) W_0`, the rotation with some rows negated:
    still orthogonal, :math:`\log|\det W| = \sum_i \log|u_{ii}| = 0`. The bias is left alone.

    Args:
        layer: the layer to overwrite.
        seed: seed of the Gaussian draw; ``None`` uses torch's global generator
            (so ``seed_everything`` makes it reproducible).

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018, Section 3.2 (LU decomposition).
    """
    d = layer.features
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    p, lower, upper = torch.linalg.lu(q)
    diag = torch.diagonal(upper)
    sign = torch.sign(diag)
    perm = p.argmax(dim=1)  # (P M)[i] = M[perm[i]], the convention of LULinear.weight()
    layer.perm.copy_(perm)
    layer.inv_perm.copy_(torch.argsort(perm))
    layer.lower.copy_(torch.tril(sign[:, None] * lower * sign[None, :], -1))
    layer.upper.copy_(torch.triu(sign[:, None] * upper, 1))
    layer.log_diag.copy_(torch.log(diag.abs()))
    return layer


class InvertibleConv1x1(LULinear):
    r"""Invertible 1x1 convolution in LU form: the same :math:`C \times C` matrix
    applied to the channel vector of every pixel,

    .. math:: y_{:, h, w} = W x_{:, h, w} + b, \qquad W = P L (U + \mathrm{diag}(e^{s})),
              \qquad \log|\det J| = H W \textstyle\sum_c s_c,

    with :math:`P` a fixed permutation (buffer), :math:`L` unit lower-triangular,
    :math:`U` strictly upper-triangular. It *is* an
    :class:`~unflow_zoo.transforms.linear.LULinear` over the channels (on a
    ``(B, C)`` batch it behaves exactly as one) with a random-rotation start
    (:func:`rotation_init_`). The bias :math:`b` is redundant next to
    :class:`ActNorm` but harmless. The inverse is exact: two triangular solves
    per pixel.

    Args:
        channels: ``C``.
        seed: seed of the random rotation (``None``: torch's global generator).

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018, Section 3.2.
    """

    def __init__(self, channels: int, seed: int | None = None) -> None:
        super().__init__(channels)
        rotation_init_(self, seed)

    def _rows(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b * h * w, c)

    @staticmethod
    def _image(rows: Tensor, shape: torch.Size) -> Tensor:
        b, c, h, w = shape
        return rows.reshape(b, h, w, c).permute(0, 3, 1, 2)

    def _ladj(self, x: Tensor) -> Tensor:
        return (x.shape[2] * x.shape[3] * self.logabsdet()).to(_log_dtype(x)).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.ndim == 2:
            return super().forward(x)
        _check_image(f"InvertibleConv1x1({self.features})", x, self.features)
        y, _ = super().forward(self._rows(x))
        return self._image(y, x.shape), self._ladj(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if y.ndim == 2:
            return super().inverse(y)
        _check_image(f"InvertibleConv1x1({self.features})", y, self.features)
        x, _ = super().inverse(self._rows(y))
        return self._image(x, y.shape), -self._ladj(y)


# ----- squeeze ---------------------------------------------------------------------------------


class Squeeze(Transform):
    r"""Space-to-depth: every 2x2 block of pixels becomes 4 channels,
    :math:`(C, H, W) \to (4C, H/2, W/2)`, with

    .. math:: y_{4c + 2i + j,\, h,\, w} = x_{c,\, 2h + i,\, 2w + j}, \qquad \log|\det J| = 0

    (a permutation of the numbers; the channel order is Glow's ``squeeze2d``).
    It changes the shape, so it is a building block of :class:`MultiScaleGlow`
    rather than a stand-alone layer of a :class:`~unflow_zoo.core.flow.Flow`.

    References:
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP",
        ICLR 2017, Section 3.6.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image("Squeeze", x)
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(
                f"Squeeze needs an even height and width, got an image of {h}x{w}; crop or pad the "
                "images (or use fewer levels) so that H and W are divisible by 2 at every level"
            )
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b, dtype=_log_dtype(x))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image("Squeeze.inverse", y)
        b, c4, h, w = y.shape
        if c4 % 4:
            raise ValueError(f"Squeeze.inverse needs a multiple of 4 channels, got {c4}")
        c = c4 // 4
        x = y.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)
        return x, y.new_zeros(b, dtype=_log_dtype(y))


# ----- affine coupling on channels -------------------------------------------------------------------


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 convolution that starts at zero, so the layer it drives starts as the identity."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class GlowAffineCoupling(Transform):
    r"""Affine coupling over channels: split :math:`x = (x_a, x_b)` into the first
    :math:`\lfloor C/2 \rfloor` channels and the rest, and

    .. math:: (t, h) = \mathrm{NN}(x_a), \qquad y_a = x_a, \qquad
              y_b = (x_b + t) \odot e^{\log s}, \qquad
              \log|\det J| = \textstyle\sum \log s,

    with :math:`\log s = \log \sigma(h + 2)` (``scale="sigmoid"``, the official
    Glow code: scales in :math:`(0, 1)`, at most contracting) or
    :math:`\log s = c \tanh(h / c)` (``scale="clamp"``, the soft clamp of
    :func:`~unflow_zoo.transforms.affine.soft_clamp`). NN is
    conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3 whose last convolution starts
    at zero: ``clamp`` couplings start as the identity, ``sigmoid`` ones as the
    fixed contraction :math:`y_b = \sigma(2)\, x_b \approx 0.88\, x_b` (as in
    Glow, where the following actnorm's data-dependent start absorbs it).
    (Glow puts actnorm inside NN as well; plain biased convolutions serve here.)
    Log-scales are computed in at least float32, also under mixed precision.

    Conditional (``context_features = C_c > 0``): NN reads :math:`[x_a, c]`, the ``(B, C_c)``
    context broadcast to :math:`C_c` constant feature maps of the image's size and
    concatenated to :math:`x_a`'s channels; the log-determinant is unchanged in form.

    Args:
        channels: ``C >= 2``.
        hidden_channels: width of NN.
        scale: ``"sigmoid"`` or ``"clamp"``.
        scale_clamp: :math:`c` of the soft clamp.
        context_features: :math:`C_c`, the width of the context (0: unconditional).

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018, Section 3.3; github.com/openai/glow ``model.py``.
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 512,
        scale: CouplingScale = "sigmoid",
        scale_clamp: float = 3.0,
        context_features: int = 0,
    ) -> None:
        super().__init__()
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0 (0: unconditional), got {context_features}")
        if channels < 2:
            raise ValueError(f"GlowAffineCoupling splits channels in halves and needs C >= 2, got {channels}")
        if scale not in ("sigmoid", "clamp"):
            raise ValueError(f"unknown coupling scale {scale!r}; choose 'sigmoid' or 'clamp'")
        self.channels = int(channels)
        self.split = channels // 2
        self.scale = scale
        self.scale_clamp = float(scale_clamp)
        self.context_features = int(context_features)
        out = channels - self.split
        self.net = nn.Sequential(
            nn.Conv2d(self.split + self.context_features, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            _zero_conv(hidden_channels, 2 * out),
        )

    def _params(self, xa: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if context is not None:
            maps = context.to(xa.dtype)[:, :, None, None].expand(-1, -1, xa.shape[2], xa.shape[3])
            xa = torch.cat([xa, maps], dim=1)
        h = self.net(xa)
        h = h.to(_log_dtype(h))
        shift, raw = h[:, 0::2], h[:, 1::2]  # interleaved, as in the official code
        log_s = F.logsigmoid(raw + 2.0) if self.scale == "sigmoid" else soft_clamp(raw, self.scale_clamp)
        return shift, log_s

    def _check(self, x: Tensor, context: Tensor | None) -> None:
        name = f"GlowAffineCoupling({self.channels})"
        _check_image(name, x, self.channels)
        check_context(context, x.shape[0], self.context_features, name)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        xa, xb = x[:, : self.split], x[:, self.split :]
        shift, log_s = self._params(xa, context)
        yb = (xb + shift) * torch.exp(log_s)
        return torch.cat([xa.to(yb.dtype), yb], dim=1), log_s.flatten(1).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, context)
        ya, yb = y[:, : self.split], y[:, self.split :]
        shift, log_s = self._params(ya, context)
        xb = yb * torch.exp(-log_s) - shift
        return torch.cat([ya.to(xb.dtype), xb], dim=1), -log_s.flatten(1).sum(1)

    def extra_repr(self) -> str:
        ctx = f", context_features={self.context_features}" if self.context_features else ""
        return f"channels={self.channels}, scale={self.scale!r}{ctx}"


def glow_step(
    channels: int,
    hidden_channels: int = 512,
    scale: CouplingScale = "sigmoid",
    scale_clamp: float = 3.0,
    context_features: int = 0,
) -> Compose:
    """One step of flow on images: :class:`ActNorm` -> :class:`InvertibleConv1x1` ->
    :class:`GlowAffineCoupling` (Kingma & Dhariwal 2018, Figure 2a); with ``context_features``
    the coupling sees the context (actnorm and the 1x1 convolution do not depend on it)."""
    return Compose(
        ActNorm(channels),
        InvertibleConv1x1(channels),
        GlowAffineCoupling(channels, hidden_channels, scale, scale_clamp, context_features),
    )


# ----- the learned split prior ----------------------------------------------------------------------


class SplitPrior(Transform):
    r"""Glow's learned prior on factored-out channels, as a transform conditioned on the kept ones:

    .. math:: (\mu, \log\sigma) = \mathrm{NN}(z_1), \qquad
              u = (z_2 - \mu) \odot e^{-\log\sigma}, \qquad
              \log|\det J| = -\textstyle\sum \log\sigma,

    where :math:`z_2` is the input and :math:`z_1` the ``context``. A standard
    normal on :math:`u` is then exactly Glow's
    :math:`\mathcal N(z_2;\, \mu(z_1), \sigma(z_1)^2)`. NN is one 3x3
    convolution that starts at zero (:math:`\mu = 0, \sigma = 1`, the identity),
    as Glow's ``split2d_prior``.

    Args:
        channels: channels of :math:`z_2`.
        context_channels: channels of :math:`z_1`.

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018; github.com/openai/glow ``model.py`` (``split2d``).
    """

    def __init__(self, channels: int, context_channels: int) -> None:
        super().__init__()
        self.channels = int(channels)
        self.context_channels = int(context_channels)
        self.net = _zero_conv(context_channels, 2 * channels)

    def _params(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        name = f"SplitPrior({self.channels}, {self.context_channels})"
        _check_image(name, z, self.channels)
        if context is None:
            raise ValueError(f"{name} models z2 given z1: pass the kept half z1 as context")
        _check_image(f"{name} context", context, self.context_channels)
        if context.shape[0] != z.shape[0] or context.shape[2:] != z.shape[2:]:
            raise ValueError(
                f"{name}: z2 {tuple(z.shape)} and context z1 {tuple(context.shape)} must share batch and pixels"
            )
        h = self.net(context)
        h = h.to(_log_dtype(h))
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(x, context)
        return (x - mu) * torch.exp(-log_sigma), -log_sigma.flatten(1).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(y, context)
        return y * torch.exp(log_sigma) + mu, log_sigma.flatten(1).sum(1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, context_channels={self.context_channels}"


# ----- the multi-scale architecture ----------------------------------------------------------------


class MultiScaleGlow(Transform):
    r"""Glow's multi-scale architecture as one invertible transform from images
    :math:`(C, H, W)` to noise of the same shape.

    Level :math:`l = 1, \dots, L`: squeeze (channels :math:`\times 4`), ``K``
    steps (:func:`glow_step`), and, except at the last level, split the
    channels in halves :math:`(z_1, z_2)`, map :math:`z_2` through the learned
    prior :class:`SplitPrior` given :math:`z_1` (``split_prior=True``; else
    :math:`z_2` is left as it is, the fixed :math:`\mathcal N(0, I)` prior of
    RealNVP) and continue with :math:`z_1` only. The factored-out parts are put
    back in the order they came out and un-squeezed, so the output has the
    input's shape, and

    .. math:: \log p(x) = \log \mathcal N(f(x); 0, I) + \log|\det \partial f / \partial x|

    is Glow's likelihood, with its learned priors (see the module docstring).
    The inverse runs the levels backwards: the deepest part is inverted first,
    giving each :math:`z_1` that the split prior needs to invert its
    :math:`z_2`. Exact up to floating point in both directions.

    Conditional (``context_features > 0``): every coupling network sees the ``(B, C)``
    context as constant feature maps (:class:`GlowAffineCoupling`); actnorm, the 1x1
    convolutions and the split priors stay unconditional.

    Args:
        event_shape: ``(C, H, W)`` with ``H`` and ``W`` divisible by ``2**levels``.
        levels: :math:`L \geq 1`.
        steps_per_level: :math:`K \geq 1`.
        hidden_channels: width of every coupling network.
        split_prior: learn the prior of the factored-out channels.
        coupling_scale: ``scale`` of every :class:`GlowAffineCoupling`.
        scale_clamp: ``scale_clamp`` of every :class:`GlowAffineCoupling`.
        context_features: width of the context (0: unconditional, a context is refused).

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018, Section 3 and Figure 2b.
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    def __init__(
        self,
        event_shape: tuple[int, int, int],
        levels: int = 2,
        steps_per_level: int = 4,
        hidden_channels: int = 512,
        split_prior: bool = True,
        coupling_scale: CouplingScale = "sigmoid",
        scale_clamp: float = 3.0,
        context_features: int = 0,
    ) -> None:
        super().__init__()
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0 (0: unconditional), got {context_features}")
        if len(event_shape) != 3:
            raise ValueError(f"MultiScaleGlow works on images, event_shape (C, H, W); got {tuple(event_shape)}")
        c, h, w = (int(s) for s in event_shape)
        if levels < 1 or steps_per_level < 1:
            raise ValueError(f"need levels >= 1 and steps_per_level >= 1, got {levels} and {steps_per_level}")
        if h % 2**levels or w % 2**levels:
            raise ValueError(
                f"{levels} levels squeeze the image {levels} times, so H and W must be divisible by "
                f"2**{levels} = {2**levels}; got {h}x{w}. Use fewer levels, or crop or pad the images"
            )
        self.event_shape = (c, h, w)
        self.levels = int(levels)
        self.split_prior = bool(split_prior)
        self.context_features = ctx = int(context_features)
        self.squeeze = Squeeze()
        self.steps = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.kept: list[int] = []  # channels kept after each level's split
        for level in range(levels):
            c *= 4
            self.steps.append(
                Compose(
                    [glow_step(c, hidden_channels, coupling_scale, scale_clamp, ctx) for _ in range(steps_per_level)]
                )
            )
            if level < levels - 1:
                kept = c // 2
                if split_prior:
                    self.priors.append(SplitPrior(c - kept, kept))
                self.kept.append(kept)
                c = kept

    def _check(self, x: Tensor, context: Tensor | None) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            c, h, w = self.event_shape
            raise ValueError(f"MultiScaleGlow expects a batch of shape (B, {c}, {h}, {w}), got {tuple(x.shape)}")
        check_context(context, x.shape[0], self.context_features, type(self).__name__)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        total = x.new_zeros(x.shape[0], dtype=_log_dtype(x))
        out: list[Tensor] = []
        h = x
        for level in range(self.levels):
            h, _ = self.squeeze(h)
            h, ladj = self.steps[level](h, context)
            total = total + ladj
            if level < self.levels - 1:
                h, z = h[:, : self.kept[level]], h[:, self.kept[level] :]
                if self.split_prior:
                    z, ladj = self.priors[level](z, context=h)
                    total = total + ladj
                out.append(z)
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                h = torch.cat([h, out[level].to(h.dtype)], dim=1)
            h, _ = self.squeeze.inverse(h)
        return h, total

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, context)
        total = y.new_zeros(y.shape[0], dtype=_log_dtype(y))
        out: list[Tensor] = []
        h = y
        for level in range(self.levels - 1):  # undo the reassembly: peel off each level's z
            h, _ = self.squeeze(h)
            h, z = h[:, : self.kept[level]], h[:, self.kept[level] :]
            out.append(z)
        h, _ = self.squeeze(h)
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                z = out[level]
                if self.split_prior:
                    z, ladj = self.priors[level].inverse(z, context=h)
                    total = total + ladj
                h = torch.cat([h, z.to(h.dtype)], dim=1)
            h, ladj = self.steps[level].inverse(h, context)
            total = total + ladj
            h, _ = self.squeeze.inverse(h)
        return h, total

    def extra_repr(self) -> str:
        ctx = f", context_features={self.context_features}" if self.context_features else ""
        return f"event_shape={self.event_shape}, levels={self.levels}, split_prior={self.split_prior}{ctx}"
