"""Sparse (CSR) x dense kernels for inference: ``Y = act(X @ W.T + bias)``.

Raw arrays only: the public layer (``sparseprune.inference.spmm``) validates the CSR
arrays (sorted, in-range column indices) and the input before any kernel
runs. The kernels release the GIL; the parallel drivers are ``prange`` loops
whose iterations write disjoint outputs (no races, no atomics).

Batched SpMM (:func:`spmm_forward`, :func:`spmm_kernel`)
    ``X`` is packed feature-major (:func:`pack_block`) into blocks of ``width``
    batch rows, ``xp[block, feature, lane]`` (zero-padded lanes), so a
    nonzero ``w_ij`` streams over one contiguous run ``xp[block, j, :]``: one
    broadcast and ``width / 16`` fused multiply-adds (float32 on an AVX-512
    core; ``width / 8`` for float64).

    :func:`spmm_forward` runs the pack, the NaN/inf check and the product in
    one compiled call, each thread packing into its own buffer: in parallel,
    a thread takes whole blocks of 64 batch rows (it packs them and runs every
    weight row on them), or, for batches too small to split that way, packs
    the whole batch and takes a range of weight rows. No core reads input
    that another core packed.

    The weights are reordered once per layer (:func:`tile_csr`): rows in
    chunks of ``rows_per_chunk``, and within a chunk the nonzeros panel by
    panel (``panel`` input features each), with 16-bit column offsets. A
    chunk's rows go through one panel of the packed input before the next,
    so the panel (``panel x 64`` values) stays in L1 (L2 for the wide panels
    of sparse layers) while those rows use it;
    the rows' partial sums (``rows_per_chunk x width``) are loaded and
    stored once per panel. Panels are narrower for denser layers and for the
    64-lane kernel (see ``sparseprune.inference.spmm._panel_width``).

    The ``width`` accumulators of a row are named scalars, packed into
    vector registers by LLVM's SLP vectoriser; ``sets`` independent sets of
    them take alternate nonzeros, so the FMA latency does not bound narrow
    blocks. Finished rows get bias and activation and are written once,
    transposed into ``y`` (batch, out): in :func:`transpose_tile` tiles, the
    rows and lanes that do not fill a tile element by element.

    Each nonzero costs a load of its weight and of its 16-bit column offset,
    one broadcast and the FMAs over the lanes. Unstructured sparsity gives no
    reuse of a loaded input value across outputs in registers (the way a dense
    GEMM reuses them), so every FMA needs its own 64-byte load of the packed
    input; L1 misses on that input and the per-segment work (partial sums,
    loop exits) are what the kernel's time goes to.

Vector width
    LLVM compiles numba code for 256-bit vectors even on AVX-512 CPUs (the
    ``prefer-256-bit`` tuning of those cores). The SpMM kernels ask for
    512-bit vectors through a per-function attribute
    (:func:`sparseprune.kernels._jit.wide_vectors`): one zmm FMA per 16
    lanes. The packed input starts on a 64-byte boundary, so each zmm load is
    one cache line.

Batch 1 and a few rows (:func:`spmv_rows_serial`, :func:`spmv_rows_parallel`)
    One plain loop per weight row over views of the row's values and columns,
    on plain CSR (16-bit column indices where they fit), with reassociation
    allowed, so LLVM vectorises it with gathers of ``x`` (16 float32 lanes on
    AVX-512), run for each input row while the weight row sits in L1. Threads
    take nnz-balanced ranges of rows. The output array is allocated by the
    caller: a compiled function that returns a fresh array pays ~0.4 us more
    to box it.

Activation codes (``ACTIVATIONS``): 0 identity, 1 relu, 2 tanh, 3 logistic.

(Measurements, and the designs tried and dropped: benchmarks/README.md, "Design record".)
"""
from __future__ import annotations

import numba
import numpy as np
from numba.core.compiler_lock import global_compiler_lock

from sparseprune.kernels._jit import jit, jit_variants, transpose_tile, wide_vectors

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

#: Independent accumulator sets per width (see _make_spmm).
_SETS = {8: 4, 16: 4, 32: 4, 64: 2}


@jit(fastmath=False)
def _activate(v, act, zero):
    """Activation ``act`` of ``v``; ``zero`` is a 0 of v's type.

    relu matches ``np.maximum(v, 0)``: NaN stays NaN and -inf gives 0 (a
    ``v * 0`` would give NaN there).
    """
    if act == 1:
        return v if (v >= 0 or v != v) else zero
    if act == 2:
        return np.tanh(v)
    if act == 3:
        return 1.0 / (1.0 + np.exp(-v))
    return v


