"""The seed paper's centre: the unconstrained flow in the UMNN-MAF layout against
``zuko.flows.UNAF`` and the UMNN package's ``UMNNMAFFlow`` at matched sizes:
3 transforms, MADE conditioner hidden [64, 64], integrand hidden [64, 64],
embedding 16, 32 quadrature nodes, batch 512, D in {2, 8, 43}."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Adapter, Result, machine, measure, ours, ratio, zuko_adapter

NAME = "unconstrained"
LABELS = {"ours": "unflow-zoo unconstrained", "zuko": "zuko UNAF", "umnn": "UMNN UMNNMAFFlow"}


def build(impl: str, dim: int, nodes: int) -> Adapter:
    if impl == "ours":
        return ours(
            "unconstrained", dim, n_layers=3, conditioner_hidden=[64, 64], hidden=[64, 64], embedding=16,
            n_nodes=nodes, quadrature="clenshaw-curtis",
        )  # fmt: skip
    if impl == "zuko":
        import zuko

        # zuko's UNAF integrates with a fixed 32-node Gauss-Legendre rule; `nodes` does not reach it.
        return zuko_adapter(
            zuko.flows.UNAF(
                dim, transforms=3, hidden_features=[64, 64], signal=16, network={"hidden_features": [64, 64]}
            )
        )
    import torch
    from UMNN import UMNNMAFFlow

    flow = UMNNMAFFlow(
        nb_flow=3, nb_in=dim, hidden_derivative=[64, 64], hidden_embedding=[64, 64], embedding_s=16,
        nb_steps=nodes, solver="CC", device="cpu",
    )  # fmt: skip
    return Adapter(flow, lambda x: flow.compute_ll(x)[0], lambda n: flow.invert(torch.randn(n, dim)))


def cases(quick: bool, dims: list[int] | None = None, peers: list[str] | None = None) -> list[dict[str, Any]]:
    dims = [2] if quick else (dims or [2, 8, 43])
    common = {"batch": 512, "repeats": 3 if quick else 10, "budget": 30 if quick else 300, "sample_n": 512, "nodes": 32}
    return [{"impl": impl, "dim": d, **common} for d in dims for impl in (peers or list(LABELS))]


def worker(case: dict[str, Any]) -> Result:
    ad = build(case["impl"], case["dim"], case["nodes"])
    return measure(LABELS[case["impl"]], ad, case["dim"], batch=case["batch"], repeats=case["repeats"],
                   budget=case["budget"], sample_n=case["sample_n"])  # fmt: skip


def table(results: list[Result]) -> str:
    lines = [
        "| model | D | params | train step (ms) | x vs ours | sample (s) | x vs ours | peak mem (MB) | KL after budget (nats) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r.dim: r for r in results if r.model == LABELS["ours"]}
    for r in sorted(results, key=lambda r: (r.dim, r.model != LABELS["ours"], r.model)):
        b = base.get(r.dim)
        lines.append(
            f"| {r.model} | {r.dim} | {r.params:,} | {r.train_step_ms:.1f} | "
            f"{ratio(r.train_step_ms, b.train_step_ms if b else None)} | {r.sample_s:.3f} | "
            f"{ratio(r.sample_s, b.sample_s if b else None)} | {r.peak_mem_mb:.0f} | {r.kl_after_budget:.3f} |"
            + (f" {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def report(results: list[Result], seconds: float, command: str) -> str:
    c = results[0].case if results else {}
    return (
        "## Unconstrained flows: unflow-zoo vs zuko UNAF vs UMNN\n\n"
        f"Machine: {machine()}. Command: `{command}` ({seconds:.0f} s). Layout: 3 transforms, MADE hidden "
        f"[64, 64], integrand hidden [64, 64], embedding 16, {c.get('nodes', 32)} quadrature nodes, batch "
        f"{c.get('batch', 512)}; train step = median CPU time (1 thread, robust to other load) of {c.get('repeats', '?')}; sampling draws "
        f"{c.get('sample_n', '?')}; KL after {c.get('budget', '?')} Adam steps (lr 1e-3) on a 4-component "
        'Gaussian mixture with known density. "x vs ours" = peer time / our time (above 1: we are faster).\n\n'
        + table(results)
    )
