"""Class-conditional images: context="label" serves each image with its one-hot class, aligned with
the images, for digits (scikit-learn's targets) and MNIST (IDX label files, the HF 'label' column)."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from unflow_zoo.data import DensityDataModule
from unflow_zoo.data.images import MNIST_HF_ID, load_digits, load_mnist
from unflow_zoo.data.module import DequantizingCollate
from unflow_zoo.errors import ConfigError, DataError, MissingFileError

SPLITS = ("train", "val", "test")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 00 00 08 NN, big-endian uint32 sizes, the bytes."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def tiny_mnist(n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        split: (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8))
        for split, n in (("train", n_train), ("test", n_test))
    }


def write_idx(folder: Path, data: dict, *, labels: bool = True, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
    for split, (image_name, label_name) in names.items():
        images, lab = data[split]
        files = [(image_name, idx_bytes(images))] + ([(label_name, idx_bytes(lab))] if labels else [])
        for name, raw in files:
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)


def hf_dict(data: dict):  # type: ignore[no-untyped-def]
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"image": [Image.fromarray(a, mode="L") for a in images], "label": lab.tolist()}, features=features
            )
            for split, (images, lab) in data.items()
        }
    )


def assert_labelled(loaded: dict, data: dict) -> None:
    assert set(loaded) == {"train", "test"}
    for split, (images, lab) in data.items():
        got_images, got_labels = loaded[split]
        np.testing.assert_array_equal(got_images[:, 0], images)
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_labels, lab)


# ----- the loaders ----------------------------------------------------------------------------------


def test_digits_labels_are_scikit_learns_targets() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    pixels, labels = load_digits(labels=True)
    bunch = sklearn_digits()
    assert labels.dtype == np.int64 and labels.shape == (1797,)
    np.testing.assert_array_equal(labels, bunch.target)
    np.testing.assert_array_equal(pixels, load_digits())  # the same images as without labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_labels_from_idx_label_files(tmp_path: Path, gz: bool) -> None:
    data = tiny_mnist()
    write_idx(tmp_path / "mnist", data, gz=gz)
    assert_labelled(load_mnist(tmp_path, labels=True), data)
    plain = load_mnist(tmp_path)  # without labels: the images alone, as before
    np.testing.assert_array_equal(plain["train"][:, 0], data["train"][0])


def test_mnist_labels_from_a_save_to_disk_folder(tmp_path: Path) -> None:
    data = tiny_mnist(seed=1)
    hf_dict(data).save_to_disk(str(tmp_path / "mnist"))
    assert_labelled(load_mnist(tmp_path, labels=True), data)


def test_mnist_labels_from_parquet_files(tmp_path: Path) -> None:
    data = tiny_mnist(seed=2)
    for split, ds in hf_dict(data).items():
        ds.to_parquet(str(tmp_path / "mnist" / f"{split}-00000-of-00001.parquet"))
    assert_labelled(load_mnist(tmp_path, labels=True), data)


def test_mnist_labels_from_the_datasets_cache(tmp_path: Path) -> None:
    import pyarrow as pa

    data = tiny_mnist(seed=3)
    folder = tmp_path / "huggingface" / MNIST_HF_ID.replace("/", "___") / "mnist" / "0.0.0" / "abc123"
    folder.mkdir(parents=True)
    for split, ds in hf_dict(data).items():
        table = ds.data.table
        with (
            pa.OSFile(str(folder / f"mnist-{split}.arrow"), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table)
    assert_labelled(load_mnist(tmp_path, labels=True), data)


def test_idx_images_without_their_label_files_say_what_is_missing(tmp_path: Path) -> None:
    write_idx(tmp_path, tiny_mnist(), labels=False)
    load_mnist(tmp_path)  # the images alone are fine
    with pytest.raises(MissingFileError, match=r"found the MNIST train images .* not their labels.*train-labels-idx1"):
        load_mnist(tmp_path, labels=True)
    dm = DensityDataModule("mnist", data_dir=str(tmp_path), context="label")
    with pytest.raises(FileNotFoundError, match="context='label' needs"):
        dm.setup()


def test_malformed_labels_are_refused(tmp_path: Path) -> None:
    data = tiny_mnist()
    data["train"] = (data["train"][0], np.full(12, 12, dtype=np.uint8))
    write_idx(tmp_path / "range", data)
    with pytest.raises(DataError, match=r"labels must be integers in 0..9, got values in \[12, 12\]"):
        load_mnist(tmp_path / "range", labels=True)
    data["train"] = (data["train"][0], np.zeros(11, dtype=np.uint8))
    write_idx(tmp_path / "count", data)
    with pytest.raises(DataError, match=r"12 MNIST train images but labels of shape \(11,\)"):
        load_mnist(tmp_path / "count", labels=True)
    datasets = pytest.importorskip("datasets")
    unlabelled = datasets.DatasetDict({s: hf_dict(tiny_mnist())[s].remove_columns("label") for s in ("train", "test")})
    unlabelled.save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(DataError, match="need a 'label' column"):
        load_mnist(tmp_path / "nolabel", labels=True)


# ----- the data module ------------------------------------------------------------------------------


@pytest.mark.parametrize("flatten", [False, True])
def test_digits_with_labels_serve_the_same_images_with_their_one_hot_class(flatten: bool) -> None:
    seed = 4
    plain = DensityDataModule("digits", seed=seed, flatten=flatten)
    dm = DensityDataModule("digits", seed=seed, flatten=flatten, context="label")
    assert dm.context_features == 10 and plain.context_features == 0
    assert dm.event_shape == plain.event_shape == ((64,) if flatten else (1, 8, 8))
    plain.setup(), dm.setup()
    # the split order, as DigitsData draws it, against scikit-learn's own targets
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    order = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1]).permutation(1797)
    start = 0
    for s in SPLITS:
        pixels, context = getattr(dm, f"{s}_pixels"), getattr(dm, f"{s}_context")
        rows = order[start : start + len(pixels)]
        start += len(pixels)
        np.testing.assert_array_equal(pixels[:, 0].numpy(), bunch.images[rows].astype(np.uint8))
        assert context.dtype == torch.float32 and context.shape == (len(pixels), 10)
        assert set(context.unique().tolist()) == {0.0, 1.0} and bool((context.sum(1) == 1).all())
        np.testing.assert_array_equal(context.argmax(1).numpy(), bunch.target[rows])
        # labels change nothing else: same pixels, same fixed noise, same served data
        for what in ("pixels", "data"):
            torch.testing.assert_close(getattr(dm, f"{s}_{what}"), getattr(plain, f"{s}_{what}"), rtol=0, atol=0)
    assert start == 1797


def test_labelled_loaders_carry_the_context_and_the_same_noise() -> None:
    dm = DensityDataModule("digits", batch_size=500, flatten=True, context="label")
    plain = DensityDataModule("digits", batch_size=500, flatten=True)
    labelled_epoch, plain_epoch = list(dm.train_dataloader()), list(plain.train_dataloader())
    assert all(len(b) == 2 for b in labelled_epoch) and all(len(b) == 1 for b in plain_epoch)
    for (x, c), (x_plain,) in zip(labelled_epoch, plain_epoch, strict=True):
        assert c.shape == (len(x), 10)
        torch.testing.assert_close(x, x_plain, rtol=0, atol=0)  # the context does not shift the noise stream
    # each served image comes with its own label: the epoch's order is the sampler's, a function of the seed
    from unflow_zoo.data.module import EpochSampler

    order = list(EpochSampler(len(dm.train_pixels), dm.hparams.seed))
    c = torch.cat([b[1] for b in labelled_epoch])
    torch.testing.assert_close(c, dm.train_context[order], rtol=0, atol=0)
    y = dm.transform_to_raw(torch.cat([b[0] for b in labelled_epoch]).double())
    cell = dm.train_pixels[order].reshape(-1, 64).double()
    assert float((y - cell).min()) >= -1e-4 and float((y - cell).max()) < 1 + 1e-4  # image i is pixels[order[i]]
    for loader, data, context in ((dm.val_dataloader(), dm.val_data, dm.val_context),
                                  (dm.test_dataloader(), dm.test_data, dm.test_context)):  # fmt: skip
        xs, cs = zip(*loader, strict=True)
        torch.testing.assert_close(torch.cat(xs), data, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat(cs), context, rtol=0, atol=0)


def test_the_collate_passes_the_context_through() -> None:
    from unflow_zoo.data.preprocess import PixelPreprocess

    pixels = torch.randint(0, 17, (6, 1, 8, 8), dtype=torch.uint8)
    context = torch.eye(10)[torch.arange(6)]

    def make() -> DequantizingCollate:
        return DequantizingCollate(
            PixelPreprocess(17), flatten=True, dequantize=True, generator=torch.Generator().manual_seed(0)
        )

    x, c = make()(list(zip(pixels, context, strict=True)))
    (x_alone,) = make()([(p,) for p in pixels])
    assert torch.equal(c, context) and torch.equal(x, x_alone) and x.shape == (6, 64)


def test_mnist_with_labels_follows_the_maf_split(tmp_path: Path) -> None:
    data = tiny_mnist()
    write_idx(tmp_path / "mnist", data)
    dm = DensityDataModule("mnist", data_dir=str(tmp_path), context="label", flatten=True, batch_size=4)
    assert dm.context_features == 10 and dm.event_shape == (784,)
    dm.setup()
    (train, train_labels), (test, test_labels) = data["train"], data["test"]
    for s, images, lab in (("train", train[:10], train_labels[:10]), ("val", train[10:], train_labels[10:]),
                           ("test", test, test_labels)):  # fmt: skip
        np.testing.assert_array_equal(getattr(dm, f"{s}_pixels")[:, 0].numpy(), images)
        np.testing.assert_array_equal(getattr(dm, f"{s}_context").argmax(1).numpy(), lab)
    x, c = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 784) and c.shape == (4, 10)


def test_bits_per_dim_of_a_label_conditional_flow(trainer_factory) -> None:
    """The context reaches the model in training and evaluation; bits/dim are accounted as without it."""
    from unflow_zoo.models.registry import create_model

    dm = DensityDataModule("digits", flatten=True, logit_alpha=0.05, batch_size=128, context="label")
    model = create_model("maf", event_shape=dm.event_shape, n_layers=1, hidden=[32], context_features=10)
    trainer = trainer_factory(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    shift = float(dm.pixel_log_det(dm.test_data).double().mean())
    assert math.isfinite(result["test_nll"])
    assert result["test_bpd"] == pytest.approx((result["test_nll"] - shift) / (64 * math.log(2)), rel=1e-4)
    with torch.no_grad():
        nll = -model.log_prob(dm.test_data, dm.test_context).double().mean()
    assert float(nll) == pytest.approx(result["test_nll"], rel=1e-4)


def test_label_contexts_are_recorded_and_rebuilt() -> None:
    dm = DensityDataModule("digits", context="label", seed=2)
    rebuilt = DensityDataModule(**{k: v for k, v in dict(dm.hparams).items() if not k.startswith("_")})
    dm.setup(), rebuilt.setup()
    assert rebuilt.context_features == 10 and torch.equal(rebuilt.test_context, dm.test_context)


def test_context_label_is_for_image_sets_only() -> None:
    with pytest.raises(ConfigError, match="dataset='moons' has no labels"):
        DensityDataModule("moons", context="label")
    with pytest.raises(ConfigError, match="context_columns names columns of a file.*serves its own context"):
        DensityDataModule("digits", context="label", context_columns=[0])
