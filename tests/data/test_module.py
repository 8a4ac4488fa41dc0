"""DensityDataModule: event_shape, splits, standardization, true density and loaders."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from unflow_zoo.data import DensityDataModule, dataset_names, get_source
from unflow_zoo.data.files import read_points
from unflow_zoo.data.module import split_sizes


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
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as err:
        DensityDataModule(dataset="mnist")
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
