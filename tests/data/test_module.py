"""DensityDataModule: event_shape, splits, standardization, true density and loaders."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Transform
from unflow_zoo.data import DensityDataModule, dataset_names, get_source
from unflow_zoo.data.files import read_points
from unflow_zoo.data.module import split_sizes
from unflow_zoo.errors import ConfigError, DataError, DataTypeError
from unflow_zoo.models.base import FlowModule


def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.tolist()}


def sorted_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    a = np.asarray(x)
    return a[np.lexsort(a.T[::-1])]


def three_column_file(tmp_path: Path, n: int = 50) -> Path:
    path = tmp_path / "three.txt"
    values = np.random.default_rng(0).normal(size=(n, 3))
    path.write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in values) + "\n")
    return path


# ----- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "shape"),
    [
        ("moons", (2,)),
        ("gmm1d", (1,)),
        ("8gaussians", (2,)),
        ("mog1d", (1,)),
        ("beta1d", (1,)),
        ("grid", (2,)),
        ("mog5d", (5,)),
    ],
)
def test_event_shape_is_known_before_setup(dataset: str, shape: tuple[int, ...]) -> None:
    dm = DensityDataModule(dataset=dataset)
    assert dm.event_shape == shape
    assert dm.train_data is None  # nothing generated or read yet


def test_event_shape_of_a_file_comes_from_its_first_line(tmp_path: Path) -> None:
    path = three_column_file(tmp_path)
    dm = DensityDataModule(dataset="file", path=path.name, data_dir=str(tmp_path))
    assert dm.event_shape == (3,) and dm.train_data is None
    dm.setup()
    np.testing.assert_allclose(
        sorted_rows(torch.cat([dm.train_data, dm.val_data, dm.test_data])),
        sorted_rows(read_points(path).astype(np.float32)),
    )


def test_hyperparameters_are_saved_for_the_cli() -> None:
    dm = DensityDataModule(dataset="gmm1d", batch_size=32, seed=3)
    expected = set(inspect.signature(DensityDataModule.__init__).parameters) - {"self"}
    assert set(dm.hparams) == expected
    assert dm.hparams.batch_size == 32 and dm.hparams.seed == 3 and dm.hparams.dataset == "gmm1d"


def test_constructor_is_fully_type_hinted() -> None:
    params = inspect.signature(DensityDataModule.__init__).parameters
    assert all(p.annotation is not inspect.Parameter.empty for n, p in params.items() if n != "self")


def test_dataset_names() -> None:
    names = dataset_names()
    assert {"moons", "8gaussians", "checkerboard", "gmm1d", "mog1d", "beta1d", "grid", "mog5d", "file"} <= set(names)
    assert len(names) == len(set(names))


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'fashion-mnist'") as err:
        DensityDataModule(dataset="fashion-mnist")
    assert all(name in str(err.value) for name in dataset_names())


def test_file_dataset_needs_a_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs path="):
        DensityDataModule(dataset="file")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        DensityDataModule(dataset="file", path="missing.txt", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": -0.1}, "val_fraction must be in"),
        ({"test_fraction": 1.0}, "test_fraction must be in"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "nothing to train on"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_samples": 0}, "n_samples"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DensityDataModule(**kwargs)


# ----- splits ---------------------------------------------------------------------------------


def test_splits_are_disjoint_and_sized_by_the_fractions() -> None:
    dm = DensityDataModule(dataset="moons", n_samples=1000, val_fraction=0.1, test_fraction=0.2)
    dm.setup()
    assert (len(dm.train_data), len(dm.val_data), len(dm.test_data)) == (700, 100, 200)
    for t in (dm.train_data, dm.val_data, dm.test_data):
        assert t.dtype == torch.float32 and t.shape[1:] == (2,)
    train, val, test = rows(dm.train_data), rows(dm.val_data), rows(dm.test_data)
    assert len(train | val | test) == 1000
    assert not (train & val or train & test or val & test)


def test_paper_split_of_a_shipped_file() -> None:
    dm = DensityDataModule(dataset="mog1d", val_fraction=0.0, test_fraction=0.1)
    dm.setup()
    assert (len(dm.train_data), len(dm.val_data), len(dm.test_data)) == (9000, 0, 1000)
    assert dm.val_dataloader() == []
    served = torch.cat([dm.train_data, dm.test_data])
    np.testing.assert_array_equal(sorted_rows(served), sorted_rows(read_points(dm.file).astype(np.float32)))


def test_no_test_split_gives_an_empty_test_loader() -> None:
    dm = DensityDataModule(dataset="gmm1d", n_samples=100, test_fraction=0.0)
    assert dm.test_dataloader() == []
    assert len(dm.val_dataloader().dataset) == 10


@given(n=st.integers(40, 100_000), vf=st.floats(0, 0.45), tf=st.floats(0, 0.45))
def test_split_sizes_add_up(n: int, vf: float, tf: float) -> None:
    n_train, n_val, n_test = split_sizes(n, vf, tf)
    assert n_train + n_val + n_test == n and n_train >= 1
    for size, frac in ((n_val, vf), (n_test, tf)):
        assert (size >= 1) == (frac > 0)  # a positive fraction never rounds to an empty split
        assert abs(size - n * frac) <= 1


def test_split_sizes_refuse_to_leave_nothing_to_train_on() -> None:
    assert split_sizes(3, 0.1, 0.1) == (1, 1, 1)
    with pytest.raises(ValueError, match="leave 0 for training"):
        split_sizes(4, 0.49, 0.49)


def test_setup_is_deterministic_and_seeded() -> None:
    def data(seed: int, **kw: float) -> DensityDataModule:
        dm = DensityDataModule(dataset="8gaussians", n_samples=500, seed=seed, **kw)
        dm.setup()
        return dm

    a, b, c = data(0), data(0), data(1)
    for name in ("train_data", "val_data", "test_data"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    assert not torch.equal(a.train_data, c.train_data)
    # Other fractions re-split the same draw rather than drawing new points.
    d = data(0, val_fraction=0.3)
    all_a = torch.cat([a.train_data, a.val_data, a.test_data])
    all_d = torch.cat([d.train_data, d.val_data, d.test_data])
    np.testing.assert_array_equal(sorted_rows(all_a), sorted_rows(all_d))


def test_setup_is_idempotent() -> None:
    dm = DensityDataModule(dataset="gmm1d", n_samples=200, standardize=True)
    dm.setup("fit")
    train, mean = dm.train_data, dm.mean
    dm.setup("test")
    assert dm.train_data is train and dm.mean is mean


def test_nan_in_a_file_is_refused_at_setup(tmp_path: Path) -> None:
    path = tmp_path / "with_nan.txt"
    path.write_text("1 2\n3 4\nnan 5\n6 7\n")
    dm = DensityDataModule(dataset="file", path=str(path))
    with pytest.raises(ValueError, match=r"with_nan.txt: 1 of 4 rows contain NaN or inf, at lines 3"):
        dm.setup()


# ----- standardization and the true density ---------------------------------------------------


def test_standardize_uses_training_statistics() -> None:
    dm = DensityDataModule(dataset="checkerboard", n_samples=2000, standardize=True)
    dm.setup()
    train = dm.train_data.double()
    torch.testing.assert_close(train.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5, rtol=0)
    assert dm.mean.shape == dm.std.shape == (2,)
    raw_val = dm.transform_to_raw(dm.val_data.double())
    assert (raw_val.abs() <= 4).all()  # back on the board
    torch.testing.assert_close(dm.raw_to_served(raw_val).float(), dm.val_data)


def test_without_standardize_the_data_are_served_raw() -> None:
    dm = DensityDataModule(dataset="mog5d")
    dm.setup()
    torch.testing.assert_close(dm.transform_to_raw(dm.train_data), dm.train_data, rtol=0, atol=0)
    raw = torch.from_numpy(read_points(dm.file)).float()
    assert rows(dm.train_data) <= rows(raw)


@pytest.mark.parametrize("dataset", ["8gaussians", "checkerboard", "gmm1d", "gmm1d-3", "grid"])
def test_true_log_prob_of_standardized_data_integrates_to_one(dataset: str, grid) -> None:
    dm = DensityDataModule(dataset=dataset, n_samples=2000, standardize=True)
    dm.setup()
    dim = dm.event_shape[0]
    low, high, cells = {"grid": (-1.0, 5.0, 120), "checkerboard": (-6.0, 6.0, 240)}.get(
        dataset, (-8.0, 8.0, 200 if dim == 2 else 3200)
    )
    # A grid aligned with the raw data's square edges, mapped into served coordinates by hand.
    raw, raw_vol = grid(low, high, cells, dim)
    served = (raw - dm.mean) / dm.std
    vol = raw_vol / float(dm.std.prod())
    assert not torch.allclose(dm.std, torch.ones(dim, dtype=torch.float64))  # the test needs a real rescaling
    assert float(dm.true_log_prob(served).exp().sum() * vol) == pytest.approx(1.0, abs=1e-4)


def test_true_log_prob_is_the_change_of_variables_formula() -> None:
    dm = DensityDataModule(dataset="8gaussians", n_samples=1000, standardize=True)
    dm.setup()
    x = dm.test_data.double()
    expected = get_source("8gaussians").log_prob(x * dm.std + dm.mean) + torch.log(dm.std).sum()
    torch.testing.assert_close(dm.true_log_prob(x), expected)


def _paper_split(dataset: str, **kwargs) -> DensityDataModule:
    dm = DensityDataModule(dataset=dataset, val_fraction=0.0, test_fraction=0.1, seed=0, **kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize("dataset", ["mog1d", "grid", "mog5d"])
def test_ball_scaling_divides_by_twice_the_largest_training_norm(dataset: str) -> None:
    raw, ball = _paper_split(dataset), _paper_split(dataset, scaling="ball")
    dim = raw.event_shape[0]
    s = 2.0 * float(raw.train_data.double().norm(dim=1).max())
    assert ball.scaling == "ball" and not ball.hparams.standardize
    torch.testing.assert_close(ball.mean, torch.zeros(dim, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(ball.std, torch.full((dim,), s, dtype=torch.float64), rtol=1e-7, atol=0)
    # the same split, divided by s and not centred; training points in the ball of radius 1/2
    for served, unscaled in ((ball.train_data, raw.train_data), (ball.test_data, raw.test_data)):
        torch.testing.assert_close(served.double(), unscaled.double() / s, rtol=1e-6, atol=1e-7)
    assert float(ball.train_data.double().norm(dim=1).max()) == pytest.approx(0.5, rel=1e-6)


def test_ball_scaling_round_trips_between_raw_and_served() -> None:
    dm = _paper_split("grid", scaling="ball")
    raw = _paper_split("grid").test_data.double()
    served = dm.raw_to_served(raw)
    torch.testing.assert_close(served.float(), dm.test_data)
    torch.testing.assert_close(dm.transform_to_raw(served), raw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dm.raw_to_served(dm.transform_to_raw(dm.train_data.double())), dm.train_data.double())


@pytest.mark.parametrize("dataset", ["grid", "8gaussians", "gmm1d"])
def test_true_log_prob_under_ball_scaling_agrees_with_a_standardized_module(dataset: str) -> None:
    ball, std = _paper_split(dataset, scaling="ball"), _paper_split(dataset, standardize=True)
    raw = std.transform_to_raw(std.test_data.double())
    # log p_served = log p_raw + sum_d log s_d for either scaling, so both give the same raw density
    lp_ball = ball.true_log_prob(ball.raw_to_served(raw)) - torch.log(ball.std).sum()
    lp_std = std.true_log_prob(std.raw_to_served(raw)) - torch.log(std.std).sum()
    torch.testing.assert_close(lp_ball, lp_std)
    torch.testing.assert_close(lp_ball, _paper_split(dataset).true_log_prob(raw))
    assert not torch.allclose(ball.std, std.std)  # two different scalings


def test_true_log_prob_under_ball_scaling_fits_the_statistics_first() -> None:
    dm = DensityDataModule(dataset="grid", val_fraction=0.0, scaling="ball")
    x = torch.zeros(3, 2, dtype=torch.float64)
    lp = dm.true_log_prob(x)  # calls setup(): s is needed
    assert dm.is_setup and not torch.allclose(dm.std, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(lp, _paper_split("grid").true_log_prob(x) + torch.log(dm.std).sum())


def test_standardize_is_a_synonym_of_scaling_standardize() -> None:
    by_flag, by_name = _paper_split("grid", standardize=True), _paper_split("grid", scaling="standardize")
    assert by_flag.scaling == by_name.scaling == "standardize"
    assert by_flag.hparams.standardize and by_name.hparams.standardize  # what the pretrained records read
    torch.testing.assert_close(by_flag.std, by_name.std, rtol=0, atol=0)
    torch.testing.assert_close(by_flag.train_data, by_name.train_data, rtol=0, atol=0)
    assert _paper_split("grid", scaling="none").scaling == DensityDataModule(dataset="grid").scaling == "none"
    # the recorded arguments rebuild the same module (as the pretrained loader does)
    for dm in (by_name, _paper_split("grid", scaling="ball")):
        args = {k: v for k, v in dict(dm.hparams).items() if not k.startswith("_")}
        rebuilt = DensityDataModule(**args)
        rebuilt.setup()
        assert rebuilt.scaling == dm.scaling
        torch.testing.assert_close(rebuilt.std, dm.std, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"standardize": True, "scaling": "ball"}, "standardize=True means scaling='standardize'.*'ball'"),
        ({"standardize": True, "scaling": "none"}, "conflicts with scaling='none'"),
        ({"scaling": "minmax"}, "unknown scaling 'minmax'; choose one of: none, standardize, ball"),
    ],
)
def test_conflicting_or_unknown_scaling_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DensityDataModule(dataset="grid", **kwargs)


def test_scaling_is_ignored_with_a_warning_for_images() -> None:
    with pytest.warns(UserWarning, match="ignores scaling='ball'"):
        DensityDataModule(dataset="digits", scaling="ball")


def test_data_are_served_in_float32_or_in_the_dtype_asked_for() -> None:
    dm32, dm64 = (
        DensityDataModule(dataset="moons", n_samples=100),
        DensityDataModule(dataset="moons", n_samples=100, dtype="float64"),
    )
    dm32.setup(), dm64.setup()
    assert dm32.dtype == dm32.train_data.dtype == dm32.val_data.dtype == torch.float32
    assert dm64.dtype == dm64.train_data.dtype == dm64.test_data.dtype == torch.float64
    torch.testing.assert_close(dm64.train_data.float(), dm32.train_data)  # the same points
    assert next(iter(dm64.train_dataloader()))[0].dtype == torch.float64
    with pytest.warns(UserWarning, match="ignores dtype='float64'"):
        assert DensityDataModule(dataset="digits", dtype="float64").dtype == torch.float32


def test_bad_data_and_bad_arguments_raise_the_package_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        DensityDataModule(batch_size=0)
    with pytest.raises(DataError, match="leave 0 for training"):
        split_sizes(2, 0.5, 0.5)
    with pytest.raises(DataError, match="expected a batch of shape"):
        DensityDataModule(dataset="gmm1d").true_log_prob(torch.zeros(3, 2))
    with pytest.raises(DataTypeError, match="expected a torch.Tensor batch"):
        DensityDataModule(dataset="gmm1d").true_log_prob(np.zeros((3, 1)))


def test_true_log_prob_keeps_dtype_and_shape() -> None:
    dm = DensityDataModule(dataset="gmm1d", n_samples=100)
    x = torch.linspace(-3, 3, 7)[:, None]
    lp32, lp64 = dm.true_log_prob(x), dm.true_log_prob(x.double())
    assert lp32.dtype == torch.float32 and lp64.dtype == torch.float64 and lp64.shape == (7,)
    torch.testing.assert_close(lp32, lp64.float())
    with pytest.raises(ValueError, match=r"expected a batch of shape \(B, 1\)"):
        dm.true_log_prob(torch.zeros(4, 2))


@pytest.mark.parametrize(
    ("dataset", "known"), [("moons", False), ("mog5d", False), ("8gaussians", True), ("grid", True)]
)
def test_has_true_density(dataset: str, known: bool) -> None:
    dm = DensityDataModule(dataset=dataset, n_samples=100)
    assert dm.has_true_density is known
    x = torch.zeros(3, *dm.event_shape)
    assert (dm.true_log_prob(x) is not None) is known


def test_true_log_prob_of_a_file_is_unknown(tmp_path: Path) -> None:
    dm = DensityDataModule(dataset="file", path=str(three_column_file(tmp_path)))
    assert not dm.has_true_density and dm.true_log_prob(torch.zeros(2, 3)) is None


# ----- loaders --------------------------------------------------------------------------------


def test_train_loader_covers_the_training_set_once_in_a_seeded_order() -> None:
    dm = DensityDataModule(dataset="moons", n_samples=1000, batch_size=256)
    batches = list(dm.train_dataloader())
    assert all(isinstance(b, (tuple, list)) and len(b) == 1 for b in batches)
    assert [len(b[0]) for b in batches] == [256, 256, 256, 32]  # drop_last=False keeps the tail
    seen = torch.cat([b[0] for b in batches])
    assert seen.dtype == torch.float32 and seen.shape == (800, 2)
    np.testing.assert_array_equal(sorted_rows(seen), sorted_rows(dm.train_data))
    assert not torch.equal(seen, dm.train_data)  # shuffled
    twin = DensityDataModule(dataset="moons", n_samples=1000, batch_size=256)
    torch.testing.assert_close(next(iter(twin.train_dataloader()))[0], batches[0][0], rtol=0, atol=0)


def test_eval_loaders_keep_order_and_use_eval_batch_size() -> None:
    dm = DensityDataModule(dataset="gmm1d", n_samples=1000, batch_size=16, eval_batch_size=64)
    for loader, data in ((dm.val_dataloader(), dm.val_data), (dm.test_dataloader(), dm.test_data)):
        batches = [b[0] for b in loader]
        assert [len(b) for b in batches] == [64, 36]
        torch.testing.assert_close(torch.cat(batches), data, rtol=0, atol=0)
    assert DensityDataModule(dataset="gmm1d", batch_size=16).val_dataloader().batch_size == 16


@pytest.mark.filterwarnings("ignore:Total length of .list. across ranks is zero")
def test_lightning_fit_skips_validation_when_val_fraction_is_zero(trainer_factory) -> None:
    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.loc = torch.nn.Parameter(torch.zeros(2))
            self.val_batches = 0

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            return (batch[0] - self.loc).square().mean()

        def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            self.val_batches += 1

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for val_fraction, expected in ((0.0, 0), (0.1, 1)):
        dm, probe = DensityDataModule(dataset="moons", n_samples=200, batch_size=50, val_fraction=val_fraction), Probe()
        trainer_factory(max_epochs=1, num_sanity_val_steps=0).fit(probe, datamodule=dm)
        assert probe.val_batches == expected
        assert float(probe.loc.detach().abs().sum()) > 0  # it trained on the served batches


# ----- images: digits and MNIST ---------------------------------------------------------------

DIGITS_SPLIT = (1437, 180, 180)  # 1797 images, val_fraction = test_fraction = 0.1


def digits(**kwargs: object) -> DensityDataModule:
    dm = DensityDataModule(dataset="digits", **kwargs)  # type: ignore[arg-type]
    dm.setup()
    return dm


def pixel_rows(x: torch.Tensor) -> np.ndarray:
    return sorted_rows(x.reshape(x.shape[0], -1).numpy().astype(np.float64))


@pytest.mark.parametrize(("flatten", "shape"), [(False, (1, 8, 8)), (True, (64,))])
def test_digits_event_shape_is_known_before_setup(flatten: bool, shape: tuple[int, ...]) -> None:
    dm = DensityDataModule(dataset="digits", flatten=flatten)
    assert dm.event_shape == shape and dm.is_image and dm.train_data is None
    assert dm.preprocess is not None and dm.preprocess.levels == 17
    assert not dm.has_true_density and dm.true_log_prob(torch.zeros(2, *shape)) is None
    assert dm.pixel_log_det(torch.zeros(2, *shape)) is not None


@pytest.mark.parametrize("logit_alpha", [None, 0.05])
def test_digits_splits_are_deterministic_and_in_range(logit_alpha: float | None) -> None:
    a, b, c = digits(logit_alpha=logit_alpha), digits(logit_alpha=logit_alpha), digits(logit_alpha=logit_alpha, seed=1)
    assert (len(a.train_pixels), len(a.val_pixels), len(a.test_pixels)) == DIGITS_SPLIT
    for name in ("train_pixels", "val_pixels", "test_pixels", "train_data", "val_data", "test_data"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.test_pixels, c.test_pixels)
    # the three splits partition the 1797 images
    from unflow_zoo.data.images import load_digits

    served = torch.cat([a.train_pixels, a.val_pixels, a.test_pixels])
    np.testing.assert_array_equal(pixel_rows(served), pixel_rows(torch.from_numpy(load_digits())))
    for pixels, data in ((a.train_pixels, a.train_data), (a.val_pixels, a.val_data), (a.test_pixels, a.test_data)):
        assert pixels.dtype == torch.uint8 and int(pixels.max()) <= 16
        assert data.dtype == torch.float32 and data.shape == (len(pixels), 1, 8, 8)
        if logit_alpha is None:
            assert float(data.min()) >= -0.5 and float(data.max()) <= 0.5
        else:
            bound = math.log((1 - logit_alpha) / logit_alpha)
            assert float(data.abs().max()) <= bound + 1e-5
        # served data map back into each pixel's dequantisation cell [k, k + 1)
        y = a.transform_to_raw(data.double())
        assert ((y - pixels.double()) >= -1e-4).all() and ((y - pixels.double()) < 1 + 1e-4).all()


def test_digits_training_batches_are_dequantised_afresh_each_epoch_but_reproducibly() -> None:
    dm = DensityDataModule(dataset="digits", batch_size=500, flatten=True)
    loader = dm.train_dataloader()
    epochs = [torch.cat([b[0] for b in loader]) for _ in range(2)]
    centres = dm.train_pixels.reshape(-1, 64).double() + 0.5
    for x in epochs:
        assert x.shape == (1437, 64) and x.dtype == torch.float32
        # every served image lies in the cell [k, k + 1)^64 of some training image, and every
        # training image has a served one in its cell (float32 round-off aside)
        dist = torch.cdist(dm.transform_to_raw(x.double()), centres, p=float("inf"))
        assert float(dist.min(dim=1).values.max()) <= 0.5 + 1e-4
        assert float(dist.min(dim=0).values.max()) <= 0.5 + 1e-4
    # same images, new noise: the sorted served values differ between epochs
    assert not torch.equal(epochs[0].flatten().sort().values, epochs[1].flatten().sort().values)
    # and the stream is a function of the seed alone
    twin = DensityDataModule(dataset="digits", batch_size=500, flatten=True)
    twin_loader = twin.train_dataloader()
    for epoch in epochs:
        torch.testing.assert_close(torch.cat([b[0] for b in twin_loader]), epoch, rtol=0, atol=0)


def test_digits_validation_and_test_noise_is_fixed() -> None:
    dm = digits(batch_size=64, eval_batch_size=100)
    for loader_fn, data in ((dm.val_dataloader, dm.val_data), (dm.test_dataloader, dm.test_data)):
        first = torch.cat([b[0] for b in loader_fn()])
        second = torch.cat([b[0] for b in loader_fn()])
        torch.testing.assert_close(first, data, rtol=0, atol=0)
        torch.testing.assert_close(second, first, rtol=0, atol=0)
        assert not torch.equal(first, torch.round(first * 17) / 17)  # it was dequantised
    # the training epochs do not change the evaluation noise
    next(iter(dm.train_dataloader()))
    torch.testing.assert_close(torch.cat([b[0] for b in dm.val_dataloader()]), dm.val_data, rtol=0, atol=0)


def test_digits_without_dequantisation_serve_the_pixels_through_the_map() -> None:
    dm = digits(dequantize=False)
    torch.testing.assert_close(dm.test_data, dm.test_pixels.float() / 17 - 0.5)
    with pytest.raises(ValueError, match="logit_alpha=0 without dequantisation"):
        DensityDataModule(dataset="digits", dequantize=False, logit_alpha=0.0)


def test_pixel_log_det_matches_the_autograd_jacobian_of_the_served_map() -> None:
    dm = digits(logit_alpha=0.05, flatten=True)
    y = dm.transform_to_raw(dm.test_data[:3].double())
    for row in y:
        jac = torch.autograd.functional.jacobian(dm.raw_to_served, row)
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(dm.pixel_log_det(dm.raw_to_served(row)[None])[0], expected, rtol=0, atol=1e-8)
    assert dm.pixel_log_det(dm.test_data[:5]).shape == (5,)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(B, 64\)"):
        dm.pixel_log_det(torch.zeros(2, 1, 8, 8))
    assert DensityDataModule(dataset="moons").pixel_log_det(torch.zeros(2, 2)) is None


def test_image_only_arguments_on_tabular_data_and_ignored_ones_warn() -> None:
    with pytest.warns(UserWarning, match="ignores flatten=True, logit_alpha=0.05"):
        DensityDataModule(dataset="moons", flatten=True, logit_alpha=0.05)
    with pytest.warns(UserWarning, match="ignores standardize=True"):
        DensityDataModule(dataset="digits", standardize=True)
    with pytest.warns(UserWarning, match="ignores test_fraction=0.2"):
        DensityDataModule(dataset="mnist", test_fraction=0.2)
    with pytest.warns(UserWarning, match="val_fraction=0.3 is used only as on/off"):
        DensityDataModule(dataset="mnist", val_fraction=0.3)


class _IdentityTransform(Transform):
    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return y, y.new_zeros(y.shape[0])


class _StandardNormalFlow(FlowModule):
    """q(x) = N(x; 0, I) over the served data: the identity flow, so every number is known by hand."""

    def build_flow(self) -> Flow:
        return Flow(_IdentityTransform(), self.make_base())


@pytest.mark.parametrize(("logit_alpha", "flatten"), [(0.05, False), (1e-6, True), (None, False)])
def test_bits_per_dim_by_hand_without_dequantisation(trainer_factory, logit_alpha: float | None, flatten: bool) -> None:
    """Pixels k served as x = logit(a + (1 - 2a) k / 17) with q = N(0, I):

    -log p(k) = -log q(x) - sum_d [log((1 - 2a)/17) - log s_d - log(1 - s_d)], bits/dim = that / (64 ln 2),
    all computed here from the integer pixels with math, not with the package's code."""
    dm = DensityDataModule(dataset="digits", dequantize=False, logit_alpha=logit_alpha, flatten=flatten)
    dm.setup()
    model = _StandardNormalFlow(event_shape=dm.event_shape)
    result = trainer_factory().test(model, datamodule=dm, verbose=False)[0]
    k = dm.test_pixels.double().reshape(-1, 64).numpy()
    if logit_alpha is None:
        x = k / 17 - 0.5
        log_det = np.full(len(k), -64 * math.log(17))
    else:
        s = logit_alpha + (1 - 2 * logit_alpha) * k / 17
        x = np.log(s) - np.log1p(-s)
        log_det = (math.log((1 - 2 * logit_alpha) / 17) - np.log(s) - np.log1p(-s)).sum(1)
    nll_x = 0.5 * (x**2).sum(1) + 32 * math.log(2 * math.pi)
    expected_bpd = float(np.mean(nll_x - log_det) / (64 * math.log(2)))
    assert result["test_nll"] == pytest.approx(float(nll_x.mean()), rel=1e-5)
    assert result["test_bpd"] == pytest.approx(expected_bpd, rel=1e-5)


