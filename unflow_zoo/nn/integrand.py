r"""Integrand networks :math:`N(t; h)` of unconstrained monotone flows.

An unconstrained monotone transform integrates a positive function of a
network, :math:`f(x) = \int_{x_0}^{x} \phi(N(t; h))\,dt + \beta`, and evaluates
:math:`N` at ``K`` quadrature nodes per coordinate. The networks here are built
for that: the first layer acting on :math:`[h, t]` is split as

.. math:: W [h, t] + b = \underbrace{(W_h h + b)}_{c,\ \text{once per coordinate}} + w_t\, t,

so :meth:`Integrand.condition` computes :math:`c` once per ``(batch, feature)``
and :meth:`Integrand.evaluate` only adds the rank-one term :math:`w_t t` for all
``K`` nodes at once before the rest of the network (one batched matmul chain over
all points). :meth:`Integrand.path_tensors` names the tensors that
:meth:`~Integrand.evaluate` reads, so that a custom autograd function can
differentiate with respect to them, and :meth:`Integrand.vjp` is the
vector-Jacobian product that function's backward pass needs: autograd by
default, written out by hand (fused ATen backward kernels, no graph) for the two
networks here.

References:
    | Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
      Normalizing Flows", AISTATS 2022, arXiv:2106.10535.
    | Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019,
      arXiv:1908.05164.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["INTEGRAND_ACTIVATIONS", "Integrand", "MLPIntegrand", "PaperIntegrand", "make_integrand"]

PaperInit = Literal["gaussian-sqrt-m", "gaussian-std"]
INTEGRAND_ACTIVATIONS: tuple[str, ...] = ("elu", "leaky_relu", "relu", "silu", "tanh")
_LEAKY_SLOPE = 0.01
_aten = torch.ops.aten


def _fast_elu_(z: Tensor, scratch: Tensor | None = None) -> Tensor:
    """ELU in place, without autograd, ~1.5x faster than ``F.elu`` on CPU (whose ``expm1`` is
    not vectorised): :math:`\\max(e^{\\min(z, 0)} - 1, z)` equals ELU, as :math:`e^z - 1 > z`
    for :math:`z < 0`. ``scratch``: a buffer of ``z``'s shape for the exponential."""
    a = torch.clamp(z, max=0, out=scratch) if scratch is not None else z.clamp(max=0)
    a.exp_().sub_(1)
    return torch.maximum(a, z, out=z)


def _act_forward(name: str, z: Tensor, scratch: Tensor | None = None) -> Tensor:
    """``act(z)``, in place on ``z`` where that is safe (a fresh intermediate) and autograd allows it."""
    grad = torch.is_grad_enabled() and z.requires_grad
    if name == "elu":
        return F.elu(z, inplace=True) if grad else _fast_elu_(z, scratch)
    if name == "relu":
        return F.relu(z, inplace=True)
    if name == "leaky_relu":
        return F.leaky_relu(z, _LEAKY_SLOPE, inplace=True)
    if name == "tanh":
        return z.tanh_()
    if name == "silu":
        return F.silu(z)  # its backward needs the input: never in place
    raise ValueError(f"unknown integrand activation {name!r}; choose one of {INTEGRAND_ACTIVATIONS}")


def _act_backward(name: str, grad: Tensor, z: Tensor, a: Tensor) -> Tensor:
    """``grad * act'(z)`` with one fused ATen kernel, from the input ``z`` or the output ``a``,
    written over ``grad`` (elementwise, so the exact aliasing is safe)."""
    if name == "elu":
        return _aten.elu_backward.grad_input(grad, 1.0, 1.0, 1.0, True, a, grad_input=grad)
    if name == "relu":
        return _aten.threshold_backward.grad_input(grad, a, 0, grad_input=grad)
    if name == "leaky_relu":
        return _aten.leaky_relu_backward.grad_input(grad, a, _LEAKY_SLOPE, True, grad_input=grad)
    if name == "tanh":
        return _aten.tanh_backward.grad_input(grad, a, grad_input=grad)
    return _aten.silu_backward.grad_input(grad, z, grad_input=grad)


