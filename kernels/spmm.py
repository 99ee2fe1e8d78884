"""Sparse (CSR) x dense kernels for inference: ``Y = act(X @ W.T + bias)``.

Raw arrays only: ``W`` comes as ``(data, indices, indptr)`` with sorted,
in-range column indices (the public layer checks that), ``X`` as a dense array.
Every kernel works on a range of output rows given by ``row_starts`` and
releases the GIL, so the public layer runs nnz-balanced row ranges on several
Python threads at once (each range writes its own rows of ``y``: no races).

Batched SpMM (:func:`spmm_kernel`)
    ``X`` is first packed feature-major (:func:`pack`) into blocks of
    ``width`` batch columns, ``xp[block, feature, lane]`` (zero-padded), so
    each nonzero ``w_ij`` streams over one contiguous run ``xp[block, j, :]``:
    one broadcast and ``width / 8`` fused multiply-adds. The ``width``
    accumulators of a row are named scalars, packed into vector registers by
    LLVM's SLP vectoriser, so they stay in registers over the whole row.
    Finished rows are staged, bias added, and copied into ``y`` transposed
    once per chunk of rows, with the activation fused into that copy. A thread
    loops over the batch blocks inside its row range, so one packed block
    (``K * width`` values, 1 MiB for K = 4096, width 64, float32) stays in the
    core's L2 while the range's rows stream past it.

    The caller allocates ``xp`` on a 64-byte boundary: from numpy's usual
    16-byte offset, a 64-byte run straddles two cache lines (1.05-1.4x slower
    per nonzero at widths 32-256, one thread, 4096 x 4096 at 10-30% density,
    measured interleaved).

Vector width
    LLVM compiles these loops with 256-bit vectors even on AVX-512 CPUs (its
    ``prefer-256-bit`` tuning). Forcing 512-bit for the whole process
    (``NUMBA_CPU_FEATURES`` = host features + ``-prefer-256-bit``) gives the
    ideal inner loop (one broadcast, ``width / 16`` zmm FMAs) but measured only
    1.1-1.2x faster per nonzero on a Sapphire Rapids core with aligned ``xp``
    (and slower without alignment), so numba's default codegen is kept.

Batch-1 SpMV (:func:`spmv`)
    A dot product per row with four independent partial sums; no packing and
    no thread launch for small layers.

Activation codes (``ACTIVATIONS``): 0 identity, 1 relu, 2 tanh, 3 logistic.
"""
from __future__ import annotations


import numba
import numpy as np
from numba.core.compiler_lock import global_compiler_lock

from sparseprune.kernels._jit import jit

# FMA contraction but no reassociation: with "reassoc" LLVM vectorises the
# reductions over nonzeros with gathers (slow here: vgather is microcoded on
# current Xeons) instead of vectorising over the batch lanes. The lane loops
# need no reassociation to vectorise.
_NO_REASSOC = frozenset({"contract"})

# Unsigned steps for unsigned positions (uint64 + int64 would give float64 in numba).
_U0, _U1, _U2, _U3, _U4 = (np.uint64(u) for u in range(5))

ACTIVATIONS = {"identity": 0, "relu": 1, "tanh": 2, "logistic": 3}

#: Batch-block widths with a compiled SpMM kernel. 64 float32 lanes = 8 AVX2
#: (or 4 AVX-512) registers: enough independent FMA chains to hide latency.
WIDTHS = (8, 16, 32, 64)

#: Nonzeros per step for each width, summed pairwise before the add into the
#: accumulators: narrow blocks have few accumulator registers, so this keeps
#: their add chains from bounding the speed.
_UNROLL = {8: 4, 16: 4, 32: 2, 64: 1}


@jit(fastmath=False)
def _activate(v, act):
    if act == 1:
        return v if v > 0 else v * 0  # v * 0 keeps NaN a NaN, like np.maximum
    if act == 2:
        return np.tanh(v)
    if act == 3:
        return 1.0 / (1.0 + np.exp(-v))
    return v


PACK_CHUNK = 256


