"""A whole feed-forward network in one compiled call (the small-batch path of a model's plan).

Every layer of the network is stored in flat arrays, so one kernel can run
them all with no Python between layers. ``meta`` (int64, 6 x n_layers) holds
per layer, by row:

- ``KIND``: 0 = dense (``wd[WD_OFF]`` starts its ``out x in`` weights,
  row-major), 1 = sparse (CSR: ``indptr[PTR_OFF:PTR_OFF + out + 1]`` holds
  absolute positions into ``data`` / ``indices``);
- ``N_OUT``, ``ACT`` (``kernels.spmm.ACTIVATIONS`` codes), and ``B_OFF``
  (``bias[B_OFF:B_OFF + out]``).

``out_mode`` says what follows the last layer: 0 nothing, 1 softmax, 2 a
binary logistic output written as two columns ``(1 - p, p)``. (One metadata
array instead of six: each array argument costs about 0.1 us of numba's
dispatch, which a 5 us call feels.)

Rows are independent, so each input row runs through all layers with its
activations in two small work vectors that stay in L1; a row's inputs are
read once. The dense layers are dot products over contiguous weight rows
(vectorised), the sparse ones one plain loop per row that LLVM vectorises
with gathers.
The parallel variant splits the batch into contiguous row ranges, one per
``prange`` iteration, each with its own work vectors.

The kernel also reports whether ``X`` held a NaN or inf (``x * 0`` summed:
0 for finite values), so the caller validates finiteness without a second
pass over ``X``.

(Measurements: benchmarks/README.md, "Design record".)
"""
from __future__ import annotations

import numba
import numpy as np

from sparseprune.kernels._jit import jit, jit_variants
from sparseprune.kernels.spmm import _activate

#: Output modes after the last layer.
OUT_NONE, OUT_SOFTMAX, OUT_BINARY = 0, 1, 2
#: Rows of the ``meta`` array.
KIND, N_OUT, ACT, WD_OFF, PTR_OFF, B_OFF = range(6)

@jit
def _dense_layer(wd, base, n_out, n_in, bias, bo, act, h, g):
    """``g[i] = act(W[i] . h + bias[bo + i])``, W's rows stored flat from ``wd[base]``: one dense layer, one row."""
    zero = wd.dtype.type(0)
    x = h[:n_in]
    for i in range(n_out):
        # A view per weight row: indexing wd[base + i * n_in + j] directly
        # measured 4-5x slower (LLVM then does not vectorise the dot product).
        w = wd[base + i * n_in: base + (i + 1) * n_in]
        s = zero
        for j in range(n_in):
            s += w[j] * x[j]
        g[i] = _activate(s + bias[bo + i], act, zero)


@jit
def _sparse_layer(data, indices, indptr, po, n_out, bias, bo, act, h, g):
    """``g[i] = act(sum_p data[p] * h[indices[p]] + bias[bo + i])`` over row i's CSR range."""
    zero = data.dtype.type(0)
    for i in range(n_out):
        p0 = indptr[po + i]
        p1 = indptr[po + i + 1]
        # Views and one plain loop: LLVM vectorises it with gathers (faster than
        # hand-interleaved add chains: benchmarks/README.md, "Design record").
        d = data[p0:p1]
        c = indices[p0:p1]
        s = zero
        for k in range(d.size):
            s += d[k] * h[c[k]]
        g[i] = _activate(s + bias[bo + i], act, zero)


@jit(fastmath=False)
def densify_layers(meta, wd, data, indices, indptr, n_in0, dense_wd):
    """Every layer of a fused layout written dense, row-major and back to back, into ``dense_wd``.

    ``dense_wd`` must be zeroed by the caller and hold ``sum(out * in)``
    values; duplicate CSR entries are summed, as scipy's ``toarray`` does.
    (One pass, no temporaries: the ``"fused-dense"`` layout of a 784-300-100-10
    model took 0.17 ms through scipy's ``toarray`` and concatenations, 0.03 ms
    here, both on reused memory.)
    """
    off = 0
    n_in = n_in0
    for layer in range(meta.shape[1]):
        n_out = meta[1, layer]
        if meta[0, layer] == 0:
            base = meta[3, layer]
            for k in range(n_out * n_in):
                dense_wd[off + k] = wd[base + k]
        else:
            po = meta[4, layer]
            for i in range(n_out):
                row = off + i * n_in
                for p in range(indptr[po + i], indptr[po + i + 1]):
                    dense_wd[row + indices[p]] += data[p]
        off += n_out * n_in
        n_in = n_out


