r"""One integrand network per feature, batched: zuko's UNAF layout (``MLP(..., stack=features)``).

:class:`StackedMLPIntegrand` holds ``S`` independent copies of
:class:`~unflow_zoo.nn.integrand.MLPIntegrand`'s network as stacked ``(S, out, in)``
weights, and evaluates all of them with one batched matmul (``baddbmm``) per layer,
never a Python loop over features. Its tensors are *stack first*: an embedding
``h`` of shape ``(S, ..., e)``, a conditioning ``c`` of shape ``(S, ..., H)`` and
points ``t`` of shape ``(S, ..., K)``, network ``s`` acting on row ``s``. The
first layer is split as in :mod:`~unflow_zoo.nn.integrand`,
:math:`W_s [h, t] + b_s = (W_{s,h} h + b_s) + w_{s,t}\, t`, and :meth:`~StackedMLPIntegrand.vjp`
is written out by hand (batched matmuls and fused ATen activation backwards), so
:class:`~unflow_zoo.transforms.integral.NeuralIntegral` differentiates it (stack first)
without a graph.

References:
    | Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019,
      arXiv:1908.05164.
    | Rozet et al., zuko (``zuko.flows.UNAF``: ``UMNN(signal, stack=features)``),
      github.com/probabilists/zuko.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from unflow_zoo.nn.integrand import (
    INTEGRAND_ACTIVATIONS,
    Integrand,
    _act_forward,
    _layers_backward,
    _pull_back_first_layer,
    _Workspace,
)

__all__ = ["StackedMLPIntegrand"]


class StackedMLPIntegrand(Integrand):
    r"""``stack`` independent MLP integrands :math:`N_s(t; h)`, one per feature, evaluated together:

    .. math:: N_s(t; h) = w_{s,L}^\top \sigma(W_{s,L-1} \cdots \sigma(W_{s,1} [h, t] + b_{s,1}) \cdots) + b_{s,L},
        \qquad s = 0, \dots, S - 1.

    Each network is initialised like ``torch.nn.Linear`` (uniform, bound
    :math:`1/\sqrt{\text{fan-in}}`), independently. All tensors are stack first (see
    the module docstring): :meth:`condition` maps ``(S, ..., e)`` to ``(S, ..., H)``
    and :meth:`evaluate` maps ``c`` ``(S, ..., H)`` and ``t`` ``(S, ..., K)`` to
    ``(S, ..., K)``. :meth:`select` keeps one network of the stack (the numerical
    inverse solves one feature at a time).

    Args:
        stack: :math:`S`, the number of networks (the number of features).
        embedding: size :math:`e` of :math:`h`.
        hidden: hidden layer widths (at least one).
        act: hidden activation, as for :class:`~unflow_zoo.nn.integrand.MLPIntegrand`.

    References:
        Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019, arXiv:1908.05164.
    """

    stack_first: ClassVar[bool] = True

    def __init__(self, stack: int, embedding: int, hidden: Sequence[int] = (64, 64), act: str = "leaky_relu") -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if stack < 1:
            raise ValueError(f"StackedMLPIntegrand needs stack >= 1 (one network per feature), got {stack}")
        if not hidden or min(hidden) < 1 or embedding < 0:
            raise ValueError(
                f"StackedMLPIntegrand needs at least one hidden layer of positive width and embedding >= 0, "
                f"got hidden={hidden}, embedding={embedding}"
            )
        if act not in INTEGRAND_ACTIVATIONS:
            raise ValueError(f"unknown integrand activation {act!r}; choose one of {INTEGRAND_ACTIVATIONS}")
        self.stack, self.embedding, self.hidden_size, self.hidden, self.act = stack, embedding, hidden[0], hidden, act
        sizes = [embedding + 1, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(stack, fan_out, fan_in).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(stack, fan_out).uniform_(-bound, bound)))
        self._workspace = _Workspace()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self._workspace.clear()
        return super()._apply(fn, recurse)

    # ----- the Integrand interface -----------------------------------------------------
    def condition(self, h: Tensor) -> Tensor:
        """``W_{s,h} h + b_s`` for every network: ``(S, ..., e) -> (S, ..., H)``."""
        w, b = self.weights[0], self.biases[0]
        s, e = self.stack, self.embedding
        if h.shape[0] != s or h.shape[-1] != e:
            raise ValueError(f"StackedMLPIntegrand expects h of shape (S={s}, ..., e={e}), got {tuple(h.shape)}")
        rows = math.prod(h.shape[1:-1])
        if e == 0:  # no embedding: the bias alone, the same for every row
            c = b.unsqueeze(1).expand(s, rows, w.shape[1])
        else:
            c = torch.baddbmm(b.unsqueeze(1), h.reshape(s, rows, e), w[:, :, :e].transpose(1, 2))
        return c.reshape(*h.shape[:-1], w.shape[1])

    def path_tensors(self) -> tuple[Tensor, ...]:
        tensors: list[Tensor] = [self.weights[0][:, :, self.embedding]]
        for w, b in zip(self.weights[1:], self.biases[1:]):
            tensors += [w, b]
        return tuple(tensors)

    @staticmethod
    def select(tensors: Sequence[Tensor], index: int) -> tuple[Tensor, ...]:
        """The path tensors of network ``index`` alone, as a stack of one (views, no copy)."""
        return tuple(t[index : index + 1] for t in tensors)

    def _layers_forward(
        self,
        c: Tensor,
        t: Tensor,
        tensors: Sequence[Tensor],
        pre: list[Tensor] | None = None,
        post: list[Tensor] | None = None,
    ) -> Tensor:
        """The networks on all points, ``(S, points, 1)``; records pre-/post-activations (``(S, points, H)``)."""
        w_t, rest = tensors[0], tensors[1:]
        s, h = c.shape[0], c.shape[-1]
        c3, t3 = c.reshape(s, -1, h), t.reshape(s, c.numel() // (s * h), -1)
        n, k = t3.shape[1], t3.shape[2]
        points = n * k
        ws = self._workspace
        # first layer on a fresh (S, n, K, H) tensor: the in-place activation then acts on no view
        buf = ws.get("z0", s * points, h, c)
        z4 = torch.addcmul(
            c3.unsqueeze(2),
            t3.unsqueeze(-1),
            w_t[:, None, None, :],
            out=buf.view(s, n, k, h) if buf is not None else None,
        )
        z = z4.view(s, points, h)
        for i in range(len(rest) // 2):
            if pre is not None:
                pre.append(z)  # read only by silu's backward, which is never in place
            scratch = ws.get("act", s * points, z.shape[-1], z) if self.act == "elu" else None
            if i == 0:
                z4 = _act_forward(self.act, z4, scratch.view(z4.shape) if scratch is not None else None)
                z = z4.view(s, points, h)
            else:
                z = _act_forward(self.act, z, scratch.view(z.shape) if scratch is not None else None)
            if post is not None:
                post.append(z)
            weight, bias = rest[2 * i], rest[2 * i + 1]
            o = weight.shape[1]
            out = ws.get(f"z{i + 1}", s * points, o, z) if o > 1 else None
            z = torch.baddbmm(
                bias.unsqueeze(1), z, weight.transpose(1, 2), out=out.view(s, points, o) if out is not None else None
            )
        return z

    def evaluate(self, c: Tensor, t: Tensor, tensors: Sequence[Tensor]) -> Tensor:
        return self._layers_forward(c, t, tensors).reshape(t.shape)

    def vjp(
        self,
        c: Tensor,
        t: Tensor,
        tensors: Sequence[Tensor],
        cotangent: Callable[[Tensor], Tensor],
        need_c: bool,
        need_tensors: Sequence[bool],
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        s = c.shape[0]
        with torch.no_grad():
            pre: list[Tensor] = []
            post: list[Tensor] = []
            n_out = self._layers_forward(c, t, tensors, pre, post).reshape(t.shape)
            dz = cotangent(n_out).reshape(s, -1, 1)
            dz, grads = _layers_backward(self.act, dz, tensors[1:], pre, post, need_tensors[1:], self._workspace)
            dc, dw = _pull_back_first_layer(dz, t, need_c, need_tensors[0])
        return n_out, dc, [dw, *grads]

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        return {
            "W": list(self.weights[:-1]),
            "b": list(self.biases[:-1]),
            "a": [self.weights[-1], self.biases[-1]],
        }

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        """``N_s(t; h)`` for ``t`` of shape ``(S, ..., K)`` and ``h`` of shape ``(S, ..., e)``."""
        return self.evaluate(self.condition(h), t, self.path_tensors())

    def extra_repr(self) -> str:
        return f"stack={self.stack}, embedding={self.embedding}, hidden={self.hidden}, act={self.act!r}"