def _pack(x, xp, nonfinite, tiles):
    """Copy ``x`` (batch, K), any layout, into ``xp[block, k, lane]``; padding lanes are left alone.

    Works on tiles ``tiles[0]`` to ``tiles[1]`` (of ``n_blocks * n_chunks``), so
    several threads can pack disjoint tile ranges of one input at once.
    Also flags input rows holding NaN or inf: ``nonfinite[chunk, b]`` is set
    to 1 when row ``b`` has one among the features of ``chunk`` (one slot per
    tile, so no two tiles write the same flag).
    """
    n_batch, n_feat = x.shape
    n_blocks, _, width = xp.shape
    n_chunks = (n_feat + PACK_CHUNK - 1) // PACK_CHUNK
    # Tiles of (width batch rows) x (PACK_CHUNK features): reads and writes both
    # stay within a few KiB instead of a 16 KiB-strided walk that thrashes the cache.
    for t in range(tiles[0], tiles[1]):
        blk = t // n_chunks
        chunk = t % n_chunks
        k0 = chunk * PACK_CHUNK
        k1 = min(n_feat, k0 + PACK_CHUNK)
        b0 = blk * width
        for b in range(b0, min(n_batch, b0 + width)):
            lane = b - b0
            probe = x.dtype.type(0)
            for k in range(k0, k1):
                v = x[b, k]
                xp[blk, k, lane] = v
                probe += v * 0  # 0 for finite v, NaN for NaN or inf
            if probe != probe:
                nonfinite[chunk, b] = 1


pack = jit(_pack)


class _SLPDispatcher:
    """Call a numba dispatcher, compiling new signatures with LLVM's SLP vectoriser on.

    numba turns the SLP vectoriser off by default (``NUMBA_SLP_VECTORIZE``);
    the generated SpMM kernels need it to pack their scalar accumulators into
    vector registers. The switch is flipped only while holding numba's
    compiler lock, so no other compilation sees it.
    """

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.py_func = dispatcher.py_func
        self._seen: set = set()

    def __call__(self, *args):
        d = self.dispatcher
        # A cheap key first (numba.typeof on every argument costs ~20 us a call).
        key = tuple((a.dtype.num, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous)
                    if isinstance(a, np.ndarray) else type(a) for a in args)
        if key not in self._seen:
            sig = tuple(numba.typeof(a) for a in args)
            if sig not in d.overloads:
                with global_compiler_lock:
                    old = numba.config.SLP_VECTORIZE
                    numba.config.SLP_VECTORIZE = 1
                    try:
                        d.compile(sig)
                    finally:
                        numba.config.SLP_VECTORIZE = old
            self._seen.add(key)
        return d(*args)


_SPMM_TEMPLATE = """
def spmm_w{width}(data, indices, indptr, xp, bias, act, row_starts, y, chunk):
    n_batch = y.shape[0]
    zero = data.dtype.type(0)
    for t in range(row_starts.size - 1):
        r0 = row_starts[t]
        r1 = row_starts[t + 1]
        # Finished outputs of `chunk` rows, copied to y transposed once per
        # chunk so y is written in contiguous runs (storing each output
        # straight into its column of y touches `width` cache lines a
        # power-of-two stride apart, which conflict in L1).
        part = np.empty((chunk, {width}), data.dtype)
        for blk in range(xp.shape[0]):
            b0 = blk * {width}
            nb = min({width}, n_batch - b0)
            for c0 in range(r0, r1, chunk):
                c1 = min(r1, c0 + chunk)
                for i in range(c0, c1):
                    ii = i - c0
{init}
                    # Unsigned positions: numba adds a negative-index fix-up to
                    # every signed index; the public layer checked the ranges.
                    p = np.uint64(indptr[i])
                    end = np.uint64(indptr[i + 1])
{unrolled}
                    while p < end:
                        w0 = data[p]
                        j0 = np.uint64(indices[p])
{step1}
                        p += _U1
                    bi = bias[i]
{store}
                for k in range(nb):
                    for ii in range(c1 - c0):
                        y[b0 + k, c0 + ii] = _activate(part[ii, k], act)
"""


def _make_spmm(width: int, unroll: int):
    """Generate the SpMM kernel for one batch-block width.

    The accumulators are ``width`` named scalars (``a0``, ``a1``, ...) so LLVM
    keeps them in vector registers across the loop over a row's nonzeros
    (an accumulator array would be loaded and stored around every nonzero).
    ``unroll`` nonzeros are summed per step before the add into the
    accumulator, so narrow widths still have enough independent work in flight.
    """
    ks = range(width)
    pad = " " * 20
    init = "\n".join(f"{pad}a{k} = zero" for k in ks)
    store = "\n".join(f"{pad}part[ii, {k}] = a{k} + bi" for k in ks)
    step1 = "\n".join(f"{pad}    a{k} += w0 * xp[blk, j0, {k}]" for k in ks)
    unrolled = ""
    if unroll > 1:
        loads = "\n".join(
            f"{pad}    w{u} = data[p + _U{u}]\n{pad}    j{u} = np.uint64(indices[p + _U{u}])"
            for u in range(unroll))

        def tree(terms):  # pairwise sum: short dependency chains
            if len(terms) == 1:
                return terms[0]
            h = len(terms) // 2
            return f"({tree(terms[:h])} + {tree(terms[h:])})"

        sums = "\n".join(
            f"{pad}    a{k} += " + tree([f"w{u} * xp[blk, j{u}, {k}]" for u in range(unroll)]) for k in ks)
        unrolled = f"{pad}while p + _U{unroll} <= end:\n{loads}\n{sums}\n{pad}    p += _U{unroll}"
    src = _SPMM_TEMPLATE.format(width=width, init=init, unrolled=unrolled, step1=step1, store=store)
    namespace: dict = {}
    # Compiled under this file's name so numba's on-disk cache can place it.
    exec(compile(src, __file__, "exec"), globals(), namespace)
    spmm = namespace[f"spmm_w{width}"]
    spmm.__module__ = __name__
    spmm.__qualname__ = spmm.__name__
    return _SLPDispatcher(jit(spmm, fastmath=_NO_REASSOC))


