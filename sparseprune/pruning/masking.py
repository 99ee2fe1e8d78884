"""Pruning masks that emit scipy CSR: threshold, magnitude (tensor, row, global) and N:M.

Every function here validates its input, then hands raw arrays to the kernels in
:mod:`sparseprune.kernels.masking`. Outputs are ``scipy.sparse.csr_array`` in
canonical form (sorted indices, no duplicates, no stored zeros) with int32
indices, or int64 when nnz or a dimension needs it, and the input's dtype.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numba
import numpy as np
import scipy.sparse as sp

from sparseprune._validation import (
    check_float_matrix,
    check_int,
    check_number,
    index_dtype,
)
from sparseprune.inference.threads import parallel_guard, parallel_pays
from sparseprune.kernels import masking as _k

__all__ = [
    "threshold_mask",
    "magnitude_prune",
    "global_magnitude_prune",
    "nm_prune",
    "sparsity_info",
    "SparsityInfo",
]

def _parallel(size: int) -> bool:
    return parallel_pays("masking", size)


def _run(parallel_kernel, serial_kernel, size: int, *args):
    if _parallel(size):
        with parallel_guard():
            return parallel_kernel(*args)
    return serial_kernel(*args)


def _big(dtype: np.dtype):
    return dtype.type(np.finfo(dtype).max)


def _column_major(W: np.ndarray) -> bool:
    # Reading a Fortran-ordered matrix row by row strides through memory; its
    # transpose is C-ordered, so those matrices are scanned column by column.
    return W.flags.f_contiguous and not W.flags.c_contiguous and W.size > 0


def _count(W: np.ndarray, v_row: np.ndarray, name: str):
    """Per-row counts of |w| > v and |w| == v; rejects NaN/inf with the first bad row named.

    Returns ``(gt, ties, chunks)``; for a column-major ``W``, ``chunks`` holds the
    per-chunk counts (shape (n_chunks, n_rows)) that place each chunk's output.
    """
    n_rows = W.shape[0]
    big = _big(W.dtype)
    if _column_major(W):
        n_chunks = numba.get_num_threads() if _parallel(W.size) else 1
        gt_c, ties_c, bad_c = (np.empty((n_chunks, n_rows), np.int64) for _ in range(3))
        _run(_k.count_cols_parallel, _k.count_cols_serial, W.size, W.T, v_row, gt_c, ties_c, bad_c, big)
        _raise_nonfinite(bad_c.sum(axis=0), name)
        return gt_c.sum(axis=0), ties_c.sum(axis=0), (gt_c, ties_c)
    gt = np.empty(n_rows, np.int64)
    ties = np.empty(n_rows, np.int64)
    nonfinite = np.empty(n_rows, np.int64)
    _run(_k.count_rows_parallel, _k.count_rows_serial, W.size, W, v_row, gt, ties, nonfinite, big)
    _raise_nonfinite(nonfinite, name)
    return gt, ties, None


def _raise_nonfinite(nonfinite: np.ndarray, name: str) -> None:
    bad = np.flatnonzero(nonfinite)
    if bad.size:
        raise ValueError(
            f"{name} contains {int(nonfinite.sum())} NaN or infinite value(s) (first in row {int(bad[0])}); "
            f"pruning by magnitude is undefined for them. Replace them first, e.g. with np.nan_to_num({name})."
        )


def _csr(W: np.ndarray, row_nnz: np.ndarray):
    """Allocate the CSR arrays for the given per-row counts (indptr filled)."""
    n_rows, n_cols = W.shape
    nnz = int(row_nnz.sum())
    idx = index_dtype(nnz, n_rows, n_cols)
    indptr = np.empty(n_rows + 1, idx)
    indptr[0] = 0
    np.cumsum(row_nnz, out=indptr[1:])
    return np.empty(nnz, W.dtype), np.empty(nnz, idx), indptr


def _wrap(W: np.ndarray, data, indices, indptr) -> sp.csr_array:
    out = sp.csr_array((data, indices, indptr), shape=W.shape, copy=False)
    # The kernels write each row in column order, once per column, zeros skipped.
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


def _fill(W: np.ndarray, v_row: np.ndarray, tie_offset: np.ndarray, counts) -> sp.csr_array:
    """Emit the CSR of W under the keep rule of :mod:`sparseprune.kernels.masking`.

    Row i keeps every entry with |w| > v[i], and of its ties (|w| == v[i], nonzero)
    those whose running tie counter, started at ``tie_offset[i]``, is >= 0.
    ``counts`` is what :func:`_count` returned for the same ``v_row``.
    """
    gt, ties, chunks = counts
    positive = v_row > 0
    kept_ties = np.where(positive, np.clip(tie_offset + ties, 0, ties), 0)
    data, indices, indptr = _csr(W, gt + kept_ties)
    all_ties = positive & (kept_ties == ties)
    partial = positive & (kept_ties > 0) & ~all_ties
    # |w| > v is |w| >= (next float above v); with v == 0 the kernel's w != 0 test drops the zeros.
    cut = np.where(all_ties | ~positive, v_row, np.nextafter(v_row, W.dtype.type(np.inf)))
    cut[partial] = np.nan
    if chunks is None:
        _run(_k.fill_rows_parallel, _k.fill_rows_serial, W.size, W, cut, indptr, data, indices)
    else:
        gt_c, ties_c = chunks
        kept_c = gt_c + ties_c * all_ties
        kept_c[:, partial] = 0
        start = indptr[:-1] + np.cumsum(kept_c, axis=0) - kept_c
        _run(_k.fill_cols_parallel, _k.fill_cols_serial, W.size, W.T, cut, start, data, indices)
    tie_rows = np.flatnonzero(partial)
    if tie_rows.size:
        _run(_k.fill_tie_rows_parallel, _k.fill_tie_rows_serial, tie_rows.size * W.shape[1],
             W, tie_rows, v_row, tie_offset, indptr, data, indices)
    return _wrap(W, data, indices, indptr)


def _cut_for(threshold: float, dtype: np.dtype):
    """The smallest value of ``dtype`` that is >= ``threshold``.

    Comparing float32 weights with ``|w| >= cut`` then gives exactly the real-number
    result of ``|w| >= threshold``, even when the threshold is not representable in
    float32 (numpy would round the threshold to float32 first).
    """
    cut = dtype.type(threshold)
    if float(cut) < threshold:
        cut = np.nextafter(cut, dtype.type(np.inf))
    return cut


def _mask_at(W: np.ndarray, cut, name: str) -> sp.csr_array:
    """Keep |w| >= cut (all ties kept; with cut == 0, every nonzero)."""
    v_row = np.full(W.shape[0], cut, W.dtype)
    return _fill(W, v_row, np.zeros(W.shape[0], np.int64), _count(W, v_row, name))


def threshold_mask(W: np.ndarray, threshold: float) -> sp.csr_array:
    """Zero every weight with ``|w| < threshold`` and return the rest as CSR.

    Keeps exactly the entries with ``|w| >= threshold`` (compared as real numbers,
    so a float64 threshold is honoured exactly on float32 weights); exact zeros
    are never stored. Two passes over ``W`` (count, then fill), parallel over rows,
    with no temporary the size of ``W``. Wraps the kernels
    ``sparseprune.kernels.masking.count_rows`` and ``fill_rows``.

    Parameters
    ----------
    W : ndarray of shape (n_rows, n_cols), float32 or float64
        Dense weights; any memory order, may be read-only. Never modified.
    threshold : float
        Non-negative, finite cut-off τ.

    Returns
    -------
    scipy.sparse.csr_array
        Canonical CSR with ``W``'s dtype and shape.

    Raises
    ------
    TypeError
        If ``W`` is not a float32/float64 array or ``threshold`` is not a number.
    ValueError
        If ``W`` is not 2-D, contains NaN/inf, or ``threshold`` is negative or not finite.

    Examples
    --------
    >>> import numpy as np, sparseprune
    >>> W = np.array([[0.5, -0.05], [0.0, -2.0]], dtype=np.float32)
    >>> sparseprune.threshold_mask(W, 0.1).toarray()
    array([[ 0.5,  0. ],
           [ 0. , -2. ]], dtype=float32)
    """
    W = check_float_matrix(W, "W")
    t = check_number(threshold, "threshold", low=0.0)
    return _mask_at(W, _cut_for(t, W.dtype), "W")


def _check_sparsity(sparsity) -> float:
    return check_number(sparsity, "sparsity", low=0.0, high=1.0, high_inclusive=False)


def _n_to_remove(sparsity: float, size: int) -> int:
    # Python's round: halves go to the even neighbour.
    return min(int(round(sparsity * size)), size)


_RADIX_PLAN = {
    # (unsigned view, mask dropping the sign bit, [(shift, digit width), ...]) covering
    # the 31 / 63 magnitude bits most significant first.
    np.dtype(np.float32): (np.uint32, 0x7FFF_FFFF, [(15, 16), (0, 15)]),
    np.dtype(np.float64): (np.uint64, 0x7FFF_FFFF_FFFF_FFFF, [(47, 16), (31, 16), (15, 16), (0, 15)]),
}


def _kth_smallest_magnitude(mats: Sequence[np.ndarray], k: int):
    """The k-th smallest |w| (1-based) over all entries of ``mats``, by radix select.

    O(n) per digit, a handful of digits, no copy of the data (the bit patterns are
    read through an unsigned view).
    """
    dtype = mats[0].dtype
    utype, abs_mask, plan = _RADIX_PLAN[dtype]
    u = utype
    views = [M.view(utype) for M in mats]
    prefix = 0
    prefix_mask = 0
    remaining = k
    for shift, width in plan:
        n_buckets = 1 << width
        digit_mask = n_buckets - 1
        hist = np.zeros(n_buckets, np.int64)
        for U in views:
            chunks = numba.get_num_threads() if _parallel(U.size) else 1
            args = (U, u(abs_mask), u(prefix_mask), u(prefix), u(shift), u(digit_mask), n_buckets, chunks)
            hist += _run(_k.magnitude_histogram_parallel, _k.magnitude_histogram_serial, U.size, *args)
        cum = np.cumsum(hist)
        b = int(np.searchsorted(cum, remaining))
        remaining -= int(cum[b - 1]) if b > 0 else 0
        prefix |= b << shift
        prefix_mask |= digit_mask << shift
    return np.array(prefix, dtype=utype).view(dtype)[()]


def magnitude_prune(W: np.ndarray, sparsity: float, *, scope: str = "tensor") -> sp.csr_array:
    """Remove the ``round(sparsity * size)`` smallest-magnitude weights; return the rest as CSR.

    ``scope="tensor"`` removes exactly ``k = round(sparsity * W.size)`` entries of
    ``W``; ``scope="row"`` removes ``round(sparsity * n_cols)`` entries from every
    row, so each output neuron keeps the same number of weights.

    Ties at the cut-off magnitude are broken deterministically: among equal
    magnitudes, the entries that come first in row-major order are removed first.
    Exact zeros count as the smallest magnitudes and are never stored, so if ``W``
    already has more than ``k`` zeros the result is sparser than asked.

    The cut-off is found in O(n) without sorting: for ``scope="tensor"`` a radix
    select on the magnitudes' bit patterns (kernel
    ``sparseprune.kernels.masking.magnitude_histogram``, 2 passes for float32, 4 for
    float64); for ``scope="row"`` a selection per row (``row_kth_magnitude``). The
    CSR is then written by ``count_rows`` / ``fill_rows``.

    Parameters
    ----------
    W : ndarray of shape (n_rows, n_cols), float32 or float64
        Dense weights; any memory order, may be read-only. Never modified.
    sparsity : float in [0, 1)
        Fraction of entries to remove.
    scope : {"tensor", "row"}, default="tensor"
        Count removed entries over the whole matrix or per row.

    Returns
    -------
    scipy.sparse.csr_array
        Canonical CSR with ``W``'s dtype and shape.

    Raises
    ------
    TypeError, ValueError
        For a non-float or non-2-D ``W``, NaN/inf in ``W``, ``sparsity`` outside
        [0, 1), or an unknown ``scope``.
    """
    W = check_float_matrix(W, "W")
    s = _check_sparsity(sparsity)
    if scope not in ("tensor", "row"):
        raise ValueError(f"The 'scope' parameter must be 'tensor' or 'row'. Got {scope!r} instead.")
    if scope == "tensor":
        return global_magnitude_prune([W], s)[0]
    n_rows, n_cols = W.shape
    k = _n_to_remove(s, n_cols)
    if k == 0 or n_rows == 0:
        return _mask_at(W, W.dtype.type(0), "W")
    v_row = np.empty(n_rows, W.dtype)
    _run(_k.row_kth_magnitude_parallel, _k.row_kth_magnitude_serial, W.size, W, k - 1, v_row)
    counts = _count(W, v_row, "W")
    gt, ties, _ = counts
    return _fill(W, v_row, n_cols - gt - ties - k, counts)


def global_magnitude_prune(weights: Sequence[np.ndarray], sparsity: float) -> list[sp.csr_array]:
    """Prune a list of matrices with one magnitude cut-off shared by all of them.

    Removes exactly ``k = round(sparsity * total_size)`` entries of smallest
    magnitude across all matrices (like ``torch.nn.utils.prune.global_unstructured``
    with L1), so layers with many small weights lose more. Ties at the cut-off are
    removed in list order, then row-major order within a matrix. Exact zeros are
    never stored. Wraps ``magnitude_histogram`` (radix select), ``count_rows`` and
    ``fill_rows`` from :mod:`sparseprune.kernels.masking`.

    Parameters
    ----------
    weights : list or tuple of ndarray
        2-D float matrices, all float32 or all float64; never modified.
    sparsity : float in [0, 1)
        Fraction of all entries to remove.

    Returns
    -------
    list of scipy.sparse.csr_array
        One canonical CSR per input matrix, same order, dtypes and shapes.
    """
    if not isinstance(weights, (list, tuple)):
        raise TypeError(
            f"The 'weights' parameter must be a list or tuple of 2-D arrays. Got {type(weights).__name__} "
            "instead; wrap a single matrix as [W]."
        )
    if len(weights) == 0:
        raise ValueError("The 'weights' parameter is an empty list; pass at least one 2-D weight matrix.")
    mats = [check_float_matrix(M, f"weights[{i}]") for i, M in enumerate(weights)]
    for i, M in enumerate(mats[1:], 1):
        if M.dtype != mats[0].dtype:
            raise TypeError(
                f"weights[{i}] has dtype {M.dtype} but weights[0] has {mats[0].dtype}; one cut-off needs "
                f"one dtype: cast them all, e.g. [w.astype(np.float32) for w in weights]."
            )
    s = _check_sparsity(sparsity)
    total = sum(M.size for M in mats)
    k = _n_to_remove(s, total)
    if k == 0:
        return [_mask_at(M, M.dtype.type(0), f"weights[{i}]") for i, M in enumerate(mats)]
    v = _kth_smallest_magnitude(mats, k)
    counts = [_count(M, np.full(M.shape[0], v, M.dtype), f"weights[{i}]") for i, M in enumerate(mats)]
    less = total - sum(int(gt.sum() + ties.sum()) for gt, ties, _ in counts)
    to_skip = k - less
    out = []
    ties_before = 0
    for M, c in zip(mats, counts):
        ties = c[1]
        # The running tie counter of each row starts at (ties seen before it) - to_skip.
        tie_start = ties_before + np.cumsum(ties) - ties
        out.append(_fill(M, np.full(M.shape[0], v, M.dtype), tie_start - to_skip, c))
        ties_before += int(ties.sum())
    return out


def nm_prune(W: np.ndarray, n: int = 2, m: int = 4) -> sp.csr_array:
    """N:M semi-structured sparsity: keep the ``n`` largest |w| in each group of ``m`` along a row.

    Groups are ``m`` consecutive columns (the input dimension); the last, partial
    group keeps its ``n`` largest too. Among equal magnitudes the lower column
    wins. Exact zeros are never stored. Wraps ``nm_count`` / ``nm_fill`` from
    :mod:`sparseprune.kernels.masking` (O(m) work per entry).

    Parameters
    ----------
    W : ndarray of shape (n_rows, n_cols), float32 or float64
        Dense weights; never modified.
    n, m : int
        Keep ``n`` of every ``m``; ``1 <= n <= m``. 2:4 is the pattern sparse
        tensor cores accelerate.

    Returns
    -------
    scipy.sparse.csr_array
    """
    W = check_float_matrix(W, "W")
    m = check_int(m, "m", low=1)
    n = check_int(n, "n", low=1)
    if n > m:
        raise ValueError(f"The 'n' parameter must be <= m (keep n of every m). Got n={n}, m={m} instead.")
    counts = np.empty(W.shape[0], np.int64)
    nonfinite = np.empty(W.shape[0], np.int64)
    _run(_k.nm_count_parallel, _k.nm_count_serial, W.size, W, n, m, counts, nonfinite, _big(W.dtype))
    _raise_nonfinite(nonfinite, "W")
    data, indices, indptr = _csr(W, counts)
    _run(_k.nm_fill_parallel, _k.nm_fill_serial, W.size, W, n, m, indptr, data, indices)
    return _wrap(W, data, indices, indptr)


@dataclass(frozen=True)
class SparsityInfo:
    """What a pruned matrix holds and what it costs to store, dense vs CSR."""

    shape: tuple[int, int]
    nnz: int
    density: float
    sparsity: float
    dense_bytes: int
    csr_bytes: int

    @property
    def compression(self) -> float:
        """dense_bytes / csr_bytes (inf for an empty CSR of a non-empty shape)."""
        return self.dense_bytes / self.csr_bytes if self.csr_bytes else float("inf")

    def to_dict(self) -> dict:
        """Plain-Python dict (JSON-ready), including ``compression``."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["compression"] = self.compression
        return d

    def __str__(self) -> str:
        return (
            f"{self.shape[0]}x{self.shape[1]}: nnz={self.nnz} density={self.density:.2%} "
            f"dense={self.dense_bytes:,} B csr={self.csr_bytes:,} B ({self._size_words()})"
        )

    def _size_words(self) -> str:
        c = self.compression
        if c >= 1.005:
            return f"CSR {c:.2f}x smaller"
        if c <= 1 / 1.005:
            return f"CSR {1 / c:.2f}x larger: too dense to gain from CSR storage"
        return "CSR the same size"


