"""Outlier scores and detection metrics: hand-computed cases and a flow trained on sklearn digits."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits

from unflow_zoo.core.distributions import StandardNormal
from unflow_zoo.core.flow import Flow
from unflow_zoo.core.transform import Compose
from unflow_zoo.models import create_model
from unflow_zoo.ood import make_outliers, ood_metrics, ood_report, score


def test_metrics_on_a_hand_computed_case():
    # in: 1, 2, 3, 4; outliers: 3.5, 5, 6, 7.
    # AUROC = P(out > in) = (3 + 4 + 4 + 4) / 16 (3.5 beats 1, 2, 3);
    # ranked from the top: P P P N P -> AP = (1 + 1 + 1 + 4/5) / 4 = 0.95;
    # all outliers flagged needs threshold 3.5, which flags 4 only: FPR95 = 1/4.
    m = ood_metrics(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([3.5, 5.0, 6.0, 7.0]))
    assert m["auroc"] == pytest.approx(15 / 16)
    assert m["aupr"] == pytest.approx(0.95, abs=1e-6)
    assert m["fpr95"] == pytest.approx(0.25)


def test_metrics_on_perfect_reversed_and_tied_scores():
    lo, hi = torch.arange(20.0), torch.arange(20.0) + 100
    assert ood_metrics(lo, hi) == pytest.approx({"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0})
    rev = ood_metrics(hi, lo)
    assert rev["auroc"] == pytest.approx(0.0) and rev["fpr95"] == pytest.approx(1.0)
    # every score tied: AUROC 1/2, AP = share of positives, and flagging anything flags all
    tie = ood_metrics(torch.zeros(6), torch.zeros(2))
    assert tie == pytest.approx({"auroc": 0.5, "aupr": 0.25, "fpr95": 1.0})


def test_large_and_infinite_scores_keep_their_order():
    # NLLs far beyond a sigmoid's range must not tie (torchmetrics squashes values outside [0, 1])
    m = ood_metrics(torch.tensor([100.0, 200.0]), torch.tensor([150.0, math.inf]))
    assert m["auroc"] == pytest.approx(0.75)
    m = ood_metrics(torch.tensor([1000.0, 1001.0]), torch.tensor([1002.0, math.nan]))
    assert m["auroc"] == pytest.approx(1.0)


def test_score_kinds_by_hand():
    flow = Flow(Compose([]), StandardNormal(2))
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    nll = score(flow, x)
    expected = torch.tensor([math.log(2 * math.pi), math.log(2 * math.pi) + 12.5], dtype=torch.float64)
    torch.testing.assert_close(nll, expected)
    torch.testing.assert_close(score(flow, x, "typicality", train_nll=3.0), (expected - 3.0).abs())
    torch.testing.assert_close(score(flow, x, batch_size=1), nll)
    with pytest.raises(ValueError, match="train_nll"):
        score(flow, x, "typicality")
    with pytest.raises(ValueError, match="unknown score kind"):
        score(flow, x, "energy")


def test_make_outliers():
    ref = torch.randn(200, 3) * torch.tensor([1.0, 5.0, 0.1]) + 2
    noise = make_outliers("noise", ref, seed=1)
    assert noise.shape == ref.shape and noise.dtype == ref.dtype
    assert (noise >= ref.min(0).values).all() and (noise <= ref.max(0).values).all()
    torch.testing.assert_close(noise, make_outliers("noise", ref, seed=1))
    assert not torch.equal(noise, make_outliers("noise", ref, seed=2))
    torch.testing.assert_close(make_outliers("shift", ref) - ref, (2 * ref.std(0)).expand_as(ref))
    inv = make_outliers("invert", ref)
    torch.testing.assert_close(inv + ref, (ref.min(0).values + ref.max(0).values).expand_as(ref))
    img = torch.rand(4, 1, 8, 8)
    rolled = make_outliers("shift", img)
    torch.testing.assert_close(rolled[:, :, 3:, 3:], img[:, :, :-3, :-3])
    with pytest.raises(ValueError, match="unknown outlier kind"):
        make_outliers("blur", ref)


def _digits() -> torch.Tensor:
    """sklearn's 8x8 digits, flattened, dequantised (seeded uniform noise) and scaled to [0, 1]."""
    pixels = torch.from_numpy(load_digits().data).float()  # (1797, 64), integers 0..16
    g = torch.Generator().manual_seed(0)
    return (pixels + torch.rand(pixels.shape, generator=g)) / 17.0


def test_maf_on_digits_separates_noise(tmp_path):
    x = _digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = x[perm[:1400]], x[perm[1400:]]
    torch.manual_seed(0)
    model = create_model("maf", event_shape=(64,), n_layers=2, hidden=[64])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        batch = train[torch.randint(len(train), (128,), generator=g)]
        loss = -model.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    noise = make_outliers("noise", test, seed=0)
    fig = tmp_path / "scores.png"
    report = ood_report(model, test, noise, train_data=train, figure=fig)
    assert set(report) == {"likelihood", "typicality"}
    assert report["likelihood"]["auroc"] > 0.9, report
    assert report["typicality"]["auroc"] > 0.9, report
    assert fig.exists() and fig.stat().st_size > 1000
    assert model.training  # the scores ran in eval mode and left the mode as it was
    only = ood_report(model, test, noise)
    assert set(only) == {"likelihood"} and only["likelihood"] == report["likelihood"]
