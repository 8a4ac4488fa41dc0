"""``compile: true``: a flow's log-density and sampling under :func:`torch.compile`, with a fallback to
eager mode (and one warning) wherever the compiler fails; used by
:class:`~unflow_zoo.models.base.FlowModule`."""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from unflow_zoo.core.flow import Flow

__all__ = ["CompileFallbackWarning", "CompileMode"]

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the packages whose exceptions mean "the compiler failed", not "the model was given bad input"
_COMPILER_MODULES = (
    "torch._dynamo",
    "torch._inductor",
    "torch._functorch",
    "torch._subclasses",
    "torch.fx",
    "torch._export",
)


class CompileFallbackWarning(UserWarning):
    """``compile=True`` was asked for but part of the family runs eagerly: torch.compile failed on it
    (the message names the family, the part and the compiler's error) or the family is known not to
    compile (:meth:`FlowModule.compile_unsupported`). The results are the eager ones, only slower."""


def _flow_log_prob(flow: Flow, x: Tensor, context: Tensor | None) -> Tensor:
    """The function ``compile=True`` compiles for the log-density (the flow is an argument, not a
    bound ``self``, so that a copied or unpickled module compiles its own flow)."""
    return flow.log_prob(x, context)


def _flow_sample(
    flow: Flow, n: int, context: Tensor | None, temperature: float, with_log_prob: bool
) -> tuple[Tensor, Tensor | None]:
    """The function ``compile=True`` compiles for sampling, where the family allows it."""
    if with_log_prob:
        return flow.sample_and_log_prob(n, context, temperature=temperature)
    return flow.sample(n, context, temperature=temperature), None


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``fn`` with a code object of its own.

    torch.compile caches its graphs on the code object of the function it compiles, at most
    ``torch._dynamo.config.recompile_limit`` (8) of them, and guards them on the shapes of the
    weights: one shared function would stop compiling (silently, in eager) after eight models of
    different sizes in one process, as a width sweep builds. Each compiled model gets its own.
    """
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _is_compiler_error(error: BaseException) -> bool:
    """Whether ``error`` comes from torch.compile's machinery (dynamo, AOTAutograd, inductor and its
    C++ compiler) rather than from the model's own checks (a DataError for a bad batch), which
    must reach the caller as they would in eager mode."""
    module = type(error).__module__ or ""
    if module.startswith(_COMPILER_MODULES):
        return True
    # a plain RuntimeError raised by the compiled code's runtime (AOTAutograd's wrappers, say)
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (tb.tb_frame.f_globals.get("__name__") or "") if tb is not None else ""
    return where.startswith(_COMPILER_MODULES)


class _Compiled:
    """``fn`` under torch.compile, built at the first call; eager from then on if the compiler fails.

    A failure of the compiler (at any call: a new shape or grad mode recompiles) warns once, with
    :class:`CompileFallbackWarning` naming the family, the part and the error, and the part runs
    eagerly from then on. Errors that are not the compiler's (bad input) propagate unchanged.
    """

    def __init__(self, fn: Callable[..., Any], owner: str, part: str, mode: str | None) -> None:
        self.fn, self.owner, self.part, self.mode = fn, owner, part, mode
        self.compiled: Callable[..., Any] | None = None
        #: why this part runs eagerly (None: compiled, or not yet tried)
        self.fallback: str | None = None

    def fall_back(self, reason: str) -> None:
        self.fallback, self.compiled = reason, None
        warnings.warn(
            f"{self.owner}: compile=True but the flow's {self.part} runs eagerly: {reason}. The results are "
            "the eager ones; set compile=false to silence this warning",
            CompileFallbackWarning,
            stacklevel=4,
        )

    def __call__(self, *args: Any) -> Any:
        if self.fallback is not None:
            return self.fn(*args)
        if self.compiled is None:
            try:
                self.compiled = torch.compile(_own_code(self.fn), mode=self.mode)
            except Exception as e:  # noqa: BLE001  no compiler (or a broken one) is a fallback, never a crash
                self.fall_back(f"torch.compile is unavailable ({type(e).__name__}: {_first_line(e)})")
                return self.fn(*args)
        try:
            return self.compiled(*args)
        except Exception as e:
            if not _is_compiler_error(e):
                raise
            self.fall_back(f"torch.compile failed ({type(e).__name__}: {_first_line(e)})")
            return self.fn(*args)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else "no message"
    return text if len(text) <= 300 else text[:297] + "..."
