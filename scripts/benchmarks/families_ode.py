"""FFJORD: unflow-zoo's continuous flow vs zuko's CNF (FFJTransform) with the same
ODE network widths, exact trace and solver tolerances (dopri5; atol 1e-6,
rtol 1e-5, zuko's defaults). zuko embeds time with 3 frequencies; ours uses
concatsquash layers, so parameter counts differ slightly (printed)."""

from __future__ import annotations

from benchmarks.families import register
from benchmarks.harness import ours, zuko_adapter

HIDDEN = [64, 64, 64]


def ours_ffjord(dim: int):
    return ours("ffjord", dim, hidden=HIDDEN, atol=1e-6, rtol=1e-5, trace="exact", exact_trace_max_dim=max(dim, 8))


def zuko_cnf(dim: int):
    import zuko

    return zuko_adapter(zuko.flows.CNF(dim, hidden_features=HIDDEN, atol=1e-6, rtol=1e-5, exact=True))


register("ffjord", "unflow-zoo ffjord", ours_ffjord)
register("ffjord", "zuko CNF", zuko_cnf)