def test_bits_per_dim_with_dequantisation_by_hand_from_the_pixels(trainer_factory) -> None:
    """Same, dequantised: y = x mapped back (checked to lie in [k, k + 1)); the log-det is
    computed from y, the other side of the map from the one FlowModule uses."""
    alpha = 0.05
    dm = DensityDataModule(dataset="digits", logit_alpha=alpha)
    dm.setup()
    result = trainer_factory().test(_StandardNormalFlow(event_shape=(1, 8, 8)), datamodule=dm, verbose=False)[0]
    x = dm.test_data.double().reshape(-1, 64).numpy()
    s = 1 / (1 + np.exp(-x))
    y = (s - alpha) / (1 - 2 * alpha) * 17
    k = dm.test_pixels.double().reshape(-1, 64).numpy()
    assert (y >= k - 1e-4).all() and (y < k + 1 + 1e-4).all() and (y - k).std() > 0.2  # noisy, in the cell
    log_det = (math.log((1 - 2 * alpha) / 17) - np.log(s) - np.log1p(-s)).sum(1)
    nll_x = 0.5 * (x**2).sum(1) + 32 * math.log(2 * math.pi)
    assert result["test_bpd"] == pytest.approx(float(np.mean(nll_x - log_det) / (64 * math.log(2))), rel=1e-5)


