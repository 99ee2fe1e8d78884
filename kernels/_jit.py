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