def sparsity_info(A) -> SparsityInfo:
    """Report nnz, density and storage of a matrix, dense vs CSR.

    Parameters
    ----------
    A : scipy sparse matrix/array or 2-D float ndarray
        For a dense array, ``csr_bytes`` is what its CSR form would take (int32
        indices unless int64 is needed), counting only nonzero entries.

    Returns
    -------
    SparsityInfo
    """
    if sp.issparse(A):
        if A.ndim != 2:
            raise ValueError(f"A must be 2-D; got shape {A.shape}.")
        C = A.tocsr()
        n_rows, n_cols = C.shape
        nnz = int(C.count_nonzero())
        itemsize = C.dtype.itemsize
        csr_bytes = C.data.nbytes + C.indices.nbytes + C.indptr.nbytes
    else:
        D = check_float_matrix(A, "A")
        n_rows, n_cols = D.shape
        nnz = int(np.count_nonzero(D))
        itemsize = D.dtype.itemsize
        idx = np.dtype(index_dtype(nnz, n_rows, n_cols)).itemsize
        csr_bytes = nnz * (itemsize + idx) + (n_rows + 1) * idx
    size = n_rows * n_cols
    density = nnz / size if size else 0.0
    return SparsityInfo((n_rows, n_cols), nnz, density, 1.0 - density if size else 0.0,
                        size * itemsize, csr_bytes)