_SPMM = {w: _make_spmm(w, _UNROLL[w]) for w in WIDTHS}


def spmm_kernel(width: int):
    """The compiled SpMM for one batch-block width: ``f(data, indices, indptr, xp, bias, act, row_starts, y, chunk)``.

    ``xp`` is the packed input from :func:`pack` (shape ``(n_blocks, K, width)``),
    ``y`` the C-ordered (batch, out) output, ``row_starts`` the row ranges one
    call works through (see :func:`balanced_row_starts`), ``chunk``
    the rows staged per transposed copy into ``y`` (64 is a good value).
    """
    return _SPMM[width]


@jit(fastmath=_NO_REASSOC)
def spmv(data, indices, indptr, x, bias, act, row_starts, y):
    """``y[i] = act(sum_p data[p] * x[indices[p]] + bias[i])`` for one input vector."""
    for t in range(row_starts.size - 1):
        for i in range(row_starts[t], row_starts[t + 1]):
            # Four partial sums: four independent add chains instead of one,
            # since LLVM does not vectorise this gather reduction by itself.
            s0 = data.dtype.type(0)
            s1 = s0
            s2 = s0
            s3 = s0
            p = np.uint64(indptr[i])
            end = np.uint64(indptr[i + 1])
            while p + _U4 <= end:
                s0 += data[p] * x[np.uint64(indices[p])]
                s1 += data[p + _U1] * x[np.uint64(indices[p + _U1])]
                s2 += data[p + _U2] * x[np.uint64(indices[p + _U2])]
                s3 += data[p + _U3] * x[np.uint64(indices[p + _U3])]
                p += _U4
            while p < end:
                s0 += data[p] * x[np.uint64(indices[p])]
                p += _U1
            y[i] = _activate((s0 + s1) + (s2 + s3) + bias[i], act)




@jit(fastmath=False)
def balanced_row_starts(indptr, n_parts):
    """Split rows into at most ``n_parts`` contiguous ranges with about equal nonzeros (+1 per row).

    Counting each row as one extra unit keeps all-empty stretches from piling
    into one part (their outputs still cost a write each).
    """
    n_rows = indptr.size - 1
    total = indptr[n_rows] - indptr[0] + n_rows
    starts = np.empty(n_parts + 1, np.int64)
    starts[0] = 0
    i = 0
    for part in range(1, n_parts):
        target = (total * part) // n_parts
        while i < n_rows and (indptr[i] - indptr[0] + i) < target:
            i += 1
        starts[part] = i
    starts[n_parts] = n_rows
    # Drop empty ranges so no thread gets a useless iteration.
    out = np.empty(n_parts + 1, np.int64)
    m = 0
    out[0] = 0
    for part in range(1, n_parts + 1):
        if starts[part] > out[m]:
            m += 1
            out[m] = starts[part]
    if m == 0:
        m = 1
        out[1] = n_rows
    return out[: m + 1].copy()


@jit(fastmath=False)
def csr_status(indptr, indices, n_cols):
    """Check raw CSR arrays before any kernel trusts them.

    Returns 0 if canonical (sorted, unique, in-range column indices), 1 if only
    unsorted/duplicate indices, 2 if ``indptr`` is not non-decreasing from 0
    within ``indices``, 3 if a column index is outside ``[0, n_cols)``.
    Branch-free loops (they vectorise): this runs on every ``linear`` call.
    """
    n_rows = indptr.size - 1
    if indptr[0] != 0 or indptr[n_rows] > indices.size:
        return 2
    for i in range(n_rows):
        if indptr[i + 1] < indptr[i]:
            return 2
    limit = np.uint64(n_cols)
    out_of_range = False
    for p in range(indptr[n_rows]):
        # A negative index becomes a huge unsigned one: one test for both ends.
        out_of_range |= np.uint64(indices[p]) >= limit
    if out_of_range:
        return 3
    unsorted = False
    for i in range(n_rows):
        for p in range(indptr[i] + 1, indptr[i + 1]):
            unsorted |= indices[p] <= indices[p - 1]
    return 1 if unsorted else 0

