"""Quantized sparse (CSR) x dense kernels for inference: ``Y = act(X @ W.T + bias)``.

The weights are stored as small integer codes (see ``sparseprune.quantize``):

- ``linear``: int8 codes ``q`` and a float scale per output row, ``w = q * scale[row]``;
- ``kmeans``: uint8 codes into one shared codebook per layer, ``w = codebook[q]``.

Raw arrays only: the public layer (``sparseprune.quantize.qlinear``) validates
everything before a kernel runs (bounds checks are off). Accumulation is in the
input's float dtype (float32 or float64); the kernels release the GIL and the
parallel drivers are ``prange`` loops whose iterations write disjoint outputs
(no races, no atomics).

Batch 1 (:func:`qspmv_forward`)
    The float32 SpMV's loop (``kernels.spmm.spmv``: one plain reduction per row,
    reassociation on, so LLVM vectorises it with gathers of ``x``) reading a
    1-byte code instead of a 4-byte value: 3 bytes streamed per nonzero (code +
    16-bit column) against 6. ``linear`` sums ``q * x[j]`` (a sign extension and
    a conversion per code, in vector registers) and multiplies the row's sum by
    its scale once; ``kmeans`` looks each code up in the codebook (at most 256
    values, L1-resident; one more gather per vector of nonzeros). A float32
    k-means codebook of at most 32 values (up to 5 bits) on an AVX-512 CPU is
    held in two vector registers instead (:func:`qspmv_perm32`,
    :func:`perm32_dot`): one in-register permute turns 16 codes into 16 weights,
    with no second gather.

Small batches (:func:`qspmv_rows`)
    The same loop once per input row while the weight row sits in L1 (the
    float32 path's ``spmv_rows``, for batches too small to pay for packing).

Batched SpMM (:func:`qspmm_forward`)
    The float32 SpMM's design (``kernels.spmm``): ``X`` packed feature-major
    into blocks of ``width`` batch rows (:func:`kernels.spmm.pack_block`), the
    weights in the tiled layout of :func:`kernels.spmm.tile_csr` (row chunks x
    input panels, 16-bit column offsets), ``width`` accumulators held as named
    scalars (SLP-vectorised, 512-bit vectors), several accumulator sets for
    latency. Per nonzero one scalar load from a small lookup table
    (``table[t]``, L1-resident) replaces the 4-byte value load; the FMAs over the
    ``width`` lanes are unchanged, so at batch >= 16 the cost per nonzero is the
    float32 kernel's, with 3 bytes of weights instead of 6.

    The tiled codes ``t`` are uint8 and index ``table`` (the input's dtype):

    - ``linear``: ``t = q + 128``, ``table[t] = t - 128`` (so ``table[128] = 0``)
      and ``table[0] = 0``; each finished row is multiplied by its scale;
    - ``kmeans`` with up to 7 bits: ``t = q + 1``, ``table = [0, codebook...]``;
    - ``kmeans`` with 8 bits: ``t = q``, ``table = codebook``, and no padding.

    ``t = 0`` has value 0 in the first two cases: ``tile_csr`` pads segments
    with zero entries (code 0, column offset 0) so the unrolled loop needs no
    remainder step; a padding entry then adds ``0 * x``. An 8-bit codebook has
    no free code, so that layout is tiled without padding (``multiple=1``) and
    runs the remainder step instead.

Activation codes are the project's (``kernels.spmm.ACTIVATIONS``, applied by
``kernels.spmm._activate``).

(Measurements: benchmarks/README.md, "Design record".)
"""
from __future__ import annotations

import numba
import numpy as np
from numba.core import types as _types
from numba.core.extending import intrinsic

from ._jit import jit, jit_variants, transpose_tile, wide_vectors
from .spmm import _SETS, WIDTHS, _activate, _SLPDispatcher, nonfinite_rows, pack_block, row_nonfinite

__all__ = ["WIDTHS", "qspmm_forward", "qspmv", "qspmv_forward", "qspmv_rows"]

# FMA contraction without reassociation for the SpMM (as kernels.spmm: with
# "reassoc" LLVM vectorises over nonzeros with gathers instead of over lanes).
_NO_REASSOC = frozenset({"contract"})
# Unsigned position steps (uint64 + int64 would give float64 in numba).
_U1 = np.uint64(1)


# --------------------------------------------------------------------------- batch 1 and small batches

