"""InFlow's gated (attention) affine coupling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unflow_zoo.nn.mlp import MLP
from unflow_zoo.transforms.coupling import AffineCoupling

__all__ = ["GATE_MODES", "GatedAffineCoupling"]

GATE_MODES = ("fixed", "learned", "data")


class GatedAffineCoupling(AffineCoupling):
    r"""Affine coupling whose scale and shift are switched on and off by a gate :math:`g \in [0, 1]`.

    With the mask splitting :math:`x` into a conditioning part :math:`x_A` and a
    transformed part :math:`x_B`, and :math:`\sigma, t` the coupling's soft-clamped
    log-scale and shift (as in :class:`~unflow_zoo.transforms.coupling.AffineCoupling`),

    .. math:: y_A = x_A, \qquad y_B = e^{g\,\sigma(x_A)} \odot x_B + g\, t(x_A),
              \qquad \log|\det J| = g \textstyle\sum \sigma(x_A),

    and the inverse :math:`x_B = (y_B - g\,t(y_A)) \odot e^{-g\,\sigma(y_A)}`. The gate
    (InFlow's "attention" :math:`s`) is

    - ``fixed``: a constant (``gate_init``), a buffer you may change, e.g. to 0 at
      test time (InFlow trains with :math:`s = 1` and sets :math:`s` per input at
      test time from a two-sample test against the training data, so that a
      suspected outlier passes through the layer unchanged and lands far out in the
      latent space);
    - ``learned``: one learned scalar, :math:`g = \operatorname{sigmoid}(\gamma)`;
    - ``data``: per example, :math:`g = \operatorname{sigmoid}(a(x_A))` with a small
      MLP :math:`a` of the conditioning half only.

    Because :math:`g` depends on :math:`x_A` alone, the Jacobian stays block
    triangular with diagonal :math:`e^{g\sigma}` and the log-determinant above is
    exact for every gate (also one computed from :math:`x_A`), and the inverse
    recomputes :math:`g` from :math:`y_A = x_A`. InFlow's published code returns
    :math:`\sum \sigma` as the log-det, i.e. ignores :math:`s`, and inverts as if
    :math:`s = 1`; both are right only at :math:`s = 1`. At :math:`g = 1` the layer is
    exactly :class:`AffineCoupling`; at :math:`g = 0` it is the identity.
    :meth:`set_gate` overrides the gate of any mode with a constant (``None`` undoes it).

    Args:
        mask: the conditioning features (boolean, some but not all).
        hidden: hidden widths of the conditioner MLP, as for :class:`AffineCoupling`.
        act: activation of the conditioner MLP, as for :class:`AffineCoupling`.
        context_features: size of an optional context vector, as for :class:`AffineCoupling`.
        scale_clamp: bound of the soft-clamped log-scale, as for :class:`AffineCoupling`.
        gate: ``fixed``, ``learned`` or ``data``.
        gate_init: the gate's value (``fixed``) or its initial value (``learned``,
            ``data``: the gate network's last layer starts at zero with the bias at
            :math:`\operatorname{logit}` of it); in ``[0, 1]``, and inside ``(0, 1)``
            for a learned gate.
        gate_hidden: hidden widths of the gate network (``data``).

    References:
        Kumar, Hanfeld, Hecht, Bussmann, Gumhold & Hoffmann, "InFlow: Robust
        outlier detection utilizing Normalizing Flows", arXiv:2106.12894, 2021;
        code: github.com/ComputationalRadiationPhysics/InFlow (``train.py``,
        ``InFlowCouplingBlock``).
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    """

    fixed_gate: Tensor

    def __init__(
        self,
        mask: Tensor | Sequence[bool],
        hidden: Sequence[int] = (64, 64),
        act: str = "relu",
        context_features: int = 0,
        scale_clamp: float | None = 3.0,
        gate: str = "data",
        gate_init: float = 0.95,
        gate_hidden: Sequence[int] = (16,),
    ) -> None:
        super().__init__(mask, hidden, act, context_features, scale_clamp)
        if gate not in GATE_MODES:
            raise ValueError(f"unknown gate {gate!r}; choose one of {list(GATE_MODES)}")
        if not 0.0 <= gate_init <= 1.0 or (gate != "fixed" and not 0.0 < gate_init < 1.0):
            raise ValueError(
                f"gate_init must lie in [0, 1] for a fixed gate and in (0, 1) for a learned one, got {gate_init}"
            )
        self.gate_mode = gate
        self._override: float | None = None
        logit = math.log(gate_init / (1 - gate_init)) if 0.0 < gate_init < 1.0 else 0.0
        self.register_buffer("fixed_gate", torch.tensor(float(gate_init)))
        if gate == "learned":
            self.gate_logit = nn.Parameter(torch.tensor(logit))
        elif gate == "data":
            self.gate_net = MLP(self.features + context_features, 1, gate_hidden, act, zero_init_last=True)
            with torch.no_grad():
                self.gate_net[-1].bias.fill_(logit)

    def set_gate(self, value: float | None) -> None:
        """Use the constant gate ``value`` in ``[0, 1]`` whatever the mode; ``None`` restores the mode's gate."""
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"a gate lies in [0, 1], got {value}")
        self._override = None if value is None else float(value)

    def gate(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The gate per example, shape ``(B, 1)``, from the conditioning half of ``x`` only."""
        if self._override is not None:
            return x.new_full((x.shape[0], 1), self._override)
        if self.gate_mode == "fixed":
            return self.fixed_gate.to(x.dtype).expand(x.shape[0], 1)
        if self.gate_mode == "learned":
            return torch.sigmoid(self.gate_logit).to(x.dtype).expand(x.shape[0], 1)
        h = x * self.mask  # x_A only: the inverse must be able to recompute the gate from y_A = x_A
        if context is not None:
            h = torch.cat([h, context], dim=1)
        return torch.sigmoid(self.gate_net(h))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, context)
        s, t = self._params(x, context)
        g = self.gate(x, context)
        return x * torch.exp(g * s) + g * t, (g * s).sum(dim=1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, context)
        s, t = self._params(y, context)
        g = self.gate(y, context)
        return (y - g * t) * torch.exp(-g * s), -(g * s).sum(dim=1)

    def extra_repr(self) -> str:
        return f"features={self.features}, gate={self.gate_mode!r}"
