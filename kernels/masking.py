"""Masking kernels: dense weight matrix in, CSR arrays (data, indices, indptr) out.

One keep rule serves threshold masking and magnitude pruning. Row ``i`` has a
cut-off magnitude ``v[i]``; an entry is kept when ``|w| > v[i]``, or when
``|w| == v[i]`` and it is not among the ties chosen for removal. Ties are
removed in row-major order: a running tie counter starts at ``tie_offset[i]``
and a tie is kept once the counter is ``>= 0``. Exact zeros are never kept.

Everything is two passes (count, then fill) over the matrix, parallel over rows,
with O(rows) temporaries: no dense array the size of ``W`` is ever allocated.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from sparseprune.kernels._jit import jit, jit_variants


def _count_rows(W, v, gt, ties, nonfinite, big):
    """Per row: entries with |w| > v[i], entries with |w| == v[i], and non-finite entries."""
    n_rows, n_cols = W.shape
    for i in prange(n_rows):
        row = W[i]
        vi = v[i]
        g = 0
        t = 0
        b = 0
        for j in range(n_cols):
            a = abs(row[j])
            g += a > vi
            t += a == vi
            # NaN and inf both fail this comparison: one test catches both.
            b += not (a <= big)
        gt[i] = g
        ties[i] = t
        nonfinite[i] = b


def _fill_rows(W, v, tie_offset, indptr, data, indices):
    """Write the kept entries of each row, in column order, into its CSR slot."""
    n_rows, n_cols = W.shape
    for i in prange(n_rows):
        p = indptr[i]
        end = indptr[i + 1]
        if p == end:
            continue
        row = W[i]
        vi = v[i]
        r = tie_offset[i]
        for j in range(n_cols):
            w = row[j]
            a = abs(w)
            tie = a == vi
            keep = (a > vi) | (tie & (r >= 0) & (w != 0))
            r += tie
            # Branchless compaction: always write, advance only when kept. The
            # slot at p belongs to this row while p < end, and we stop as soon
            # as the row is full, so no write ever lands in a neighbour's slot.
            data[p] = w
            indices[p] = j
            p += keep
            if p == end:
                break


count_rows_serial, count_rows = jit_variants(_count_rows, fastmath=False)
fill_rows_serial, fill_rows = jit_variants(_fill_rows, fastmath=False)


def _magnitude_histogram(U, abs_mask, prefix_mask, prefix, shift, digit_mask, n_buckets, n_chunks):
    """Histogram of one radix digit of |w|'s bit pattern, over entries matching ``prefix``.

    ``U`` is the weight matrix viewed as unsigned integers of the same width.
    For non-negative IEEE floats the bit pattern orders like the value, so a
    most-significant-digit-first radix select finds the k-th smallest magnitude
    in a few passes, without sorting and without a copy of the data.
    Each chunk of rows owns one histogram row, so the parallel loop has no races.
    The masks and ``shift`` have ``U``'s unsigned type (mixing signed and unsigned
    64-bit integers would promote to float in numba).
    """
    n_rows, n_cols = U.shape
    hist = np.zeros((n_chunks, n_buckets), np.int64)
    for c in prange(n_chunks):
        r0 = c * n_rows // n_chunks
        r1 = (c + 1) * n_rows // n_chunks
        h = hist[c]
        for i in range(r0, r1):
            row = U[i]
            for j in range(n_cols):
                bits = row[j] & abs_mask
                if (bits & prefix_mask) == prefix:
                    h[(bits >> shift) & digit_mask] += 1
    out = np.zeros(n_buckets, np.int64)
    for c in range(n_chunks):
        out += hist[c]
    return out


magnitude_histogram_serial, magnitude_histogram = jit_variants(_magnitude_histogram, fastmath=False)


def _row_kth_magnitude(W, k, out):
    """out[i] = the (k+1)-th smallest |w| of row i (0-based k), by selection on a row copy."""
    n_rows, n_cols = W.shape
    for i in prange(n_rows):
        buf = np.abs(W[i])
        out[i] = np.partition(buf, k)[k]


row_kth_magnitude_serial, row_kth_magnitude = jit_variants(_row_kth_magnitude, fastmath=False)


@jit(fastmath=False)
def _nm_keep(row, j, g0, g1, n):
    """Is row[j] among the n largest |.| of row[g0:g1]? Ties go to the lower column."""
    a = abs(row[j])
    if a == 0:
        return False
    rank = 0
    for k in range(g0, g1):
        b = abs(row[k])
        rank += (b > a) | ((b == a) & (k < j))
    return rank < n


def _nm_count(W, n, m, counts, nonfinite, big):
    n_rows, n_cols = W.shape
    for i in prange(n_rows):
        row = W[i]
        c = 0
        b = 0
        for g0 in range(0, n_cols, m):
            g1 = min(g0 + m, n_cols)
            for j in range(g0, g1):
                c += _nm_keep(row, j, g0, g1, n)
                b += not (abs(row[j]) <= big)
        counts[i] = c
        nonfinite[i] = b


def _nm_fill(W, n, m, indptr, data, indices):
    n_rows, n_cols = W.shape
    for i in prange(n_rows):
        row = W[i]
        p = indptr[i]
        for g0 in range(0, n_cols, m):
            g1 = min(g0 + m, n_cols)
            for j in range(g0, g1):
                if _nm_keep(row, j, g0, g1, n):
                    data[p] = row[j]
                    indices[p] = j
                    p += 1


nm_count_serial, nm_count = jit_variants(_nm_count, fastmath=False)
nm_fill_serial, nm_fill = jit_variants(_nm_fill, fastmath=False)
