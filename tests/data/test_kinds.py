"""One DataKind per kind of source behind DensityDataModule: the splits are those of the code before
the refactor, bit for bit where the data are exact, and the module delegates to its kind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from unflow_zoo.data import DensityDataModule, dataset_names
from unflow_zoo.data.kinds import (
    ARRAYS,
    ArrayData,
    ConditionalData,
    DataKind,
    DigitsData,
    FileData,
    LoadRequest,
    MNISTData,
    ShippedData,
    SyntheticData,
    UCIData,
    make_kind,
)
from unflow_zoo.data.module import split_sizes
from unflow_zoo.errors import ConfigError


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(t.numpy()).tobytes()).hexdigest()[:16]


def head(t: torch.Tensor, i: int) -> list[float]:
    return [float(v) for v in t.reshape(t.shape[0], -1)[i, :4]]


# ----- the splits of the code before the refactor ---------------------------------------------------
# Computed with the module as it was before DataKind existed (same arguments, same seed): the
# split sizes, the first and last served row of each split (up to 4 coordinates), the fitted
# scale and the first row of the first training batch. Exact data (pixels, values read from
# text, one-hot contexts) are also compared bit for bit by sha256; values from sin/cos/exp are
# compared to 1e-6, as libm may differ in the last bit between machines.

REFERENCE: dict[str, dict] = {
    "moons": {
        "kwargs": {"dataset": "moons", "n_samples": 500, "seed": 3},
        "n": (400, 50, 50),
        "first": ([-1.2793956995010376, 1.573482871055603], [0.8255978226661682, 0.019225476309657097],
                  [-1.6695741415023804, 1.8718366622924805]),
        "last": ([-3.0992724895477295, -0.135423943400383], [-2.6128463745117188, 1.62020742893219],
                 [2.0130791664123535, -0.6999123096466064]),
        "std": [1.0, 1.0],
        "batch0": [1.05295729637146, 0.38413524627685547],
    },
    "8gaussians-std": {
        "kwargs": {"dataset": "8gaussians", "n_samples": 400, "seed": 1, "standardize": True},
        "n": (320, 40, 40),
        "first": ([-0.01024818979203701, -1.212593674659729], [0.8139595985412598, -0.8659297227859497],
                  [1.4258897304534912, 0.043898098170757294]),
        "last": ([1.3702819347381592, -0.020316295325756073], [-1.0554697513580322, 0.8462136387825012],
                 [-0.15968507528305054, -1.2463284730911255]),
        "mean": [0.18564048284736084, 0.08072214322600715],
        "std": [1.9911803244051551, 2.051422025796857],
        "batch0": [1.1431474685668945, 0.14707304537296295],
    },
    "gaussian-by-context": {
        "kwargs": {"dataset": "gaussian-by-context", "n_samples": 300, "seed": 2},
        "n": (240, 30, 30),
        "first": ([-2.233201742172241, -0.5855783820152283], [-1.8934764862060547, -0.4872635304927826],
                  [1.8358829021453857, 0.8573493957519531]),
        "last": ([-1.4817591905593872, -0.22867736220359802], [0.4532979130744934, -0.7270082235336304],
                 [-2.1762757301330566, -0.15093867480754852]),
        "context_first": ([-0.4252433776855469], [-0.33052006363868713], [0.7399206161499023]),
        "batch0": [-1.4359681606292725, -0.0998932495713234],
    },
    "8gaussians-by-label": {
        "kwargs": {"dataset": "8gaussians-by-label", "n_samples": 300, "seed": 5},
        "n": (240, 30, 30),
        "first": ([-2.750274658203125, 0.36465027928352356], [-2.4806957244873047, -2.1602463722229004],
                  [2.8226935863494873, -0.2092609852552414]),
        "last": ([-2.4375104904174805, 2.1257758140563965], [-0.7100452780723572, 2.2156121730804443],
                 [1.538402795791626, 1.7324377298355103]),
        "context_sha": ("fef7d28109015e2b", "69e5334f7af71549", "9effa452b53e55f9"),
        "batch0": [-0.10016070306301117, 2.835538148880005],
    },
    "grid": {
        "kwargs": {"dataset": "grid", "val_fraction": 0.0, "test_fraction": 0.1},
        "n": (9000, 0, 1000),
        "sha": ("986dbcd0c882e907", "e3b0c44298fc1c14", "9d832b9790bf1ef7"),
        "batch0": [1.4980549812316895, 1.3626539707183838],
    },
    "mog5d-ball": {
        "kwargs": {"dataset": "mog5d", "scaling": "ball", "seed": 4},
        "n": (8000, 1000, 1000),
        "first": (
            [-0.09054335206747055, 0.04291551560163498, -0.004585426766425371, 0.048100199550390244],
            [0.025216620415449142, -0.23750068247318268, -0.017311491072177887, 0.023535260930657387],
            [-0.022438103333115578, 0.15571899712085724, 0.0311640165746212, 0.06971967220306396],
        ),
        "std": [3.7196103265508875] * 5,
        "batch0": [-0.020693296566605568, -0.11867102980613708, -0.10572720319032669, -0.053296979516744614],
    },
    "digits": {
        "kwargs": {"dataset": "digits", "seed": 0},
        "n": (1437, 180, 180),
        "pixel_sha": ("bacaf90af3c230ce", "8855c33ea7ebc38f", "2169cd88f5ce7b71"),
        "first": (
            [-0.4742972254753113, -0.44697195291519165, -0.18379107117652893, 0.14747530221939087],
            [-0.4783957004547119, -0.45916879177093506, 0.1519756317138672, 0.22951555252075195],
            [-0.47516825795173645, -0.4634503126144409, -0.20824584364891052, 0.3208940029144287],
        ),
        "batch0": [-0.48553189635276794, -0.45599400997161865, -0.17498299479484558, 0.22609031200408936],
    },
    "digits-logit": {
        "kwargs": {"dataset": "digits", "seed": 2, "logit_alpha": 0.05, "flatten": True, "val_fraction": 0.2},
        "n": (1258, 359, 180),
        "pixel_sha": ("985ab50bc1a5e1ae", "8fe92eee9a552393", "58005600d7e961f7"),
        "first": (
            [-2.4954912662506104, -1.3459018468856812, 0.6698309183120728, 1.2431973218917847],
            [-2.806936264038086, -2.616626262664795, -2.1713218688964844, -0.2234916090965271],
            [-2.476822853088379, -2.738983631134033, 1.8887009620666504, 1.2519407272338867],
        ),
        "batch0": [-2.9133810997009277, -2.6430740356445312, -2.3106703758239746, 0.5236004590988159],
    },
}  # fmt: skip

SPLITS = ("train", "val", "test")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_splits_are_those_of_the_module_before_the_refactor(name: str) -> None:
    ref = REFERENCE[name]
    dm = DensityDataModule(**ref["kwargs"])
    dm.setup()
    data = [getattr(dm, f"{s}_data") for s in SPLITS]
    assert tuple(len(d) for d in data) == ref["n"]
    close = {"rtol": 0.0, "atol": 1e-6}
    for key, index in (("first", 0), ("last", -1)):
        for d, expected in zip(data, ref.get(key, [None] * 3), strict=True):
            if expected is not None:
                torch.testing.assert_close(torch.tensor(head(d, index)), torch.tensor(expected), **close)
    for i, s in enumerate(SPLITS):
        if "sha" in ref:
            assert sha(getattr(dm, f"{s}_data")) == ref["sha"][i], s
        if "pixel_sha" in ref:
            assert sha(getattr(dm, f"{s}_pixels")) == ref["pixel_sha"][i], s
        if "context_sha" in ref:
            assert sha(getattr(dm, f"{s}_context")) == ref["context_sha"][i], s
        if "context_first" in ref:
            torch.testing.assert_close(
                torch.tensor(head(getattr(dm, f"{s}_context"), 0)), torch.tensor(ref["context_first"][i]), **close
            )
    for key in ("mean", "std"):
        if key in ref:
            torch.testing.assert_close(getattr(dm, key)[: len(ref[key])], torch.tensor(ref[key], dtype=torch.float64))
    torch.testing.assert_close(torch.tensor(head(next(iter(dm.train_dataloader()))[0], 0)), torch.tensor(ref["batch0"]))


def test_a_file_with_context_columns_keeps_its_split_bit_for_bit(tmp_path: Path) -> None:
    """Values read from text are exact, so the split order is checked by sha256 of every split."""
    table = np.round(np.random.default_rng(0).normal(size=(200, 4)), 5)
    np.savetxt(tmp_path / "tab.txt", table, fmt="%.5f")
    dm = DensityDataModule("file", path=str(tmp_path / "tab.txt"), context_columns=[3, 0], seed=7, standardize=True)
    dm.setup()
    contexts = ("334309bbe546d2c0", "36ca382850e121d3", "21a6c9d790ed55d6")
    firsts = ([-0.23557281494140625, -3.526233434677124], [0.6503437757492065, -1.2034441232681274],
              [1.0041511058807373, 1.1613948345184326])  # fmt: skip
    for s, context_sha, first in zip(SPLITS, contexts, firsts, strict=True):
        assert sha(getattr(dm, f"{s}_context")) == context_sha
        torch.testing.assert_close(torch.tensor(head(getattr(dm, f"{s}_data"), 0)), torch.tensor(first))


# ----- one kind per source ---------------------------------------------------------------------------


def _module(dataset: str, tmp_path: Path) -> DensityDataModule:
    if dataset == "file":
        np.save(tmp_path / "x.npy", np.zeros((10, 3)))
        return DensityDataModule("file", path=str(tmp_path / "x.npy"))
    if dataset == ARRAYS:
        return DensityDataModule.from_arrays(np.zeros((10, 3)))
    return DensityDataModule(dataset, data_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("dataset", "kind"),
    [
        ("moons", SyntheticData),
        ("gmm1d", SyntheticData),
        ("two-moons-sbi", ConditionalData),
        ("grid", ShippedData),
        ("file", FileData),
        (ARRAYS, ArrayData),
        ("power", UCIData),
        ("digits", DigitsData),
        ("mnist", MNISTData),
    ],
)
def test_the_module_holds_one_kind_and_reports_what_it_says(dataset: str, kind: type, tmp_path: Path) -> None:
    dm = _module(dataset, tmp_path)
    assert type(dm.kind) is kind and isinstance(dm.kind, DataKind)
    assert dm.event_shape == dm.kind.event_shape and dm.context_features == dm.kind.context_features
    assert dm.has_true_density == dm.kind.has_density and dm.data_name == dm.kind.name
    assert dm.preprocess is dm.kind.preprocess and dm.is_image == (dm.kind.preprocess is not None)
    assert dm.in_memory == (dataset == ARRAYS)
    assert dataset in dataset_names()


def test_the_legacy_attributes_come_from_the_kind(tmp_path: Path) -> None:
    moons = DensityDataModule("moons")
    assert moons.source is moons.kind.source and moons.conditional is None and moons.file is None
    pairs = DensityDataModule("two-moons-sbi")
    assert pairs.conditional is pairs.kind.source and pairs.source is None
    assert DensityDataModule("mog5d").file is not None and DensityDataModule("mog5d").file.name == "mog5d.txt"
    with pytest.raises(ConfigError, match="not drawn from a synthetic source"):
        pairs.source = moons.source


def test_a_kind_loads_by_itself_what_the_module_serves() -> None:
    """The protocol alone, without a module: the same request gives the module's (unscaled) splits."""
    dm = DensityDataModule("8gaussians-by-label", n_samples=200, seed=9, dtype="float64")
    dm.setup()
    request = LoadRequest(
        seed=9, n_samples=200, val_fraction=0.1, test_fraction=0.1, dtype=np.dtype(np.float64),
        data_dir=Path("."), download=False,
    )  # fmt: skip
    splits = make_kind("8gaussians-by-label", data_dir=Path(".")).load(request)
    for split, s in zip(splits, SPLITS, strict=True):
        np.testing.assert_array_equal(split.x, getattr(dm, f"{s}_data").numpy())
        np.testing.assert_array_equal(split.context, getattr(dm, f"{s}_context").numpy())
    assert [len(split) for split in splits] == list(split_sizes(200, 0.1, 0.1))