class Integrand(nn.Module):
    r"""Base class of integrand networks :math:`N(t; h)`, :math:`t \in \mathbb R`, :math:`h \in \mathbb R^e`.

    Subclasses implement :meth:`condition`, :meth:`path_tensors`, :meth:`evaluate`
    and :meth:`parameter_groups`, and may override :meth:`vjp` with a faster
    hand-written backward pass; ``forward(t, h)`` composes them.

    Attributes:
        embedding: :math:`e`, the size of the embedding :math:`h`.
        hidden_size: the size of :math:`c`, the output of :meth:`condition`.
        stack_first: whether the tensors hold one network per feature, stack first
            (:class:`~unflow_zoo.nn.stacked_integrand.StackedMLPIntegrand`): points then come as
            ``(S, n, K)``, row ``s`` for network ``s``, and are never flattened across ``S``.
    """

    embedding: int
    hidden_size: int
    stack_first: ClassVar[bool] = False

    def condition(self, h: Tensor) -> Tensor:
        """The part of the first layer that depends on ``h`` (bias included): ``(..., e) -> (..., H)``."""
        raise NotImplementedError

    def path_tensors(self) -> tuple[Tensor, ...]:
        """The tensors that :meth:`evaluate` reads (weights on the path from ``t`` to the output)."""
        raise NotImplementedError

    def evaluate(self, c: Tensor, t: Tensor, tensors: Sequence[Tensor]) -> Tensor:
        """``N`` at the points ``t`` (shape ``(..., K)``) for the conditioning ``c`` (shape ``(..., H)``).

        Must read parameters only from ``tensors`` (the output of :meth:`path_tensors`,
        possibly detached copies), never from ``self``, so that a custom autograd
        function can differentiate with respect to them. Returns shape ``(..., K)``.
        """
        raise NotImplementedError

    def vjp(
        self,
        c: Tensor,
        t: Tensor,
        tensors: Sequence[Tensor],
        cotangent: Callable[[Tensor], Tensor],
        need_c: bool,
        need_tensors: Sequence[bool],
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        r"""Evaluate ``N = evaluate(c, t, tensors)`` and pull back ``v = cotangent(N)``.

        ``t`` has shape ``(n, K)`` and ``c`` shape ``(n, H)``. Returns ``N`` (no graph),
        :math:`v^\top \partial N / \partial c` (or ``None`` when not ``need_c``) and the
        list of :math:`v^\top \partial N / \partial \theta` for ``tensors`` (``None``
        where not needed). This default uses autograd; subclasses may do it by hand.
        """
        with torch.enable_grad():
            c_ = c.detach().requires_grad_(need_c)
            ts = [x.detach().requires_grad_(bool(n)) for x, n in zip(tensors, need_tensors)]
            n_out = self.evaluate(c_, t, ts)
            v = cotangent(n_out.detach())
            wrt = ([c_] if need_c else []) + [x for x, n in zip(ts, need_tensors) if n]
            grads = list(torch.autograd.grad(n_out, wrt, v)) if wrt else []
        dc = grads.pop(0) if need_c else None
        return n_out.detach(), dc, [grads.pop(0) if n else None for n in need_tensors]

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        """``{"W": hidden weights, "b": hidden biases, "a": top layer}``, for tracking :math:`\\|W_t - W_0\\|`."""
        raise NotImplementedError

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        """``N(t; h)`` for ``t`` of shape ``(..., K)`` and ``h`` of shape ``(..., e)``."""
        return self.evaluate(self.condition(h), t, self.path_tensors())


def _first_layer(c: Tensor, t: Tensor, w_t: Tensor, out: Tensor | None = None) -> Tensor:
    """``c + t w_t`` for every point: ``(..., H)``, ``(..., K)`` -> ``(points, H)``, a fresh 2-D tensor
    (or ``out``, of that shape).

    2-D because addmm outputs are then not views, so in-place activations stay cheap
    under autograd (an in-place op on a view costs a CopySlices copy).
    """
    if out is None:
        return torch.addcmul(c.unsqueeze(-2), t.unsqueeze(-1), w_t).reshape(-1, c.shape[-1])
    torch.addcmul(c.unsqueeze(-2), t.unsqueeze(-1), w_t, out=out.view(*t.shape, c.shape[-1]))
    return out


class _Workspace:
    """Scratch ``(rows, cols)`` matrices reused from one block of integrand points to the next.

    The no-grad passes of an integral (forward, backward re-evaluation, inverse)
    run the same sequence of ``(points, hidden)`` temporaries block after block;
    fresh ~1 MiB allocations page-fault every time (glibc returns them to the OS),
    which costs ~15% of a training step. Buffers are per slot, dtype and device,
    grow as needed and are only used up to ``max_numel`` numbers (larger requests
    get ordinary allocations, so a one-off huge batch does not stay resident).
    Never used while autograd records: a saved tensor must not be overwritten.
    Like the module's other state, not meant for concurrent calls from several threads.
    """

    max_numel = 1 << 21  # 8 MiB of float32 per slot

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    def get(self, slot: str, rows: int, cols: int, like: Tensor) -> Tensor | None:
        n = rows * cols
        # not under torch.compile either: a traced graph writing into a buffer that outlives it is
        # an alias the compiler does not see
        if n > self.max_numel or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        key = (slot, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=like.dtype, device=like.device)
            self._buffers[key] = buf
        return buf[:n].view(rows, cols)

    def clear(self) -> None:
        self._buffers.clear()

    def __deepcopy__(self, memo: dict) -> _Workspace:
        return _Workspace()  # scratch: nothing worth copying

    def __getstate__(self) -> dict:
        return {"_buffers": {}}


def _pull_back_first_layer(dz: Tensor, t: Tensor, need_c: bool, need_w: bool) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``c`` (sum over the K points of a row) and of ``w_t`` (``t`` as a vector times ``dz``).
    ``dz`` is ``(points, H)``, or ``(S, points, H)`` for a stack of networks."""
    dc = dz.view(*t.shape, dz.shape[-1]).sum(dim=-2) if need_c else None
    dw = (t.reshape(*dz.shape[:-2], 1, -1) @ dz).squeeze(-2) if need_w else None
    return dc, dw


def _layers_backward(
    act: str,
    dz: Tensor,
    rest: Sequence[Tensor],
    pre: Sequence[Tensor],
    post: Sequence[Tensor],
    need: Sequence[bool],
    ws: _Workspace,
) -> tuple[Tensor, list[Tensor | None]]:
    """Back through the layers above the first, for one network (``dz`` ``(points, 1)``, weights
    ``(out, in)``) or a stack (``(S, points, 1)``, ``(S, out, in)``): the cotangent of the first
    layer's output and the gradients of ``rest`` (weight, bias, ...) where ``need`` says so."""
    grads: list[Tensor | None] = [None] * len(rest)
    for i in reversed(range(len(rest) // 2)):
        weight = rest[2 * i]
        if need[2 * i]:
            grads[2 * i] = dz.transpose(-1, -2) @ post[i]
        if need[2 * i + 1]:
            grads[2 * i + 1] = dz.sum(dim=-2)
        fan_in = weight.shape[-1]
        # two scratch slots, alternating: the product must not overwrite its input dz
        out = ws.get(f"da{i % 2}", dz.numel() // dz.shape[-1], fan_in, dz)
        out = out.view(*dz.shape[:-1], fan_in) if out is not None else None
        # a single output (the top layer): a broadcast product beats a (batch of) rank-1 matmul(s)
        if weight.shape[-2] == 1:
            da = torch.mul(dz, weight, out=out) if out is not None else dz * weight
        else:
            da = torch.matmul(dz, weight, out=out) if out is not None else dz @ weight
        dz = _act_backward(act, da, pre[i], post[i])
    return dz, grads


class PaperIntegrand(Integrand):
    r"""The seed paper's one-hidden-layer integrand of width :math:`m`:

    .. math:: N(t; h) = s\, a^\top \operatorname{ReLU}(W [h, t] + b),

    with the top layer :math:`a \sim \mathcal N(0, \sigma_a^2)` fixed at
    initialisation (a buffer; ``train_top=True`` makes it a parameter) and, as
    in the official code (``UNF/utils.py``):

    - ``init="gaussian-sqrt-m"`` (the paper's default): :math:`W, b \sim \mathcal N(0, 1/m)`, :math:`s = 1`;
    - ``init="gaussian-std"``: :math:`W, b \sim \mathcal N(0, 1)`, :math:`s = 1/\sqrt m`
      (the NTK parametrisation).

    Args:
        embedding: size :math:`e` of :math:`h` (0: :math:`N(t) = s\,a^\top \operatorname{ReLU}(w t + b)`,
            the paper's 1-D model).
        width: :math:`m`, the number of hidden units.
        std_a: :math:`\sigma_a`, the standard deviation of the top layer (0.25 in the paper).
        init: ``gaussian-sqrt-m`` or ``gaussian-std``, see above.
        train_top: train :math:`a` too (the paper keeps it fixed).

    References:
        Shah, Deshpande & Goyal, "Learning and Generalization in Overparameterized
        Normalizing Flows", AISTATS 2022, arXiv:2106.10535 (Section 4 and the
        official code, github.com/kulinshah98/overparam-NFs, folder UNF/).
    """

    a: Tensor

    def __init__(
        self,
        embedding: int,
        width: int = 256,
        std_a: float = 0.25,
        init: PaperInit = "gaussian-sqrt-m",
        train_top: bool = False,
    ) -> None:
        super().__init__()
        if width < 1 or embedding < 0:
            raise ValueError(f"PaperIntegrand needs width >= 1 and embedding >= 0, got {width}, {embedding}")
        if init not in ("gaussian-sqrt-m", "gaussian-std"):
            raise ValueError(f"unknown init {init!r}; choose 'gaussian-sqrt-m' or 'gaussian-std'")
        self.embedding, self.hidden_size, self.width = embedding, width, width
        self.init, self.std_a = init, std_a
        std = 1.0 / math.sqrt(width) if init == "gaussian-sqrt-m" else 1.0
        self.scale = 1.0 if init == "gaussian-sqrt-m" else 1.0 / math.sqrt(width)
        # The last column of W multiplies t, the others h.
        self.W = nn.Parameter(torch.randn(width, embedding + 1) * std)
        self.b = nn.Parameter(torch.randn(width) * std)
        a = torch.randn(width) * std_a
        if train_top:
            self.a = nn.Parameter(a)  # type: ignore[assignment]
        else:
            self.register_buffer("a", a)

    def condition(self, h: Tensor) -> Tensor:
        return F.linear(h, self.W[:, : self.embedding], self.b)

    def path_tensors(self) -> tuple[Tensor, ...]:
        return (self.W[:, self.embedding], self.a)

    def evaluate(self, c: Tensor, t: Tensor, tensors: Sequence[Tensor]) -> Tensor:
        w_t, a = tensors
        z = F.relu(_first_layer(c, t, w_t), inplace=True)  # fresh: in place saves a pass
        out = (z @ a).reshape(t.shape)
        return out * self.scale if self.scale != 1.0 else out

    def vjp(
        self,
        c: Tensor,
        t: Tensor,
        tensors: Sequence[Tensor],
        cotangent: Callable[[Tensor], Tensor],
        need_c: bool,
        need_tensors: Sequence[bool],
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
        w_t, a = tensors
        with torch.no_grad():
            z = F.relu(_first_layer(c, t, w_t), inplace=True)
            n_out = (z @ a).reshape(t.shape) * self.scale
            v = cotangent(n_out).reshape(-1) * self.scale
            da = z.t() @ v if need_tensors[1] else None
            dz = _aten.threshold_backward(torch.outer(v, a), z, 0)
            dc, dw = _pull_back_first_layer(dz, t, need_c, need_tensors[0])
        return n_out, dc, [dw, da]

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        return {"W": [self.W], "b": [self.b], "a": [self.a]}

    def extra_repr(self) -> str:
        trained = isinstance(self.a, nn.Parameter)
        return (
            f"embedding={self.embedding}, width={self.width}, std_a={self.std_a}, "
            f"init={self.init!r}, train_top={trained}"
        )


class MLPIntegrand(Integrand):
    r"""A deeper integrand, UMNN's: an MLP on :math:`[h, t]`,

    .. math:: N(t; h) = w_L^\top \sigma(W_{L-1} \cdots \sigma(W_1 [h, t] + b_1) \cdots + b_{L-1}) + b_L.

    Args:
        embedding: size :math:`e` of :math:`h`.
        hidden: hidden layer widths (at least one).
        act: hidden activation :math:`\sigma`: ``leaky_relu`` (UMNN's, slope 0.01),
            ``elu`` (zuko's), ``relu``, ``silu`` or ``tanh``. The smooth ones (``elu``
            is :math:`C^1`, ``silu`` and ``tanh`` are analytic) keep Clenshaw-Curtis and
            Gauss-Legendre close to their spectral accuracy; ``leaky_relu`` and
            ``relu`` make :math:`N` piecewise linear in :math:`t` (the quadrature
            error then falls like :math:`K^{-2}`) but are the cheapest on CPU
            (``elu`` costs an ``exp`` per unit, forward and backward).

    References:
        Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019,
        arXiv:1908.05164.
    """

    def __init__(self, embedding: int, hidden: Sequence[int] = (64, 64), act: str = "leaky_relu") -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1 or embedding < 0:
            raise ValueError(f"MLPIntegrand needs at least one hidden layer of positive width, got {hidden}")
        if act not in INTEGRAND_ACTIVATIONS:
            raise ValueError(f"unknown integrand activation {act!r}; choose one of {INTEGRAND_ACTIVATIONS}")
        self.embedding, self.hidden_size, self.hidden = embedding, hidden[0], hidden
        self.act = act
        sizes = [embedding + 1, *hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(sizes))
        self._workspace = _Workspace()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self._workspace.clear()  # buffers of the old dtype/device would only hold memory
        return super()._apply(fn, recurse)

    def condition(self, h: Tensor) -> Tensor:
        first = self.layers[0]
        return F.linear(h, first.weight[:, : self.embedding], first.bias)

    def path_tensors(self) -> tuple[Tensor, ...]:
        tensors: list[Tensor] = [self.layers[0].weight[:, self.embedding]]
        for layer in self.layers[1:]:
            tensors += [layer.weight, layer.bias]
        return tuple(tensors)

    def _layers_forward(
        self,
        c: Tensor,
        t: Tensor,
        tensors: Sequence[Tensor],
        pre: list[Tensor] | None = None,
        post: list[Tensor] | None = None,
    ) -> Tensor:
        """The network on all points, ``(points, 1)``; records pre-/post-activations if asked."""
        w_t, rest = tensors[0], tensors[1:]
        ws, points = self._workspace, t.numel()
        z = _first_layer(c, t, w_t, out=ws.get("z0", points, c.shape[-1], c))
        for i in range(len(rest) // 2):
            if pre is not None:
                pre.append(z)  # read only by silu's backward, which is never in place
            scratch = ws.get("act", points, z.shape[-1], z) if self.act == "elu" else None
            z = _act_forward(self.act, z, scratch)  # z is a fresh intermediate or scratch: in place is safe
            if post is not None:
                post.append(z)
            weight, bias = rest[2 * i], rest[2 * i + 1]
            out = ws.get(f"z{i + 1}", points, weight.shape[0], z) if weight.shape[0] > 1 else None
            z = torch.addmm(bias, z, weight.t(), out=out) if out is not None else torch.addmm(bias, z, weight.t())
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
        with torch.no_grad():
            pre: list[Tensor] = []
            post: list[Tensor] = []
            n_out = self._layers_forward(c, t, tensors, pre, post).reshape(t.shape)
            dz = cotangent(n_out).reshape(-1, 1)
            dz, grads = _layers_backward(self.act, dz, tensors[1:], pre, post, need_tensors[1:], self._workspace)
            dc, dw = _pull_back_first_layer(dz, t, need_c, need_tensors[0])
        return n_out, dc, [dw, *grads]

    def parameter_groups(self) -> dict[str, list[Tensor]]:
        hidden, top = list(self.layers[:-1]), self.layers[-1]
        return {
            "W": [layer.weight for layer in hidden],
            "b": [layer.bias for layer in hidden],
            "a": [top.weight, top.bias],
        }

    def extra_repr(self) -> str:
        return f"embedding={self.embedding}, hidden={self.hidden}, act={self.act!r}"


def make_integrand(
    kind: str,
    embedding: int,
    *,
    width: int = 256,
    hidden: Sequence[int] = (64, 64),
    act: str = "leaky_relu",
    std_a: float = 0.25,
    init: PaperInit = "gaussian-sqrt-m",
    train_top: bool = False,
) -> Integrand:
    """Build an integrand by name: ``paper`` (:class:`PaperIntegrand`) or ``mlp`` (:class:`MLPIntegrand`)."""
    if kind == "paper":
        return PaperIntegrand(embedding, width=width, std_a=std_a, init=init, train_top=train_top)
    if kind == "mlp":
        return MLPIntegrand(embedding, hidden=hidden, act=act)
    raise ValueError(f"unknown integrand {kind!r}; choose 'paper' or 'mlp'")
