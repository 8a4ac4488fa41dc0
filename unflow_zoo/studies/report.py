r"""Tables, paired width comparisons and figures of the overparameterization study.

Everything here reads the rows of ``results.csv`` (:func:`unflow_zoo.studies.overparam.read_csv`):

- :func:`summary_table`: final train/test NLL per (family, variant, data set, width), mean ±
  standard deviation over seeds, the gap to the true entropy where it is known, and the
  weight movement :math:`\|\theta_T - \theta_0\|` (absolute and relative to
  :math:`\|\theta_0\|`);
- :func:`width_effects`: the paired comparison of the widest and the narrowest width across
  seeds. Each seed fixes the split and the batch order for every width, so the per-seed
  differences :math:`\Delta_s = \text{NLL}_s(m_{\max}) - \text{NLL}_s(m_{\min})` are paired;
  their mean, standard deviation and :math:`t = \bar\Delta / (s_\Delta / \sqrt n)` say whether
  the width effect is larger than the seed spread (:math:`|t|` above the two-sided 95%
  quantile of Student's t with :math:`n - 1` degrees of freedom, 4.30 for three seeds);
- :func:`make_figures`: NLL against epoch, final NLL and weight movement against width, and
  the learning-rate ablation.

Figures use matplotlib's object API on the Agg canvas (no global backend is set).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unflow_zoo.plots import new_figure

__all__ = ["final_rows", "make_figures", "summary_table", "width_effects", "with_reference", "write_report"]

Row = dict[str, Any]
_FAMILIES = ("constrained", "unconstrained")
_DATASETS = ("mog1d", "beta1d", "gmm1d", "grid", "mog5d", "miniboone")


def with_reference(rows: Sequence[Row]) -> list[Row]:
    """``rows`` plus, for every (family, data set) with ``matched`` rows, the ``paper`` rows of the
    narrowest width relabelled ``matched``: at the reference width the matched rate is the
    paper's, so the study runs that job once (see :func:`~unflow_zoo.studies.overparam.jobs_of`)."""
    out = list(rows)
    matched = {(r["family"], r["data"]) for r in rows if r["variant"] == "matched"}
    for family, data in matched:
        paper = [r for r in rows if r["variant"] == "paper" and r["family"] == family and r["data"] == data]
        if not paper:
            continue
        narrow = min(r["width"] for r in paper)
        if any(r["variant"] == "matched" and r["family"] == family and r["data"] == data and r["width"] == narrow
               for r in rows):  # fmt: skip
            continue
        out.extend({**r, "variant": "matched"} for r in paper if r["width"] == narrow)
    return out


def final_rows(rows: Sequence[Row]) -> list[Row]:
    """The last evaluated epoch of every run (family, variant, data, width, seed)."""
    last: dict[tuple, Row] = {}
    for r in rows:
        key = (r["family"], r["variant"], r["data"], r["width"], r["seed"])
        if key not in last or r["epoch"] > last[key]["epoch"]:
            last[key] = r
    return list(last.values())


def _cells(rows: Sequence[Row]) -> dict[tuple, list[Row]]:
    cells: dict[tuple, list[Row]] = defaultdict(list)
    for r in final_rows(rows):
        cells[(r["family"], r["variant"], r["data"], r["width"])].append(r)
    for v in cells.values():
        v.sort(key=lambda r: r["seed"])
    return cells


def _ordered(values: set[str], preferred: Sequence[str]) -> list[str]:
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def _ms(values: Sequence[float], digits: int = 3) -> str:
    a = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if a.size == 0:
        return "inf" if values else "–"
    s = f"{a.mean():.{digits}f}"
    if a.size > 1:
        s += f" ± {a.std(ddof=1):.{digits}f}"
    if a.size < len(values):
        s += f" ({len(values) - a.size} inf)"
    return s