@jit(fastmath=False)
def pack_block(x, xp):
    """Pack ``x`` (``n <= W`` rows, K) into ``xp`` (K, W): ``xp[k, lane] = x[lane, k]``, padding lanes 0.

    Padding lanes are computed like the others by the SpMM kernels (never
    stored): zeros keep them free of NaN and denormals, whatever the buffer
    held before.
    """
    n, n_feat = x.shape
    width = xp.shape[1]
    T = 64 // x.itemsize
    full = n // T * T if width >= T else 0
    if full:
        # Features outer, lane groups inner: each pass completes whole rows of
        # xp (one 4 KiB run for 64 float32 lanes) instead of writing one line
        # in every row of it per lane group (1.25x faster for a 64 x 4096 block).
        k = 0
        while k + T <= n_feat:
            for l0 in range(0, full, T):
                transpose_tile(x, l0, k, xp, k, l0)
            k += T
        for kk in range(k, n_feat):
            for lane in range(full):
                xp[kk, lane] = x[lane, kk]
    if full < width:
        zero = xp.dtype.type(0)
        for k in range(n_feat):
            for lane in range(full, n):
                xp[k, lane] = x[lane, k]
            for lane in range(n, width):
                xp[k, lane] = zero


@jit
def row_nonfinite(x):
    """Whether the 1-D ``x`` holds a NaN or an inf: one vectorised sum of ``x * 0`` (0 for finite
    values, NaN for NaN and inf; the project's fastmath flags never fold ``x * 0`` to 0)."""
    probe = x.dtype.type(0)
    for k in range(x.size):
        probe += x[k] * 0
    return probe != probe


@jit
def nonfinite_rows(x, flags):
    """``flags[b] = 1`` where row ``b`` of ``x`` holds a NaN or an inf (else 0); returns how many."""
    n_bad = 0
    for b in range(x.shape[0]):
        # 0 for finite values, NaN for NaN or inf; a vectorised sum (a probe
        # inside the pack loop measured 3x slower than this separate pass).
        probe = x.dtype.type(0)
        for k in range(x.shape[1]):
            probe += x[b, k] * 0
        bad = probe != probe
        flags[b] = 1 if bad else 0
        n_bad += bad
    return n_bad


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
        # A cheap key first (numba.typeof on every argument costs ~20 us a call).
        # numba types read-only and unaligned arrays apart: they must be in the key,
        # or such a call would compile without the SLP vectoriser.
        key = tuple((a.dtype.num, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous, a.flags.writeable,
                     a.flags.aligned) if isinstance(a, np.ndarray) else type(a) for a in args)
        return self.keyed(key, *args)

    def keyed(self, key, *args):
        """Call with a caller-made ``key`` that sets apart every argument type the call can take.

        For callers that fix all but a few argument types themselves: the
        full key costs about 1 us per argument.
        """
        d = self.dispatcher
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


#: Features per panel are addressed by 16-bit offsets.
PANEL_MAX = 1 << 16

