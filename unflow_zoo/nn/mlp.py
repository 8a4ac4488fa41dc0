"""Plain multi-layer perceptron used as a conditioner."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = ["MLP", "activation"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Sequential):
    """``in_features -> hidden[0] -> ... -> out_features`` with an activation between layers.

    ``zero_init_last`` zero-initialises the last layer so that a coupling or
    autoregressive transform starts at the identity (Glow, Kingma & Dhariwal 2018).

    Under mixed precision (``torch.autocast``) the layers run in the low precision,
    but the output comes back in the input's dtype: a conditioner's outputs are a
    transform's parameters, and log-determinants must be formed and summed in float32
    (a bfloat16 sum of ``D`` log-scales keeps 3 significant digits).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        act: str = "relu",
        zero_init_last: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden, out_features]
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            if i > 0:
                layers.append(activation(act))
            layers.append(nn.Linear(a, b))
        super().__init__(*layers)
        if zero_init_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x).to(x.dtype)
