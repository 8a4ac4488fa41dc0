"""Density-estimation metrics that do not depend on a flow family."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unflow_zoo.errors import DataError

__all__ = ["bits_per_dim", "fit_gaussian", "gaussian_nll"]


def gaussian_nll(data: Tensor) -> float:
    r"""Mean NLL (nats) of the maximum-likelihood Gaussian fit to ``data`` ``(N, D)``:

    .. math:: \mathrm{NLL}^* = \tfrac12 \sum_i \log(2\pi e\, \lambda_i),

    :math:`\lambda_i` the eigenvalues of the (biased, ML) data covariance. It is
    the best any affine flow can do on the training data, so it serves as the
    "Gaussian baseline" next to every evaluation.

    References:
        Liao & He, "Jacobian Determinant of Normalizing Flows", arXiv:2102.06539, 2021.
    """
    x = data.detach().reshape(data.shape[0], -1).double()
    if x.shape[0] < 2:
        raise DataError("gaussian_nll needs at least two points")
    cov = torch.cov(x.T, correction=0).reshape(x.shape[1], x.shape[1])
    eig = torch.linalg.eigvalsh(cov)
    if (eig <= 0).any():
        raise DataError("the data covariance is singular: some direction has zero variance")
    return float(0.5 * torch.log(2 * math.pi * math.e * eig).sum())


def bits_per_dim(nll: Tensor | float, dim: int) -> Tensor | float:
    """Convert a per-example NLL in nats to bits per dimension."""
    return nll / (dim * math.log(2.0))


def fit_gaussian(data: Tensor) -> torch.distributions.MultivariateNormal:
    """The maximum-likelihood Gaussian of ``data`` ``(N, D)``, in float64 on the data's device.

    A singular covariance (a constant coordinate, fewer points than dimensions) is
    ridged with the smallest jitter, relative to its scale, that makes it positive definite.
    """
    x = data.detach().reshape(data.shape[0], -1).double()
    if not torch.isfinite(x).all():
        raise DataError("cannot fit the Gaussian baseline: the training data hold NaN or inf")
    mean = x.mean(dim=0)
    cov = (
        torch.cov(x.T, correction=0).reshape(x.shape[1], x.shape[1])
        if x.shape[0] > 1
        else torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
    )
    scale = float(torch.diagonal(cov).mean()) or 1.0
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    chol, info = torch.linalg.cholesky_ex(cov)
    jitter = 1e-12
    while int(info) != 0:
        chol, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        jitter *= 10
    return torch.distributions.MultivariateNormal(mean, scale_tril=chol, validate_args=False)