def test_maf_trains_on_flattened_digits_and_reports_finite_bits_per_dim(trainer_factory) -> None:
    from unflow_zoo.models.registry import create_model

    dm = DensityDataModule(dataset="digits", flatten=True, logit_alpha=0.05, batch_size=128)
    model = create_model("maf", event_shape=dm.event_shape, n_layers=2, hidden=[64], lr=1e-3)
    trainer = trainer_factory(max_epochs=1, limit_train_batches=5, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert math.isfinite(result["test_bpd"]) and math.isfinite(result["test_nll"])
    # bits/dim of the pixels, not of the logit space: the NLL shifted by the mean log-det
    shift = float(dm.pixel_log_det(dm.test_data).double().mean())
    assert result["test_bpd"] == pytest.approx((result["test_nll"] - shift) / (64 * math.log(2)), rel=1e-4)
    assert math.isfinite(result["test_gaussian_nll"])  # the Gaussian baseline fits the flattened data


def _write_tiny_idx_mnist(folder: Path, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    """MNIST-format IDX files (magic 0x00000803, big-endian sizes, then the pixels) of random images."""
    import struct

    rng = np.random.default_rng(7)
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", n_train), ("test", n_test))}
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train-images-idx3-ubyte"), ("test", "t10k-images-idx3-ubyte")):
        header = struct.pack(">I3I", 0x0803, *images[split].shape)
        (folder / name).write_bytes(header + images[split].tobytes())
    return images


@pytest.mark.parametrize("flatten", [False, True])
def test_mnist_from_local_idx_files_uses_the_maf_split(tmp_path: Path, flatten: bool) -> None:
    images = _write_tiny_idx_mnist(tmp_path / "mnist")
    dm = DensityDataModule(dataset="mnist", data_dir=str(tmp_path), flatten=flatten, logit_alpha=1e-6, batch_size=4)
    assert dm.event_shape == ((784,) if flatten else (1, 28, 28)) and dm.train_data is None
    dm.setup()
    # the last sixth of the official training set validates (10 000 of 60 000; here 2 of 12)
    np.testing.assert_array_equal(dm.train_pixels[:, 0].numpy(), images["train"][:10])
    np.testing.assert_array_equal(dm.val_pixels[:, 0].numpy(), images["train"][10:])
    np.testing.assert_array_equal(dm.test_pixels[:, 0].numpy(), images["test"])
    assert dm.preprocess is not None and dm.preprocess.levels == 256
    assert dm.test_data.shape == (5, *dm.event_shape)
    y = dm.transform_to_raw(dm.test_data.double()).reshape(5, 1, 28, 28)
    k = dm.test_pixels.double()
    assert ((y - k) > -1e-3).all() and ((y - k) < 1 + 1e-3).all()  # logit 1e-6 in float32: ~1e-4 pixels
    batch = next(iter(dm.train_dataloader()))[0]
    assert batch.shape == (4, *dm.event_shape) and torch.isfinite(batch).all()
    all_train = DensityDataModule(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.0)
    all_train.setup()
    assert len(all_train.train_pixels) == 12 and all_train.val_dataloader() == []


def test_missing_mnist_fails_at_setup_with_where_and_how(tmp_path: Path) -> None:
    dm = DensityDataModule(dataset="mnist", data_dir=str(tmp_path))  # construction reads nothing
    assert dm.event_shape == (1, 28, 28)
    with pytest.raises(FileNotFoundError, match="--data.download true") as err:
        dm.setup()
    assert str(tmp_path) in str(err.value)


# ----- UCI --------------------------------------------------------------------------------------

UCI_NAMES = ("power", "gas", "hepmass", "miniboone", "bsds300")


@pytest.mark.parametrize("name", UCI_NAMES)
def test_uci_event_shape_comes_from_the_table_without_loading(name: str, tmp_path: Path) -> None:
    uci = pytest.importorskip("unflow_zoo.data.uci")
    assert name in dataset_names()
    dm = DensityDataModule(dataset=name, data_dir=str(tmp_path / "empty"))
    assert dm.event_shape == (uci.UCI_DATASETS[name],) and dm.train_data is None
    assert not dm.is_image and dm.pixel_log_det(torch.zeros(2, *dm.event_shape)) is None
    assert not dm.has_true_density


def test_uci_serves_the_published_splits_unchanged(tmp_path: Path, trainer_factory) -> None:
    uci = pytest.importorskip("unflow_zoo.data.uci")
    raw = np.random.default_rng(0).normal(size=(300, 8))
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", raw)
    expected = uci.load_uci("power", tmp_path, cache=False)
    dm = DensityDataModule(dataset="power", data_dir=str(tmp_path), batch_size=50)
    dm.setup()
    for served, published in zip((dm.train_data, dm.val_data, dm.test_data), expected, strict=True):
        assert served.dtype == torch.float32
        np.testing.assert_array_equal(served.numpy(), published)
    # tabular: bits/dim is the NLL over D ln 2, no pixel correction
    result = trainer_factory().test(_StandardNormalFlow(event_shape=(6,)), datamodule=dm, verbose=False)[0]
    assert result["test_bpd"] == pytest.approx(result["test_nll"] / (6 * math.log(2)), rel=1e-6)


def test_uci_warns_that_fractions_and_standardize_are_ignored(tmp_path: Path) -> None:
    pytest.importorskip("unflow_zoo.data.uci")
    with pytest.warns(UserWarning, match=r"ignores val_fraction=0.2, standardize=True"):
        DensityDataModule(dataset="gas", data_dir=str(tmp_path), val_fraction=0.2, standardize=True)


def test_missing_uci_files_fail_at_setup_not_construction(tmp_path: Path) -> None:
    pytest.importorskip("unflow_zoo.data.uci")
    dm = DensityDataModule(dataset="miniboone", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError):
        dm.setup()


@pytest.mark.slow
def test_digits_noise_with_worker_processes_is_reproducible_and_fresh_each_epoch() -> None:
    """In workers the noise comes from PyTorch's per-worker seeds, drawn from the module's generator."""

    def two_epochs() -> list[torch.Tensor]:
        dm = DensityDataModule(dataset="digits", batch_size=256, num_workers=2, flatten=True)
        loader = dm.train_dataloader()
        return [torch.cat([b[0] for b in loader]) for _ in range(2)]

    a, b = two_epochs(), two_epochs()
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    assert not torch.equal(a[0].sort(0).values, a[1].sort(0).values)


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    from unflow_zoo.data.module import EpochSampler

    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50)) and list(b) == first
    a.set_epoch(1)
    assert list(a) != first  # a new order every epoch ...
    b.set_epoch(1)
    assert list(a) == list(b)  # ... that depends on (seed, epoch) only, not on how many came before


