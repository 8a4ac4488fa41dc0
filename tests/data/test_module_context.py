"""DensityDataModule with a context: conditional sources and files with context columns serve (x, c)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from unflow_zoo.data import DensityDataModule
from unflow_zoo.data.conditional import conditional_source_names, get_conditional_source
from unflow_zoo.errors import ConfigError, DataError


@pytest.mark.parametrize("name", conditional_source_names())
def test_conditional_sources_serve_x_and_context(name: str) -> None:
    dm = DensityDataModule(name, n_samples=1000, batch_size=64, seed=3)
    source = get_conditional_source(name)
    assert dm.context_features == source.context_dim and dm.event_shape == (source.dim,)
    dm.setup()
    for loader, n in ((dm.train_dataloader(), 800), (dm.val_dataloader(), 100), (dm.test_dataloader(), 100)):
        x, c = next(iter(loader))
        assert x.shape[1:] == (source.dim,) and c.shape == (x.shape[0], source.context_dim)
        assert x.dtype == c.dtype == torch.float32
        assert sum(len(b[0]) for b in loader) == n
    # the served truth is p(x | c) of the source, on the same rows
    x, c = dm.test_data, dm.test_context
    torch.testing.assert_close(
        dm.true_log_prob(x, c), source.log_prob(x.double(), c.double()).float(), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(DataError, match="needs the context"):
        dm.true_log_prob(x)
    # same seed, same splits and contexts
    again = DensityDataModule(name, n_samples=1000, batch_size=64, seed=3)
    again.setup()
    assert torch.equal(again.train_context, dm.train_context) and torch.equal(again.train_data, dm.train_data)


def test_standardised_conditional_data_keep_the_truth_in_served_units() -> None:
    dm = DensityDataModule("gaussian-by-context", n_samples=2000, standardize=True)
    dm.setup()
    x, c = dm.test_data, dm.test_context
    raw = dm.transform_to_raw(x.double())
    expected = get_conditional_source("gaussian-by-context").log_prob(raw, c.double()) + dm.std.log().sum()
    torch.testing.assert_close(dm.true_log_prob(x.double(), c), expected)
    assert abs(float(dm.train_data.mean())) < 0.05  # x is standardised ...
    assert float(dm.train_context.abs().max()) <= 1.0  # ... the context is served raw


def test_file_with_context_columns(tmp_path) -> None:
    rng = np.random.default_rng(0)
    c = rng.normal(size=(300, 2))
    x = c[:, :1] * 2 + 0.1 * rng.normal(size=(300, 1))
    table = np.concatenate([c[:, :1], x, c[:, 1:]], axis=1)  # context in columns 0 and 2
    path = tmp_path / "pairs.txt"
    np.savetxt(path, table)
    dm = DensityDataModule("file", path=str(path), context_columns=[0, 2], val_fraction=0.0, test_fraction=0.2)
    assert dm.event_shape == (1,) and dm.context_features == 2
    dm.setup()
    xb, cb = next(iter(dm.train_dataloader()))
    assert xb.shape[1] == 1 and cb.shape[1] == 2
    rows = np.concatenate([dm.train_context.numpy()[:, :1], dm.train_data.numpy(), dm.train_context.numpy()[:, 1:]], 1)
    # every served row is a row of the file, with its own context
    assert all(np.isclose(table, r, atol=1e-5).all(1).any() for r in rows[:20])


def test_context_column_errors(tmp_path) -> None:
    path = tmp_path / "p.txt"
    np.savetxt(path, np.zeros((10, 3)))
    with pytest.raises(ConfigError, match="distinct column indices"):
        DensityDataModule("file", path=str(path), context_columns=[0, 3])
    with pytest.raises(ConfigError, match="distinct column indices"):
        DensityDataModule("file", path=str(path), context_columns=[1, 1])
    with pytest.raises(ConfigError, match="leave no data column"):
        DensityDataModule("file", path=str(path), context_columns=[0, 1, 2])
    with pytest.raises(ConfigError, match="names columns of a file"):
        DensityDataModule("moons", context_columns=[0])
    with pytest.raises(ConfigError, match="serves its own context"):
        DensityDataModule("two-moons-sbi", context_columns=[0])


def test_model_and_data_that_disagree_about_the_context_fail_before_training() -> None:
    from unflow_zoo.models.maf import MaskedAutoregressiveFlow

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"serves a context of width 4.*context_features=0.*context_features=4"):
        trainer.fit(MaskedAutoregressiveFlow(event_shape=(2,)), DensityDataModule("8gaussians-by-label", n_samples=500))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"'moons' serves a context of width 0.*context_features=3"):
        trainer.fit(
            MaskedAutoregressiveFlow(event_shape=(2,), context_features=3), DensityDataModule("moons", n_samples=500)
        )
