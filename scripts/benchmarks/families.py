"""Every family against its closest peer at matched size.

Tabular families train on a D-dimensional Gaussian mixture with known density
(the gap to the true entropy is reported); every implementation of one family
gets the same depth, hidden widths, batch, learning rate and step budget, and
the table prints the parameter counts so the match can be checked.

| ours | peers |
|---|---|
| realnvp | zuko RealNVP, nflows SimpleRealNVP |
| maf | zuko MAF, nflows MaskedAutoregressiveFlow |
| nsf (RQ-AR) | zuko NSF, nflows masked piecewise-RQ autoregressive |
| naf | zuko NAF |
| unconstrained | its own suite (zuko UNAF, UMNN) |
| glow | normflows Glow (images) |
| ffjord | zuko CNF |

Families with no published peer in these libraries (constrained / B-NAF, linear)
are measured alone so their cost is on record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.harness import Adapter, Result, machine, measure, nflows_adapter, ours, ratio, zuko_adapter

NAME = "families"
DEPTH = {"realnvp": 6, "maf": 5, "nsf": 4, "naf": 3, "ffjord": 1, "constrained": 3, "linear": 1}
HIDDEN = [64, 64]
SLOW_BUDGET = {"ffjord": 60}


# ----------------------------------------------------------------------------- builders
def _nflows_nsf(dim: int) -> Adapter:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import CompositeTransform, ReversePermutation
    from nflows.transforms.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressiveTransform

    layers: list[Any] = []
    for _ in range(DEPTH["nsf"]):
        layers += [
            MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                features=dim, hidden_features=HIDDEN[0], num_blocks=1, num_bins=8, tails="linear", tail_bound=5.0,
                use_residual_blocks=False,
            ),
            ReversePermutation(dim),
        ]  # fmt: skip
    return nflows_adapter(Flow(CompositeTransform(layers), StandardNormal([dim])))


BUILDERS: dict[str, dict[str, Callable[[int], Adapter]]] = {
    "realnvp": {
        "unflow-zoo realnvp": lambda d: ours("realnvp", d, n_layers=DEPTH["realnvp"], hidden=HIDDEN),
        "zuko RealNVP": lambda d: zuko_adapter(
            __import__("zuko").flows.RealNVP(d, transforms=DEPTH["realnvp"], hidden_features=HIDDEN)
        ),
        "nflows SimpleRealNVP": lambda d: nflows_adapter(
            __import__("nflows.flows", fromlist=["SimpleRealNVP"]).SimpleRealNVP(
                d, hidden_features=HIDDEN[0], num_layers=DEPTH["realnvp"], num_blocks_per_layer=1
            )
        ),
    },
    "maf": {
        "unflow-zoo maf": lambda d: ours("maf", d, n_layers=DEPTH["maf"], hidden=HIDDEN),
        "zuko MAF": lambda d: zuko_adapter(
            __import__("zuko").flows.MAF(d, transforms=DEPTH["maf"], hidden_features=HIDDEN)
        ),
        "nflows MaskedAutoregressiveFlow": lambda d: nflows_adapter(
            __import__("nflows.flows", fromlist=["MaskedAutoregressiveFlow"]).MaskedAutoregressiveFlow(
                d,
                hidden_features=HIDDEN[0],
                num_layers=DEPTH["maf"],
                num_blocks_per_layer=1,
                use_residual_blocks=False,
                batch_norm_between_layers=False,
            )
        ),
    },
    "nsf": {
        "unflow-zoo nsf": lambda d: ours(
            "nsf", d, variant="autoregressive", n_layers=DEPTH["nsf"], hidden=HIDDEN, bins=8, tail_bound=5.0
        ),
        "zuko NSF": lambda d: zuko_adapter(
            __import__("zuko").flows.NSF(d, bins=8, transforms=DEPTH["nsf"], hidden_features=HIDDEN)
        ),
        "nflows RQ-AR": _nflows_nsf,
    },
    "naf": {
        "unflow-zoo naf": lambda d: ours("naf", d, n_layers=DEPTH["naf"], hidden=HIDDEN, dsf_units=16),
        "zuko NAF": lambda d: zuko_adapter(
            __import__("zuko").flows.NAF(
                d, transforms=DEPTH["naf"], signal=16, hidden_features=HIDDEN, network={"hidden_features": [16]}
            )
        ),
    },
    "constrained": {
        "unflow-zoo constrained (B-NAF)": lambda d: ours(
            "constrained", d, width=64, depth=2, n_layers=DEPTH["constrained"]
        ),
    },
    "linear": {"unflow-zoo linear": lambda d: ours("linear", d)},
}


def register(family: str, label: str, builder: Callable[[int], Adapter]) -> None:
    """Add an implementation of ``family`` (how newer families join the suite)."""
    BUILDERS.setdefault(family, {})[label] = builder


def _load_optional() -> None:
    # Families whose benchmark code lives beside their peers' adapters in their own module.
    for module in ("benchmarks.families_images", "benchmarks.families_ode"):
        try:
            __import__(module)
        except ImportError:
            pass


# ----------------------------------------------------------------------------- suite
def cases(quick: bool, families: list[str] | None = None, dim: int = 8) -> list[dict[str, Any]]:
    _load_optional()
    common = {"batch": 256, "repeats": 3 if quick else 15, "budget": 20 if quick else 500, "sample_n": 1000}
    out = []
    for family in families or list(BUILDERS):
        for label in BUILDERS.get(family, {}):
            case = {"family": family, "impl": label, "dim": 2 if quick else dim, **common}
            if not quick and family in SLOW_BUDGET:  # an adaptive ODE solve per step: seconds, not ms
                case.update(budget=SLOW_BUDGET[family], repeats=5)
            out.append(case)
    return out


def worker(case: dict[str, Any]) -> Result:
    _load_optional()
    builder = BUILDERS[case["family"]][case["impl"]]
    data = getattr(builder, "data", None)
    ad = builder(case["dim"])
    return measure(case["impl"], ad, case["dim"], batch=case["batch"], repeats=case["repeats"],
                   budget=case["budget"], sample_n=case["sample_n"], data=data(case["dim"]) if data else None)  # fmt: skip


def table(results: list[Result]) -> str:
    lines = [
        "| family | implementation | D | params | train step (ms) | x vs ours | samples/s | x vs ours | peak mem (MB) | gap after budget (nats) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_family: dict[str, list[Result]] = {}
    for r in results:
        by_family.setdefault(r.case["family"], []).append(r)
    for family, rows in by_family.items():
        base = next((r for r in rows if r.model.startswith("unflow-zoo")), None)
        for r in sorted(rows, key=lambda r: not r.model.startswith("unflow-zoo")):
            # time: peer / ours (above 1: we are faster); throughput: ours / peer (above 1: we are faster)
            t = ratio(r.train_step_ms, base.train_step_ms) if base and r is not base else "-"
            s = ratio(base.samples_per_s, r.samples_per_s) if base and r is not base else "-"
            lines.append(
                f"| {family} | {r.model} | {r.dim} | {r.params:,} | {r.train_step_ms:.1f} | {t} | "
                f"{r.samples_per_s:,.0f} | {s} | {r.peak_mem_mb:.0f} | {r.kl_after_budget:.3f} |"
                + (f" {r.note}" if r.note else "")
            )
    return "\n".join(lines)


def report(results: list[Result], seconds: float, command: str) -> str:
    c = results[0].case if results else {}
    return (
        "## Every family against its closest peer\n\n"
        f"Machine: {machine()}. Command: `{command}` ({seconds:.0f} s). Tabular rows: D = {c.get('dim', '?')}, "
        f"4-component Gaussian mixture with known density, batch {c.get('batch', '?')}, train step = median CPU time (1 thread, robust to other load) of "
        f"{c.get('repeats', '?')}, gap = test NLL minus the true entropy after {c.get('budget', '?')} Adam steps "
        f"(lr 1e-3; ffjord: {SLOW_BUDGET['ffjord']} steps, median of 5), samples/s from the median of 3 draws of "
        f"{c.get('sample_n', '?')}. Glow rows: 8x8 digits (1, 8, 8), L = 2, K = 4, 64 hidden channels, and the last "
        "column is the test NLL itself (no true density). Depths: "
        + ", ".join(f"{k} {v}" for k, v in DEPTH.items())
        + f'; conditioner hidden {HIDDEN}; spline tail bound 5 (zuko\'s). "x vs ours": peer time / our time and our throughput / peer '
        "throughput, so above 1 means unflow-zoo is faster.\n\n" + table(results)
    )
