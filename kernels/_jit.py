"""The one place that holds sparseprune's numba settings.

Every kernel is declared with :func:`jit` so all of them compile the same way:
cached on disk (``cache=True``), GIL released (``nogil=True``), numpy error model
(division by zero gives inf/nan like numpy instead of raising), bounds checks off.

``FASTMATH`` allows reassociation and fused multiply-add so reductions
vectorise, but deliberately not ``nnan``/``ninf``: NaN and inf in the data must
propagate exactly as they do in numpy.
"""
from __future__ import annotations

import types
from typing import Callable

import numba
from numba.core import types as _types
from numba.core.extending import intrinsic

FASTMATH = frozenset({"reassoc", "contract"})

_COMMON = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


def _fastmath_flags(fastmath):
    # True: the project's flags; False: none; or a subset of FASTMATH (e.g.
    # {"contract"} to keep FMA but stop LLVM from vectorising a reduction
    # with gathers, which needs "reassoc").
    if fastmath is True:
        return set(FASTMATH)
    if not fastmath:
        return False
    flags = set(fastmath)
    if not flags <= FASTMATH:
        raise ValueError(f"fastmath flags must be a subset of {sorted(FASTMATH)}; got {sorted(flags)}.")
    return flags


def jit(fn: Callable | None = None, *, parallel: bool = False, fastmath: bool | frozenset = True):
    """Compile ``fn`` with the project's settings (lazily, once per dtype, cached)."""

    def wrap(f):
        return numba.njit(parallel=parallel, fastmath=_fastmath_flags(fastmath), **_COMMON)(f)

    return wrap if fn is None else wrap(fn)


def jit_variants(fn: Callable, *, fastmath: bool | frozenset = True):
    """Compile one function twice: serial and parallel (``prange`` becomes ``range``).

    The serial copy gets its own ``__qualname__`` so numba's on-disk cache keeps
    the two variants in separate index files.
    """
    serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                   fn.__defaults__, fn.__closure__)
    serial_fn.__qualname__ = fn.__qualname__ + "_serial"
    serial_fn.__module__ = fn.__module__
    serial_fn.__doc__ = fn.__doc__
    return jit(serial_fn, parallel=False, fastmath=fastmath), jit(fn, parallel=True, fastmath=fastmath)


#: LLVM function attributes that let one function use 512-bit vectors.
_WIDE_ATTRS = ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"')


@intrinsic
def wide_vectors(typingctx):
    """Call first thing in a kernel to let LLVM use 512-bit vectors in it (no code emitted).

    LLVM's x86 tuning for AVX-512 cores prefers 256-bit vectors (the
    ``prefer-256-bit`` feature), so numba code never uses zmm registers.
    The SpMM kernels gain from them: one broadcast and ``width / 16`` fused
    multiply-adds per nonzero instead of ``width / 8`` (measured 1.5-2x per
    nonzero once the packed input sits in L1). A per-function attribute keeps
    the rest of the process (and the user's own numba code) on numba's
    defaults, where a process-wide ``NUMBA_CPU_FEATURES`` would not. On a CPU
    without AVX-512 the attribute changes nothing. The attribute set is
    llvmlite's own; if its internals ever change, the kernel just compiles
    with the default width.
    """

    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        try:
            for a in _WIDE_ATTRS:
                set.add(attrs, a)  # bypasses the known-names check: string attributes are valid IR
        except Exception:  # pragma: no cover - a future llvmlite
            pass
        return context.get_dummy_value()

    return _types.void(), codegen
