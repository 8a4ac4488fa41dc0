"""Invertible linear (affine) maps in LU form."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unflow_zoo.core.transform import Transform, check_features

__all__ = ["LULinear"]


class LULinear(Transform):
    r"""Invertible affine map :math:`y = W x + b` (data -> noise) with :math:`W` in LU form,

    .. math:: W = P L U, \qquad \log |\det W| = \textstyle\sum_i s_i,

    :math:`P` a fixed permutation, :math:`L` unit lower-triangular, :math:`U`
    upper-triangular with diagonal :math:`e^{s_i}` (strictly upper part free).
    The log-determinant costs :math:`O(D)` and does not depend on :math:`x`; the
    inverse :math:`x = U^{-1} L^{-1} P^\top (y - b)` is exact, two triangular
    solves (:func:`torch.linalg.solve_triangular`), :math:`O(D^2)` per point.

    The layer starts at :math:`y = P x` (:math:`L = U = I`, :math:`b = 0`): the
    identity with the default ``permutation="identity"``. A positive diagonal
    fixes the sign of :math:`\det W` to that of :math:`P`; density estimation
    loses nothing by it, since a Gaussian (the optimum of an affine flow on a
    standard normal base, Liao & He 2021) is invariant to flipping noise
    coordinates, and generic :math:`W` admit such a factorisation up to those flips.

    Under mixed precision both directions run with autocast disabled, in the dtype
    of the input: the forward matmul would otherwise be rounded to bfloat16 while
    the triangular solves of the inverse stay float32, and ``inverse(forward(x))``
    would be off by ~1e-3.

    Args:
        features: ``D``; batches are ``(B, D)``.
        permutation: ``"identity"``, ``"random"`` (seeded by ``seed``) or an
            explicit sequence of the ``D`` feature indices: :math:`(P v)_i = v_{\pi(i)}`.
        seed: seed of the random permutation.

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", NeurIPS 2018 (the LU-decomposed 1x1 convolution).
        Liao & He, "Jacobian Determinant of Normalizing Flows", arXiv:2102.06539, 2021.
    """

    perm: Tensor
    inv_perm: Tensor

    def __init__(self, features: int, permutation: str | Sequence[int] = "identity", seed: int = 0) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be a positive int, got {features}")
        self.features = int(features)
        if isinstance(permutation, str):
            if permutation == "identity":
                perm = torch.arange(features)
            elif permutation == "random":
                perm = torch.randperm(features, generator=torch.Generator().manual_seed(seed))
            else:
                raise ValueError(f"unknown permutation {permutation!r}; choose 'identity', 'random' or a sequence")
        else:
            perm = torch.as_tensor(list(permutation), dtype=torch.long)
            if perm.shape != (features,) or not torch.equal(perm.sort().values, torch.arange(features)):
                raise ValueError(f"permutation must hold each of 0..{features - 1} once, got {list(permutation)}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))
        # Full square parameters, masked on use: only the strict triangles get gradients.
        self.lower = nn.Parameter(torch.zeros(features, features))
        self.upper = nn.Parameter(torch.zeros(features, features))
        self.log_diag = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))

    # ----- the factors --------------------------------------------------------------------
    def _eye(self) -> Tensor:
        return torch.eye(self.features, dtype=self.lower.dtype, device=self.lower.device)

    def lower_factor(self) -> Tensor:
        """:math:`L`: unit lower-triangular."""
        return torch.tril(self.lower, -1) + self._eye()

    def upper_factor(self) -> Tensor:
        """:math:`U`: upper-triangular with diagonal :math:`e^{s}`."""
        return torch.triu(self.upper, 1) + torch.diag(torch.exp(self.log_diag))

    def weight(self) -> Tensor:
        """The matrix :math:`W = P L U`."""
        return (self.lower_factor() @ self.upper_factor())[self.perm]

    def logabsdet(self) -> Tensor:
        r""":math:`\log|\det W| = \sum_i s_i` (a scalar)."""
        return self.log_diag.sum()

    # ----- the contract ---------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        check_features(x, self.features, type(self).__name__)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # rows: y = x (P L U)^T + b = ((x U^T) L^T)[:, perm] + b
            y = (x @ self.upper_factor().T @ self.lower_factor().T)[:, self.perm]
            y = y + self.bias
            return y, self.logabsdet().expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y)
        with torch.autocast(device_type=y.device.type, enabled=False):
            z = (y - self.bias)[:, self.inv_perm]  # P^T (y - b)
            # Row batches: a L^T = z and x U^T = a, i.e. right-hand triangular solves.
            a = torch.linalg.solve_triangular(self.lower_factor().T, z, upper=True, left=False, unitriangular=True)
            x = torch.linalg.solve_triangular(self.upper_factor().T, a, upper=False, left=False)
            return x, (-self.logabsdet()).expand(y.shape[0])

    def extra_repr(self) -> str:
        return f"features={self.features}"
