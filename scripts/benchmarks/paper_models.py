"""The seed paper's two models: one SGD step of unflow-zoo against the official code, and ensembles.

Reference: the official implementation (github.com/kulinshah98/overparam-NFs, MIT), written
out below from its published code: ``UNF/utils.py`` (one one-hidden-layer ReLU network per
coordinate, the right Riemann sum as a Python loop over the 50 nodes, and a custom autograd
function whose backward re-evaluates every node with ``torch.autograd.grad``) and
``CNF/utils.py`` (the block-autoregressive tanh network with its log-derivative by
``logsumexp`` in log space, projected SGD). Ours: ``create_model("unconstrained",
integrand="paper", ...)`` (``layout="paper"`` for D > 1) and ``create_model("constrained",
linear_term=0, ...)``, the same models at the paper's settings (batch 32, SGD).

Timing: CPU time of this one process, one torch thread, the two implementations taking turns
(rounds of ``--steps`` steps each, the median over ``--rounds``), so load on the machine
affects both alike. ``ratio`` = official time / ours (above 1: unflow-zoo is faster).

The ensemble table trains ``E`` independent members at once (:mod:`unflow_zoo.studies.ensemble`,
what the study does) against ``E`` separate package models stepped one after another.

    python scripts/benchmarks/paper_models.py --write     # docs/benchmarks.md, section paper_models
    python scripts/benchmarks/paper_models.py --quick     # seconds (a test runs this)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine, write_section  # noqa: E402

from unflow_zoo import create_model, native  # noqa: E402
from unflow_zoo.studies.overparam import build_ensemble  # noqa: E402

NAME = "paper_models"
OUT = ROOT / "docs" / "benchmarks.md"
BATCH = 32


# ----- the official code (UNF/utils.py), one network per coordinate -----------------------------
class OfficialMLP(nn.Module):
    """``UNF/utils.py: MLP`` with one hidden layer, "gaussian-sqrt(m)" init, fixed top layer."""

    def __init__(self, inp_dim: int, m: int, std_a: float = 0.25) -> None:
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(m, inp_dim) / math.sqrt(m))])
        self.b = nn.ParameterList([nn.Parameter(torch.randn(m) / math.sqrt(m))])
        self.w_final = torch.randn(1, m) * std_a  # train_last_layer=False: a plain tensor
        self.h = torch.zeros(0)

    def set_embedding(self, h: torch.Tensor) -> None:
        self.h = h

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.h, inp.view(-1, 1)), 1)
        out = F.relu(F.linear(out, self.w[0], self.b[0]))
        out = F.linear(out, self.w_final, torch.zeros(1))
        return (F.elu(out) + 1.0).squeeze(dim=1)


def _flatten(seq) -> torch.Tensor:
    return torch.cat([p.contiguous().view(-1) for p in seq])


def _sr_integrate(xT, h, n_steps, model, x0, compute_grad=False, prev_grad=None):
    """``sr_integrate``: the right sum as a loop over nodes; the gradient pass re-evaluates each."""
    weights = 2.0 / n_steps
    steps = (torch.arange(n_steps) + 1) * 2 / n_steps - 1
    acc = 0.0
    x0 = torch.ones_like(xT) * x0
    for i in range(n_steps):
        x = x0 + (xT - x0) * (steps[i] + 1) / 2
        if compute_grad:
            with torch.enable_grad():
                model.set_embedding(h)
                f = model(x)
                g = _flatten(torch.autograd.grad(f, list(model.parameters()), prev_grad * (xT - x0) / 2))
            acc = acc + weights * g
        else:
            model.set_embedding(h)
            acc = acc + weights * model(x)
    return acc if compute_grad else acc * (xT - x0) / 2


class _SRIntegral(torch.autograd.Function):
    @staticmethod
    def forward(ctx, model, params, x, h, n_steps, x0):  # type: ignore[override]
        with torch.no_grad():
            vals = _sr_integrate(x, h, n_steps, model, x0)
        ctx.model, ctx.n, ctx.x0 = model, n_steps, x0
        ctx.save_for_backward(x.clone(), h.clone())
        return vals

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, h = ctx.saved_tensors
        g = _sr_integrate(x, h, ctx.n, ctx.model, ctx.x0, True, grad)
        ctx.model.set_embedding(h)
        return None, g, ctx.model(x) * grad, None, None, None


class OfficialUnconstrained:
    """``give_module_list`` + ``give_function`` + main.py's loss and SGD step."""

    def __init__(self, d: int, m: int, x0: torch.Tensor, lr: float = 5e-3) -> None:
        self.mods = [OfficialMLP(i + 1, m) for i in range(d)]
        self.x0 = x0
        self.opt = torch.optim.SGD([p for mod in self.mods for p in mod.parameters()], lr=lr)

    def step(self, x: torch.Tensor) -> None:
        func = torch.zeros_like(x)
        deriv = torch.zeros_like(x)
        for i, mod in enumerate(self.mods):
            mod.set_embedding(x[:, :i])
            deriv[:, i] = mod(x[:, i])
            func[:, i] = _SRIntegral.apply(mod, _flatten(mod.parameters()), x[:, i], x[:, :i], 50, float(self.x0[i]))
        loss = (func.sum(1) - torch.prod(deriv, 1).log()).mean()  # exponential base
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


