"""Train every family's shipped config on the 2-D toys with a known density and
report how close each gets to the true entropy.

For each ``configs/<family>/<toy>.yaml`` (toys: 8gaussians, checkerboard) this
runs ``unflow-zoo fit --config ...`` exactly as a user would, in a fresh
process with one intra-op thread, and reads the test metrics it prints:

- ``test_nll``: the model's NLL on the held-out split (nats);
- ``test_kl``: the same NLL minus the true log-density on the same points, an
  unbiased estimate of KL(p || q) -- the gap to the true entropy, 0 is perfect;
- wall time of the whole run.

The table goes to ``docs/toys.md`` and, between markers, into README.md. With
``--conditional`` the same is done for the conditional toys (``8gaussians-by-label``,
``gaussian-by-context``: flows of p(x | c), gap = E_c KL(p(. | c) || q(. | c))), into
``docs/conditional_toys.md`` and the README's conditional section.

Usage::

    python scripts/toy_table.py                        # every family, both toys (tens of minutes)
    python scripts/toy_table.py --conditional          # every family on the conditional toys
    python scripts/toy_table.py --families maf nsf     # a subset; other rows are kept
    python scripts/toy_table.py --quick --no-write     # a 1-epoch smoke run (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks.harness import run_cli

TOYS = ("8gaussians", "checkerboard")
CONDITIONAL_TOYS = ("8gaussians-by-label", "gaussian-by-context")
RESULTS = ROOT / "docs" / "toys.json"
CONDITIONAL_RESULTS = ROOT / "docs" / "conditional_toys.json"
MARK_START, MARK_END = "<!-- toys:start -->", "<!-- toys:end -->"
CONDITIONAL_MARKS = ("<!-- conditional-toys:start -->", "<!-- conditional-toys:end -->")
TARGET_GAP = 0.2  # nats: the zoo's bar for a family's quick toy config
# Affine flows cannot bend the density: their optimum is the Gaussian fit, far from these toys.
AFFINE = {"linear"}


def families_with_configs() -> list[str]:
    return sorted(p.name for p in (ROOT / "configs").iterdir() if p.is_dir() and (p / f"{TOYS[0]}.yaml").exists())


def run_config(config: Path, quick: bool) -> dict[str, float]:
    """One ``fit`` run in a fresh process; the metrics it prints, plus wall seconds."""
    quick_args = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5", "--data.n_samples", "2000"]
    return run_cli(config, quick_args if quick else [], require="test_kl")


def table(results: dict[str, dict[str, dict[str, float]]], toys: tuple[str, ...] = TOYS) -> str:
    """Gap and test NLL per family and toy. Wall times are in docs/toys.json, not here: runs
    share the machine with whatever else is running, so they are not comparable."""
    lines = [
        "| family | "
        + " | ".join(f"{t} gap (nats)" for t in toys)
        + " | "
        + " | ".join(f"{t} test NLL" for t in toys)
        + " |",
        "|---|" + "---:|" * (2 * len(toys)),
    ]
    for family in sorted(results):
        row = results[family]
        gaps, nlls = [], []
        for toy in toys:
            r = row.get(toy)
            if r is None:
                gaps.append("-")
                nlls.append("-")
                continue
            mark = "" if family in AFFINE or r["test_kl"] <= TARGET_GAP else " (above 0.2)"
            gaps.append(f"{r['test_kl']:.3f}{mark}")
            nlls.append(f"{r['test_nll']:.3f}")
        lines.append(f"| `{family}` | " + " | ".join(gaps) + " | " + " | ".join(nlls) + " |")
    return "\n".join(lines)


def write_readme(body: str, path: Path = ROOT / "README.md", marks: tuple[str, str] = (MARK_START, MARK_END)) -> None:
    start, end = marks
    text = path.read_text()
    if start not in text:
        raise RuntimeError(f"{path} has no {start} ... {end} section to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")


def _page(conditional: bool, body: str) -> str:
    """docs/toys.md or docs/conditional_toys.md around the table ``body``."""
    how = (
        "which runs each family's shipped config `configs/<family>/<toy>.yaml` with `unflow-zoo fit`, one thread "
        "per run. "
    )
    if conditional:
        return (
            "# Every family on the conditional toys\n\n"
            "Flows of p(x | c), trained on pairs (x, c). Gap = test NLL minus the true conditional entropy on "
            "the same held-out pairs (an estimate of E_c KL(p(. | c) || q(. | c)); 0 is perfect), from "
            f"`python scripts/toy_table.py --conditional`, {how}"
            f"Target: within {TARGET_GAP} nats (`linear` is the affine baseline: a context-dependent shift "
            "and scale of one Gaussian cannot make two modes).\n\n"
            f"{body}\n"
        )
    return (
        "# Every family on the 2-D toys\n\n"
        "Gap = test NLL minus the true entropy on the same held-out points (an estimate of KL(p || q); "
        f"0 is perfect), from `python scripts/toy_table.py`, {how}"
        f"Target: within {TARGET_GAP} nats (`linear` is the affine baseline and cannot get there).\n\n"
        f"{body}\n"
    )


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="*", default=None, help="default: every family with toy configs")
    parser.add_argument("--toys", nargs="*", default=None, choices=TOYS + CONDITIONAL_TOYS)
    parser.add_argument("--conditional", action="store_true", help="the conditional toys (flows of p(x | c))")
    parser.add_argument("--quick", action="store_true", help="1 epoch of 5 batches: a smoke run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ and README alone")
    args = parser.parse_args(argv)
    toys = CONDITIONAL_TOYS if args.conditional else TOYS
    store = CONDITIONAL_RESULTS if args.conditional else RESULTS

    results: dict[str, dict[str, dict[str, float]]] = {}
    if not args.no_write and store.exists():
        results = json.loads(store.read_text())
    for family in args.families or families_with_configs():
        for toy in args.toys or toys:
            config = ROOT / "configs" / family / f"{toy}.yaml"
            if not config.exists():
                print(f"skip {family}/{toy}: no config", file=sys.stderr)
                continue
            try:
                r = run_config(config, args.quick)
            except RuntimeError as e:  # one broken config must not cost the other runs
                print(f"FAILED {family}/{toy}: {e}", file=sys.stderr)
                continue
            results.setdefault(family, {})[toy] = r
            print(f"{family:14s} {toy:20s} gap {r['test_kl']:.4f} nats  nll {r['test_nll']:.4f}  {r['seconds']:.0f} s")
    body = table(results, toys)
    print(body)
    if not args.no_write:
        store.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        page, marks = (
            ("conditional_toys.md", CONDITIONAL_MARKS) if args.conditional else ("toys.md", (MARK_START, MARK_END))
        )
        (ROOT / "docs" / page).write_text(_page(args.conditional, body))
        write_readme(body, marks=marks)
    return results


if __name__ == "__main__":
    main()