@jit
def _output(h, n, out_mode, Y, r):
    """Write row ``r`` of ``Y`` from the last layer's ``h[:n]`` and the output mode."""
    zero = h.dtype.type(0)
    if out_mode == 1:
        m = h[0]
        for i in range(1, n):
            if h[i] > m or m != m:
                m = h[i]
        t = zero
        for i in range(n):
            e = np.exp(h[i] - m)
            Y[r, i] = e
            t += e
        for i in range(n):
            Y[r, i] /= t
    elif out_mode == 2:
        p1 = 1.0 / (1.0 + np.exp(-h[0]))
        Y[r, 0] = 1.0 - p1
        Y[r, 1] = p1
    else:
        for i in range(n):
            Y[r, i] = h[i]


@jit
def output_rows(H, out_mode, Y):
    """``Y[r] = out(H[r])`` for every row: the output activation of a layer-by-layer pass."""
    if out_mode == 2 and H.shape[1] == 1:
        # The binary head as one flat loop in H's precision (LLVM can vectorise it):
        # per-row calls of _output cost ~17 ns a row (4.3 us for 256 rows).
        one = H.dtype.type(1)
        for r in range(H.shape[0]):
            p1 = one / (one + np.exp(-H[r, 0]))
            Y[r, 0] = one - p1
            Y[r, 1] = p1
        return
    for r in range(H.shape[0]):
        _output(H[r], H.shape[1], out_mode, Y, r)


@jit
def _forward_rows(X, r0, r1, meta, wd, data, indices, indptr, bias, out_mode, max_width, Y):
    zero = wd.dtype.type(0)
    # Two work vectors; layer l reads buf[l % 2] and writes buf[1 - l % 2].
    buf = np.empty((2, max_width), wd.dtype)
    a = buf[0]
    b = buf[1]
    n_in0 = X.shape[1]
    probe = zero
    for r in range(r0, r1):
        for j in range(n_in0):
            v = X[r, j]
            a[j] = v
            probe += v * zero  # NaN iff some input is NaN or inf
        n_in = n_in0
        n_layers = meta.shape[1]
        for layer in range(n_layers):
            n_out = meta[1, layer]
            src, dst = (a, b) if layer % 2 == 0 else (b, a)
            if meta[0, layer] == 0:
                _dense_layer(wd, meta[3, layer], n_out, n_in, bias, meta[5, layer], meta[2, layer], src, dst)
            else:
                _sparse_layer(data, indices, indptr, meta[4, layer], n_out, bias, meta[5, layer], meta[2, layer],
                              src, dst)
            n_in = n_out
        _output(a if n_layers % 2 == 0 else b, n_in, out_mode, Y, r)
    return probe != probe


def _forward(X, meta, wd, data, indices, indptr, bias, out_mode, max_width, Y, n_parts):
    """``Y = out(layers(X))``; True when ``X`` holds a NaN or inf (``Y`` is then not to be used)."""
    n = X.shape[0]
    bad = np.zeros(n_parts, np.bool_)
    for t in numba.prange(n_parts):
        r0 = n * t // n_parts
        r1 = n * (t + 1) // n_parts
        bad[t] = _forward_rows(X, r0, r1, meta, wd, data, indices, indptr, bias, out_mode, max_width, Y)
    return bad.any()


#: ``forward_serial`` runs on the calling thread (``n_parts`` should be 1);
#: ``forward_parallel`` gives each of ``n_parts`` row ranges to numba's threads.
forward_serial, forward_parallel = jit_variants(_forward)