@jit
def qspmv(codes, cols, indptr, table, rowscale, lookup, x, bias, act, r0, r1, y):
    """``y[i] = act(rowscale[i] * sum_p w(p) * x[cols[p]] + bias[i])`` for rows ``r0:r1``.

    ``w(p) = table[codes[p]]`` if ``lookup`` (k-means: ``table`` is the
    codebook, ``rowscale`` ones), else ``w(p) = codes[p]`` (linear: int8 codes,
    ``rowscale`` the per-row scales). The branch is outside the row loop.
    """
    zero = y.dtype.type(0)
    if lookup:
        for i in range(r0, r1):
            p0 = indptr[i]
            p1 = indptr[i + 1]
            d = codes[p0:p1]
            c = cols[p0:p1]
            s = zero
            for k in range(d.size):
                s += table[d[k]] * x[c[k]]
            y[i] = _activate(s * rowscale[i] + bias[i], act, zero)
    else:
        for i in range(r0, r1):
            p0 = indptr[i]
            p1 = indptr[i + 1]
            d = codes[p0:p1]
            c = cols[p0:p1]
            s = zero
            for k in range(d.size):
                s += y.dtype.type(d[k]) * x[c[k]]
            y[i] = _activate(s * rowscale[i] + bias[i], act, zero)


def _host_has_avx512() -> bool:
    try:
        from llvmlite import binding

        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - an llvmlite without the query
        return False


#: Whether :func:`perm32_dot` can run here (checked once; a cached kernel is keyed by CPU too).
HAVE_PERM32 = _host_has_avx512()


@intrinsic
def perm32_dot(typingctx, codes, cols, p0, n_vec, table32, x):
    """``sum(table32[codes[p]] * x[cols[p]])`` over ``p in p0 : p0 + 16 * n_vec`` (float32, AVX-512 only).

    A k-means codebook of at most 32 float32 values (5-bit codes) fits two
    512-bit registers, so each vector of 16 codes becomes 16 weights with one
    in-register two-table permute (``vpermi2ps``) instead of a second gather
    (the plain loop gathers from the codebook and from ``x``, which is what
    made it slower than the float32 SpMV while the layer is in cache).
    ``table32`` must hold 32 values (pad a smaller codebook); the caller
    guarantees the range and that the CPU has AVX-512F (:data:`HAVE_PERM32`).
    """
    ok = (isinstance(codes, _types.Array) and codes.dtype == _types.uint8 and codes.ndim == 1
          and isinstance(cols, _types.Array) and isinstance(cols.dtype, _types.Integer) and cols.ndim == 1
          and isinstance(table32, _types.Array) and table32.dtype == _types.float32
          and isinstance(x, _types.Array) and x.dtype == _types.float32
          and isinstance(p0, _types.Integer) and isinstance(n_vec, _types.Integer))
    if not ok:
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        from numba.core import cgutils

        codes_v, cols_v, p0_v, n_v, table_v, x_v = args
        ca = context.make_array(sig.args[0])(context, builder, codes_v)
        ka = context.make_array(sig.args[1])(context, builder, cols_v)
        ta = context.make_array(sig.args[4])(context, builder, table_v)
        xa = context.make_array(sig.args[5])(context, builder, x_v)
        f32, i8, i16, i32 = ir.FloatType(), ir.IntType(8), ir.IntType(16), ir.IntType(32)
        intp = context.get_value_type(_types.intp)
        v16f, v16i = ir.VectorType(f32, 16), ir.VectorType(i32, 16)
        cty = context.get_data_type(sig.args[1].dtype)
        v16c, v16b = ir.VectorType(cty, 16), ir.VectorType(i8, 16)
        mod = builder.module
        perm = cgutils.get_or_insert_function(mod, ir.FunctionType(v16f, [v16f, v16i, v16f]),
                                              "llvm.x86.avx512.vpermi2var.ps.512")
        gather = cgutils.get_or_insert_function(
            mod, ir.FunctionType(v16f, [v16f, i8.as_pointer(), v16i, i16, i32]), "llvm.x86.avx512.gather.dps.512")
        fma = cgutils.get_or_insert_function(mod, ir.FunctionType(v16f, [v16f, v16f, v16f]), "llvm.fma.v16f32")
        tbl_lo = builder.load(builder.bitcast(ta.data, v16f.as_pointer()), align=4)
        tbl_hi = builder.load(builder.bitcast(builder.gep(ta.data, [ir.Constant(intp, 16)]), v16f.as_pointer()),
                              align=4)
        start = context.cast(builder, p0_v, sig.args[2], _types.intp)
        n = context.cast(builder, n_v, sig.args[3], _types.intp)
        xbase = builder.bitcast(xa.data, i8.as_pointer())
        zero = ir.Constant(v16f, [0.0] * 16)
        acc_ptr = cgutils.alloca_once_value(builder, zero)
        with cgutils.for_range(builder, n) as loop:
            off = builder.add(start, builder.mul(loop.index, ir.Constant(intp, 16)))
            cv = builder.load(builder.bitcast(builder.gep(ca.data, [off]), v16b.as_pointer()), align=1)
            w = builder.call(perm, [tbl_lo, builder.zext(cv, v16i), tbl_hi])
            kv = builder.load(builder.bitcast(builder.gep(ka.data, [off]), v16c.as_pointer()), align=1)
            if cty.width < 32:
                kidx = builder.zext(kv, v16i)
            elif cty.width > 32:
                kidx = builder.trunc(kv, v16i)
            else:
                kidx = kv
            xg = builder.call(gather, [zero, xbase, kidx, ir.Constant(i16, 0xFFFF), ir.Constant(i32, 4)])
            builder.store(builder.call(fma, [w, xg, builder.load(acc_ptr)]), acc_ptr)
        v = builder.load(acc_ptr)
        width = 16
        while width > 1:  # tree reduction: halves added lane-wise
            width //= 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width), list(range(width))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width), list(range(width, 2 * width))))
            v = builder.fadd(lo, hi)
        return builder.extract_element(v, ir.Constant(i32, 0))

    return _types.float32(codes, cols, p0, n_vec, table32, x), codegen