def test_resumed_fit_continues_the_shuffle_order(tmp_path, trainer_factory):
    """Fit 2 epochs straight == fit 1 epoch, checkpoint, resume to 2 (same weights)."""
    import lightning as L

    from unflow_zoo.models import create_model

    def run(epochs, ckpt=None, save=None):
        L.seed_everything(0)
        dm = DensityDataModule("moons", n_samples=256, batch_size=32, val_fraction=0.0, test_fraction=0.0, seed=1)
        model = create_model("maf", event_shape=(2,), n_layers=2, hidden=[8])
        trainer = trainer_factory(max_epochs=epochs, enable_checkpointing=False)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    straight = run(2)
    run(1, save=tmp_path / "e1.ckpt")
    resumed = run(2, ckpt=tmp_path / "e1.ckpt")
    torch.testing.assert_close(resumed, straight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("download", [True, False])
def test_prepare_data_downloads_uci_and_mnist_once_before_setup(monkeypatch, download):
    import unflow_zoo.data.module as module_mod
    import unflow_zoo.data.uci as uci_mod

    calls: list[tuple] = []
    monkeypatch.setattr(uci_mod, "load_uci", lambda name, data_dir, download=False: calls.append((name, download)))
    monkeypatch.setattr(module_mod, "load_mnist", lambda data_dir, download=False: calls.append(("mnist", download)))
    for dataset in ("power", "mnist", "moons"):
        DensityDataModule(dataset, download=download).prepare_data()
    assert calls == ([("power", True), ("mnist", True)] if download else [])