_SPMM_TEMPLATE = """
def spmm_w{width}(data, cols, seg, n_panels, rows_per_chunk, panel, xp, bias, act, c0, c1, y, acc):
    wide_vectors()
    n_out = bias.size
    n_batch = y.shape[0]
    zero = data.dtype.type(0)
    _T = 64 // data.itemsize  # lanes of a transpose_tile tile
    R = rows_per_chunk
    # acc holds the partial outputs of one chunk of rows, `width` lanes each
    # (32 KiB for 128 rows of 64 float32 lanes), in L1/L2 while the chunk's
    # panels go by. The caller passes it: allocated here, 128 KiB for a
    # 512-row chunk went to mmap and cost ~20 us of page faults per call.
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
                # The panel's packed rows as one flat run: a nonzero's lanes are
                # xq[offset * width + lane] (a shift and constant displacements;
                # no per-nonzero add of the panel start or multiply by a stride).
                xq = xf[q * panel * {width}:]
                s0 = (c * n_panels + q) * R
                for r in range(nr):
                    # Unsigned positions: numba adds a negative-index fix-up to
                    # every signed index; the public layer checked the ranges.
                    p = np.uint64(seg[s0 + r])
                    end = np.uint64(seg[s0 + r + 1])
                    if p == end:
                        continue
{init}
{unrolled}
                    while p < end:
                        w0 = data[p]
                        j0 = np.uint64(cols[p]) * _UW
{step1}
                        p += _U1
{store}
            # Transposed into y (each lane's outputs are one contiguous run): in
            # register-transposed tiles, and the rows and lanes left over one by
            # one, reading acc along its rows (a loop reading it down a column
            # compiles to gathers, about 1 ns per value here).
            for r in range(nr):
                bi = bias[row0 + r]
                for k in range({width}):
                    acc[r, k] = _activate(acc[r, k] + bi, act, zero)
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


def spmm_fwd_w{width}(x, xps, accs, by_rows, data, cols, seg, n_panels, rows_per_chunk, panel, bias, act, parts, y,
                     flags):
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
            spmm_w{width}(data, cols, seg, n_panels, rows_per_chunk, panel, xp, bias, act,
                          parts[t], parts[t + 1], y, acc)
        else:
            for blk in range(t, (n_batch + {width} - 1) // {width}, n_it):
                r0 = blk * {width}
                r1 = min(r0 + {width}, n_batch)
                pack_block(x[r0:r1], xp[0])
                n_bad += nonfinite_rows(x[r0:r1], flags[r0:r1])
                spmm_w{width}(data, cols, seg, n_panels, rows_per_chunk, panel, xp, bias, act,
                              parts[0], parts[parts.size - 1], y[r0:r1], acc)
    return n_bad
"""


