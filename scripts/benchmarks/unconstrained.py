"""The seed paper's centre: the unconstrained flow in the UMNN-MAF layout against
``zuko.flows.UNAF`` and the UMNN package's ``UMNNMAFFlow`` at matched sizes:
3 transforms, MADE conditioner hidden [64, 64], integrand hidden [64, 64],
embedding 16, 32 quadrature nodes, batch 512, D in {2, 8, 43}; and our flow with one
integrand per feature (``integrand_per_feature=True``, zuko's own layout) at that layout's
default integrand width, hidden [96, 96] (at [64, 64] it has exactly zuko's parameters).

At D = 43 (MINIBOONE's dimension; the data is the same synthetic 4-component Gaussian
mixture with a known density as at every D, not MINIBOONE) the step budget is 100 Adam steps
(zuko's UNAF takes ~10 CPU s a step there) and every implementation also trains for a fixed
CPU-time budget, ``seconds`` (the same for all, about zuko's time for its 100 steps): the KL
after the same number of steps and after the same time. Sampling there draws 64 points once.
"""

from __future__ import annotations

import re
import resource
import statistics
from typing import Any

from benchmarks.harness import Adapter, Result, _rss_mb, clock, machine, measure, mixture, ours, ratio, zuko_adapter

NAME = "unconstrained"
LABELS = {
    "ours": "unflow-zoo unconstrained",
    "ours-per-feature": "unflow-zoo unconstrained, integrand per feature [96, 96]",
    "zuko": "zuko UNAF",
    "umnn": "UMNN UMNNMAFFlow",
}
#: D from which the cases use the high-dimensional budget (steps, CPU seconds, a small sample)
HIGH_D = 32
HIGH_D_BUDGET = {"budget": 100, "seconds": 1200.0, "sample_n": 64, "draws": 1}
_TIME_NOTE = re.compile(r"^kl_after_seconds=(?P<kl>\S+) steps=(?P<steps>\d+) seconds=(?P<s>\S+)(?P<rest>.*)$")


def build(impl: str, dim: int, nodes: int) -> Adapter:
    if impl in ("ours", "ours-per-feature"):
        # the per-feature layout at its own default integrand width, [96, 96] (PER_FEATURE_HIDDEN)
        per_feature = impl == "ours-per-feature"
        return ours(
            "unconstrained", dim, n_layers=3, conditioner_hidden=[64, 64], hidden=None if per_feature else [64, 64],
            embedding=16, n_nodes=nodes, quadrature="clenshaw-curtis", integrand_per_feature=per_feature,
        )  # fmt: skip
    if impl == "zuko":
        import zuko

        # zuko's UNAF integrates with a fixed 32-node Gauss-Legendre rule; `nodes` does not reach it.
        return zuko_adapter(
            zuko.flows.UNAF(
                dim, transforms=3, hidden_features=[64, 64], signal=16, network={"hidden_features": [64, 64]}
            )
        )
    if impl != "umnn":
        raise ValueError(f"unknown implementation {impl!r}; choose one of {list(LABELS)}")
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
    out = []
    for d in dims:
        extra = HIGH_D_BUDGET if d >= HIGH_D and not quick else {}
        out += [{"impl": impl, "dim": d, **common, **extra} for impl in (peers or list(LABELS))]
    return out