@jit
def qspmv_perm32(codes, cols, indptr, table32, x, bias, act, r0, r1, y):
    """:func:`qspmv` for a k-means codebook of at most 32 float32 values: 16 nonzeros per :func:`perm32_dot` step."""
    zero = y.dtype.type(0)
    for i in range(r0, r1):
        p0 = indptr[i]
        p1 = indptr[i + 1]
        n_vec = (p1 - p0) // 16
        s = perm32_dot(codes, cols, p0, n_vec, table32, x) if n_vec > 0 else zero
        for k in range(p0 + 16 * n_vec, p1):
            s += table32[codes[k]] * x[cols[k]]
        y[i] = _activate(s + bias[i], act, zero)


def _qspmv_perm_forward(codes, cols, indptr, table32, X, bias, act, row_starts):
    """:func:`_qspmv_forward` on :func:`qspmv_perm32` (k-means codebooks of at most 32 float32 values)."""
    x = X[0]
    Y = np.empty((1, indptr.size - 1), X.dtype)
    y = Y[0]
    for t in numba.prange(row_starts.size - 1):
        qspmv_perm32(codes, cols, indptr, table32, x, bias, act, row_starts[t], row_starts[t + 1], y)
    return Y, row_nonfinite(x)


_qspmv_perm_forward_serial, _qspmv_perm_forward_parallel = jit_variants(_qspmv_perm_forward)


def qspmv_perm_forward(parallel: bool = False):
    """The batch-1 driver for small k-means codebooks: ``f(codes, cols, indptr, table32, X, bias, act, row_starts)``."""
    return _qspmv_perm_forward_parallel if parallel else _qspmv_perm_forward_serial


def _qspmv_forward(codes, cols, indptr, table, rowscale, lookup, X, bias, act, row_starts):
    """``(Y, nonfinite)`` for one input row ``X[0]``: Y of shape (1, out); one range of ``row_starts`` per iteration.

    Allocation, product and the NaN/inf check of ``X[0]`` in one compiled call:
    separate Python steps cost more than the steps themselves on a
    sub-millisecond product.
    """
    x = X[0]
    Y = np.empty((1, indptr.size - 1), X.dtype)
    y = Y[0]
    for t in numba.prange(row_starts.size - 1):
        qspmv(codes, cols, indptr, table, rowscale, lookup, x, bias, act, row_starts[t], row_starts[t + 1], y)
    return Y, row_nonfinite(x)


_qspmv_forward_serial, _qspmv_forward_parallel = jit_variants(_qspmv_forward)


def qspmv_forward(parallel: bool = False):
    """The compiled batch-1 driver: ``f(codes, cols, indptr, table, rowscale, lookup, X, bias, act, row_starts)``.

    Returns ``(Y, nonfinite)``; see :func:`qspmv` for the arguments. The
    parallel variant runs one ``prange`` iteration per range of ``row_starts``
    (nnz-balanced ranges from ``kernels.spmm.balanced_row_starts``).
    """
    return _qspmv_forward_parallel if parallel else _qspmv_forward_serial


