"""Masking kernels: dense weight matrix in, CSR arrays (data, indices, indptr) out.

One keep rule serves threshold masking and magnitude pruning. Row ``i`` has a
cut-off magnitude ``v[i]``; an entry is kept when ``|w| > v[i]``, or when
``|w| == v[i]`` and it is not among the ties chosen for removal. Ties are
removed in row-major order. Exact zeros are never kept. Nearly every row keeps
all of its ties or none (then the rule is just ``|w| >= cut``, the fast
``fill_rows_parallel``); the few rows holding a partial set go through ``fill_tie_rows_parallel``.

Everything is two passes (count, then fill) over the matrix, parallel over rows,
with O(rows) temporaries: no dense array the size of ``W`` is ever allocated.
"""
from __future__ import annotations

import numpy as np
from numba import prange
from numba.cpython.unsafe.numbers import trailing_zeros

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


def _fill_rows(W, cut, indptr, data, indices):
    """Write the entries with |w| >= cut[i] and w != 0 of each row into its CSR slot.

    Each block of 64 columns becomes a 64-bit keep mask (a vectorised compare and
    OR-reduction; the block width must stay a literal constant here for that),
    then one step per set bit writes an entry. Work per block is thus a few
    vector instructions plus one step per *kept* entry, whatever the density.
    The first pass's counts guarantee every write lands in the row's own slots.

    Rows whose cut is NaN are skipped (nothing compares >= NaN): they hold a
    partial set of ties and are written by ``_fill_tie_rows``.
    """
    n_rows, n_cols = W.shape
    n_full = n_cols - n_cols % 64
    one = np.uint64(1)
    for i in prange(n_rows):
        p = indptr[i]
        ci = cut[i]
        if p == indptr[i + 1] or ci != ci:
            continue
        row = W[i]
        for j0 in range(0, n_full, 64):
            bits = np.uint64(0)
            for t in range(64):
                w = row[j0 + t]
                bits |= np.uint64((abs(w) >= ci) & (w != 0)) << np.uint64(t)
            while bits:
                j = j0 + trailing_zeros(bits)
                data[p] = row[j]
                indices[p] = j
                p += 1
                bits &= bits - one
        for j in range(n_full, n_cols):
            w = row[j]
            if (abs(w) >= ci) & (w != 0):
                data[p] = w
                indices[p] = j
                p += 1


def _fill_tie_rows(W, rows, v, tie_offset, indptr, data, indices):
    """Rows where only some entries with |w| == v[i] are kept.

    A running tie counter starts at ``tie_offset[i]``; a tie is kept once it is
    >= 0, so the ties that come first in the row are the ones removed.
    """
    n_cols = W.shape[1]
    for r_idx in prange(rows.size):
        i = rows[r_idx]
        p = indptr[i]
        end = indptr[i + 1]
        row = W[i]
        vi = v[i]
        r = tie_offset[i]
        for j in range(n_cols):
            if p == end:
                break
            w = row[j]
            a = abs(w)
            tie = a == vi
            if (a > vi) | (tie & (r >= 0) & (w != 0)):
                data[p] = w
                indices[p] = j
                p += 1
            r += tie


def _count_cols(WT, v, gt, ties, nonfinite, big):
    """``_count_rows`` for a column-major ``W``, read through its C-ordered transpose ``WT``.

    Chunk ``c`` of W's columns fills row ``c`` of ``gt``/``ties``/``nonfinite``
    (shape (n_chunks, n_rows)), so chunks never share a counter.
    """
    n_cols, n_rows = WT.shape
    n_chunks = gt.shape[0]
    for c in prange(n_chunks):
        g = gt[c]
        t = ties[c]
        b = nonfinite[c]
        g[:] = 0
        t[:] = 0
        b[:] = 0
        for j in range(c * n_cols // n_chunks, (c + 1) * n_cols // n_chunks):
            col = WT[j]
            for i in range(n_rows):
                a = abs(col[i])
                g[i] += a > v[i]
                t[i] += a == v[i]
                b[i] += not (a <= big)


def _fill_cols(WT, cut, start, data, indices):
    """``_fill_rows`` for a column-major ``W``, read through its C-ordered transpose ``WT``.

    Chunk ``c`` of W's columns appends to row i from slot ``start[c, i]``
    (row i's CSR start plus what earlier chunks keep in that row), so chunks
    write disjoint slots and each row still comes out in column order.
    """
    n_cols, n_rows = WT.shape
    n_chunks = start.shape[0]
    for c in prange(n_chunks):
        pos = start[c].copy()
        for j in range(c * n_cols // n_chunks, (c + 1) * n_cols // n_chunks):
            col = WT[j]
            for i in range(n_rows):
                w = col[i]
                if (abs(w) >= cut[i]) & (w != 0):
                    data[pos[i]] = w
                    indices[pos[i]] = j
                    pos[i] += 1


count_rows_serial, count_rows_parallel = jit_variants(_count_rows, fastmath=False)
fill_rows_serial, fill_rows_parallel = jit_variants(_fill_rows, fastmath=False)
fill_tie_rows_serial, fill_tie_rows_parallel = jit_variants(_fill_tie_rows, fastmath=False)
count_cols_serial, count_cols_parallel = jit_variants(_count_cols, fastmath=False)
fill_cols_serial, fill_cols_parallel = jit_variants(_fill_cols, fastmath=False)


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


magnitude_histogram_serial, magnitude_histogram_parallel = jit_variants(_magnitude_histogram, fastmath=False)


def _row_kth_magnitude(W, k, out):
    """out[i] = the (k+1)-th smallest |w| of row i (0-based k), by selection on a row copy."""
    n_rows, n_cols = W.shape
    for i in prange(n_rows):
        buf = np.abs(W[i])
        out[i] = np.partition(buf, k)[k]


row_kth_magnitude_serial, row_kth_magnitude_parallel = jit_variants(_row_kth_magnitude, fastmath=False)


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


nm_count_serial, nm_count_parallel = jit_variants(_nm_count, fastmath=False)
nm_fill_serial, nm_fill_parallel = jit_variants(_nm_fill, fastmath=False)
