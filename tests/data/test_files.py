"""Reading point files, the shared NaN/inf check, and the seed paper's shipped data sets."""

from __future__ import annotations

import filecmp
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unflow_zoo.data.files import VENDORED, VENDORED_DIR, load_vendored, peek_dim, read_points, resolve_path
from unflow_zoo.data.validation import validate_points

SHARED = Path("/work/shared/data/overparam-nfs")


def write(tmp_path: Path, text: str, name: str = "points.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_points_skipping_blanks_and_comments(tmp_path: Path) -> None:
    path = write(tmp_path, "# x y\n1 2\n\n  3.5\t-4e-1  \n# tail\n5 6\n")
    np.testing.assert_array_equal(read_points(path), [[1.0, 2.0], [3.5, -0.4], [5.0, 6.0]])
    assert read_points(path).dtype == np.float64


def test_ragged_row_names_file_line_and_column_counts(tmp_path: Path) -> None:
    path = write(tmp_path, "# header\n1 2\n\n3 4\n5 6 7\n8 9\n", name="ragged.txt")
    with pytest.raises(ValueError, match=r"line 5 has 3 columns, expected 2 \(as on line 2\)") as err:
        read_points(path)
    assert "ragged.txt" in str(err.value)


def test_short_row_is_ragged_too(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line 3 has 1 columns, expected 2"):
        read_points(write(tmp_path, "1 2\n3 4\n5\n"))


def test_non_numeric_token_names_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"line 2, column 2: 'abc' is not a number"):
        read_points(write(tmp_path, "1 2\n3 abc\n"))


def test_comma_separated_file_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="comma-separated"):
        read_points(write(tmp_path, "1,2\n3,4\n"))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match="no data rows"):
        read_points(path)
    with pytest.raises(ValueError, match="no data rows"):
        peek_dim(path)


def test_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_points(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError) as err:
        resolve_path("nope.txt", data_dir=tmp_path)
    assert str((tmp_path / "nope.txt").resolve()) in str(err.value)
    assert str(Path("nope.txt").resolve()) in str(err.value)


def test_resolve_path_falls_back_to_data_dir(tmp_path: Path) -> None:
    path = write(tmp_path, "1\n", name="in_data_dir.txt")
    assert resolve_path("in_data_dir.txt", data_dir=tmp_path) == path
    assert resolve_path(path) == path


def test_nan_and_inf_rows_are_reported_by_line(tmp_path: Path) -> None:
    path = write(tmp_path, "1 2\n# c\nnan 3\n4 5\n6 -inf\n", name="bad.txt")
    with pytest.raises(ValueError, match=r"2 of 4 rows contain NaN or inf, at lines 3, 5") as err:
        read_points(path)
    assert "bad.txt" in str(err.value)


def test_peek_dim_reads_only_the_first_data_line(tmp_path: Path) -> None:
    # A later ragged line would make read_points fail; peek_dim must not get that far.
    assert peek_dim(write(tmp_path, "# comment\n\n1 2 3\n4 5\n")) == 3


# ----- validate_points ------------------------------------------------------------------------


def test_validate_points_counts_bad_rows_and_names_the_first_few() -> None:
    data = np.zeros((20, 2))
    bad = [1, 3, 4, 8, 11, 15, 19]
    data[bad, 0] = np.nan
    data[4, 1] = np.inf
    with pytest.raises(ValueError) as err:
        validate_points(data, where="my-source")
    msg = str(err.value)
    assert msg.startswith("my-source: 7 of 20 rows contain NaN or inf")
    assert "row indices 1, 3, 4, 8, 11 (first 5 shown)" in msg
    assert validate_points(np.ones((3, 2)), where="ok").shape == (3, 2)


@pytest.mark.parametrize("shape", [(5,), (0, 2), (3, 0), (2, 2, 2)])
def test_validate_points_wants_a_non_empty_matrix(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="src"):
        validate_points(np.zeros(shape), where="src")


# ----- the seed paper's data sets -------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [("mog1d", 1), ("beta1d", 1), ("grid", 2), ("mog5d", 5)])
def test_vendored_data_sets_load(name: str, dim: int) -> None:
    x = load_vendored(name)
    assert x.shape == (10_000, dim)
    assert np.isfinite(x).all()
    assert VENDORED[name].dim == dim
    assert peek_dim(VENDORED[name].path) == dim


def test_vendored_files_keep_their_mit_license() -> None:
    license_text = (VENDORED_DIR / "LICENSE").read_text()
    assert "MIT License" in license_text and "Kulin Shah" in license_text
    assert (VENDORED_DIR / "README.md").is_file()


@pytest.mark.skipif(not SHARED.is_dir(), reason="the upstream copy is not on this machine")
@pytest.mark.parametrize("name", sorted(VENDORED))
def test_vendored_files_are_byte_identical_to_upstream(name: str) -> None:
    assert filecmp.cmp(VENDORED[name].path, SHARED / VENDORED[name].filename, shallow=False)


def test_only_grid_claims_a_known_density() -> None:
    assert {name for name, d in VENDORED.items() if d.log_prob is not None} == {"grid"}


def test_grid_density_is_uniform_on_its_eight_squares(grid) -> None:
    log_prob = VENDORED["grid"].log_prob
    assert log_prob is not None
    lp = log_prob(torch.from_numpy(load_vendored("grid")))
    torch.testing.assert_close(lp, torch.full_like(lp, math.log(1 / 8)))
    points, vol = grid(-1.0, 5.0, 120, 2)
    assert float(log_prob(points).exp().sum() * vol) == pytest.approx(1.0, abs=1e-9)
    white = log_prob(torch.tensor([[1.5, 0.5], [0.5, 3.5], [4.5, 0.5]]))
    assert (white == -math.inf).all()


def test_unknown_vendored_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="beta1d, grid, mog1d, mog5d"):
        load_vendored("mog2d")
