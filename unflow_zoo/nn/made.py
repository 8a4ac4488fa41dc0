"""MADE: masked autoencoder for distribution estimation.

References:
    Germain, Gregor, Murray & Larochelle, "MADE: Masked Autoencoder for
    Distribution Estimation", ICML 2015.
    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density
    Estimation", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unflow_zoo.errors import ConfigError
from unflow_zoo.nn.mlp import activation

__all__ = ["MADE", "MaskedLinear", "check_order"]


def check_order(order: Sequence[int] | Tensor | None, features: int) -> Tensor:
    """``order`` as a long tensor, the identity when None; a :class:`~unflow_zoo.errors.ConfigError`
    (a ``ValueError``) unless it is a permutation of ``range(features)``.

    The one order check of every autoregressive transform (they all build a MADE from it).
    """
    if order is None:
        return torch.arange(features)
    order_t = torch.as_tensor(list(order) if not isinstance(order, Tensor) else order, dtype=torch.long)
    if order_t.ndim != 1 or not torch.equal(order_t.sort().values, torch.arange(features)):
        raise ConfigError(f"order must be a permutation of range({features}), got {order_t.tolist()}")
    return order_t


class MaskedLinear(nn.Linear):
    """``y = x (W * M)^T + b`` with a fixed binary mask ``M``."""

    mask: Tensor

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask shape {tuple(mask.shape)} != ({out_features}, {in_features})")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Autoregressive network: output block ``i`` depends only on inputs ``x_{<i}``
    (in the order ``order``) and on the optional context.

    Maps ``(B, features)`` to ``(B, features, n_params)``: ``n_params`` numbers
    per feature, e.g. shift and log-scale for an affine MAF.

    Args:
        features: D, the number of autoregressive inputs.
        n_params: outputs per feature.
        hidden: hidden layer widths.
        context_features: size of an optional conditioning vector, seen by all units.
        order: a permutation of ``range(features)``; feature ``order[k]`` is the
            k-th in the autoregressive order (default: the identity).
        act: activation name.
        zero_init_last: start the output at zero (identity transform).

    Under mixed precision (``torch.autocast``) the masked layers run in the low
    precision, but the output is returned in the dtype of ``x``: it parametrises a
    transform whose log-determinant must be formed and summed in float32.
    """

    def __init__(
        self,
        features: int,
        n_params: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        order: Sequence[int] | None = None,
        act: str = "relu",
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        if features < 1 or n_params < 1:
            raise ValueError("MADE needs features >= 1 and n_params >= 1")
        self.features, self.n_params = features, n_params
        order_t = check_order(order, features)
        # degree of input i = its position in the order, 1-based
        deg_in = torch.empty(features, dtype=torch.long)
        deg_in[order_t] = torch.arange(1, features + 1)
        self.register_buffer("degrees", deg_in)
        degrees = [deg_in]
        layers: list[nn.Module] = []
        prev = features
        # Hidden degrees cycle through 1..D-1 so every hidden unit is useful.
        for h in hidden:
            d_h = torch.arange(h) % max(features - 1, 1) + 1
            if features == 1:
                d_h = torch.zeros(h, dtype=torch.long)  # 1-D: hidden units see only the context
            mask = (d_h[:, None] >= degrees[-1][None, :]).float()
            lin = MaskedLinear(prev, h, mask)
            layers.append(lin)
            degrees.append(d_h)
            prev = h
        d_out = deg_in.repeat_interleave(n_params)  # output block of feature i has degree deg_in[i]
        out_mask = (d_out[:, None] > degrees[-1][None, :]).float()
        self.hidden_layers = nn.ModuleList(layers)
        self.out = MaskedLinear(prev, features * n_params, out_mask)
        self.context_layers = (
            nn.ModuleList([nn.Linear(context_features, h, bias=False) for h in hidden]) if context_features else None
        )
        self.context_out = (
            nn.Linear(context_features, features * n_params, bias=False) if context_features and not hidden else None
        )
        self.act = activation(act)
        if zero_init_last:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def order(self) -> Tensor:
        """The autoregressive order: ``order[k]`` is the feature in position ``k`` (from :attr:`degrees`)."""
        return torch.argsort(self.degrees)

    def context_terms(self, context: Tensor | None) -> list[Tensor] | None:
        """Each hidden layer's bias plus its context projection, :math:`b_l + W^c_l c`: the part of
        every layer's pre-activation that does not depend on ``x``. An autoregressive inverse makes
        ``D`` passes with one context; it computes these once and hands them to :meth:`forward`."""
        if context is None or self.context_layers is None:
            return None
        return [
            F.linear(context, ctx.weight, layer.bias) for ctx, layer in zip(self.context_layers, self.hidden_layers)
        ]

    def forward(self, x: Tensor, context: Tensor | None = None, terms: list[Tensor] | None = None) -> Tensor:
        """``(B, features, n_params)``; ``terms`` are :meth:`context_terms` of ``context`` when the
        caller already has them."""
        if terms is None:
            terms = self.context_terms(context)
        h = x
        for i, layer in enumerate(self.hidden_layers):
            if terms is None:
                h = layer(h)
            else:  # one fused op: the context's share and the bias are in terms[i]
                h = torch.addmm(terms[i], h, (layer.weight * layer.mask).t())
            h = self.act(h)
        out = self.out(h)
        if context is not None and self.context_out is not None:
            out = out + self.context_out(context)
        # outputs are grouped feature-major: [f0p0, f0p1, ..., f1p0, ...]
        return out.reshape(x.shape[0], self.features, self.n_params).to(x.dtype)