# ----- the official code (CNF/utils.py: Flow), one hidden layer -----------------------------------
class OfficialConstrained(nn.Module):
    """``CNF/utils.py: Flow`` with ``num_hidden_layers=1``, clamp-zero, standard-normal init."""

    def __init__(self, d: int, m: int, std_a: float = 0.005, lr: float = 5e-4) -> None:
        super().__init__()
        self.d, self.m = d, m
        self.w0 = nn.Parameter(self._weight(m * d, d, 1.0))
        self.w1 = nn.Parameter(self._weight(d, m * d, std_a))
        self.mask0, self.mask1 = self._diag(m * d, d), self._diag(d, m * d)
        self.lower0, self.lower1 = self._lower(m * d, d), self._lower(d, m * d)
        self.b = nn.Parameter(torch.randn(m * d))
        self.opt = torch.optim.SGD(self.parameters(), lr=lr)
        self.base = torch.distributions.MultivariateNormal(torch.zeros(d), torch.eye(d))

    def _weight(self, out: int, inp: int, std: float) -> torch.Tensor:
        d, w = self.d, torch.zeros(out, inp)
        for i in range(d):
            rows = slice(i * out // d, (i + 1) * out // d)
            w[rows, i * inp // d : (i + 1) * inp // d] = (torch.randn(out // d, inp // d) * std).abs().clamp(1e-10)
            w[rows, : i * inp // d] = torch.randn(out // d, i * inp // d) * std
        return w

    def _diag(self, out: int, inp: int) -> torch.Tensor:
        mask = torch.zeros(out, inp)
        for i in range(self.d):
            mask[i * out // self.d : (i + 1) * out // self.d, i * inp // self.d : (i + 1) * inp // self.d] = 1
        return mask

    def _lower(self, out: int, inp: int) -> torch.Tensor:
        mask = torch.zeros(out, inp)
        for i in range(self.d):
            mask[i * out // self.d : (i + 1) * out // self.d, : (i + 1) * inp // self.d] = 1
        return mask

    def _weight_mat(self, w, mask, lower, out_dim, inp_dim):
        return w * lower, w[mask.bool()].log().view(self.d, out_dim, inp_dim).transpose(-2, -1)

    def forward(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = 1.0 / math.sqrt(self.m)
        weight, log_grad_t = self._weight_mat(self.w0, self.mask0, self.lower0, self.m, 1)
        grad = log_grad_t.transpose(-2, -1).unsqueeze(0).repeat(inp.shape[0], 1, 1, 1)
        out = F.linear(inp, weight, self.b)
        log_act = 2 * (math.log(2) - out - F.softplus(-2 * out))
        out = c * torch.tanh(out)
        grad = grad + log_act.view(grad.shape) + torch.log(torch.Tensor([c]))
        weight, log_grad_t = self._weight_mat(self.w1, self.mask1, self.lower1, 1, self.m)
        log_grad = log_grad_t.transpose(-2, -1).unsqueeze(0).repeat(inp.shape[0], 1, 1, 1)
        grad = (log_grad.unsqueeze(-2) + grad.transpose(-2, -1).unsqueeze(-3)).logsumexp(-1)
        return F.linear(out, weight, torch.zeros(self.d)), grad.squeeze().view(inp.shape[0], -1).sum(-1)

    def step(self, x: torch.Tensor) -> None:
        y, ladj = self(x)
        loss = -(self.base.log_prob(y) + ladj).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():  # clamp-zero
            for w, mask, lower in ((self.w0, self.mask0, self.lower0), (self.w1, self.mask1, self.lower1)):
                w.data = w.data * (lower - mask) + w.data.clamp(1e-6) * mask


# ----- ours -----------------------------------------------------------------------------------------
class Ours:
    """A package model at the paper's settings, stepped like the official code (SGD, batch 32)."""

    def __init__(self, family: str, d: int, m: int, x0: torch.Tensor) -> None:
        if family == "unconstrained":
            extra = dict(layout="paper", lower_limit=[float(v) for v in x0]) if d > 1 else dict(
                embedding=0, lower_limit=float(x0[0]))  # fmt: skip
            self.model = create_model(
                "unconstrained", event_shape=(d,), integrand="paper", n_layers=1, quadrature="riemann", n_nodes=50,
                base="exponential", min_slope=0.0, width=m, **extra,
            )  # fmt: skip
            lr = 5e-3
        else:
            self.model = create_model("constrained", event_shape=(d,), width=m, linear_term=0.0, n_layers=1)
            lr = 5e-4
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.blocks = [t for t in self.model.flow.transform.modules() if hasattr(t, "project_")]

    def step(self, x: torch.Tensor) -> None:
        loss = -self.model.flow.log_prob(x).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        for b in self.blocks:
            b.project_()


def _data(d: int, n: int = 4096) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    x[: n // 2] += 2.0
    return x / (2 * x.norm(dim=1).max())  # the unconstrained code's ball; fine for both


def _time(fn: Callable[[int], None], steps: int) -> float:
    t0 = time.process_time()
    for i in range(steps):
        fn(i)
    return (time.process_time() - t0) / steps


def interleaved(impls: dict[str, Callable[[int], None]], steps: int, rounds: int) -> dict[str, float]:
    for fn in impls.values():  # warm-up (first calls build the kernels, allocate)
        _time(fn, 2)
    times: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            times[name].append(_time(fn, steps))
    return {k: statistics.median(v) for k, v in times.items()}


def step_rows(quick: bool, steps: int, rounds: int) -> list[dict]:
    widths = {"constrained": [10, 100] if quick else [10, 100, 1000, 10000],
              "unconstrained": [16, 64] if quick else [100, 400, 1600, 6400]}  # fmt: skip
    rows = []
    for d in ([1] if quick else [1, 5]):
        x = _data(d)
        x0 = x.min(0).values - 0.05
        for family, ms in widths.items():
            for m in ms:
                torch.manual_seed(0)
                official = OfficialUnconstrained(d, m, x0) if family == "unconstrained" else OfficialConstrained(d, m)
                ours = Ours(family, d, m, x0)

                def batch(i: int) -> torch.Tensor:
                    lo = (i * BATCH) % (x.shape[0] - BATCH)
                    return x[lo : lo + BATCH]

                # the official per-node loop is slow: fewer steps of it per round
                n = max(2, steps // (4 if family == "unconstrained" else 1))
                t = interleaved({"official": lambda i: official.step(batch(i)), "ours": lambda i: ours.step(batch(i))},
                                n, rounds)  # fmt: skip
                rows.append(dict(family=family, d=d, m=m, official=t["official"], ours=t["ours"]))
                print(f"{family} D={d} m={m}: official {t['official'] * 1e3:.2f} ms, ours {t['ours'] * 1e3:.2f} ms, "
                      f"{t['official'] / t['ours']:.2f}x", flush=True)  # fmt: skip
    return rows


def ensemble_rows(quick: bool, steps: int, rounds: int, members: int = 3) -> list[dict]:
    cases = [("constrained", 10), ("constrained", 100), ("unconstrained", 100)]
    if not quick:
        cases += [("constrained", 1000), ("unconstrained", 1600)]
    rows = []
    for family, m in cases:
        x = _data(1)
        x0 = x.min(0).values - 0.05
        seeds = tuple(range(members))
        alone = [Ours(family, 1, m, x0) for _ in seeds]
        ens = build_ensemble(family, m, 1, seeds, [x0] * members)
        lr = torch.full((members,), 5e-3 if family == "unconstrained" else 5e-4)
        xe = x.expand(members, -1, -1)

        def one_by_one(i: int) -> None:
            lo = (i * BATCH) % (x.shape[0] - BATCH)
            for model in alone:
                model.step(x[lo : lo + BATCH])

        def together(i: int) -> None:
            lo = (i * BATCH) % (x.shape[0] - BATCH)
            (-ens.log_prob(xe[:, lo : lo + BATCH]).mean(1).sum()).backward()
            ens.sgd_step(lr)

        t = interleaved({"alone": one_by_one, "ensemble": together}, steps, rounds)
        rows.append(dict(family=family, m=m, members=members, alone=t["alone"], ensemble=t["ensemble"]))
        print(f"ensemble {family} m={m}: {members} alone {t['alone'] * 1e3:.2f} ms, together "
              f"{t['ensemble'] * 1e3:.2f} ms", flush=True)  # fmt: skip
    return rows


def report(steps: list[dict], ens: list[dict], args: argparse.Namespace, seconds: float) -> str:
    kernel = "fused C kernels" if native.available() else "plain torch (no C compiler)"
    lines = [
        "## The seed paper's models vs the official code",
        "",
        f"One SGD step at batch {BATCH} (the paper's settings), CPU time in one process, one torch thread, "
        f"official and ours taking turns ({args.rounds} rounds, median). Ours runs the {kernel}. "
        f"Machine: {machine()}; {args.note}. Measured in {seconds:.0f} s by "
        f"`python scripts/benchmarks/paper_models.py{' --quick' if args.quick else ''}`.",
        "",
        "| model | D | width m | official (ms) | unflow-zoo (ms) | ratio | ours per unit (ns) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in steps:
        per_unit = r["ours"] / (BATCH * r["d"] * r["m"]) * 1e9
        lines.append(
            f"| {r['family']} | {r['d']} | {r['m']} | {r['official'] * 1e3:.2f} | {r['ours'] * 1e3:.3f} | "
            f"{r['official'] / r['ours']:.1f}x | {per_unit:.1f} |"
        )
    below = [f"{r['family']} D={r['d']} m={r['m']}" for r in steps if r["official"] / r["ours"] < 3.0]
    lines += [
        "",
        "ratio = official / ours (above 1: unflow-zoo is faster). The last column is our step time per "
        "hidden unit and point: flat in m means the cost grows linearly in the width.",
        "",
        ("Below the 3x target: " + ", ".join(below) + " (one step there is mostly per-operation framework "
         "overhead on both sides; the study trains such widths as ensembles, next table)."
         if below else "Every case is at least 3x faster than the official code."),
        "",
        f"### Many runs in one step ({ens[0]['members'] if ens else 3} members, D = 1)",
        "",
        "| model | width m | members one by one (ms per step) | one ensemble (ms per step) | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in ens:
        lines.append(
            f"| {r['family']} | {r['m']} | {r['alone'] * 1e3:.2f} | {r['ensemble'] * 1e3:.2f} | "
            f"{r['alone'] / r['ensemble']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small widths, few steps: a smoke run in seconds")
    p.add_argument("--write", action="store_true", help="write the tables into --out")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--steps", type=int, default=None, help="steps per round (default 20; quick 3)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5; quick 2)")
    p.add_argument("--note", default="no other job running", help="machine load, for the report")
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 20)
    args.rounds = args.rounds or (2 if args.quick else 5)
    torch.set_num_threads(1)
    np.random.seed(0)
    t0 = time.time()
    steps = step_rows(args.quick, args.steps, args.rounds)
    ens = ensemble_rows(args.quick, args.steps, args.rounds)
    body = report(steps, ens, args, time.time() - t0)
    print(body)
    if args.write:
        write_section(args.out, NAME, body)
    return steps, ens


if __name__ == "__main__":
    main()
