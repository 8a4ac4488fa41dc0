"""Smoke test of scripts/benchmarks/paper_models.py: a real (tiny) interleaved run and its report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("paper_models_bench", ROOT / "scripts" / "benchmarks" / "paper_models.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["paper_models_bench"] = bench
spec.loader.exec_module(bench)


def test_quick_run_times_official_and_ours(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    steps, ens = bench.main(["--quick", "--write", "--out", str(out), "--steps", "2", "--rounds", "1"])
    assert {(r["family"], r["m"]) for r in steps} == {("constrained", 10), ("constrained", 100),
                                                       ("unconstrained", 16), ("unconstrained", 64)}  # fmt: skip
    assert all(r["official"] > 0 and r["ours"] > 0 for r in steps)
    assert len(ens) == 3 and all(r["alone"] > 0 and r["ensemble"] > 0 for r in ens)
    text = out.read_text()
    assert "<!-- benchmark:paper_models:start -->" in text and "| unconstrained | 1 | 64 |" in text


def test_official_reference_computes_the_same_integrals() -> None:
    """The transcribed official unconstrained flow and ours give the same integrals on the same weights."""
    import torch

    torch.manual_seed(0)
    x = bench._data(2, n=64)
    x0 = x.min(0).values - 0.05
    official = bench.OfficialUnconstrained(2, 16, x0)
    ours = bench.Ours("unconstrained", 2, 16, x0)
    (t,) = [m for m in ours.model.flow.transform.modules() if type(m).__name__ == "PaperUnconstrainedTransform"]
    with torch.no_grad():
        for i, mod in enumerate(official.mods):
            t.W[i, :, :i] = mod.w[0][:, :i]
            t.w_t[i] = mod.w[0][:, i]
            t.b[i] = mod.b[0]
            t.a[i] = mod.w_final[0]
        func = torch.stack([bench._sr_integrate(x[:, i], x[:, :i], 50, official.mods[i], float(x0[i]))
                            for i in range(2)], 1)  # fmt: skip
        y, _ = t(x)
    torch.testing.assert_close(y, func, rtol=1e-5, atol=1e-5)
