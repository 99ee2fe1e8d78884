"""Per-neuron scores and physical neuron removal: numba kernels, raw arrays only.

Neurons are columns of an activation matrix ``A`` (n_samples, n_neurons) and
rows of the layer's weight ``W_l`` (out, in) / columns of the next layer's
weight ``W_{l+1}``. CSR matrices come in as ``(data, indices, indptr)`` and
reduced CSR matrices go out the same way; the public layer
(``sparseprune.neurons``) validates inputs and wraps results in scipy objects.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from sparseprune.kernels._jit import jit, jit_variants


def _activation_stats(A, out):
    """One pass over ``A`` (n, k), row-major; ``out`` (5, k) float64 receives per column:
    mean |a|, max |a|, fraction of exact zeros (APoZ), min a, max a.

    Columns are split into contiguous blocks, one per prange iteration, so each
    iteration owns a disjoint slice of ``out`` (no shared accumulators); inside a
    block the rows are streamed in order, which keeps the access to ``A`` contiguous.
    Compiled without fastmath: min/max/zero tests must be exact for constant-neuron
    detection.
    """
    n, k = A.shape
    block = 64
    n_blocks = (k + block - 1) // block
    for b in prange(n_blocks):
        j0 = b * block
        j1 = min(k, j0 + block)
        for j in range(j0, j1):
            out[0, j] = 0.0
            out[1, j] = 0.0
            out[2, j] = 0.0
            out[3, j] = np.inf
            out[4, j] = -np.inf
        for i in range(n):
            for j in range(j0, j1):
                a = np.float64(A[i, j])
                m = abs(a)
                out[0, j] += m
                if m > out[1, j]:
                    out[1, j] = m
                if a == 0.0:
                    out[2, j] += 1.0
                if a < out[3, j]:
                    out[3, j] = a
                if a > out[4, j]:
                    out[4, j] = a
        for j in range(j0, j1):
            out[0, j] /= n
            out[2, j] /= n


activation_stats_serial, activation_stats_parallel = jit_variants(_activation_stats, fastmath=False)


@jit(fastmath=False)
def dense_row_norms(W, p, out):
    """``out[i] = ||W[i, :]||_p`` for p in {1, 2} (incoming weights of neuron i)."""
    for i in range(W.shape[0]):
        s = 0.0
        for j in range(W.shape[1]):
            w = np.float64(W[i, j])
            s += abs(w) if p == 1 else w * w
        out[i] = s if p == 1 else np.sqrt(s)


@jit(fastmath=False)
def dense_col_norms(W, p, out):
    """``out[j] = ||W[:, j]||_p`` for p in {1, 2} (outgoing weights of neuron j)."""
    out[:] = 0.0
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            w = np.float64(W[i, j])
            out[j] += abs(w) if p == 1 else w * w
    if p == 2:
        for j in range(out.shape[0]):
            out[j] = np.sqrt(out[j])


@jit(fastmath=False)
def csr_row_norms(data, indptr, p, out):
    """Row norms of a CSR matrix; only stored values count."""
    for i in range(indptr.shape[0] - 1):
        s = 0.0
        for t in range(indptr[i], indptr[i + 1]):
            w = np.float64(data[t])
            s += abs(w) if p == 1 else w * w
        out[i] = s if p == 1 else np.sqrt(s)


@jit(fastmath=False)
def csr_col_norms(data, indices, p, out):
    """Column norms of a CSR matrix (``out`` has one slot per column)."""
    out[:] = 0.0
    for t in range(data.shape[0]):
        w = np.float64(data[t])
        out[indices[t]] += abs(w) if p == 1 else w * w
    if p == 2:
        for j in range(out.shape[0]):
            out[j] = np.sqrt(out[j])


@jit(fastmath=False)
def csr_keep_rows(data, indices, indptr, keep):
    """The rows ``keep`` (sorted, unique) of a CSR matrix, as new CSR arrays."""
    n_keep = keep.shape[0]
    new_indptr = np.empty(n_keep + 1, dtype=indptr.dtype)
    new_indptr[0] = 0
    for r in range(n_keep):
        i = keep[r]
        new_indptr[r + 1] = new_indptr[r] + (indptr[i + 1] - indptr[i])
    nnz = new_indptr[n_keep]
    new_data = np.empty(nnz, dtype=data.dtype)
    new_indices = np.empty(nnz, dtype=indices.dtype)
    for r in range(n_keep):
        i = keep[r]
        dst = new_indptr[r]
        for t in range(indptr[i], indptr[i + 1]):
            new_data[dst] = data[t]
            new_indices[dst] = indices[t]
            dst += 1
    return new_data, new_indices, new_indptr


@jit(fastmath=False)
def csr_remove_cols(data, indices, indptr, col_map, col_value, bias_delta):
    """Drop the columns with ``col_map[j] < 0`` and renumber the others to ``col_map[j]``.

    Each dropped column j is folded into the bias: ``bias_delta[i] +=
    W[i, j] * col_value[j]`` (``col_value`` is the constant activation of the
    removed neuron; 0 for neurons removed without compensation). Returns the
    reduced CSR arrays; the column order of kept entries is preserved, so sorted
    indices stay sorted.
    """
    n_rows = indptr.shape[0] - 1
    new_indptr = np.empty(n_rows + 1, dtype=indptr.dtype)
    new_indptr[0] = 0
    for i in range(n_rows):
        c = 0
        for t in range(indptr[i], indptr[i + 1]):
            if col_map[indices[t]] >= 0:
                c += 1
        new_indptr[i + 1] = new_indptr[i] + c
    nnz = new_indptr[n_rows]
    new_data = np.empty(nnz, dtype=data.dtype)
    new_indices = np.empty(nnz, dtype=indices.dtype)
    for i in range(n_rows):
        dst = new_indptr[i]
        acc = 0.0
        for t in range(indptr[i], indptr[i + 1]):
            j = indices[t]
            if col_map[j] >= 0:
                new_data[dst] = data[t]
                new_indices[dst] = col_map[j]
                dst += 1
            else:
                acc += np.float64(data[t]) * col_value[j]
        bias_delta[i] += acc
    return new_data, new_indices, new_indptr
