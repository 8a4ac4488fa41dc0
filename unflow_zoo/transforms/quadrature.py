r"""Fixed-node quadrature rules on :math:`[0, 1]`, for integrating along a segment.

A rule is ``K`` nodes :math:`t_k \in [0, 1]` and weights :math:`w_k` with
:math:`\sum_k w_k = 1`, so that for any segment

.. math:: \int_{x_0}^{x} g(t)\,dt \approx (x - x_0) \sum_{k=1}^{K} w_k\, g\big(x_0 + (x - x_0)\, t_k\big).

Rules (``K`` = ``n_nodes``):

- ``clenshaw-curtis``: :math:`t_k = (1 - \cos(k\pi/N))/2`, :math:`N = K - 1`, both
  end points included; exact for polynomials of degree :math:`N` and spectrally
  accurate for smooth integrands (Clenshaw & Curtis 1960). UMNN's default.
- ``gauss-legendre``: the roots of the Legendre polynomial :math:`P_K` (Golub-Welsch);
  exact for polynomials of degree :math:`2K - 1` (zuko's rule).
- ``riemann``: the right Riemann sum :math:`t_k = k/K`, :math:`w_k = 1/K`; first
  order, :math:`O(1/K)`. The default of the seed paper's code (``right-sum``).

Nodes and weights are computed once in float64 and kept as (non-persistent)
buffers; when the module changes dtype they are recomputed at that dtype from the
float64 values, so a model moved to float64 has float64-accurate rules instead of
float32 values upcast.

References:
    | Clenshaw & Curtis, "A method for numerical integration on an automatic
      computer", Numerische Mathematik 2, 1960.
    | Golub & Welsch, "Calculation of Gauss quadrature rules", Mathematics of
      Computation 23, 1969.
    | Trefethen, "Is Gauss quadrature better than Clenshaw-Curtis?", SIAM Review 50, 2008.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["QUADRATURE_RULES", "Quadrature", "QuadratureRule", "quadrature_rule"]

QuadratureRule = Literal["clenshaw-curtis", "gauss-legendre", "riemann"]
QUADRATURE_RULES: tuple[str, ...] = ("clenshaw-curtis", "gauss-legendre", "riemann")


def _clenshaw_curtis(n: int) -> tuple[Tensor, Tensor]:
    if n < 2:
        raise ValueError(f"Clenshaw-Curtis needs at least 2 nodes (both end points), got n_nodes={n}")
    big_n = n - 1
    theta = torch.arange(n, dtype=torch.float64) * math.pi / big_n
    # Trefethen's clencurt: w_k = c_k / N * (1 - sum_j b_j cos(2 j theta_k) / (4 j^2 - 1)),
    # valid for odd and even N; c_k = 1 at the end points and 2 inside.
    v = torch.ones(n, dtype=torch.float64)
    for j in range(1, big_n // 2 + 1):
        b = 1.0 if 2 * j == big_n else 2.0
        v = v - b * torch.cos(2 * j * theta) / (4 * j * j - 1)
    c = torch.full((n,), 2.0, dtype=torch.float64)
    c[0] = c[-1] = 1.0
    w = c * v / big_n  # weights on [-1, 1], summing to 2
    nodes = (1.0 - torch.cos(theta)) / 2  # increasing from 0 to 1
    return nodes, w / 2


def _gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    if n < 1:
        raise ValueError(f"Gauss-Legendre needs at least 1 node, got n_nodes={n}")
    # Golub-Welsch: nodes are the eigenvalues of the Jacobi matrix of the Legendre
    # recurrence, weights 2 * (first eigenvector component)^2.
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    roots, vecs = torch.linalg.eigh(jacobi)
    w = vecs[0].square()
    return (roots + 1) / 2, w / w.sum()  # renormalise: eigh leaves ~1e-15 of drift in the sum


def _riemann(n: int) -> tuple[Tensor, Tensor]:
    if n < 1:
        raise ValueError(f"the Riemann sum needs at least 1 node, got n_nodes={n}")
    return torch.arange(1, n + 1, dtype=torch.float64) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)


_RULES: dict[str, Callable[[int], tuple[Tensor, Tensor]]] = {
    "clenshaw-curtis": _clenshaw_curtis,
    "gauss-legendre": _gauss_legendre,
    "riemann": _riemann,
}


def quadrature_rule(rule: str, n_nodes: int) -> tuple[Tensor, Tensor]:
    r"""Nodes :math:`t_k \in [0, 1]` (increasing) and weights :math:`w_k` (summing to 1), float64.

    Args:
        rule: ``clenshaw-curtis``, ``gauss-legendre`` or ``riemann`` (right sum).
        n_nodes: the number of nodes ``K`` (integrand evaluations per integral).
    """
    try:
        make = _RULES[rule]
    except KeyError:
        raise ValueError(f"unknown quadrature rule {rule!r}; choose one of {list(_RULES)}") from None
    return make(int(n_nodes))


class Quadrature(nn.Module):
    r"""A quadrature rule on :math:`[0, 1]` held as buffers ``nodes`` and ``weights`` (shape ``(K,)``).

    :meth:`integrate` applies it to a function along the segments
    :math:`[x_0, x]`: :math:`(x - x_0) \sum_k w_k g(x_0 + (x - x_0) t_k)`, with all
    ``x.numel() * K`` evaluations of ``g`` in one call.

    Args:
        rule: ``clenshaw-curtis``, ``gauss-legendre`` or ``riemann``.
        n_nodes: the number of nodes ``K``.
    """

    nodes: Tensor
    weights: Tensor

    def __init__(self, rule: QuadratureRule = "clenshaw-curtis", n_nodes: int = 32) -> None:
        super().__init__()
        self.rule, self.n_nodes = rule, int(n_nodes)
        nodes, weights = quadrature_rule(rule, n_nodes)
        dtype = torch.get_default_dtype()
        # Not persistent: they are a function of (rule, n_nodes), which the owner's
        # hyper-parameters already record; checkpoints stay loadable if K changes.
        self.register_buffer("nodes", nodes.to(dtype), persistent=False)
        self.register_buffer("weights", weights.to(dtype), persistent=False)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        # Re-derive from float64 so that float32 -> float64 does not keep float32 rounding.
        nodes, weights = quadrature_rule(self.rule, self.n_nodes)
        self.nodes = nodes.to(device=self.nodes.device, dtype=self.nodes.dtype)
        self.weights = weights.to(device=self.weights.device, dtype=self.weights.dtype)
        return self

    def points(self, x: Tensor, x0: Tensor | float = 0.0) -> Tensor:
        """The nodes mapped onto the segments: shape ``(*x.shape, K)``."""
        return torch.addcmul(
            torch.as_tensor(x0, dtype=x.dtype, device=x.device).unsqueeze(-1), (x - x0).unsqueeze(-1), self.nodes
        )

    def integrate(self, g: Callable[[Tensor], Tensor], x: Tensor, x0: Tensor | float = 0.0) -> Tensor:
        r""":math:`\int_{x_0}^{x} g`, elementwise over ``x``; ``g`` maps ``(*x.shape, K)`` to the same shape.

        The weighted sum runs with autocast disabled, in ``g``'s dtype promoted to at
        least that of the weights (float32): a bfloat16 sum of ``K`` terms loses ~3 digits.
        """
        values = g(self.points(x, x0))
        with torch.autocast(device_type=x.device.type, enabled=False):
            values = values.to(torch.promote_types(values.dtype, self.weights.dtype))
            return (x - x0) * (values @ self.weights.to(values.dtype))

    def extra_repr(self) -> str:
        return f"rule={self.rule!r}, n_nodes={self.n_nodes}"