def test_the_ignored_arguments_are_the_kinds_own() -> None:
    assert DensityDataModule("moons").kind.ignored == ({"flatten": False, "dequantize": True, "logit_alpha": None},)
    assert {"test_fraction": 0.1} in DensityDataModule("mnist").kind.ignored
    with pytest.warns(UserWarning, match="dataset='power' ignores standardize=True"):
        DensityDataModule("power", standardize=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "moons", "context": "label"}, "context='label' serves the class label of an image set"),
        ({"dataset": "two-moons-sbi", "context": "label"}, "it serves its own context"),
        ({"dataset": "digits", "context": "class"}, "unknown context 'class'; choose one of: none, label"),
        ({"dataset": ARRAYS}, r"DensityDataModule.from_arrays\(x, context\)"),
        ({"dataset": "file"}, r"needs path=: a data file \(text with one point per line, .csv, .npy or .npz\)"),
    ],
)
def test_arguments_a_kind_cannot_serve_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DensityDataModule(**kwargs)


def test_every_kind_pickles_for_ddp_spawn(tmp_path: Path) -> None:
    import pickle

    for dataset in ("moons", "two-moons-sbi", "grid", "file", ARRAYS, "power", "digits", "mnist"):
        dm = _module(dataset, tmp_path)
        again = pickle.loads(pickle.dumps(dm))
        assert type(again.kind) is type(dm.kind) and again.event_shape == dm.event_shape