def _make_spmm(width: int, sets: int):
    """Generate the serial and the parallel SpMM kernel for one batch-block width.

    The accumulators are named scalars (``a0_0 ... a0_{width-1}``), so LLVM
    keeps them in vector registers over a row's nonzeros (an accumulator
    array would be loaded and stored around every nonzero). ``sets``
    independent sets of them take consecutive nonzeros in turn: one set's
    fused multiply-adds depend on the previous nonzero's, and the 4-cycle
    FMA latency would otherwise bound narrow blocks.
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
        loads = "\n".join(f"{pad}    w{u} = data[p + _U{u}]\n{pad}    j{u} = np.uint64(cols[p + _U{u}]) * _UW"
                          for u in range(sets))
        fmas = "\n".join(f"{pad}    {acc[u][k]} += w{u} * xq[j{u} + _K{k}]" for u in range(sets) for k in ks)
        unrolled = f"{pad}while p + _U{sets} <= end:\n{loads}\n{fmas}\n{pad}    p += _U{sets}"
    src = _SPMM_TEMPLATE.format(width=width, init=init, unrolled=unrolled, step1=step1, store=store)
    namespace: dict = {}
    env = dict(globals())
    # Unsigned constants: the row stride and lane offsets in the packed input.
    env["_UW"] = np.uint64(width)
    env.update({f"_K{k}": np.uint64(k) for k in ks})
    # Compiled under this file's name so numba's on-disk cache can place it.
    exec(compile(src, __file__, "exec"), env, namespace)
    kernel = namespace[f"spmm_w{width}"]
    fwd = namespace[f"spmm_fwd_w{width}"]
    for f in (kernel, fwd):
        f.__module__ = __name__
        f.__qualname__ = f.__name__
    kernel_jit = jit(kernel, fastmath=_NO_REASSOC)
    # The drivers call the kernel by name.
    env[kernel.__name__] = kernel_jit
    fwd_serial, fwd_par = jit_variants(fwd, fastmath=_NO_REASSOC)
    return _SLPDispatcher(kernel_jit), _SLPDispatcher(fwd_serial), _SLPDispatcher(fwd_par)


# Names the generated source uses from this module's globals.
_TEMPLATE_GLOBALS = (wide_vectors, _activate, _U1, pack_block, nonfinite_rows, transpose_tile)

_SPMM = {w: _make_spmm(w, _SETS[w]) for w in WIDTHS}


def spmm_kernel(width: int):
    """The compiled SpMM for one batch-block width, on one thread.

    ``f(data, cols, seg, n_panels, rows_per_chunk, panel, xp, bias, act, c0, c1, y, acc)``
    computes the row chunks ``c0:c1``; ``acc`` is work space of shape
    ``(min(rows_per_chunk, out), width)``. The weights are in the tiled layout of
    :func:`tile_csr` (``cols`` are 16-bit offsets within a panel of ``panel``
    features), ``xp`` is the packed input (shape ``(n_blocks, K, width)``,
    see :func:`pack_block`). The result goes transposed to ``y`` (C-ordered
    (batch, out)).
    """
    return _SPMM[width][0]


def spmm_forward(width: int, parallel: bool = False):
    """The compiled pack + SpMM driver for one batch-block width: one call per layer forward.

    ``f(x, xps, accs, by_rows, data, cols, seg, n_panels, rows_per_chunk, panel, bias, act, parts, y, flags)``
    runs ``xps.shape[0]`` iterations (in parallel: one per thread), each with
    its own packing buffer ``xps[t]`` and work space ``accs[t]`` (see
    :func:`spmm_kernel`), so a thread only reads input it packed
    itself (a block packed by another core cost up to 2x in the product that
    read it, from cache lines moving between the cores' L2):

    - ``by_rows=False``: iteration ``t`` takes the blocks of ``width`` input
      rows ``t, t + n_it, ...``; for each, it packs it into ``xps[t][0]``
      (``xps[t]`` has shape ``(1, K, width)``), flags its non-finite rows and
      runs all row chunks ``parts[0]:parts[-1]`` of the weights on it.
    - ``by_rows=True`` (batches too small to split): every iteration packs
      all of ``x`` into ``xps[t]`` (shape ``(n_blocks, K, width)``) and runs
      the chunks ``parts[t]:parts[t + 1]``.

    ``y`` is the C-ordered (batch, out) result, ``flags[b] = 1`` where row
    ``b`` of ``x`` holds NaN or inf; returns the number of such rows. The
    weights are as in :func:`spmm_kernel`.
    """
    return _SPMM[width][2 if parallel else 1]


@jit(fastmath=False)
def tile_csr(data, indices, indptr, rows_per_chunk, panel, n_panels, multiple):
    """Reorder canonical CSR for :func:`spmm_kernel`: ``(tdata, tcols, seg)``.

    Rows are grouped in chunks of ``rows_per_chunk``; within a chunk the
    nonzeros are stored panel by panel (``panel`` input features each), and
    within a panel row by row, so the kernel reads one panel of the packed
    input (small enough for L1) for all rows of a chunk before the next.
    Segment ``s = (chunk * n_panels + q) * rows_per_chunk + r`` (row ``r`` of
    the chunk, panel ``q``) is ``tdata[seg[s]:seg[s + 1]]``, with column
    offsets ``tcols`` (uint16) from the panel's first feature. Each segment
    is padded with zero weights (offset 0) to a multiple of ``multiple``
    nonzeros: with ``multiple`` a multiple of a kernel's accumulator sets,
    its unrolled loop needs no remainder step (whose unpredictable exit
    costs about as much as a few nonzeros).
    """
    n_rows = indptr.size - 1
    R = rows_per_chunk
    n_chunks = (n_rows + R - 1) // R
    n_seg = n_chunks * n_panels * R
    seg = np.zeros(n_seg + 1, np.int64)
    for i in range(n_rows):
        c = i // R
        r = i - c * R
        for p in range(indptr[i], indptr[i + 1]):
            seg[(c * n_panels + indices[p] // panel) * R + r + 1] += 1
    for s in range(n_seg):
        seg[s + 1] = seg[s] + (seg[s + 1] + multiple - 1) // multiple * multiple
    pos = seg[:-1].copy()
    nnz = seg[n_seg]
    tdata = np.zeros(nnz, data.dtype)
    tcols = np.zeros(nnz, np.uint16)
    for i in range(n_rows):
        c = i // R
        r = i - c * R
        for p in range(indptr[i], indptr[i + 1]):
            q = indices[p] // panel
            s = (c * n_panels + q) * R + r
            d = pos[s]
            pos[s] = d + 1
            tdata[d] = data[p]
            tcols[d] = indices[p] - q * panel
    return tdata, tcols, seg


@jit
def spmv(data, indices, indptr, x, bias, act, row_starts, y):
    """``y[i] = act(sum_p data[p] * x[indices[p]] + bias[i])`` for one input vector.

    One plain loop per row over views of the row's values and columns, with
    reassociation allowed: LLVM vectorises it with gathers (16 float32 lanes
    on AVX-512).
    """
    zero = data.dtype.type(0)
    for t in range(row_starts.size - 1):
        for i in range(row_starts[t], row_starts[t + 1]):
            p0 = indptr[i]
            p1 = indptr[i + 1]
            d = data[p0:p1]
            c = indices[p0:p1]
            s = zero
            for k in range(d.size):
                s += d[k] * x[c[k]]
            y[i] = _activate(s + bias[i], act, zero)


def _spmv_rows(data, indices, indptr, X, bias, act, row_starts, Y):
    """``Y[r] = act(W @ X[r] + bias)`` for a few input rows: the SpMV once per row, weight row by weight row.

    For batches too small to pay for packing X into the SpMM kernels' layout
    (a fixed cost of 10-20 us): each weight row is read once and used for
    every input row while it sits in L1. Returns whether X held NaN or inf.
    """
    zero = data.dtype.type(0)
    n_batch = X.shape[0]
    for t in numba.prange(row_starts.size - 1):
        for i in range(row_starts[t], row_starts[t + 1]):
            p0 = indptr[i]
            p1 = indptr[i + 1]
            d = data[p0:p1]
            c = indices[p0:p1]
            for r in range(n_batch):
                x = X[r]
                s = zero
                for k in range(d.size):
                    s += d[k] * x[c[k]]
                Y[r, i] = _activate(s + bias[i], act, zero)
    probe = zero
    for r in range(n_batch):
        for k in range(X.shape[1]):
            probe += X[r, k] * zero
    return probe != probe


spmv_rows_serial, spmv_rows_parallel = jit_variants(_spmv_rows)





def _spmv_checked(data, indices, indptr, n_cols, x, bias, act, n_parts):
    """``act(W @ x + bias)`` on caller-owned CSR arrays that were checked in O(1) only: ``(y, status)``.

    For one-off calls on a matrix scipy already marks canonical: the checks
    that need a pass over the arrays ride along with the product instead of
    preceding it. A row range is clamped to ``[0, nnz]`` (so a corrupt
    ``indptr`` never reads past the arrays), and a column index outside
    ``[0, n_cols)`` is skipped and reported (one unsigned compare per
    nonzero). ``status``: 0 ok, 1 ``x`` holds NaN or inf, 2 an index was out
    of range or ``indptr`` decreasing (then ``y`` is not to be used).
    Rows are split into ``n_parts`` ranges of about equal nonzeros by
    binary search on ``indptr``, one per ``prange`` iteration.
    """
    n_rows = indptr.size - 1
    nnz = indptr[n_rows]
    y = np.empty(n_rows, data.dtype)
    limit = np.uint64(n_cols)
    bad = np.zeros(n_parts, np.bool_)
    zero = data.dtype.type(0)
    for t in numba.prange(n_parts):
        r0 = np.searchsorted(indptr, nnz * t // n_parts, side="left") if t else 0
        r1 = np.searchsorted(indptr, nnz * (t + 1) // n_parts, side="left") if t + 1 < n_parts else n_rows
        r0 = min(r0, n_rows)
        r1 = min(r1, n_rows)
        flag = False
        for i in range(r0, r1):
            p0 = min(max(indptr[i], 0), nnz)
            p1 = min(max(indptr[i + 1], p0), nnz)
            flag |= indptr[i + 1] < indptr[i]
            d = data[p0:p1]
            c = indices[p0:p1]
            s = zero
            for k in range(d.size):
                j = np.uint64(c[k])
                ok = j < limit
                flag |= not ok
                s += d[k] * x[j if ok else _U0]
            y[i] = _activate(s + bias[i], act, zero)
        bad[t] = flag
    probe = zero
    for k in range(x.size):
        probe += x[k] * zero
    if bad.any():
        return y, 2
    return y, 1 if probe != probe else 0


spmv_checked_serial, spmv_checked_parallel = jit_variants(_spmv_checked)


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
def cols_u16_checked(indices, nnz, n_cols, out):
    """``out[p] = indices[p]`` as uint16 for ``p < nnz``; True if some index is outside ``[0, n_cols)``.

    For one-off calls on a matrix scipy marks canonical: the bounds check rides
    along with the 16-bit copy the kernels read anyway, instead of a pass of
    its own (``csr_status``). ``n_cols`` must be at most ``PANEL_MAX``.
    """
    bad = False
    n = indices.dtype.type(n_cols)  # compares in the index's own width: 16 lanes a vector for int32
    zero = indices.dtype.type(0)
    for p in range(nnz):
        j = indices[p]
        bad |= (j < zero) | (j >= n)
        out[p] = np.uint16(j)
    return bad


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

