"""Sparse inference: ``act(X @ W.T + bias)`` with a dense/sparse dispatcher.

:func:`linear` is the one entry point; :class:`SparseLinear` is the same
computation with the weights validated and prepared once, for layers that are
called many times (an MLP's ``predict``). A ``SparseLinear`` measures dense
BLAS (``numpy`` matmul) against the numba kernels in
:mod:`sparseprune.kernels.spmm` on its own first calls, per batch-size bucket
and thread count (:mod:`sparseprune.inference.dispatch`), and keeps the faster; a
cost model (:mod:`sparseprune.inference.costmodel`) only rules out hopeless
candidates and decides one-off :func:`linear` calls. :func:`explain` tells
which path a call takes and why.

NaN and inf in ``X`` propagate exactly as in the dense product: a dense
``X @ W.T`` multiplies every input by every weight, zeros included, and
``0 * nan`` and ``0 * inf`` are NaN. So an input row holding a NaN gives an
all-NaN output row, and an input row holding an inf gives NaN in every output
whose weight row does not store a nonzero weight at each infinite column
(the other outputs get the ±inf/NaN the stored weights produce). The dense
path is numpy's own product, so it also emits numpy's RuntimeWarnings
(overflow, invalid value) where ``X @ W.T`` would; the sparse path is silent.

Threads: the sparse kernels run on ``numba.get_num_threads()`` threads, the
dense path on BLAS's; :func:`sparseprune.thread_limit` sets both at once. The
parallel kernels are numba ``prange`` loops, on a thread-safe numba threading
layer (TBB preferred, else OpenMP), safe to enter from several Python threads
at once (see :mod:`sparseprune.inference.threads`); a launch costs a few
microseconds. A batch is split between the threads by blocks of 64 input
rows, each thread packing and multiplying its own (see :func:`_forward_plan`);
batches too small for that, and the batch-1 SpMV, split nnz-balanced ranges of weight
rows. Small products stay on the calling thread (``threads.SERIAL_WORK``: one
table for every kernel family).

A multi-threaded BLAS call leaves OpenBLAS's worker threads spinning for
about 0.1 s, and a parallel sparse kernel run in that window shares the cores
with them. Inside an MLP, short dense layers among sparse ones therefore run
BLAS on one thread (``SMALL_DENSE_S``); ``OPENBLAS_THREAD_TIMEOUT`` (set before
numpy loads OpenBLAS) shortens the window for programs that alternate large
dense and sparse products.

(Measurements, and the designs tried and dropped: benchmarks/README.md, "Design record".)
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, replace

import numba
import numpy as np
import scipy.sparse as sp

from sparseprune._validation import FLOAT_DTYPES, check_float_matrix, check_int
from sparseprune.inference import costmodel as _cal
from sparseprune.inference.dispatch import FRESH_BYTE_S, Choice, bucket_of
from sparseprune.inference.threads import (
    _num_threads_now,
    parallel_pays,
    run_parallel,
    single_thread_blas,
    thread_limit,
)
from sparseprune.kernels import spmm as _k

__all__ = ["Decision", "SparseLinear", "calibrate", "explain", "linear", "set_calibration"]

ACTIVATIONS = tuple(_k.ACTIVATIONS)
_METHODS = ("auto", "dense", "sparse")
#: When a SparseLinear layer called with ``among_sparse=True`` falls back to
#: dense and the product is predicted to take less than this (seconds), BLAS
#: runs on one thread: a second BLAS thread saves at most this much, while
#: BLAS's idle workers would then spin-wait against the parallel sparse
#: kernels of the next layers for far longer (see
#: ``threads.single_thread_blas``). Longer products, like a large
#: matrix-vector product that needs both cores' memory bandwidth, keep all
#: BLAS threads.
SMALL_DENSE_S = 3e-4
#: Products below this many multiply-adds are left alone: OpenBLAS runs them
#: on one thread anyway (its GEMM threading threshold is 65536 x 4 = 2^18
#: for m * n * k), and switching its thread count costs about 8 us per switch,
#: more than such a product takes.
BLAS_THREADED_MACS = 1 << 18
#: Output rows per chunk of the tiled SpMM layout (their partial sums, 128 x
#: 64 lanes, stay in L1/L2 while the chunk's panels go by). Ranges of whole
#: chunks are what threads share when they split W's rows.
ROWS_PER_CHUNK = 128
#: Rows per chunk in the layout read when each thread runs all of W over its
#: own input blocks (no split of W's rows to balance): a panel of the packed
#: input then serves 512 rows before the next. Splits of W's rows between
#: threads keep ROWS_PER_CHUNK (512-row chunks measured slower there).
BLOCK_ROWS_PER_CHUNK = 512
#: Panel sizing (see _panel_width): nonzeros wanted per row and panel, and
#: the narrowest panel.
PANEL_NNZ = 48
MIN_PANEL = 128
#: The 64-lane kernel (full batch blocks) wants panels this many times
#: narrower: its panel of the packed input is 4x the 16-lane kernel's, so it
#: needs fewer features per panel to stay in L1; the narrower kernels keep
#: PANEL_NNZ. A layer keeps each layout it has used (6 bytes per nonzero
#: each): up to two panel widths times two chunk sizes (see
#: BLOCK_ROWS_PER_CHUNK).
WIDE_PANEL_DIVISOR = 2
#: Segments of the tiled layout are padded to a multiple of this many nonzeros:
#: the two accumulator sets of the 64-lane kernel (large batches) then need no
#: remainder step. The narrower kernels have four sets and keep their remainder
#: step (padding them to 4 measured slower).
PAD_TO = 2
#: Most bytes of packed buffers a thread keeps for reuse (beyond: allocated per call).
SCRATCH_MAX_BYTES = 64 << 20
#: Byte alignment of the packed input (one cache line).
_ALIGN = 64
#: nnz-balanced row ranges per thread for the batch-1 SpMV.
PARTS_PER_THREAD = 4
#: Batches of up to this many rows, or of at most ROWS_MAX_WORK multiply-adds,
#: run the SpMV once per input row (kernels.spmm.spmv_rows_*) instead of
#: packing X for the SpMM kernels, whose fixed cost is 10-20 us. The row
#: kernel runs one gathered dot product per input row and weight row, while
#: the SpMM kernels use each loaded weight for a whole block of rows: from a few
#: rows on, they win on large layers despite the packing (ROWS_MAX_WORK keeps
#: small layers on the row kernel).
ROWS_MAX_BATCH = 2
ROWS_MAX_WORK = 32_000


# --------------------------------------------------------------------------- checks

def _check_activation(activation) -> int:
    if activation is None:
        return 0
    if isinstance(activation, str) and activation in _k.ACTIVATIONS:
        return _k.ACTIVATIONS[activation]
    raise ValueError(
        f"The 'activation' parameter must be None or one of {list(ACTIVATIONS)}. Got {activation!r} instead."
    )


def _check_method(method) -> str:
    if method not in _METHODS:
        raise ValueError(f"The 'method' parameter must be one of {list(_METHODS)}. Got {method!r} instead.")
    return method


def _is_csr(W) -> bool:
    return isinstance(W, (sp.csr_array, sp.csr_matrix))


def _check_weights_type(W) -> None:
    if sp.issparse(W) and not _is_csr(W):
        raise TypeError(
            f"W is a sparse {W.format.upper()} {type(W).__name__}; linear needs CSR rows. "
            "Convert once with W.tocsr() (or scipy.sparse.csr_array(W)) and keep the result."
        )


def _csr_arrays(W, copy: bool):
    """Validated (data, indices, indptr) of a CSR ``W``, canonical; copies only when needed or asked."""
    if W.ndim != 2:
        raise ValueError(f"W is {W.ndim}-dimensional; pass a 2-D weight matrix of shape (out, in).")
    n_out, n_in = W.shape
    data, indices, indptr = W.data, W.indices, W.indptr
    if data.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(
            f"W has dtype {data.dtype}; only float32 and float64 are supported: cast with W.astype(np.float32)."
        )
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise TypeError("W's index arrays must be integer; rebuild W with scipy.sparse.csr_array.")
    if indices.dtype != indptr.dtype or indices.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        dt = np.result_type(indices.dtype, indptr.dtype, np.int32)
        dt = np.int64 if dt.itemsize > 4 or dt.kind == "u" else np.int32
        indices, indptr = indices.astype(dt), indptr.astype(dt)
    if indptr.ndim != 1 or indptr.size != n_out + 1 or indices.ndim != 1 or data.shape != indices.shape:
        raise ValueError(
            f"W is a malformed CSR matrix: indptr has {indptr.size} entries for {n_out} rows "
            f"(expected {n_out + 1}), data {data.shape}, indices {indices.shape}. Rebuild it with "
            "scipy.sparse.csr_array((data, indices, indptr), shape=(out, in))."
        )
    status = _k.csr_status(indptr, indices, n_in)
    if status == 2:
        raise ValueError(
            "W is a malformed CSR matrix: indptr must start at 0, never decrease and end within "
            "indices. Rebuild it with scipy.sparse.csr_array((data, indices, indptr), shape=(out, in))."
        )
    if status == 3:
        bad = indices[: indptr[-1]]
        raise ValueError(
            f"W has column indices outside [0, {n_in}) (min {int(bad.min())}, max {int(bad.max())}) for its "
            f"shape {W.shape}; the matrix is corrupt. Rebuild it with the right shape."
        )
    nnz = int(indptr[-1])
    if status == 1:
        # Unsorted or duplicate column indices: canonicalise a copy (duplicates
        # are summed, as scipy does), never the caller's matrix.
        C = sp.csr_array((data[:nnz].copy(), indices[:nnz].copy(), indptr.copy()), shape=W.shape)
        C.sum_duplicates()
        C.sort_indices()
        data, indices, indptr = C.data, C.indices, C.indptr
        if indices.dtype != indptr.dtype:
            indices, indptr = indices.astype(np.int64), indptr.astype(np.int64)
    elif copy:
        data, indices, indptr = data[:nnz].copy(), indices[:nnz].copy(), indptr.copy()
    return np.ascontiguousarray(data), np.ascontiguousarray(indices), np.ascontiguousarray(indptr)


def _check_bias(bias, n_out: int, dtype) -> np.ndarray:
    if bias is None:
        return np.zeros(n_out, dtype)
    b = np.asarray(bias)
    if b.dtype.kind not in "fiu" or b.dtype.kind == "f" and b.dtype not in FLOAT_DTYPES:
        raise TypeError(f"bias has dtype {b.dtype}; pass a real-valued array (float32 or float64).")
    if b.ndim != 1 or b.shape[0] != n_out:
        raise ValueError(
            f"bias has shape {b.shape}; it must be 1-D with one entry per output, shape ({n_out},)."
        )
    return np.ascontiguousarray(b, dtype=dtype)


def _check_input(X, n_in: int, dtype) -> np.ndarray:
    if sp.issparse(X):
        raise TypeError(f"X is a sparse {type(X).__name__}; pass a dense array (X.toarray()).")
    X = check_float_matrix(X, "X")
    if X.shape[1] != n_in:
        raise ValueError(
            f"X has shape {X.shape} but W expects {n_in} input features: X must be (batch, {n_in}) "
            f"for W of shape (out, {n_in})."
        )
    if X.dtype != dtype:
        raise TypeError(
            f"X has dtype {X.dtype} but W has dtype {np.dtype(dtype)}; cast one to match, for example "
            f"X.astype(np.{np.dtype(dtype).name}) (or convert W with W.astype(np.{X.dtype.name}))."
        )
    if not (X.flags.c_contiguous or X.flags.f_contiguous):
        X = np.ascontiguousarray(X)
    return X


# --------------------------------------------------------------------------- decision

@dataclass(frozen=True)
class Decision:
    """Which path :func:`linear` takes for one layer and batch size, and why."""

    path: str
    kernel: str
    batch: int
    shape: tuple
    nnz: int
    density: float
    n_threads: int
    predicted_dense_s: float
    predicted_sparse_s: float
    calibration: str
    reason: str
    #: Best measured time of a call of this batch size on each path (NaN: not measured).
    measured_dense_s: float = math.nan
    measured_sparse_s: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.path} ({self.kernel}): {self.reason}"


def _goes_parallel(nnz: int, batch: int, n_threads: int) -> bool:
    """Whether a sparse product of ``nnz`` nonzeros at ``batch`` runs on more than one thread."""
    if batch == 0:
        return False
    return (parallel_pays("spmv", nnz, n_threads) if batch == 1
            else parallel_pays("spmm", nnz * batch, n_threads))


def _forced_method() -> str | None:
    """``SPARSEPRUNE_METHOD`` ("dense" or "sparse") when set: it forces every automatic choice."""
    m = os.environ.get("SPARSEPRUNE_METHOD", "").strip().lower()
    return m if m in ("dense", "sparse") else None


def _new_choice(prior: Decision, dense_setup_s=None) -> Choice:
    """The measuring dispatcher's candidates for one layer and batch bucket, from the cost model's prior.

    A path predicted ``HOPELESS`` times slower than the other is not
    measured; otherwise both are, sparse first. ``dense_setup_s()`` (the
    price of the layer's dense copy, 0 once made) makes dense a deferred
    candidate: measured right after sparse only where the sparse calls
    measure slower than the cost model's dense time, else once the calls
    have paid for it (:mod:`sparseprune.inference.dispatch`). Dense
    BLAS against the batched SpMM kernels is ruled out from
    ``HOPELESS_DENSE_SPMM`` already: there the cost model, calibrated on
    those kernels, was never more than 1.83x too optimistic about sparse on
    the dispatcher sweep's layers, and measuring dense costs a dense copy of the
    weights (its first touch of fresh memory was most of what a 95 %-pruned
    784-300-100-10 model's first 100 calls at batch 256 paid for measuring).
    """
    forced = _forced_method()
    if forced is not None:
        return Choice((forced,), f"SPARSEPRUNE_METHOD={forced} forces the path.")
    td, ts = prior.predicted_dense_s, prior.predicted_sparse_s
    if not (td > 0 and ts > 0):
        return Choice(("sparse",), prior.reason)
    spmm = prior.batch > ROWS_MAX_BATCH and prior.nnz * prior.batch > ROWS_MAX_WORK
    if ts * (_cal.HOPELESS_DENSE_SPMM if spmm else _cal.HOPELESS) <= td:
        return Choice(("sparse",), f"the cost model predicts sparse {td / ts:.1f}x faster: dense not measured.")
    if td * _cal.HOPELESS <= ts:
        return Choice(("dense",), f"the cost model predicts dense {ts / td:.1f}x faster: sparse not measured.")
    # Sparse first: its block is then timed before this layer's BLAS calls wake BLAS's spinning workers.
    # Where the sparse calls measure faster than the cost model's dense price, dense is measured
    # once the calls have paid for it (its dense copy of the weights and its calls;
    # dispatch.EXPLORE_BUDGET), else right after sparse.
    deferred = {"dense": dense_setup_s} if dense_setup_s is not None else None
    return Choice(("sparse", "dense"), f"the cost model predicts sparse at {ts / td:.2f}x the dense time: "
                                       "both measured.", prior=prior.path, blas=("dense",), deferred=deferred,
                  expected={"dense": td / max(1, prior.batch)})


def _kernel_name(batch: int, nnz: int) -> str:
    n = _num_threads_now()
    parallel = _goes_parallel(nnz, max(batch, 1), n)
    if batch <= ROWS_MAX_BATCH or nnz * batch <= ROWS_MAX_WORK:
        par = _goes_parallel(nnz * batch, 1, n)
        return f"kernels.spmm.spmv_rows ({n if par else 1} thread{'s' if par and n > 1 else ''})"
    steps = []
    for b0, b1, width, n_it, by_rows in _forward_plan(batch, n, parallel):
        n_blk = -(-(b1 - b0) // width)
        if by_rows:
            steps.append(f"rows {b0}:{b1} in {n_blk} block(s) of {width}, weight rows split over {n} threads")
        else:
            steps.append(f"rows {b0}:{b1} in {n_blk} block(s) of {width} over {n_it} thread(s)")
    return "kernels.spmm.spmm_forward (" + "; ".join(steps) + ")"


def _width_for(batch: int) -> int:
    return next(w for w in _k.WIDTHS if w >= batch)


def _decide(batch: int, shape, nnz: int, *, method: str, weights: str) -> Decision:
    n_out, n_in = shape
    n_threads = _num_threads_now()
    density = nnz / (n_out * n_in) if n_out * n_in else 0.0
    sparse_kernel = _kernel_name(batch, nnz)
    dense_kernel = "numpy matmul (BLAS)"

    def make(path, reason, td=math.nan, ts=math.nan, source="not used"):
        return Decision(path, dense_kernel if path == "dense" else sparse_kernel, batch, tuple(shape), nnz,
                        density, n_threads, td, ts, source, reason)

    if method == "dense":
        if weights == "dense-array":
            return make("dense", "method='dense' was requested.")
        return make("dense", "method='dense' was requested (W is expanded to a dense array).")
    if method == "sparse":
        return make("sparse", "method='sparse' was requested.")
    if weights == "dense-array":
        return make("dense", "W is a dense array: wrap it in SparseLinear(W) (or pass a csr_array) "
                             "to let the dispatcher consider the sparse kernel.")
    if batch == 0 or n_out == 0:
        return make("sparse", "empty output: nothing to compute.")
    table = _cal.get_table(n_threads)
    td = _cal.per_unit(table, "dense_per_mac", batch) * n_out * n_in
    # A few rows run the SpMV row kernel: one gathered dot product per weight row and input
    # row, so batch times the SpMV's cost per nonzero plus a fixed cost per such pair
    # (the batched per-nnz cost, measured on the SpMM kernels that reuse each weight across
    # 16-64 lanes, underestimated it up to 13x at batch 22). Larger batches run the SpMM
    # kernels, which pack X and keep partial sums per output row.
    row_kernel = batch <= ROWS_MAX_BATCH or nnz * batch <= ROWS_MAX_WORK
    if row_kernel:
        ts = batch * (_cal.per_unit(table, "sparse_per_nnz", 1) * nnz + _cal.ROW_PAIR_S * n_out)
    else:
        ts = _cal.per_unit(table, "sparse_per_nnz", batch) * nnz
    if "pack_per_col" in table and not row_kernel:
        ts += _cal.per_unit(table, "pack_per_col", batch) * n_in
    if "out_per_row" in table and not row_kernel:
        ts += _cal.per_unit(table, "out_per_row", batch) * n_out
    # Fixed cost of one call on each path (Python, dispatch, allocation): it
    # decides tiny layers, where either product itself takes a microsecond.
    overhead = table.get("call_overhead_s", {})
    td += float(overhead.get("dense", 0.0))
    ts += float(overhead.get("sparse" if row_kernel else "sparse_batched", overhead.get("sparse", 0.0)))
    extra = ""
    if weights == "csr":
        # linear(X, W_csr) has no dense copy to reuse: going dense means expanding W on every call.
        td += (_cal.EXPAND_GEMVS * _cal.per_unit(table, "dense_per_mac", 1) * n_out * n_in
               + _cal.EXPAND_PER_NNZ * _cal.per_unit(table, "sparse_per_nnz", 1) * nnz)
        extra = " (dense includes expanding W; SparseLinear keeps a dense copy and avoids that)"
    source = f"{table.get('source', '?')} calibration for {n_threads} thread(s)"
    ratio = ts / td if td > 0 else math.inf
    if ts <= _cal.SAFETY * td:
        reason = (f"density {density:.1%} at batch {batch}: sparse predicted {ratio:.2f}x the dense time{extra}, "
                  f"below the {_cal.SAFETY:.2f} safety threshold.")
        return make("sparse", reason, td, ts, source)
    reason = (f"density {density:.1%} at batch {batch}: sparse predicted {ratio:.2f}x the dense time{extra}, "
              f"not below the {_cal.SAFETY:.2f} safety threshold, so dense BLAS is kept.")
    return make("dense", reason, td, ts, source)


# --------------------------------------------------------------------------- execution

def _activate_inplace(Y: np.ndarray, act: int) -> None:
    if act == 1:
        np.maximum(Y, 0, out=Y)
    elif act == 2:
        np.tanh(Y, out=Y)
    elif act == 3:
        # Stable logistic: exp of non-positive arguments only (1 / (1 + exp(-y)) overflows,
        # with a RuntimeWarning, for large negative y).
        E = np.exp(-np.abs(Y))
        Y[...] = np.where(Y >= 0, 1, E) / (1 + E)


def _dense_forward(X, Wd, bias, has_bias: bool, act: int, single_thread: bool = False) -> np.ndarray:
    # No np.errstate here: it cost ~40 us (3%) on a 4096x4096 matrix-vector
    # product, and the dense path then warns on overflow exactly as X @ W.T does.
    if single_thread:
        with single_thread_blas():
            Y = np.ascontiguousarray(X @ Wd.T)
    else:
        Y = np.ascontiguousarray(X @ Wd.T)
    if has_bias:
        Y += bias
    _activate_inplace(Y, act)
    return Y


def _aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting on a 64-byte (cache-line) boundary.

    numpy's large allocations start 16 bytes past a page boundary, so each
    packed ``xp[blk, j, :]`` run would straddle cache lines: every 64-byte
    load of the SpMM inner loop would be a split load.
    """
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    raw = np.empty(n * dtype.itemsize + _ALIGN, np.uint8)
    off = (-raw.ctypes.data) % _ALIGN
    return raw[off:off + n * dtype.itemsize].view(dtype).reshape(shape)


_scratch = threading.local()


def _scratch_array(slot: int, shape: tuple, dtype) -> np.ndarray:
    """A 64-byte aligned work array for this thread, reused across calls.

    The packed inputs are megabytes (4 MiB for 256 x 4096 float32); a fresh
    allocation per call paid its page faults every time (0.2 ms per 4 MiB
    measured here, as much as packing itself on 2 threads). Each thread
    keeps its own buffers, so concurrent callers never share one.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    held = sum(b.size for k, b in bufs.items() if k != slot)
    if held + nbytes > SCRATCH_MAX_BYTES:
        # A one-off huge batch gets its own array rather than buffers this
        # thread would then hold on to for good.
        return _aligned_empty(shape, dtype)
    buf = bufs.get(slot)
    if buf is None or buf.size < nbytes:
        buf = _aligned_empty((max(nbytes, 64),), np.uint8)
        bufs[slot] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


class _Tiled:
    """Weights in the SpMM kernels' tiled layout (see ``kernels.spmm.tile_csr``)."""

    __slots__ = ("data", "cols", "seg", "n_panels", "rows_per_chunk", "panel", "chunk_ptr", "chunk_ptr_ends",
                 "_parts")

    def __init__(self, data, cols, seg, n_rows: int, n_panels: int, rows_per_chunk: int, panel: int) -> None:
        self.data, self.cols, self.seg = data, cols, seg
        self.n_panels, self.rows_per_chunk, self.panel = n_panels, rows_per_chunk, panel
        # Nonzeros before each chunk (the last entry: all of them), for
        # nnz-balanced chunk ranges. The one-panel view's seg is indptr, which
        # ends at n_rows, not at a whole number of chunks.
        n_chunks = -(-n_rows // rows_per_chunk)
        starts = np.minimum(np.arange(n_chunks + 1) * (n_panels * rows_per_chunk), seg.size - 1)
        self.chunk_ptr = np.ascontiguousarray(seg[starts])
        #: All chunks as one range, ``[0, n_chunks]``.
        self.chunk_ptr_ends = np.array([0, n_chunks], np.int64)
        self._parts: dict[int, np.ndarray] = {}

    def parts(self, n: int) -> np.ndarray:
        return _cached_parts(self._parts, self.chunk_ptr, n)


def _cached_parts(cache: dict, ptr: np.ndarray, n: int) -> np.ndarray:
    """``balanced_row_starts(ptr, n)``, computed once per ``n`` and kept in ``cache``."""
    p = cache.get(n)
    if p is None:
        p = cache[n] = _k.balanced_row_starts(ptr, n)
    return p


def _panel_width(n_in: int, density: float, width: int = 16) -> int:
    """Input features per panel: about ``PANEL_NNZ`` nonzeros per row and panel, at least ``MIN_PANEL``.

    ``width`` is the batch-block width of the kernel that reads the layout:
    the 64-lane kernel wants ``WIDE_PANEL_DIVISOR`` times fewer nonzeros per
    panel.

    A panel of the packed input (``panel x 64`` values) is read by every row of
    a chunk, so a narrow one stays in L1; but each row pays a fixed cost per
    panel (its partial sums loaded and stored, a mispredicted loop exit), so
    sparse rows want wide panels.
    """
    nnz_wanted = PANEL_NNZ / WIDE_PANEL_DIVISOR if width >= 64 else PANEL_NNZ
    want = nnz_wanted / density if density > 0 else math.inf
    panel = MIN_PANEL
    while panel < want and panel < n_in:
        panel *= 2
    return max(1, min(panel, n_in, _k.PANEL_MAX))


def _tile(data, indices, indptr, n_in: int, panel: int, rows_per_chunk: int | None = None) -> _Tiled:
    R = ROWS_PER_CHUNK if rows_per_chunk is None else rows_per_chunk
    n_panels = max(1, -(-n_in // panel))
    tdata, tcols, seg = _k.tile_csr(data, indices, indptr, R, panel, n_panels, PAD_TO)
    return _Tiled(tdata, tcols, seg, indptr.size - 1, n_panels, R, panel)


def _untiled(data, indices, indptr, n_in: int) -> _Tiled:
    """The one-panel tiled view of canonical CSR, for one-off calls (no reordering)."""
    if n_in > _k.PANEL_MAX:
        return _tile(data, indices, indptr, n_in, _k.PANEL_MAX)
    return _Tiled(data, indices.astype(np.uint16), indptr.astype(np.int64), indptr.size - 1, 1, ROWS_PER_CHUNK,
                  max(1, n_in))


#: Lanes per block of the fused forward's main kernel.
_BLOCK = 64


def _forward_plan(n_batch: int, n_threads: int, parallel: bool) -> list:
    """How :func:`_spmm_forward` splits a batch: ``(b0, b1, width, n_it, by_rows)`` per kernel call.

    In parallel, whole rounds of ``n_threads`` blocks of 64 rows go one block
    per thread (``by_rows=False``: each thread packs and multiplies its own
    blocks); the blocks left over (fewer than the threads, or a batch of at
    most 64) are split by weight rows instead (``by_rows=True``: every thread
    packs them and takes an nnz-balanced range of rows). The leftover is never
    cut into narrower blocks per thread, at any density (one rule).
    Serially, full blocks of 64 and then the rest in the narrowest width that holds it.
    """
    if n_batch == 0:
        return []
    if not parallel:
        full = n_batch // _BLOCK * _BLOCK
        plan = [(0, full, _BLOCK, 1, False)] if full else []
        if full < n_batch:
            plan.append((full, n_batch, _width_for(n_batch - full), 1, False))
        return plan
    n_blocks = -(-n_batch // _BLOCK)
    by_blocks = min(n_batch, n_blocks // n_threads * n_threads * _BLOCK)
    plan = [(0, by_blocks, _BLOCK, n_threads, False)] if by_blocks else []
    if by_blocks < n_batch:
        rest = n_batch - by_blocks
        plan.append((by_blocks, n_batch, _width_for(min(rest, _BLOCK)), n_threads, True))
    return plan


def _forward_steps(n_batch: int, n_threads: int, tiled, nnz: int) -> tuple:
    """The kernel calls of :func:`_spmm_forward` for a batch (see :func:`_forward_plan`).

    ``tiled(width, by_blocks)`` gives the weights' tiled layout for the
    kernel of that width (see ``SparseLinear._tiled``). A prepared layer
    keeps the result per batch size and thread count.
    """
    parallel = _goes_parallel(nnz, n_batch, n_threads)
    steps = []
    for b0, b1, width, n_it, by_rows in _forward_plan(n_batch, n_threads, parallel):
        t = tiled(width, not by_rows)
        if by_rows:
            parts = t.parts(n_it)
            n_it, n_blk = parts.size - 1, -(-(b1 - b0) // width)
        else:
            parts, n_blk = t.chunk_ptr_ends, 1
        steps.append((b0, b1, width, n_it, n_blk, by_rows, t, parts, _k.spmm_forward(width, parallel), parallel))
    return tuple(steps)


def _spmm_forward(X: np.ndarray, steps: tuple, bias, act: int, n_out: int):
    """``(Y, flags, n_bad)``: ``act(X @ W.T + bias)``, X's non-finite rows and their number.

    Packing, the NaN/inf check and the product run in one compiled call per
    step, each thread packing into its own buffer (see
    :func:`sparseprune.kernels.spmm.spmm_forward`): no thread reads input
    another core packed.
    """
    n_batch, n_in = X.shape
    dtype = X.dtype
    Y = np.empty((n_batch, n_out), dtype)
    flags = np.empty(n_batch, np.int8)
    n_bad = 0
    for i, (b0, b1, width, n_it, n_blk, by_rows, t, parts, fn, parallel) in enumerate(steps):
        x = X[b0:b1]
        xps = _scratch_array(2 * i, (n_it, n_blk, n_in, width), dtype)
        accs = _scratch_array(2 * i + 1, (n_it, min(t.rows_per_chunk, n_out), width), dtype)
        # The arguments whose numba type can vary between calls: x, and (on the
        # one-off linear() path) the caller's weights and bias, read-only or
        # unaligned ones included. The rest are made here with fixed types.
        f, fd, fb = x.flags, t.data.flags, bias.flags
        key = (x.dtype.num, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned,
               fd.writeable, fd.aligned, fb.writeable, fb.aligned)
        args = (key, x, xps, accs, by_rows, t.data, t.cols, t.seg, t.n_panels, t.rows_per_chunk, t.panel,
                bias, act, parts, Y[b0:b1], flags[b0:b1])
        n_bad += run_parallel(fn.keyed, *args) if parallel else fn.keyed(*args)
    return Y, flags, n_bad


def _row_kernel(nnz: int, n_batch: int, n_threads: int, row_starts_for):
    """``(kernel, row_starts, parallel)`` of the SpMV row kernel for ``n_batch`` input rows."""
    if _goes_parallel(nnz * n_batch, 1, n_threads):
        return _k.spmv_rows_parallel, row_starts_for(PARTS_PER_THREAD * n_threads), True
    return _k.spmv_rows_serial, row_starts_for(1), False


def _rows_product(X, Y, kernel, row_starts, parallel: bool, data, cols, indices, indptr, bias, act):
    """``Y = act(X @ W.T + bias)`` by the SpMV row kernel for C-ordered ``X``, NaN/inf as in the dense product."""
    bad = (run_parallel(kernel, data, cols, indptr, X, bias, act, row_starts, Y) if parallel
           else kernel(data, cols, indptr, X, bias, act, row_starts, Y))
    if bad:
        rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
        _propagate_nonfinite(X, rows, data, indices, indptr, bias, act, Y)
    return Y


def _sparse_forward(X, data, indices, indptr, bias, act, n_out, row_starts_for, tiled,
                    spmv_cols=None, steps_for=None, n_threads: int | None = None) -> np.ndarray:
    """``act(X @ W.T + bias)`` on the sparse kernels; ``tiled(width, by_blocks)`` gives W for the SpMM.

    ``spmv_cols`` are the column indices the SpMV reads (a uint16 copy of
    ``indices`` where it fits: 6 bytes per nonzero instead of 8);
    ``steps_for(batch, n_threads)``, if given, the cached :func:`_forward_steps`.
    """
    n_batch, n_in = X.shape
    if n_batch == 0 or n_out == 0:
        return np.empty((n_batch, n_out), dtype=data.dtype)
    if n_threads is None:
        n_threads = numba.get_num_threads()
    nnz = int(indptr[-1])
    if n_batch <= ROWS_MAX_BATCH or nnz * n_batch <= ROWS_MAX_WORK:  # batch 1 included
        cols = indices if spmv_cols is None else spmv_cols
        return _rows_product(np.ascontiguousarray(X), np.empty((n_batch, n_out), data.dtype),
                             *_row_kernel(nnz, n_batch, n_threads, row_starts_for),
                             data, cols, indices, indptr, bias, act)
    steps = (steps_for(n_batch, n_threads) if steps_for
             else _forward_steps(n_batch, n_threads, tiled, nnz))
    Y, flags, n_bad = _spmm_forward(X, steps, bias, act, n_out)
    if n_bad:
        _propagate_nonfinite(X, np.flatnonzero(flags), data, indices, indptr, bias, act, Y)
    return Y


def _propagate_nonfinite(X, rows, data, indices, indptr, bias, act, Y) -> None:
    """Give ``Y[rows]`` the NaNs the dense product has (see the module docstring).

    Rows with an inf are recomputed from the canonical CSR (the tiled layout's
    zero padding would turn ``0 * inf`` into NaN where a stored weight gives
    +-inf), then NaN goes wherever dense would have one.
    """
    stored = None
    one = np.array([0, Y.shape[1]], np.int64)
    for b in rows:
        if np.isnan(X[b]).any():
            Y[b] = np.nan
            continue
        x = np.ascontiguousarray(X[b])
        _k.spmv(data, indices, indptr, x, bias, act, one, Y[b])
        if stored is None:
            stored = sp.csr_array(((data != 0).astype(np.int64), indices, indptr), shape=(Y.shape[1], X.shape[1]))
        cols = np.flatnonzero(np.isinf(x))
        # Output i is NaN in the dense product unless every infinite input
        # meets a stored nonzero weight (0 * inf = nan).
        covered = np.asarray(stored[:, cols].sum(axis=1)).ravel() == cols.size
        Y[b, ~covered] = np.nan


# --------------------------------------------------------------------------- public API

class SparseLinear:
    """A prepared linear layer ``act(X @ W.T + bias)``: validate once, call many times.

    The weights are checked (shape, dtype, index ranges), canonicalised (sorted,
    duplicates summed) and copied at construction, so later changes to the
    caller's ``W`` do not affect the layer; nnz-balanced row partitions are
    computed once per thread count. Each call then only checks ``X`` and runs
    dense BLAS or the sparse kernel, whichever measured faster on this layer's
    first calls of that batch size (see :meth:`explain`, :meth:`freeze`); a
    dense copy of ``W`` is made once, when dense is first measured or
    chosen, and kept (``out * in`` values of memory).

    Wraps :func:`sparseprune.kernels.spmm.spmm_forward` (batches) and
    :func:`sparseprune.kernels.spmm.spmv` (batch 1).

    Parameters
    ----------
    W : csr_array, csr_matrix or ndarray of shape (out, in)
        float32 or float64 weights; a dense array is converted to CSR
        (its zeros dropped).
    bias : array-like of shape (out,), optional
        Cast to W's dtype.
    activation : {None, "identity", "relu", "tanh", "logistic"}, optional

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    nnz : int
    density : float
    weight : csr_array
        The canonical CSR weights the kernels read (do not modify).
    """

    def __init__(self, W, bias=None, activation=None) -> None:
        _check_weights_type(W)
        if not _is_csr(W):
            Wd = check_float_matrix(W, "W")
            W = sp.csr_array(Wd)
            copy = False
        else:
            copy = True
        self._act = _check_activation(activation)
        self.activation = activation
        self._data, self._indices, self._indptr = _csr_arrays(W, copy=copy)
        self.shape = (int(W.shape[0]), int(W.shape[1]))
        self.dtype = self._data.dtype
        self._has_bias = bias is not None
        # A copy, like the weights: later changes to the caller's array do not reach the layer.
        self.bias = np.array(_check_bias(bias, self.shape[0], self.dtype), copy=True)
        self._dense_w = None
        self._tiled_w: dict[tuple, _Tiled] = {}
        # 16-bit column indices for the SpMV where they fit (measured 3-5%
        # faster at batch 1: fewer bytes per nonzero).
        self._spmv_cols = (self._indices.astype(np.uint16) if self.shape[1] <= _k.PANEL_MAX
                           else self._indices)
        self._row_starts: dict[int, np.ndarray] = {}
        self._decisions: dict[tuple, Decision] = {}
        self._step_cache: dict[tuple, tuple] = {}
        self._choices: dict[tuple, Choice] = {}
        # Settled calls' direct path (among_sparse False, True):
        # X.shape -> (choice, path, runner, threads, watch, any_order).
        self._hot0: dict[tuple, tuple] = {}
        self._hot1: dict[tuple, tuple] = {}
        self._runners: dict[tuple, object] = {}
        #: Path of the latest call ("dense" or "sparse").
        self.last_path: str | None = None
        self._lock = threading.Lock()

    @property
    def nnz(self) -> int:
        return int(self._indptr[-1])

    @property
    def density(self) -> float:
        n = self.shape[0] * self.shape[1]
        return self.nnz / n if n else 0.0

    @property
    def weight(self) -> sp.csr_array:
        return sp.csr_array((self._data, self._indices, self._indptr), shape=self.shape, copy=False)

    def _parts(self, n_parts: int) -> np.ndarray:
        return _cached_parts(self._row_starts, self._indptr, n_parts)

    def _dense(self) -> np.ndarray:
        if self._dense_w is None:
            with self._lock:
                if self._dense_w is None:
                    self._dense_w = self.weight.toarray()
        return self._dense_w

    def _dense_setup_s(self) -> float:
        """The estimated cost of making the dense copy of the weights (0 once made)."""
        if self._dense_w is not None:
            return 0.0
        return FRESH_BYTE_S * self.shape[0] * self.shape[1] * self.dtype.itemsize

    def _tiled(self, width: int = 16, by_blocks: bool = False) -> _Tiled:
        """The tiled layout for the kernel of ``width`` lanes, run on whole input blocks per thread
        (``by_blocks``) or on shared ranges of W's rows; kept per panel width and chunk size."""
        key = (_panel_width(self.shape[1], self.density, width),
               BLOCK_ROWS_PER_CHUNK if by_blocks else ROWS_PER_CHUNK)
        t = self._tiled_w.get(key)
        if t is None:
            with self._lock:
                t = self._tiled_w.get(key)
                if t is None:
                    t = _tile(self._data, self._indices, self._indptr, self.shape[1], *key)
                    self._tiled_w[key] = t
        return t

    def _steps(self, batch: int, n_threads: int) -> tuple:
        """The SpMM kernel calls for ``batch`` rows on ``n_threads`` (see ``_forward_steps``), cached."""
        key = (batch, n_threads)
        s = self._step_cache.get(key)
        if s is None:
            s = _forward_steps(batch, n_threads, self._tiled, self.nnz)
            if len(self._step_cache) > 64:
                self._step_cache.clear()
            self._step_cache[key] = s
        return s

    def _decision(self, batch: int, method: str, n_threads: int | None = None) -> Decision:
        """The cost model's verdict (the prior of the measuring dispatcher), cached per key."""
        if n_threads is None:
            n_threads = _num_threads_now()
        key = (batch, method, n_threads, _cal.generation)
        d = self._decisions.get(key)
        if d is None:
            # A decision depends only on this key (the weights are fixed): small
            # layers would otherwise spend longer deciding than computing.
            d = _decide(batch, self.shape, self.nnz, method=_check_method(method), weights="prepared")
            if len(self._decisions) > 64:
                self._decisions.clear()
            self._decisions[key] = d
        return d

    def _choice_for(self, bucket: int, n_threads: int) -> Choice:
        """The measuring dispatcher's state for a batch bucket and thread count (made on first use)."""
        key = (bucket, n_threads)
        ch = self._choices.get(key)
        if ch is None:
            with self._lock:
                ch = self._choices.get(key)
                if ch is None:
                    ch = self._choices[key] = _new_choice(self._decision(bucket, "auto", n_threads),
                                                          self._dense_setup_s)
        return ch

    def explain(self, X, method: str = "auto") -> Decision:
        """The :class:`Decision` for inputs ``X`` (an array, or just its batch size as an int).

        With ``method="auto"`` it says what the measuring dispatcher does for
        this batch size now: the cost model's prior, and what the first calls
        of this layer measured.
        """
        batch = _batch_of(X)
        method = _check_method(method)
        d = self._decision(batch, method)
        if method != "auto" or batch == 0 or self.shape[0] == 0:
            return d
        forced = _forced_method()
        if forced is not None:
            return replace(d, path=forced, reason=f"SPARSEPRUNE_METHOD={forced} forces the path.")
        ch = self._choice_for(bucket_of(batch), numba.get_num_threads())
        path = ch.chosen or ch.next()
        m = ch.measured
        kernel = "numpy matmul (BLAS)" if path == "dense" else _kernel_name(batch, self.nnz)
        return replace(d, path=path, kernel=kernel, measured_dense_s=m.get("dense", math.nan) * batch,
                       measured_sparse_s=m.get("sparse", math.nan) * batch,
                       reason=f"{ch.describe()} (cost model: {d.reason})")

    def freeze(self) -> "SparseLinear":
        """Fix every dense/sparse choice measured so far; later calls neither measure nor re-check.

        A batch bucket still measuring takes its best path so far. Buckets first
        seen after freezing are measured as usual.

        Returns
        -------
        SparseLinear
            ``self``.
        """
        for ch in list(self._choices.values()):
            ch.freeze()
        return self

    def _frozen_choices(self) -> dict:
        return {f"{b}:{t}": ch.chosen for (b, t), ch in self._choices.items() if ch.frozen and ch.chosen}

    def _load_frozen(self, d: dict) -> None:
        for key, path in d.items():
            b, t = (int(v) for v in key.split(":"))
            self._choices[(b, t)] = Choice((path,), "frozen with the saved model.", chosen=path, frozen=True)

    def __call__(self, X, method: str = "auto", *, among_sparse: bool = False) -> np.ndarray:
        """``act(X @ W.T + bias)`` of shape (batch, out), C-contiguous, W's dtype.

        ``method`` forces ``"dense"`` (BLAS) or ``"sparse"`` (the numba kernel);
        ``"auto"`` asks the measuring dispatcher (the environment variable
        ``SPARSEPRUNE_METHOD=dense|sparse`` forces it too). ``among_sparse=True``
        says that other layers of the same model run the sparse kernels: a
        short dense fallback (predicted under ``SMALL_DENSE_S``) then runs
        BLAS on one thread, so BLAS's idle workers do not spin against those
        kernels.
        """
        if type(X) is np.ndarray and method == "auto":
            # A settled call: one dict lookup and a few compares before the kernel (or BLAS) call.
            # A few-microsecond layer pays every step here (each is 30-60 ns of Python).
            hot = (self._hot1 if among_sparse else self._hot0).get(X.shape)
            if hot is not None:
                ch, path, run, n_threads, watch, any_order = hot
                if (ch.chosen is path and X.dtype is self.dtype and (any_order or X.flags.c_contiguous)
                        and _num_threads_now() == n_threads):
                    self.last_path = path
                    if not watch:
                        return run(X)
                    # Timed one call in ch.every for drift (a lost increment between threads
                    # only shifts which call is timed).
                    ch._tick = t = ch._tick + 1
                    if t % ch.every:
                        return run(X)
                    t0 = time.perf_counter()
                    Y = run(X)
                    ch.record(path, time.perf_counter() - t0, X.shape[0])
                    return Y
        return self._call(X, method, among_sparse)

    def _call(self, X, method: str, among_sparse: bool) -> np.ndarray:
        if type(X) is np.ndarray and X.ndim == 2 and X.dtype == self.dtype and X.shape[1] == self.shape[1]:
            c_order = X.flags.c_contiguous
            if not (c_order or X.flags.f_contiguous):
                X = _check_input(X, self.shape[1], self.dtype)
        else:
            X = _check_input(X, self.shape[1], self.dtype)
            c_order = X.flags.c_contiguous
        n_threads = _num_threads_now()
        batch = X.shape[0]
        if method != "auto" or not batch or not self.shape[0]:
            path = self._decision(batch, method, n_threads).path
            if c_order and batch and self.shape[0]:
                self.last_path = path
                return self._runner(path, batch, n_threads, among_sparse)(X)
            return self._run(path, X, n_threads, among_sparse)
        ch = self._choice_for(bucket_of(batch), n_threads)
        path = ch.next()
        run = (self._runner(path, batch, n_threads, among_sparse) if c_order
               else lambda X: self._run(path, X, n_threads, among_sparse))
        self.last_path = path
        if not ch.watch():
            Y = run(X)
        else:
            t0 = time.perf_counter()
            Y = run(X)
            ch.record(path, time.perf_counter() - t0, batch)
        chosen = ch.chosen
        if chosen is not None:
            hot = self._hot1 if among_sparse else self._hot0
            if len(hot) > 64:
                hot.clear()
            watch = not (ch.frozen or ch._fixed or len(ch.candidates) == 1)
            run = self._runner(chosen, batch, n_threads, among_sparse)
            # The dense runners (X @ W.T) take X in any layout; the compiled kernels want C order.
            hot[X.shape] = (ch, chosen, run, n_threads, watch, chosen == "dense")
        return Y

    def _runner(self, path: str, batch: int, n_threads: int, among_sparse: bool):
        """``run(X)`` for C-ordered ``X`` of ``batch`` rows on ``path``, made once per key and kept.

        The work of :meth:`_run` that depends only on the batch size and the
        thread count (the dense transpose, the sparse kernel and its row
        partition) is done here once, so a call is one Python step and one
        kernel (or BLAS) call.
        """
        key = (path, batch, n_threads, among_sparse)
        run = self._runners.get(key)
        if run is None:
            run = self._make_runner(*key)
            with self._lock:
                if len(self._runners) > 64:
                    self._runners.clear()
                self._runners[key] = run
        return run

    def _make_runner(self, path: str, batch: int, n_threads: int, among_sparse: bool):
        n_out, n_in = self.shape
        nnz = self.nnz
        if path == "dense":
            one_thread = (among_sparse and batch * n_out * n_in >= BLAS_THREADED_MACS
                          and self._decision(batch, "auto", n_threads).predicted_dense_s < SMALL_DENSE_S)
            if one_thread:
                return lambda X: self._run(path, X, n_threads, among_sparse)
            WT, b, act = self._dense().T, self.bias, self._act
            if not self._has_bias and not act:
                return WT.__rmatmul__  # X @ W.T, C-ordered for C-ordered X

            def dense(X):
                Y = X @ WT
                Y += b
                if act:
                    _activate_inplace(Y, act)
                return Y

            return dense
        if batch > ROWS_MAX_BATCH and nnz * batch > ROWS_MAX_WORK:  # the SpMM kernels: work dwarfs the Python
            return lambda X: self._run(path, X, n_threads, among_sparse)
        # One input row or a few: the SpMV row kernel, writing into an array allocated here
        # (an array returned from a compiled call costs ~0.4 us more to box).
        kernel = _row_kernel(nnz, batch, n_threads, self._parts)
        weights = (self._data, self._spmv_cols, self._indices, self._indptr, self.bias, self._act)
        shape, dtype = (batch, n_out), self.dtype

        def sparse(X):
            return _rows_product(X, np.empty(shape, dtype), *kernel, *weights)

        return sparse

    def _run(self, path: str, X, n_threads: int, among_sparse: bool) -> np.ndarray:
        self.last_path = path
        if path == "dense":
            one_thread = (among_sparse and X.shape[0] * self.shape[0] * self.shape[1] >= BLAS_THREADED_MACS
                          and self._decision(X.shape[0], "auto", n_threads).predicted_dense_s < SMALL_DENSE_S)
            return _dense_forward(X, self._dense(), self.bias, self._has_bias, self._act, one_thread)
        return _sparse_forward(X, self._data, self._indices, self._indptr, self.bias, self._act,
                               self.shape[0], self._parts, self._tiled, self._spmv_cols, self._steps, n_threads)

    forward = __call__

    def _runs_parallel(self, batch: int, n_threads: int) -> bool:
        """Whether a call at ``batch`` takes the sparse path on more than one thread."""
        # The cheap test first: this runs for every layer of every MLP forward pass.
        return (_goes_parallel(self.nnz, batch, n_threads)
                and self._choice_for(bucket_of(batch), n_threads).next() == "sparse")

    def to_onnx(self, path=None, *, opset: int | None = None, sparse_initializers: bool = False):
        """This layer as an ONNX graph ``Y = act(X @ W.T + bias)`` (one ``Gemm``; see :func:`sparseprune.onnx.to_onnx`)."""
        from sparseprune.onnx import to_onnx

        return to_onnx(self, path, opset=opset, sparse_initializers=sparse_initializers)

    def __repr__(self) -> str:
        return (f"SparseLinear(shape={self.shape}, dtype={self.dtype}, nnz={self.nnz}, "
                f"density={self.density:.3g}, activation={self.activation!r})")


def _batch_of(X) -> int:
    if isinstance(X, (int, np.integer)) and not isinstance(X, bool):
        return check_int(X, "X", low=0)
    shape = np.shape(X)
    if len(shape) != 2:
        raise ValueError(f"X has shape {shape}; pass a 2-D (batch, in) array or the batch size as an int.")
    return int(shape[0])


def linear(X, W, bias=None, activation=None, *, method: str = "auto") -> np.ndarray:
    """Compute ``act(X @ W.T + bias)`` with dense BLAS or the sparse kernel, whichever is faster here.

    Wraps :func:`sparseprune.kernels.spmm.spmm_forward` (batch >= 2),
    :func:`sparseprune.kernels.spmm.spmv` (batch 1), or ``numpy.matmul``.

    Parameters
    ----------
    X : ndarray of shape (batch, in)
        float32 or float64, C- or F-ordered; same dtype as ``W``. Never modified.
        NaN/inf propagate as in the dense product (see the module docstring).
    W : csr_array, csr_matrix, ndarray or SparseLinear, shape (out, in)
        The weights. CSR with unsorted or duplicate indices is canonicalised on a
        copy; out-of-range indices are rejected. A dense array always runs on
        BLAS; wrap it in :class:`SparseLinear` to make it eligible for the
        sparse kernel. For repeated calls prefer a :class:`SparseLinear`
        (validation and partitioning done once).
    bias : array-like of shape (out,), optional
    activation : {None, "identity", "relu", "tanh", "logistic"}, optional
    method : {"auto", "dense", "sparse"}, default "auto"
        ``"auto"`` asks the calibrated dispatcher; see :func:`explain`.

    Returns
    -------
    ndarray of shape (batch, out), C-contiguous, dtype of W.

    Examples
    --------
    >>> import numpy as np, sparseprune
    >>> W = sparseprune.magnitude_prune(np.random.rand(64, 32).astype(np.float32), 0.9)
    >>> X = np.random.rand(16, 32).astype(np.float32)
    >>> sparseprune.linear(X, W, activation="relu").shape
    (16, 64)
    """
    method = _check_method(method)
    if isinstance(W, SparseLinear):
        if bias is not None or activation is not None:
            raise ValueError("W is a SparseLinear that already holds its bias and activation; "
                             "pass bias=None and activation=None, or build the layer with them.")
        return W(X, method=method)
    _check_weights_type(W)
    act = _check_activation(activation)
    if _is_csr(W):
        if method != "dense" and type(X) is np.ndarray and X.ndim == 2 and X.shape[0] >= 1:
            Y = _one_off_spmv(X, W, bias, act) if X.shape[0] == 1 else _one_off_batched(X, W, bias, act, method)
            if Y is not None:
                return Y
        data, indices, indptr = _csr_arrays(W, copy=False)
        shape = W.shape
        b = _check_bias(bias, shape[0], data.dtype)
        X = _check_input(X, shape[1], data.dtype)
        d = _decide(X.shape[0], shape, int(indptr[-1]), method=method, weights="csr")
        if d.path == "dense":
            Wd = sp.csr_array((data, indices, indptr), shape=shape).toarray()
            return _dense_forward(X, Wd, b, bias is not None, act)
        return _sparse_forward(X, data, indices, indptr, b, act, shape[0],
                               lambda n: _k.balanced_row_starts(indptr, n),
                               _once(lambda: _untiled(data, indices, indptr, shape[1])))
    Wd = check_float_matrix(W, "W")
    b = _check_bias(bias, Wd.shape[0], Wd.dtype)
    X = _check_input(X, Wd.shape[1], Wd.dtype)
    if method == "sparse":
        return SparseLinear(Wd, b if bias is not None else None, activation)(X, method="sparse")
    return _dense_forward(X, Wd, b, bias is not None, act)


def _one_off_spmv(X, W, bias, act: int):
    """``linear(X, W_csr)`` for one input row with O(1) checks, or None to take the validated path.

    The per-call cost of a one-off matrix-vector product is what decides it
    against scipy's ``W @ x``: here it is O(1) Python on a matrix scipy marks
    canonical (``has_canonical_format``, computed once by scipy and cached on
    the matrix), and the index bounds are checked inside the kernel
    (:func:`sparseprune.kernels.spmm.spmv_checked_serial`), not in a pass of
    their own. The sparse path is taken whatever the density: the dense one
    would first expand W, which costs more than the sparse product. Anything
    unusual (other dtypes or index types, a non-canonical matrix, NaN or inf
    in X, a corrupt matrix) returns None, and the fully validated path then
    runs or raises its error.
    """
    if not _trusted_csr(X, W):
        return None
    data, indices, indptr = W.data, W.indices, W.indptr
    n_out, n_in = W.shape
    x = X[0]
    if not x.flags.c_contiguous:
        return None
    b = _check_bias(bias, n_out, data.dtype)
    n_threads = _num_threads_now()
    if _goes_parallel(int(indptr[-1]), 1, n_threads):
        y, status = run_parallel(_k.spmv_checked_parallel, data, indices, indptr, n_in, x, b, act, n_threads)
    else:
        y, status = _k.spmv_checked_serial(data, indices, indptr, n_in, x, b, act, 1)
    return y.reshape(1, n_out) if status == 0 else None


_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _trusted_csr(X, W) -> bool:
    """The O(1) checks a one-off ``linear(X, W_csr)`` makes before trusting scipy's canonical flag.

    Shapes, dtypes (float data, int32/int64 indices, X of W's dtype), ``indptr``
    starting at 0 and ending within the arrays, and ``has_canonical_format``
    (computed once by scipy and cached on the matrix). What needs a pass over
    the arrays is checked later, inside the pass the product makes anyway.
    """
    data, indices, indptr = W.data, W.indices, W.indptr
    n_out, n_in = W.shape
    return bool(X.shape[1] == n_in and n_in > 0 and n_out > 0 and X.dtype == data.dtype
                and data.dtype in FLOAT_DTYPES and data.ndim == 1 and indices.ndim == 1 and indptr.ndim == 1
                and indices.dtype == indptr.dtype and indices.dtype in _INDEX_DTYPES
                and indptr.size == n_out + 1 and indptr[0] == 0 and indptr[-1] <= min(data.size, indices.size)
                and W.has_canonical_format)


#: _scratch_array slot of the one-off call's 16-bit column copy (the SpMM steps use 0, 1, 2, ...).
_ONE_OFF_SLOT = 1000


def _one_off_batched(X, W, bias, act: int, method: str):
    """``linear(X, W_csr)`` for a batch, with O(1) checks on a canonical matrix, or None for the validated path.

    As :func:`_one_off_spmv`: on a matrix scipy marks canonical, the only pass
    over the nonzeros before the product is the 16-bit copy of the column
    indices that the kernels read, with the bounds check inside it
    (:func:`sparseprune.kernels.spmm.cols_u16_checked`); ``indptr`` is
    checked in O(rows). Measured on 4096 x 4096 at 10 % density, batch 16:
    3.2 ms a call with the separate checking pass, 1.3 ms without. The cost
    model still decides dense or sparse (dense pays for expanding W); a dense
    verdict, anything unusual, and a corrupt matrix return None.
    """
    if not (_trusted_csr(X, W) and W.shape[1] <= _k.PANEL_MAX and (X.flags.c_contiguous or X.flags.f_contiguous)):
        return None
    data, indices, indptr = W.data, W.indices, W.indptr
    n_out, n_in = W.shape
    nnz = int(indptr[-1])
    if (np.diff(indptr) < 0).any():  # the batched kernels do not clamp row ranges as the SpMV does
        return None
    d = _decide(X.shape[0], W.shape, nnz, method=method, weights="csr")
    if d.path != "sparse":
        return None
    # Only this call reads the copy: a reused per-thread buffer (a fresh one paid its page faults).
    cols = _scratch_array(_ONE_OFF_SLOT, (nnz,), np.uint16)
    if _k.cols_u16_checked(indices, nnz, n_in, cols):
        return None  # the validated path names the bad indices
    b = _check_bias(bias, n_out, data.dtype)
    ptr = np.ascontiguousarray(indptr, np.int64)
    dat = data if data.size == nnz else data[:nnz]
    tiled = _Tiled(dat, cols, ptr, n_out, 1, ROWS_PER_CHUNK, n_in)
    return _sparse_forward(X, dat, indices, ptr, b, act, n_out, lambda n: _k.balanced_row_starts(ptr, n),
                           _once(lambda: tiled), spmv_cols=cols)


def _once(make):
    """``tiled(width, by_blocks)`` for a one-off call: the same (untiled) layout for every width, made once."""
    held = []

    def tiled(width: int = 16, by_blocks: bool = False):
        if not held:
            held.append(make())
        return held[0]

    return tiled


def explain(X, W, method: str = "auto") -> Decision:
    """Say which path :func:`linear` takes for ``X`` and ``W``, and why.

    Parameters
    ----------
    X : ndarray of shape (batch, in), or int
        The input, or just its batch size.
    W : csr_array, csr_matrix, ndarray or SparseLinear
    method : {"auto", "dense", "sparse"}

    Returns
    -------
    Decision
        ``path`` ("dense" or "sparse"), ``kernel``, the predicted times from the
        calibration table, and a one-line ``reason``; ``str(decision)`` prints it.
    """
    method = _check_method(method)
    if isinstance(W, SparseLinear):
        return W.explain(X, method)
    _check_weights_type(W)
    batch = _batch_of(X)
    if _is_csr(W):
        return _decide(batch, W.shape, int(W.indptr[-1]), method=method, weights="csr")
    Wd = check_float_matrix(W, "W")
    return _decide(batch, Wd.shape, int(np.count_nonzero(Wd)), method=method, weights="dense-array")


def calibrate(force: bool = False, *, n_threads: int | None = None) -> dict:
    """Measure this machine's dense-vs-sparse costs (about a second) and cache them.

    The table lives in ``$SPARSEPRUNE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/sparseprune``, else ``~/.cache/sparseprune``
    (``calibration.json``), one entry per CPU, thread count and library
    versions. Without ``force`` a cached table is reused. Nothing calls this
    for you: until it is called in a process, the dispatcher's cost model uses
    the built-in table (it only rules out candidates predicted 4x slower; the
    choice itself is measured on the layer's own calls).

    Parameters
    ----------
    force : bool, default False
        Re-measure even if a table is cached.
    n_threads : int, optional
        Calibrate for this many threads (BLAS and numba alike); default: current.

    Returns
    -------
    dict
        The table: per batch size, seconds per dense multiply-add
        (``dense_per_mac``) and per sparse nonzero (``sparse_per_nnz``).
    """
    with thread_limit(n_threads) as n:
        return _cal.calibrate(n, bool(force))


def set_calibration(table: dict | None) -> None:
    """Use ``table`` (as returned by :func:`calibrate`) for every decision; ``None`` restores normal lookup."""
    _cal.set_override(table)
