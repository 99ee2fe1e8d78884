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


def specialize(fn: Callable, suffix: str, **constants) -> Callable:
    """A copy of ``fn`` named ``<name>_<suffix>`` that sees ``constants`` as its globals.

    numba freezes global names as compile-time constants, so one Python function
    can be compiled for, say, two block sizes. The new ``__qualname__`` gives the
    copy its own entries in numba's on-disk cache.
    """
    glb = {**fn.__globals__, **constants} if constants else fn.__globals__
    copy = types.FunctionType(fn.__code__, glb, f"{fn.__name__}_{suffix}", fn.__defaults__, fn.__closure__)
    copy.__qualname__ = f"{fn.__qualname__}_{suffix}"
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


def jit_variants(fn: Callable, *, fastmath: bool | frozenset = True, suffix: str = "", **constants):
    """Compile one function twice: serial and parallel (``prange`` becomes ``range``).

    ``constants`` (with a ``suffix`` naming them) override globals of ``fn`` for
    both copies, see :func:`specialize`.
    """
    par = specialize(fn, suffix, **constants) if suffix else fn
    serial = specialize(fn, f"{suffix}_serial" if suffix else "serial", **constants)
    return jit(serial, parallel=False, fastmath=fastmath), jit(par, parallel=True, fastmath=fastmath)