def measure_with_time(
    label: str, adapter: Adapter, dim: int, *, batch: int, repeats: int, budget: int, seconds: float, sample_n: int,
    draws: int = 3, lr: float = 1e-3,
) -> Result:  # fmt: skip
    """:func:`~benchmarks.harness.measure`'s protocol (the same data, seeds, batches and Adam), and also the KL
    after ``seconds`` CPU seconds of training steps (the clock counts the steps only, never the evaluations):
    training runs until both budgets are spent; the time-budget result goes into ``note`` for :func:`table`."""
    import torch

    torch.manual_seed(0)
    params = [p for p in adapter.module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    draw, true_log_prob = mixture(dim)
    train, test = draw(20000), draw(4000)

    def step(x) -> float:
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        (-adapter.log_prob(x).mean()).backward()
        opt.step()
        return clock() - t0

    def kl() -> float:
        with torch.no_grad():
            nll = -torch.cat([adapter.log_prob(c) for c in test.split(1000)]).double().mean()
            return float(nll + true_log_prob(test).mean())

    spent = step(train[:batch])  # warm-up: allocator, lazy init (counted in the time budget: it is a step)
    rss0 = _rss_mb()
    times = []
    for i in range(repeats):
        times.append(step(train[(i * batch) % (len(train) - batch) :][:batch]))
    spent += sum(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    g = torch.Generator().manual_seed(1)
    done = 1 + repeats
    kl_steps = kl_time = None
    steps_in_time = 0
    while kl_steps is None or kl_time is None:
        if kl_time is None and spent >= seconds:
            kl_time, steps_in_time = kl(), done
        if kl_steps is None and done >= budget:
            kl_steps = kl()
        if kl_steps is None or kl_time is None:
            spent += step(train[torch.randint(0, len(train), (batch,), generator=g)])
            done += 1
    with torch.no_grad():
        torch.manual_seed(0)
        adapter.sample(8)  # warm-up
        sample_times = []
        for _ in range(draws):
            t0 = clock()
            s = adapter.sample(sample_n)
            sample_times.append(clock() - t0)
    note = f"kl_after_seconds={kl_time:.6g} steps={steps_in_time} seconds={seconds:g}"
    if not torch.isfinite(s).all():
        note += " non-finite samples"
    return Result(label, dim, sum(p.numel() for p in params), 1e3 * statistics.median(times),
                  statistics.median(sample_times), max(peak, 0.0), kl_steps, budget, note)  # fmt: skip


def worker(case: dict[str, Any]) -> Result:
    ad = build(case["impl"], case["dim"], case["nodes"])
    if case.get("seconds"):
        return measure_with_time(LABELS[case["impl"]], ad, case["dim"], batch=case["batch"], repeats=case["repeats"],
                                 budget=case["budget"], seconds=case["seconds"], sample_n=case["sample_n"],
                                 draws=case.get("draws", 3))  # fmt: skip
    return measure(LABELS[case["impl"]], ad, case["dim"], batch=case["batch"], repeats=case["repeats"],
                   budget=case["budget"], sample_n=case["sample_n"])  # fmt: skip


def _time_budget(r: Result) -> tuple[str, str]:
    """(the KL after the time budget with its steps, the rest of the note) of a result."""
    m = _TIME_NOTE.match(r.note)
    if not m:
        return "-", r.note
    return f"{float(m['kl']):.3f} ({m['steps']} steps)", m["rest"].strip()


def table(results: list[Result]) -> str:
    timed = any(_TIME_NOTE.match(r.note) for r in results)
    seconds = sorted({m["s"] for r in results if (m := _TIME_NOTE.match(r.note))})
    head = (
        "| model | D | params | train step (ms) | x vs ours | zuko / this | sample (s) | x vs ours | peak mem (MB) "
        "| KL after budget (nats) |"
    )
    lines = [
        head + (f" KL after {'/'.join(seconds)} CPU s (nats) |" if timed else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if timed else ""),
    ]
    base = {r.dim: r for r in results if r.model == LABELS["ours"]}
    peer = {r.dim: r for r in results if r.model == LABELS["zuko"]}
    order = list(LABELS.values())
    for r in sorted(results, key=lambda r: (r.dim, order.index(r.model) if r.model in order else len(order))):
        b, z = base.get(r.dim), peer.get(r.dim)
        in_time, note = _time_budget(r)
        lines.append(
            f"| {r.model} | {r.dim} | {r.params:,} | {r.train_step_ms:.1f} | "
            f"{ratio(r.train_step_ms, b.train_step_ms if b else None)} | "
            f"{ratio(z.train_step_ms, r.train_step_ms) if z else '-'} | {r.sample_s:.3f} | "
            f"{ratio(r.sample_s, b.sample_s if b else None)} | {r.peak_mem_mb:.0f} | {r.kl_after_budget:.3f} |"
            + (f" {in_time} |" if timed else "")
            + (f" {note}" if note else "")
        )
    return "\n".join(lines)


def report(results: list[Result], seconds: float, command: str) -> str:
    c = results[0].case if results else {}
    high = [r for r in results if r.case.get("seconds")]
    high_note = ""
    if high:
        h = high[0].case
        high_note = (
            f" At D >= {HIGH_D}: KL after {h['budget']} steps and after {h['seconds']:g} CPU seconds of training "
            f"steps (the same for every implementation; its steps in brackets), sampling draws {h['sample_n']} "
            f"points once."
        )
    return (
        "## Unconstrained flows: unflow-zoo vs zuko UNAF vs UMNN\n\n"
        f"Machine: {machine()}. Command: `{command}` ({seconds:.0f} s). Layout: 3 transforms, MADE hidden "
        f"[64, 64], integrand hidden [64, 64], embedding 16, {c.get('nodes', 32)} quadrature nodes, batch "
        f'{c.get("batch", 512)}; "integrand per feature" gives every feature its own integrand network, as '
        "zuko's UNAF does (at our default width for that layout, hidden [96, 96]); train step = median CPU time "
        f"(1 thread, robust to other load) of {c.get('repeats', '?')}; "
        f"sampling draws {c.get('sample_n', '?')}; KL after {c.get('budget', '?')} Adam steps (lr 1e-3) on a "
        "4-component Gaussian mixture with known density." + high_note + ' "x vs ours" = this row\'s time / our '
        "default layout's, \"zuko / this\" = zuko's step time / this row's (above 1: this row is faster).\n\n"
        + table(results)
    )
