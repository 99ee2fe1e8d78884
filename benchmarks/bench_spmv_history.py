"""Batch-1 SpMV against the kernel it replaced, on the same machine, layer and run.

``SparseLinear(W)(x, method="sparse")`` on 4096 x 4096 float32 at 5, 10 and 30 %
density, 2 threads, against the SpMV as it was before commit bb3b8ee: a dot
product per weight row with four independent scalar add chains (no
reassociation, so no gathers). That kernel no longer exists in the package;
it is rebuilt here from commit d0f9764 so the comparison can be rerun on any
machine. Each is timed in blocks (calls for about 50 ms, 15 blocks) after a
0.2 s pause, in two passes of opposite order; medians and p90 of the blocks.

Run: ``python benchmarks/bench_spmv_history.py`` (or ``pytest benchmarks/bench_spmv_history.py
-o python_files='bench_*.py' -s``; ``SPARSEPRUNE_BENCH_QUICK=1`` shrinks it to a smoke run).
"""
from __future__ import annotations

import os
import time

import numba
import numpy as np

import sparseprune
from sparseprune.kernels.spmm import _activate
from sparseprune.studies.bench import _random_csr

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
_U1, _U2, _U3, _U4 = (np.uint64(k) for k in (1, 2, 3, 4))
# The project's JIT settings (kernels/_jit.py) with FMA but no reassociation, as the old kernel
# was built, except the on-disk cache: this file runs both as a script and under pytest, and a
# cached entry records the module name it was compiled under.
_SETTINGS = dict(nogil=True, error_model="numpy", boundscheck=False, fastmath={"contract"}, cache=False)


@numba.njit(**_SETTINGS)
def _spmv_before(data, indices, indptr, x, bias, act, row_starts, y):
    for t in range(row_starts.size - 1):
        for i in range(row_starts[t], row_starts[t + 1]):
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
            y[i] = _activate((s0 + s1) + (s2 + s3) + bias[i], act, data.dtype.type(0))


@numba.njit(parallel=True, **_SETTINGS)
def _forward_before(data, indices, indptr, X, bias, act, row_starts):
    x = X[0]
    Y = np.empty((1, indptr.size - 1), data.dtype)
    y = Y[0]
    for t in numba.prange(row_starts.size - 1):
        _spmv_before(data, indices, indptr, x, bias, act, row_starts[t:t + 2], y)
    probe = data.dtype.type(0)
    for k in range(x.size):
        probe += x[k] * 0
    return Y, probe != probe


def _blocks(f, reps=15, duration=0.05):
    f()
    f()
    t0 = time.perf_counter()
    f()
    n = max(3, int(duration / (time.perf_counter() - t0)))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        out.append((time.perf_counter() - t0) / n)
    return np.median(out), np.percentile(out, 90)


def main(densities=(0.05, 0.1, 0.3), n=4096, reps=15):
    rng = np.random.default_rng(0)
    n_threads = numba.get_num_threads()
    print(f"batch-1 SpMV, {n}x{n} float32, {n_threads} threads: median (p90) per call")
    for d in densities:
        W = _random_csr(rng, n, d, n_in=n)
        layer = sparseprune.SparseLinear(W)
        x = rng.standard_normal((1, n)).astype(np.float32)
        args = (layer._data, layer._spmv_cols, layer._indptr, x, layer.bias, 0,
                layer._parts(4 * n_threads))  # the partition the current kernel uses
        np.testing.assert_allclose(_forward_before(*args)[0], layer(x, method="sparse"), rtol=1e-3, atol=1e-3)
        fns = {"before": lambda: _forward_before(*args), "now": lambda: layer(x, method="sparse")}
        res = {k: [] for k in fns}
        for order in (list(fns), list(fns)[::-1]):
            for k in order:
                time.sleep(0.2)
                res[k].append(_blocks(fns[k], reps))
        (b, bp), (a, ap) = (np.median(res[k], axis=0) for k in ("before", "now"))
        print(f"{d:4.0%}: before {b * 1e6:6.0f} us ({bp * 1e6:.0f}), now {a * 1e6:6.0f} us ({ap * 1e6:.0f}): "
              f"{b / a:.2f}x throughput")


def test_spmv_history(capsys):
    with capsys.disabled(), sparseprune.thread_limit(numba.config.NUMBA_NUM_THREADS):
        main(densities=(0.1,), n=512, reps=2) if QUICK else main()


if __name__ == "__main__":
    with sparseprune.thread_limit(numba.config.NUMBA_NUM_THREADS):
        main()
