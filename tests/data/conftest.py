"""Fixtures shared by the data tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

Grid = Callable[[float, float, int, int], tuple[Tensor, float]]


def midpoint_grid(low: float, high: float, cells: int, dim: int) -> tuple[Tensor, float]:
    """Cell centres of a regular grid over ``[low, high]^dim`` (float64, ``(cells**dim, dim)``) and the cell volume.

    The midpoint rule is exact for piecewise-constant densities whose edges lie on
    cell edges, and second-order accurate for smooth ones.
    """
    h = (high - low) / cells
    axis = low + h * (torch.arange(cells, dtype=torch.float64) + 0.5)
    points = torch.cartesian_prod(*([axis] * dim)).reshape(-1, dim)
    return points, h**dim


@pytest.fixture
def grid() -> Grid:
    return midpoint_grid


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Point the default data folder at an empty temporary one: no test reads or writes the user's cache."""
    folder = tmp_path_factory.mktemp("default_data_dir")
    monkeypatch.setenv("UNFLOW_ZOO_DATA", str(folder))
    return folder
