"""Synthetic sources: shapes, determinism, FFJORD fidelity, and exact densities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unflow_zoo.data.synthetic import (
    Checkerboard,
    Circles,
    EightGaussians,
    GaussianMixture,
    Moons,
    Rings,
    SwissRoll,
    get_source,
    source_names,
)

ALL = source_names()
WITH_DENSITY = ["8gaussians", "checkerboard", "gmm1d", "gmm1d-3"]
HEAVY_TAILED = ["student-t1", "student-t2"]  # known densities too; tested in test_heavy_tailed.py
# Boxes that hold all but a negligible share of the mass (8gaussians: radius 2.83, std 0.35).
BOX = {1: (-12.0, 12.0), 2: (-6.0, 6.0)}


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_registry_holds_the_ffjord_toys_and_mixtures() -> None:
    toys = {"moons", "circles", "rings", "8gaussians", "pinwheel", "2spirals", "checkerboard", "swissroll"}
    assert toys | {"gmm1d", "gmm1d-3"} | set(HEAVY_TAILED) == set(ALL)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 7, 503])
def test_sample_shape_and_finite(name: str, n: int) -> None:
    source = get_source(name)
    x = source.sample(n, rng(0))
    assert x.shape == (n, source.dim)
    assert x.dtype == np.float64
    assert np.isfinite(x).all()


@pytest.mark.parametrize("name", ALL)
def test_sample_is_a_function_of_the_seed(name: str) -> None:
    source = get_source(name)
    a, b, c = source.sample(300, rng(1)), source.sample(300, rng(1)), source.sample(300, rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert len(np.unique(a, axis=0)) == 300  # continuous noise: no repeated points


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_sample_rejects_a_bad_count(bad: object) -> None:
    with pytest.raises(ValueError, match="positive int"):
        get_source("moons").sample(bad, rng(0))  # type: ignore[arg-type]


def test_sample_rejects_a_legacy_random_state() -> None:
    with pytest.raises(TypeError, match="default_rng"):
        get_source("moons").sample(5, np.random.RandomState(0))  # type: ignore[arg-type]


def test_density_is_known_exactly_where_documented() -> None:
    known = {name for name in ALL if get_source(name).has_density}
    assert known == set(WITH_DENSITY) | set(HEAVY_TAILED)
    x = torch.zeros(3, 2)
    for name in set(ALL) - known:
        assert get_source(name).log_prob(x) is None


def test_unknown_source_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown synthetic source 'moon'") as err:
        get_source("moon")
    for name in ALL:
        assert name in str(err.value)


def test_get_source_passes_keyword_arguments() -> None:
    assert get_source("moons", noise=0.0).noise == 0.0


# ----- exact densities ------------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_density_integrates_to_one(name: str, grid) -> None:
    source = get_source(name)
    # 8 cells per unit: the checkerboard's edges (even integers) fall on cell edges.
    points, vol = grid(*BOX[source.dim], 96 if source.dim == 2 else 2400, source.dim)
    lp = source.log_prob(points)
    assert lp.shape == (points.shape[0],) and lp.dtype == torch.float64
    assert float(lp.exp().sum() * vol) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_sample_histogram_matches_density(name: str, grid) -> None:
    source = get_source(name)
    n, low, high = 40_000, *BOX[2]
    x = source.sample(n, rng(5))
    bins = 12 if source.dim == 2 else 48
    edges = np.linspace(low, high, bins + 1)
    freq = np.histogramdd(x, bins=[edges] * source.dim)[0] / n
    # Expected mass per bin by a 10-per-side midpoint rule inside each bin.
    points, vol = grid(low, high, bins * 10, source.dim)
    p = source.log_prob(points).exp().numpy() * vol
    mass = p.reshape([bins, 10] * source.dim).sum(axis=tuple(range(1, 2 * source.dim, 2)))
    # Binomial std of a bin's frequency is below 0.0016 here; 0.01 is six of them.
    np.testing.assert_allclose(freq, mass, atol=0.01)


@pytest.mark.parametrize("name", WITH_DENSITY)
def test_mean_log_density_of_samples_is_minus_the_entropy(name: str, grid) -> None:
    source = get_source(name)
    points, vol = grid(*BOX[source.dim], 240 if source.dim == 2 else 4800, source.dim)
    lp = source.log_prob(points)
    p = lp.exp()
    entropy = float(-(torch.where(p > 0, p * lp, 0.0)).sum() * vol)
    samples = torch.from_numpy(source.sample(20_000, rng(11)))
    lps = source.log_prob(samples)
    assert torch.isfinite(lps).all()
    se = float(lps.std()) / math.sqrt(len(lps))
    assert -float(lps.mean()) == pytest.approx(entropy, abs=5 * se + 1e-3)


def test_checkerboard_entropy_is_log_32(grid) -> None:
    source = Checkerboard()
    lp = source.log_prob(torch.from_numpy(source.sample(1000, rng(0))))
    torch.testing.assert_close(lp, torch.full_like(lp, -math.log(32)))


def test_checkerboard_support() -> None:
    source = Checkerboard()
    x = source.sample(20_000, rng(3))
    assert (x >= -4).all() and (x < 4).all()
    cells = np.floor(x / 2).astype(int)
    assert ((cells.sum(axis=1) % 2) == 0).all()  # black squares only
    assert len(np.unique(cells, axis=0)) == 8
    lp = source.log_prob(torch.tensor([[1.0, 1.0], [1.0, -1.0], [5.0, 1.0], [-3.0, -3.0]]))
    assert lp[0] == lp[3] == -math.log(32)
    assert lp[1] == lp[2] == -math.inf


def test_eight_gaussians_are_ffjords_mixture() -> None:
    x = EightGaussians().sample(40_000, rng(4))
    r = 1 / math.sqrt(2)
    unit = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)])
    centres = 4 * unit / 1.414
    nearest = np.argmin(((x[:, None, :] - centres) ** 2).sum(-1), axis=1)
    for k in range(8):
        cluster = x[nearest == k]
        assert len(cluster) / len(x) == pytest.approx(1 / 8, abs=0.01)
        np.testing.assert_allclose(cluster.mean(axis=0), centres[k], atol=0.02)
        np.testing.assert_allclose(cluster.std(axis=0), 0.5 / 1.414, rtol=0.05)


def test_eight_gaussians_entropy_is_nearly_that_of_separate_components() -> None:
    # Components sit six standard deviations apart, so H ~ log 8 + H(N(0, s^2 I)).
    source = EightGaussians()
    s = 0.5 / 1.414
    lp = source.log_prob(torch.from_numpy(source.sample(50_000, rng(9))))
    assert -float(lp.mean()) == pytest.approx(math.log(8) + 1 + math.log(2 * math.pi * s**2), abs=0.02)


def test_gaussian_mixture_matches_torch_distributions() -> None:
    g = np.random.default_rng(0)
    means, stds, weights = g.normal(size=(4, 3)), g.uniform(0.3, 2.0, size=(4, 3)), np.array([0.1, 0.2, 0.3, 0.4])
    source = GaussianMixture(means, stds, weights)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=torch.tensor(weights)),
        torch.distributions.Independent(torch.distributions.Normal(torch.tensor(means), torch.tensor(stds)), 1),
    )
    x = torch.randn(50, 3, dtype=torch.float64) * 3
    torch.testing.assert_close(source.log_prob(x), reference.log_prob(x))
    torch.testing.assert_close(source.log_prob(x.float()), reference.log_prob(x))  # float64 math for any input


def test_gaussian_mixture_broadcasts_isotropic_stds() -> None:
    source = GaussianMixture([[0.0, 0.0], [3.0, 3.0]], stds=[1.0, 2.0])
    np.testing.assert_array_equal(source.stds, [[1.0, 1.0], [2.0, 2.0]])
    np.testing.assert_array_equal(source.weights, [0.5, 0.5])
    assert source.dim == 2


def test_gmm1d_presets() -> None:
    gmm = get_source("gmm1d")
    np.testing.assert_array_equal(gmm.means[:, 0], [-2.5, 2.5])
    np.testing.assert_array_equal(gmm.stds[:, 0], [1.0, 1.0])
    assert gmm.dim == 1 and gmm.name == "gmm1d"
    three = get_source("gmm1d-3")
    assert three.dim == 1 and len(three.weights) == 3 and len(set(three.weights)) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"means": [0.0, 1.0], "weights": [0.5, 0.4]}, "sum to 1"),
        ({"means": [0.0, 1.0], "weights": [1.2, -0.2]}, "positive"),
        ({"means": [0.0, 1.0], "weights": [1.0]}, "expected 2 weights"),
        ({"means": [0.0, 1.0], "stds": [1.0, -1.0]}, "std must be positive"),
        ({"means": [[0.0, 1.0]], "stds": [1.0, 2.0, 3.0]}, "do not fit means"),
        ({"means": []}, "K >= 1"),
    ],
)
def test_gaussian_mixture_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**kwargs)


def test_log_prob_checks_the_shape() -> None:
    with pytest.raises(ValueError, match=r"expected points of shape \(n, 1\)"):
        get_source("gmm1d").log_prob(torch.zeros(4, 2))


# ----- FFJORD fidelity of the toys without a density -------------------------------------------


def test_moons_and_circles_match_scikit_learn_without_noise() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    n = 101

    def rows(a: np.ndarray) -> np.ndarray:
        return a[np.lexsort(a.T[::-1])]

    moons = Moons(noise=0.0).sample(n, rng(0))
    ref = datasets.make_moons(n, noise=0.0, shuffle=False)[0] * 2 + np.array([-1, -0.2])
    np.testing.assert_allclose(rows(moons), rows(ref), atol=1e-12)
    circles = Circles(noise=0.0).sample(n, rng(0))
    ref = datasets.make_circles(n, factor=0.5, noise=0.0, shuffle=False)[0] * 3
    np.testing.assert_allclose(rows(circles), rows(ref), atol=1e-12)


def test_rings_radii_without_noise() -> None:
    x = Rings(noise=0.0).sample(402, rng(0))
    radii, counts = np.unique(np.linalg.norm(x, axis=1).round(9), return_counts=True)
    np.testing.assert_allclose(radii, [0.75, 1.5, 2.25, 3.0])
    np.testing.assert_array_equal(counts, [102, 100, 100, 100])


def test_swissroll_lies_on_the_roll_without_noise() -> None:
    x = SwissRoll(noise=0.0).sample(500, rng(0)) * 5
    t = np.linalg.norm(x, axis=1)
    assert (t >= 1.5 * np.pi).all() and (t <= 4.5 * np.pi).all()
    np.testing.assert_allclose(x, np.stack([t * np.cos(t), t * np.sin(t)], 1), atol=1e-9)


def test_pinwheel_radius_moments() -> None:
    # Rotations keep norms: |x|^2 = 4 |f|^2 with f ~ N((1, 0), diag(0.3^2, 0.1^2)).
    x = get_source("pinwheel").sample(40_000, rng(0))
    assert float((x**2).sum(axis=1).mean()) == pytest.approx(4 * (1 + 0.09 + 0.01), rel=0.01)


def test_two_spirals_are_point_symmetric() -> None:
    x = get_source("2spirals").sample(40_000, rng(0))
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.03)
    assert np.linalg.norm(x, axis=1).max() < (3 * np.pi + 1) / 3 + 0.6