def summary_table(rows: Sequence[Row]) -> str:
    """Markdown: one line per (data set, family, variant, width); values are mean ± sd over seeds."""
    lines = [
        "| data | family | variant | width | epochs | seeds | lr | train NLL | test NLL | test − true | "
        "‖W−W₀‖ | ‖W−W₀‖/‖W₀‖ | ‖∇‖² at init |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = _cells(rows)
    for data in _ordered({k[2] for k in cells}, _DATASETS):
        for family in _ordered({k[0] for k in cells}, _FAMILIES):
            for variant in ("paper", "matched"):
                for width in sorted(k[3] for k in cells if k[:3] == (family, variant, data)):
                    rs = cells[(family, variant, data, width)]
                    gap = [r["test_nll"] - r["true_nll"] for r in rs if math.isfinite(r["true_nll"])]
                    rates = sorted({r["lr"] for r in rs})
                    lr = f"{rates[0]:.1e}" if len(rates) == 1 else f"{rates[0]:.1e} – {rates[-1]:.1e}"
                    lines.append(
                        f"| {data} | {family} | {variant} | {width} | {rs[0]['epoch']} | {len(rs)} | {lr} | "
                        f"{_ms([r['train_nll'] for r in rs])} | {_ms([r['test_nll'] for r in rs])} | "
                        f"{_ms(gap) if gap else '–'} | {_ms([r['move_W'] for r in rs])} | "
                        f"{_ms([r['rel_move_W'] for r in rs], 4)} | {_ms([r['grad_sq_init'] for r in rs], 1)} |"
                    )
    return "\n".join(lines) + "\n"


def _t_quantile(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df)) if df > 0 else math.inf


def width_effects(rows: Sequence[Row], metric: str = "test_nll") -> list[dict[str, Any]]:
    """Paired widest-minus-narrowest differences of the final ``metric`` per (family, variant, data).

    Returns dicts with ``family, variant, data, narrow, wide, n, mean, sd, t, t_crit,
    significant, direction`` (``"wider is better"`` when the mean difference is negative).
    """
    cells = _cells(rows)
    out = []
    groups = sorted({k[:3] for k in cells})
    for family, variant, data in groups:
        widths = sorted(k[3] for k in cells if k[:3] == (family, variant, data))
        if len(widths) < 2:
            continue
        lo, hi = widths[0], widths[-1]
        a = {r["seed"]: r[metric] for r in cells[(family, variant, data, lo)]}
        b = {r["seed"]: r[metric] for r in cells[(family, variant, data, hi)]}
        seeds = sorted(set(a) & set(b))
        diffs = np.asarray([b[s] - a[s] for s in seeds], dtype=float)
        n = diffs.size
        if n == 0 or not np.isfinite(diffs).all():
            continue
        mean = float(diffs.mean())
        sd = float(diffs.std(ddof=1)) if n > 1 else math.nan
        t = mean / (sd / math.sqrt(n)) if n > 1 and sd > 0 else (math.inf if mean else 0.0) * np.sign(mean)
        t_crit = _t_quantile(n - 1)
        out.append(dict(
            family=family, variant=variant, data=data, narrow=lo, wide=hi, n=n, mean=mean, sd=sd, t=float(t),
            t_crit=t_crit, significant=bool(abs(t) > t_crit),
            direction="wider is better" if mean < 0 else "wider is worse",
        ))  # fmt: skip
    order = {d: i for i, d in enumerate(_DATASETS)}
    out.sort(key=lambda e: (e["variant"] != "paper", order.get(e["data"], 99), e["family"]))
    return out


