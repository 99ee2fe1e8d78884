"""The one place that holds sparseprune's numba settings.

Every kernel is declared with :func:`jit` so all of them compile the same way:
cached on disk (``cache=True``), GIL released (``nogil=True``), numpy error model
(division by zero gives inf/nan like numpy instead of raising), bounds checks off.

``FASTMATH`` allows reassociation and fused multiply-add so reductions
vectorise, but deliberately not ``nnan``/``ninf``: NaN and inf in the data must
propagate exactly as they do in numpy.
"""
from __future__ import annotations

import logging
import types
from typing import Callable

import numba
from numba.core import event as _event
from numba.core import types as _types
from numba.core.extending import intrinsic

FASTMATH = frozenset({"reassoc", "contract"})

#: The project's logger: silent in library use (a NullHandler); the CLI shows INFO on stderr.
log = logging.getLogger("sparseprune")
log.addHandler(logging.NullHandler())


class _CompileNotice(_event.Listener):
    """Says once per process, on the ``sparseprune`` logger, that a kernel is being compiled.

    A call that finds its kernel in numba's on-disk cache loads it in
    milliseconds; one that must compile takes seconds, which a user should
    not mistake for a hang. numba announces real compilations (not cache
    loads) as ``numba:compile`` events.
    """

    def __init__(self) -> None:
        self.said = False
        self.t0 = 0.0
        self.depth = 0

    def on_start(self, event) -> None:
        data = event.data or {}
        py_func = getattr(data.get("dispatcher"), "py_func", None)
        if self.said or not getattr(py_func, "__module__", "").startswith("sparseprune.kernels"):
            return
        self.said = True
        log.info("compiling sparseprune's numba kernels for their first use (%s.%s and others; a few "
                 "seconds each, once: they are cached on disk)", py_func.__module__.rsplit(".", 1)[-1],
                 py_func.__name__)

    def on_end(self, event) -> None:
        pass


_event.register("numba:compile", _CompileNotice())

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


def _tile_size(dtype) -> int:
    """Lanes of a :func:`transpose_tile` tile: one 512-bit vector (16 float32, 8 float64)."""
    return 512 // dtype.bitwidth


@intrinsic
def transpose_tile(typingctx, src, r0, c0, dst, r1, c1):
    """``dst[r1 + i, c1 + j] = src[r0 + j, c0 + i]`` for ``i, j < T``: one T x T tile transposed in registers.

    ``T`` is one 512-bit vector of the dtype (16 float32, 8 float64); ``src``
    and ``dst`` are 2-D arrays of the same float dtype, and the caller
    guarantees that the tile lies inside both (no bounds checks here).

    numba has no SIMD shuffles of its own, and LLVM compiles a plain
    transposing loop to one scalar load (or a gather) per element: packing a
    256 x 4096 input that way took 0.8 ns per value on one core. Here the
    tile's T rows are loaded as T vectors, transposed with ``log2(T)``
    rounds of two-vector shuffles (each round swaps one bit of the row
    index with the same bit of the column index), and stored as T vectors.
    A C-contiguous array is read (written) a row vector at a time; any
    other layout element by element, so every layout gives the right result.
    """
    ok = (isinstance(src, _types.Array) and isinstance(dst, _types.Array) and src.ndim == 2
          and dst.ndim == 2 and src.dtype == dst.dtype and src.dtype in (_types.float32, _types.float64)
          and all(isinstance(v, _types.Integer) for v in (r0, c0, r1, c1)))
    if not ok:
        return None
    T = _tile_size(src.dtype)
    item = src.dtype.bitwidth // 8
    # numba types arrays that may start off their element alignment apart;
    # promise LLVM no more than the array's type guarantees.
    src_align = item if src.aligned else 1
    dst_align = item if dst.aligned else 1

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        from numba.core import cgutils

        src_v, r0_v, c0_v, dst_v, r1_v, c1_v = args
        ety = context.get_data_type(sig.args[0].dtype)
        vty = ir.VectorType(ety, T)
        i64 = ir.IntType(64)

        def index(v, ty):
            return context.cast(builder, v, ty, _types.intp)

        def pointer(arrty, arr, i, j):
            shape = cgutils.unpack_tuple(builder, arr.shape, 2)
            strides = cgutils.unpack_tuple(builder, arr.strides, 2)
            return cgutils.get_item_pointer2(context, builder, arr.data, shape, strides, arrty.layout, [i, j])

        def offset(base, k):
            return builder.add(base, ir.Constant(i64, k))

        sty, dty = sig.args[0], sig.args[3]
        s = context.make_array(sty)(context, builder, src_v)
        d = context.make_array(dty)(context, builder, dst_v)
        r0_i, c0_i = index(r0_v, sig.args[1]), index(c0_v, sig.args[2])
        r1_i, c1_i = index(r1_v, sig.args[4]), index(c1_v, sig.args[5])

        rows = []
        for j in range(T):
            if sty.layout == "C":
                p = pointer(sty, s, offset(r0_i, j), c0_i)
                rows.append(builder.load(builder.bitcast(p, vty.as_pointer()), align=src_align))
            else:
                v = ir.Constant(vty, ir.Undefined)
                for i in range(T):
                    e = builder.load(pointer(sty, s, offset(r0_i, j), offset(c0_i, i)), align=src_align)
                    v = builder.insert_element(v, e, ir.Constant(ir.IntType(32), i))
                rows.append(v)
        bit = 1
        while bit < T:
            # Rows i and i + bit exchange the elements whose column has this bit
            # set with the partner's elements whose column has it clear.
            lo = ir.Constant(ir.VectorType(ir.IntType(32), T),
                             [c + T - bit if c & bit else c for c in range(T)])
            hi = ir.Constant(ir.VectorType(ir.IntType(32), T),
                             [c + T if c & bit else c + bit for c in range(T)])
            new = list(rows)
            for i in range(T):
                if not i & bit:
                    new[i] = builder.shuffle_vector(rows[i], rows[i + bit], lo)
                    new[i + bit] = builder.shuffle_vector(rows[i], rows[i + bit], hi)
            rows = new
            bit *= 2
        for i in range(T):
            if dty.layout == "C":
                p = pointer(dty, d, offset(r1_i, i), c1_i)
                builder.store(rows[i], builder.bitcast(p, vty.as_pointer()), align=dst_align)
            else:
                for j in range(T):
                    e = builder.extract_element(rows[i], ir.Constant(ir.IntType(32), j))
                    builder.store(e, pointer(dty, d, offset(r1_i, i), offset(c1_i, j)), align=dst_align)
        return context.get_dummy_value()

    return _types.void(src, r0, c0, dst, r1, c1), codegen
