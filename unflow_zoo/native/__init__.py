"""Fused C kernels for the seed paper's flows, compiled on first use with the system C compiler.

The kernels (``kernels.c``) are the inner loops of :mod:`unflow_zoo.transforms.tanh_sum` and
:mod:`unflow_zoo.transforms.relu_integral` for float32 on the CPU, one pass over the hidden
units per point. They are built once per machine into the package cache
(``$UNFLOW_ZOO_NATIVE_CACHE`` or ``~/.cache/unflow_zoo_native``, under ``native/<hash>/``), keyed by the
source, the compiler flags and the platform, and loaded with :mod:`ctypes`: no build step at
install time and no dependency beyond a C compiler (``$CC``, ``cc`` or ``gcc``).

Without a compiler, or with ``UNFLOW_ZOO_NATIVE=0``, :func:`library` returns ``None`` and the
callers use their plain-torch implementation, which computes the same numbers (the tests
compare the two) several times slower. ``UNFLOW_ZOO_NATIVE=1`` makes a failed build an error
instead of a warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "library", "ptr", "usable"]

_SOURCE = Path(__file__).with_name("kernels.c")
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}

_I64, _F32, _INT, _P = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "tanh_sum_forward": [_I64] * 4 + [_P] * 6 + [_F32, _F32] + [_P] * 4,
    "tanh_sum_backward": [_I64] * 4 + [_P] * 6 + [_F32, _F32] + [_P] * 11,
    "relu_integral_forward": [_I64] * 4 + [_P, _P, _P, _INT, _P, _P, _P, _INT, _F32] + [_P] * 4 + [_I64, _P],
    "relu_integral_backward": [_I64] * 4 + [_P, _P, _P, _INT, _P, _P, _P, _INT, _F32] + [_P] * 9 + [_I64, _P, _P],
}


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, best first: AVX-512 where torch reports it (16 floats per vector: the
    constrained step 1.4x faster than with AVX2 on a Sapphire Rapids core), then AVX2 + FMA, then
    portable code. A set the compiler rejects falls through to the next."""
    base = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
    simd_exp = ["-DUNFLOW_SIMD_EXP"] if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc" else []
    sets = []
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() in ("x86_64", "AMD64"):
        avx2 = ["-mavx2", "-mfma"]
        if capability == "AVX512":
            sets.append([*base, *avx2, "-mavx512f", "-mavx512dq", "-mprefer-vector-width=512", *simd_exp])
        if capability in ("AVX2", "AVX512"):
            sets.append([*base, *avx2, *simd_exp])  # libmvec's vector expf
    sets.append(base)
    return sets


def _cache_root() -> Path:
    """``$UNFLOW_ZOO_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/unflow_zoo_native`` (``~/.cache/...``): apart
    from the pretrained-flow cache, which holds downloads only."""
    env = os.environ.get("UNFLOW_ZOO_NATIVE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "unflow_zoo_native"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc/clang)")
    errors = []
    for flags in _flag_sets():
        try:
            return _build_with(cc, flags)
        except RuntimeError as err:
            errors.append(str(err))
    raise RuntimeError("\n".join(errors))


def _build_with(cc: str, flags: list[str]) -> ctypes.CDLL:
    key = hashlib.sha256(
        _SOURCE.read_bytes() + " ".join([cc, *flags, platform.platform(), platform.machine()]).encode()
    ).hexdigest()[:16]
    target = _cache_root() / "native" / key / "kernels.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target and rename: concurrent processes never load a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            out = subprocess.run(
                [cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300
            )
            if out.returncode != 0:
                raise RuntimeError(f"{cc} {' '.join(flags)} failed to build {_SOURCE.name}:\n{out.stderr.strip()}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, None
    _STATE["flags"] = flags
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first call; ``None`` when disabled or unavailable."""
    setting = os.environ.get("UNFLOW_ZOO_NATIVE", "auto").lower()
    if setting in ("0", "false", "off", "no"):
        return None
    if "lib" in _STATE:  # the common case, called on every kernel launch: no lock
        return _STATE["lib"]  # type: ignore[return-value]
    with _LOCK:
        if "lib" not in _STATE:
            try:
                _STATE["lib"] = _build()
            except Exception as err:  # a missing or failing compiler must not break the package
                if setting in ("1", "true", "on", "yes"):
                    raise
                warnings.warn(
                    f"unflow_zoo.native: could not build the fused kernels ({err}); using the plain torch "
                    "implementation (same results, slower). Set UNFLOW_ZOO_NATIVE=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _STATE["lib"] = None
    return _STATE["lib"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the fused kernels are built and enabled."""
    return library() is not None


def usable(*tensors: Tensor | None) -> bool:
    """Whether these tensors can go to the kernels: float32, on the CPU, no autocast quirks, and
    not under torch.compile (its tracer's tensors have no memory for a kernel to read or write:
    called through ctypes on them, the kernels corrupt the heap)."""
    if torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            return False
    return available()


def ptr(t: Tensor | None) -> int | None:
    """Data pointer of a contiguous tensor (``None`` -> NULL)."""
    if t is None:
        return None
    if not t.is_contiguous():
        raise ValueError("native kernels need contiguous tensors")
    return t.data_ptr()