def _qspmv_rows(codes, cols, indptr, table, rowscale, lookup, X, bias, act, row_starts, Y):
    """``Y[r] = act(W @ X[r] + bias)`` for a few input rows, weight row by weight row.

    Each weight row is read once and used for every input row while it sits in
    L1 (as ``kernels.spmm._spmv_rows``). Returns whether ``X`` held NaN or inf.
    """
    zero = Y.dtype.type(0)
    n_batch = X.shape[0]
    for t in numba.prange(row_starts.size - 1):
        for i in range(row_starts[t], row_starts[t + 1]):
            p0 = indptr[i]
            p1 = indptr[i + 1]
            d = codes[p0:p1]
            c = cols[p0:p1]
            sc = rowscale[i]
            bi = bias[i]
            for r in range(n_batch):
                x = X[r]
                s = zero
                if lookup:
                    for k in range(d.size):
                        s += table[d[k]] * x[c[k]]
                else:
                    for k in range(d.size):
                        s += Y.dtype.type(d[k]) * x[c[k]]
                Y[r, i] = _activate(s * sc + bi, act, zero)
    probe = zero
    for r in range(n_batch):
        for k in range(X.shape[1]):
            probe += X[r, k] * zero
    return probe != probe


_qspmv_rows_serial, _qspmv_rows_parallel = jit_variants(_qspmv_rows)


def qspmv_rows(parallel: bool = False):
    """The compiled small-batch driver: ``f(codes, cols, indptr, table, rowscale, lookup, X, bias, act, row_starts, Y)``.

    Writes ``Y`` (C-ordered (batch, out)) and returns whether ``X`` held NaN or inf.
    """
    return _qspmv_rows_parallel if parallel else _qspmv_rows_serial


# --------------------------------------------------------------------------- batched SpMM

_QSPMM_TEMPLATE = """
def qspmm_w{width}(data, cols, seg, n_panels, rows_per_chunk, panel, table, rowscale, xp, bias, act, c0, c1, y,
                   acc):
    wide_vectors()
    n_out = bias.size
    n_batch = y.shape[0]
    zero = y.dtype.type(0)
    _T = 64 // y.itemsize  # lanes of a transpose_tile tile
    R = rows_per_chunk
    for blk in range(xp.shape[0]):
        xf = xp[blk].reshape(-1)
        b0 = blk * {width}
        nb = min({width}, n_batch - b0)
        for c in range(c0, c1):
            row0 = c * R
            nr = min(R, n_out - row0)
            for r in range(nr):
                for k in range({width}):
                    acc[r, k] = zero
            for q in range(n_panels):
                # The panel's packed rows as one flat run (see kernels.spmm).
                xq = xf[q * panel * {width}:]
                s0 = (c * n_panels + q) * R
                for r in range(nr):
                    p = np.uint64(seg[s0 + r])
                    end = np.uint64(seg[s0 + r + 1])
                    if p == end:
                        continue
{init}
{unrolled}
                    while p < end:
                        w0 = table[data[p]]
                        j0 = np.uint64(cols[p]) * _UW
{step1}
                        p += _U1
{store}
            # Row scale (linear; ones for k-means), bias and activation, then
            # transposed into y as in kernels.spmm.
            for r in range(nr):
                bi = bias[row0 + r]
                sc = rowscale[row0 + r]
                for k in range({width}):
                    acc[r, k] = _activate(acc[r, k] * sc + bi, act, zero)
            rt = nr // _T * _T if {width} % _T == 0 else 0
            kt = nb // _T * _T if {width} % _T == 0 else 0
            for r in range(0, rt, _T):
                for k in range(0, kt, _T):
                    transpose_tile(acc, r, k, y, b0 + k, row0 + r)
            for r in range(rt):
                for k in range(kt, nb):
                    y[b0 + k, row0 + r] = acc[r, k]
            for r in range(rt, nr):
                for k in range(nb):
                    y[b0 + k, row0 + r] = acc[r, k]


def qspmm_fwd_w{width}(x, xps, accs, by_rows, data, cols, seg, n_panels, rows_per_chunk, panel, table, rowscale,
                      bias, act, parts, y, flags):
    wide_vectors()
    n_it = xps.shape[0]
    n_batch = x.shape[0]
    n_bad = 0
    for t in numba.prange(n_it):
        xp = xps[t]
        acc = accs[t]
        if by_rows:
            for blk in range(xp.shape[0]):
                r0 = blk * {width}
                pack_block(x[r0:min(r0 + {width}, n_batch)], xp[blk])
            f0 = n_batch * t // n_it
            f1 = n_batch * (t + 1) // n_it
            n_bad += nonfinite_rows(x[f0:f1], flags[f0:f1])
            qspmm_w{width}(data, cols, seg, n_panels, rows_per_chunk, panel, table, rowscale, xp, bias, act,
                           parts[t], parts[t + 1], y, acc)
        else:
            for blk in range(t, (n_batch + {width} - 1) // {width}, n_it):
                r0 = blk * {width}
                r1 = min(r0 + {width}, n_batch)
                pack_block(x[r0:r1], xp[0])
                n_bad += nonfinite_rows(x[r0:r1], flags[r0:r1])
                qspmm_w{width}(data, cols, seg, n_panels, rows_per_chunk, panel, table, rowscale, xp, bias, act,
                               parts[0], parts[parts.size - 1], y[r0:r1], acc)
    return n_bad
"""


