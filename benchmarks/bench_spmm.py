"""Sparse inference benchmark: ours vs scipy vs dense BLAS, 4096 x 4096 float32.

One pytest-benchmark group per (density, batch) holding
- ``dense``:  ``X @ W_dense.T`` (numpy / OpenBLAS),
- ``scipy``:  ``W_csr @ X.T`` (scipy, one thread),
- ``ours``:   the sparse kernel, ``SparseLinear(W)(X, method="sparse")``,
- ``auto``:   the dispatcher, ``SparseLinear(W)(X)`` (dense or sparse, measured on its first calls),
- ``linear``: the one-call API, ``sparseprune.linear(X, W_csr)`` (validates W every call),
all with the same thread count for BLAS and numba (``SPARSEPRUNE_BENCH_THREADS``,
default: all cores). Each callable runs once before timing (JIT compile and
first-touch excluded).

Run::

    pytest benchmarks/bench_spmm.py -o python_files='bench_*.py' --benchmark-group-by=group

For a compact table with the speedups (interleaved runs, medians), use
the ``sparseprune bench --kernels linear`` command.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

import sparseprune

# SPARSEPRUNE_BENCH_QUICK=1: tiny sizes, so CI's smoke run exercises every case.
QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
N = 256 if QUICK else 4096
DENSITIES = (0.05, 0.5) if QUICK else (0.01, 0.05, 0.10, 0.20, 0.30, 0.50)
BATCHES = (1, 16, 64, 256)
IMPLS = ("dense", "scipy", "ours", "auto", "linear")


@pytest.fixture(scope="module", autouse=True)
def threads():
    n = os.environ.get("SPARSEPRUNE_BENCH_THREADS")
    with sparseprune.thread_limit(int(n) if n else None) as nt:
        yield nt


_cache: dict = {}


def _layer(density):
    if density not in _cache:
        rng = np.random.default_rng(int(density * 1000))
        W = sp.random_array((N, N), density=density, format="csr", dtype=np.float32, rng=rng)
        _cache.clear()  # one density's matrices at a time keeps memory flat
        layer = sparseprune.SparseLinear(W)
        # Dense baseline = the layer's own dense copy (what its dense path uses).
        _cache[density] = (W, layer._dense(), layer)
    return _cache[density]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("density", DENSITIES)
def test_linear(benchmark, density, batch, impl):
    W, Wd, layer = _layer(density)
    X = np.random.default_rng(batch).standard_normal((batch, N)).astype(np.float32)
    fn = {
        "dense": lambda: X @ Wd.T,
        "scipy": lambda: W @ X.T,
        "ours": lambda: layer(X, method="sparse"),
        "auto": lambda: layer(X),
        "linear": lambda: sparseprune.linear(X, W),
    }[impl]
    fn()  # warm-up: compile and first touch excluded
    benchmark.group = f"density={density:.2f} batch={batch}"
    benchmark.extra_info.update(density=density, batch=batch, impl=impl,
                                path=layer.explain(batch).path if impl == "auto" else impl)
    benchmark(fn)
