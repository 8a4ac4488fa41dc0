"""Elementwise affine maps and the scale parametrisation shared by affine flows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unflow_zoo.core.transform import Transform, check_context, check_features
from unflow_zoo.nn.mlp import MLP

__all__ = ["Affine", "ConditionalAffine", "soft_clamp"]


def soft_clamp(s: Tensor, bound: float | None) -> Tensor:
    r"""Smoothly limit a log-scale to :math:`(-b, b)`: :math:`b \tanh(s / b)`.

    Unbounded log-scales let an affine layer blow a point up by :math:`e^{s}`
    early in training; the tanh keeps gradients alive (a hard clamp would not).
    ``bound=None`` leaves ``s`` unchanged.
    """
    if bound is None or bound <= 0:
        return s
    return bound * torch.tanh(s / bound)


class Affine(Transform):
    r"""Fixed elementwise affine map :math:`y = (x - \mu) / \sigma` (data -> noise).

    Used to put a preprocessing step (standardisation) inside a flow so that
    ``log_prob`` applies to raw data, with log-det :math:`-\sum_i \log \sigma_i`.
    """

    loc: Tensor
    scale: Tensor

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype())
        if (scale <= 0).any():
            raise ValueError("Affine scale must be positive")
        self.register_buffer("loc", torch.as_tensor(loc, dtype=scale.dtype))
        self.register_buffer("scale", scale)

    def _ladj(self, x: Tensor) -> Tensor:
        per_event = torch.log(self.scale).expand(x.shape[1:]).sum()
        return (-per_event).expand(x.shape[0]).to(x.dtype)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.loc) / self.scale, self._ladj(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y * self.scale + self.loc, -self._ladj(y)


class ConditionalAffine(Transform):
    r"""Elementwise affine map whose log-scale and shift are functions of the context (data -> noise),

    .. math:: y = x \odot e^{s(c)} + t(c), \qquad (s, t) = \mathrm{MLP}(c), \qquad
              \log|\det J| = \textstyle\sum_i s_i(c),

    with :math:`s` soft-clamped to ``(-scale_clamp, scale_clamp)`` (:func:`soft_clamp`). The
    MLP's last layer starts at zero, so the map starts as the identity for every context. The
    inverse :math:`x = (y - t(c)) \odot e^{-s(c)}` is exact. After an affine flow (the ``linear``
    family) it makes the model a conditional Gaussian, :math:`x \mid c` with a mean and scales
    that depend on :math:`c`; with ``hidden=()`` the log-scale and shift are affine in :math:`c`.

    Args:
        features: ``D``; batches are ``(B, D)``.
        context_features: :math:`C \ge 1`, the width of the context; contexts are ``(B, C)``.
        hidden: hidden widths of the MLP (empty: an affine function of the context).
        act: activation of the MLP.
        scale_clamp: soft bound on the log-scale (``None``: unbounded).

    Raises:
        ValueError: ``features`` or ``context_features`` below 1.
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden: Sequence[int] = (64,),
        act: str = "relu",
        scale_clamp: float | None = 3.0,
    ) -> None:
        super().__init__()
        if features < 1 or context_features < 1:
            raise ValueError(
                f"ConditionalAffine needs features >= 1 and context_features >= 1 (it is a function of the context), "
                f"got features={features}, context_features={context_features}"
            )
        self.features, self.context_features = int(features), int(context_features)
        self.scale_clamp = scale_clamp
        self.net = MLP(self.context_features, 2 * self.features, hidden, act, zero_init_last=True)

    def _params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        name = type(self).__name__
        check_features(x, self.features, name)
        check_context(context, x.shape[0], self.context_features, name)
        assert context is not None
        s, t = self.net(context.to(x.dtype)).chunk(2, dim=1)
        return soft_clamp(s, self.scale_clamp), t

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s, t = self._params(x, context)
        return x * torch.exp(s) + t, s.sum(dim=1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s, t = self._params(y, context)
        return (y - t) * torch.exp(-s), -s.sum(dim=1)

    def extra_repr(self) -> str:
        return f"features={self.features}, context_features={self.context_features}, scale_clamp={self.scale_clamp}"