def _make_qspmm(width: int, sets: int):
    """Generate the serial and parallel quantized SpMM for one batch-block width (see ``kernels.spmm._make_spmm``).

    Named scalar accumulators ``a{set}_{lane}`` stay in vector registers over a
    row's nonzeros; ``sets`` independent sets take consecutive nonzeros in turn
    so the FMA latency does not bound narrow blocks.
    """
    ks = range(width)
    pad = " " * 20
    acc = [[f"a{u}_{k}" for k in ks] for u in range(sets)]
    init = "\n".join([f"{pad}{acc[0][k]} = acc[r, {k}]" for k in ks]
                     + [f"{pad}{acc[u][k]} = zero" for u in range(1, sets) for k in ks])
    step1 = "\n".join(f"{pad}    {acc[0][k]} += w0 * xq[j0 + _K{k}]" for k in ks)

    def tree(terms):  # pairwise sum: short dependency chains
        if len(terms) == 1:
            return terms[0]
        h = len(terms) // 2
        return f"({tree(terms[:h])} + {tree(terms[h:])})"

    store = "\n".join(f"{pad}acc[r, {k}] = " + tree([acc[u][k] for u in range(sets)]) for k in ks)
    unrolled = ""
    if sets > 1:
        loads = "\n".join(f"{pad}    w{u} = table[data[p + _U{u}]]\n"
                          f"{pad}    j{u} = np.uint64(cols[p + _U{u}]) * _UW" for u in range(sets))
        fmas = "\n".join(f"{pad}    {acc[u][k]} += w{u} * xq[j{u} + _K{k}]" for u in range(sets) for k in ks)
        unrolled = f"{pad}while p + _U{sets} <= end:\n{loads}\n{fmas}\n{pad}    p += _U{sets}"
    src = _QSPMM_TEMPLATE.format(width=width, init=init, unrolled=unrolled, step1=step1, store=store)
    namespace: dict = {}
    env = dict(globals())
    env["_UW"] = np.uint64(width)
    env.update({f"_U{u}": np.uint64(u) for u in range(sets + 1)})
    env.update({f"_K{k}": np.uint64(k) for k in ks})
    # Compiled under this file's name so numba's on-disk cache can place it.
    exec(compile(src, __file__, "exec"), env, namespace)
    kernel = namespace[f"qspmm_w{width}"]
    fwd = namespace[f"qspmm_fwd_w{width}"]
    for f in (kernel, fwd):
        f.__module__ = __name__
        f.__qualname__ = f.__name__
    env[kernel.__name__] = jit(kernel, fastmath=_NO_REASSOC)  # the drivers call the kernel by name
    fwd_serial, fwd_par = jit_variants(fwd, fastmath=_NO_REASSOC)
    return _SLPDispatcher(fwd_serial), _SLPDispatcher(fwd_par)


# Names the generated source takes from this module's globals.
_TEMPLATE_GLOBALS = (wide_vectors, _activate, pack_block, nonfinite_rows, transpose_tile)

_QSPMM = {w: _make_qspmm(w, _SETS[w]) for w in WIDTHS}


def qspmm_forward(width: int, parallel: bool = False):
    """The compiled pack + quantized SpMM driver for one batch-block width (an ``_SLPDispatcher``).

    ``f(x, xps, accs, by_rows, data, cols, seg, n_panels, rows_per_chunk, panel, table, rowscale, bias, act,
    parts, y, flags)``: as ``kernels.spmm.spmm_forward`` (same packing buffers,
    work space, ``by_rows`` split and ``parts``), with ``data`` the uint8 tiled
    codes, ``table`` their values (the input's dtype) and ``rowscale`` a factor
    per output row applied before the bias. Writes ``y`` (C-ordered (batch,
    out)) and ``flags`` (1 where a row of ``x`` holds NaN or inf); returns the
    number of such rows.
    """
    return _QSPMM[width][1 if parallel else 0]