def effects_table(effects: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`width_effects`."""
    lines = [
        "| data | family | variant | widths | Δ test NLL (wide − narrow) | sd over seeds | t | larger than seed spread? |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for e in effects:
        verdict = f"yes, {e['direction']}" if e["significant"] else f"no ({e['direction']} on average)"
        lines.append(
            f"| {e['data']} | {e['family']} | {e['variant']} | {e['narrow']} → {e['wide']} | {e['mean']:+.3f} | "
            f"{e['sd']:.3f} | {e['t']:+.1f} (crit {e['t_crit']:.2f}) | {verdict} |"
        )
    return "\n".join(lines) + "\n"


# ----- figures ----------------------------------------------------------------------------------


def _mean_curve(rows: Sequence[Row], key: str) -> tuple[list[int], list[float], list[float]]:
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if math.isfinite(r[key]):
            by_epoch[r["epoch"]].append(r[key])
    epochs = sorted(by_epoch)
    mean = [float(np.mean(by_epoch[e])) for e in epochs]
    sd = [float(np.std(by_epoch[e], ddof=1)) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, mean, sd


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def make_figures(rows: Sequence[Row], out: str | os.PathLike[str], dpi: int = 90) -> list[Path]:
    """Write the study's figures into ``out``:

    - ``nll_vs_epoch_<family>_<data>.png``: test (solid, ±1 sd band) and train (dashed) NLL per
      epoch, mean over seeds, one colour per width; the true entropy dotted where known;
    - ``final_nll_vs_width.png``: final test NLL against width, both families (paper variant);
    - ``weight_movement_vs_width.png``: :math:`\\|W_T - W_0\\|` and its ratio to :math:`\\|W_0\\|`;
    - ``ablation_matched_step.png``: unconstrained final test NLL, paper rate vs matched step.
    """
    import matplotlib as mpl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    datasets = _ordered({r["data"] for r in rows}, _DATASETS)
    families = _ordered({r["family"] for r in rows}, _FAMILIES)
    paper = [r for r in rows if r["variant"] == "paper"]
    for family in families:
        for data in datasets:
            sub = [r for r in paper if r["family"] == family and r["data"] == data]
            if not sub:
                continue
            widths = sorted({r["width"] for r in sub})
            fig, ax = new_figure((5.6, 3.8))
            ax = ax[0, 0]
            cmap = mpl.colormaps["viridis"]
            for i, w in enumerate(widths):
                color = cmap(i / max(len(widths) - 1, 1))
                rw = [r for r in sub if r["width"] == w]
                ep, mean, sd = _mean_curve(rw, "test_nll")
                ax.plot(ep, mean, "-", color=color, lw=1.4, label=f"m={w}")
                ax.fill_between(ep, np.subtract(mean, sd), np.add(mean, sd), color=color, alpha=0.15, lw=0)
                ep, mean, _ = _mean_curve(rw, "train_nll")
                ax.plot(ep, mean, "--", color=color, lw=1.0)
            true = [r["true_nll"] for r in sub if math.isfinite(r["true_nll"])]
            if true:
                ax.axhline(float(np.mean(true)), color="k", ls=":", lw=1, label="true entropy")
            finals = [r["test_nll"] for r in final_rows(sub) if math.isfinite(r["test_nll"])]
            if finals:  # the first epochs are far above; frame the part where the widths differ
                lo, hi = min(finals), max(finals)
                span = max(hi - lo, 0.05)
                ax.set_ylim(lo - 1.5 * span, hi + 4 * span)
            ax.set_xlabel("epoch (0 = initialisation)")
            ax.set_ylabel("NLL (nats, raw units)")
            ax.set_title(f"{family} flow on {data}: test (solid), train (dashed)", fontsize=9)
            ax.legend(fontsize=7)
            path = out / f"nll_vs_epoch_{family}_{data}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=dpi)
            paths.append(path)
    cells = _cells(rows)
    # the width figures are of the paper variant: a folder holding only ablation jobs has none to draw
    # (empty log-scaled axes would stop matplotlib)
    paper_sets = [d for d in datasets if any(k[1:3] == ("paper", d) for k in cells)]
    if paper_sets:
        paths += _width_figures(rows, cells, families, paper_sets, out, dpi)
    matched = [d for d in datasets if any(k[:3] == ("unconstrained", "matched", d) for k in cells)]
    if matched:
        fig, axes = new_figure((2.8 * len(matched), 3.0), ncols=len(matched))
        for j, data in enumerate(matched):
            ax = axes[0, j]
            for i, variant in enumerate(("paper", "matched")):
                widths, means, sds = _by_width(cells, "unconstrained", variant, data)
                label = "paper lr" if variant == "paper" else "matched function-space step"
                ax.errorbar(widths, means, yerr=sds, marker="o", color=f"C{i + 2}", label=label, capsize=3)
            ax.set_xscale("log")
            ax.set_title(f"unconstrained, {data}", fontsize=9)
            ax.set_xlabel("width m")
            if j == 0:
                ax.set_ylabel("final test NLL")
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "ablation_matched_step.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def _by_width(cells: dict, family: str, variant: str, data: str, key: str = "test_nll"):
    """The widths of ``(family, variant, data)`` in ``cells``, and the seed mean and sd of ``key`` at each."""
    widths = sorted(k[3] for k in cells if k[:3] == (family, variant, data))
    values = [[r[key] for r in cells[(family, variant, data, w)]] for w in widths]
    return widths, [np.mean(v) for v in values], [_sd(v) for v in values]


def _width_figures(
    rows: Sequence[Row], cells: dict, families: Sequence[str], datasets: Sequence[str], out: Path, dpi: int
) -> list[Path]:
    """Final test NLL and weight movement against width, per data set (the paper variant)."""
    paths = []
    fig, axes = new_figure((2.8 * len(datasets), 3.0), ncols=len(datasets))
    for j, data in enumerate(datasets):
        ax = axes[0, j]
        for i, family in enumerate(families):
            widths, means, sds = _by_width(cells, family, "paper", data)
            ax.errorbar(widths, means, yerr=sds, marker="o", color=f"C{i}", label=family, capsize=3)
        true = [r["true_nll"] for r in final_rows(rows) if r["data"] == data and math.isfinite(r["true_nll"])]
        if true:
            ax.axhline(float(np.mean(true)), color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_title(data, fontsize=9)
        ax.set_xlabel("width m")
        if j == 0:
            ax.set_ylabel("final test NLL")
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "final_nll_vs_width.png"
    fig.savefig(path, dpi=dpi)
    paths.append(path)
    fig, axes = new_figure((2.8 * len(datasets), 5.2), ncols=len(datasets), nrows=2)
    for j, data in enumerate(datasets):
        for row, (key, label) in enumerate((("move_W", "‖W_T − W_0‖"), ("rel_move_W", "‖W_T − W_0‖ / ‖W_0‖"))):
            ax = axes[row, j]
            for i, family in enumerate(families):
                widths, vals, _ = _by_width(cells, family, "paper", data, key)
                ax.plot(widths, vals, marker="o", color=f"C{i}", label=family)
            ax.set_xscale("log")
            ax.set_yscale("log")
            if row == 0:
                ax.set_title(data, fontsize=9)
            else:
                ax.set_xlabel("width m")
            if j == 0:
                ax.set_ylabel(label)
                ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "weight_movement_vs_width.png"
    fig.savefig(path, dpi=dpi)
    paths.append(path)
    return paths


def write_report(rows: Sequence[Row], out: str | os.PathLike[str]) -> Path:
    """``summary.md`` (tables) and the figures in ``out``; returns the summary's path."""
    out = Path(out)
    rows = with_reference(rows)
    make_figures(rows, out)
    text = "# Overparameterization study: results\n\n## Final epoch\n\n" + summary_table(rows)
    if any(r["data"] == "miniboone" for r in rows):
        text += (
            "\nminiboone: NLL in nats on the published test split, in the MAF-standardised units of the UCI "
            "loader (the literature's); the lr column is the initial rate (UMNN's decays tenfold every 100 "
            "epochs); movement is of the family's parameter groups (UMNN: the integrand; B-NAF: every block).\n"
        )
    text += "\n## Width effects (paired over seeds, widest vs narrowest)\n\n" + effects_table(width_effects(rows))
    path = out / "summary.md"
    tmp = out / ".summary.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
