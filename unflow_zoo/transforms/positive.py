r"""The positive functions :math:`\phi` of unconstrained monotone flows (:math:`g = \phi(N) + \epsilon > 0`).

Shared by the generic quadrature (:mod:`~unflow_zoo.transforms.integral`) and the exact
ReLU-integrand one (:mod:`~unflow_zoo.transforms.relu_integral`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PHI_NAMES", "PhiName", "d_positive", "log_positive", "positive"]

PhiName = Literal["elu", "softplus", "exp"]
PHI_NAMES: tuple[str, ...] = ("elu", "softplus", "exp")


def positive(n: Tensor, phi: str = "elu", eps: float = 0.0) -> Tensor:
    r""":math:`\phi(n) + \epsilon`: ``elu`` (:math:`\mathrm{ELU}(n) + 1`), ``softplus`` or ``exp``."""
    if phi == "elu":
        return F.elu(n) + (1.0 + eps)
    if phi == "softplus":
        out = F.softplus(n)
    elif phi == "exp":
        out = n.exp()
    else:
        raise ValueError(f"unknown phi {phi!r}; choose one of {PHI_NAMES}")
    return out + eps if eps else out


def log_positive(n: Tensor, phi: str = "elu", eps: float = 0.0) -> Tensor:
    r""":math:`\log(\phi(n) + \epsilon)`, computed without forming :math:`\phi(n)` where it underflows.

    For ``elu`` and ``exp``, :math:`\phi(n) = e^n` for :math:`n < 0`, so the log is
    :math:`\operatorname{logaddexp}(n, \log\epsilon)`: finite for any :math:`n`.
    """
    if phi not in PHI_NAMES:
        raise ValueError(f"unknown phi {phi!r}; choose one of {PHI_NAMES}")

    def log_exp_eps(m: Tensor) -> Tensor:  # log(e^m + eps)
        return torch.logaddexp(m, m.new_tensor(math.log(eps))) if eps > 0 else m

    if phi == "exp":
        return log_exp_eps(n)
    if phi == "elu":
        # Clamp each branch to its own side so the branch torch.where drops has a finite gradient.
        return torch.where(n > 0, torch.log1p(n.clamp(min=0) + eps), log_exp_eps(n.clamp(max=0)))
    # softplus(n) = e^n (1 + O(e^n)) below -30: the log is n to 1e-13.
    return torch.where(n < -30, log_exp_eps(n.clamp(max=-30)), torch.log(F.softplus(n.clamp(min=-30)) + eps))


def d_positive(n: Tensor, phi: str, eps: float, g: Tensor) -> Tensor:
    r""":math:`\phi'(n)`, given :math:`g = \phi(n) + \epsilon` (``elu`` and ``exp`` reuse it: :math:`\phi' = e^n`)."""
    if phi == "elu":
        return torch.where(n > 0, torch.ones_like(g), g - eps)
    if phi == "softplus":
        return torch.sigmoid(n)
    return g - eps
