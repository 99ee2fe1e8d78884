"""Latency of a call made among numpy's own BLAS work, as a program importing sparseprune makes it.

Each iteration: a burst of 512 x 512 float32 GEMMs (numpy, multi-threaded
BLAS), a seeded pause of 0-150 ms, then one timed call. Reported against the
same call's quiet median (back-to-back calls, no BLAS in between): median and
p90 of the mixed loop, and p90 / quiet median. After a multi-threaded BLAS
call OpenBLAS's worker threads spin on the cores for about 0.1 s, so calls
made 0-100 ms after a burst share the cores with them.

Run: ``python benchmarks/bench_mixed.py`` or
``pytest benchmarks/bench_mixed.py -o python_files='bench_*.py' -s``.
"""
from __future__ import annotations

import copy
import os
import time
import warnings

import numba
import numpy as np
import pytest

import sparseprune

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
ITERATIONS = 6 if QUICK else 60
QUIET_CALLS = 20 if QUICK else 300


def _cases():
    rng = np.random.default_rng(0)
    W = sparseprune.magnitude_prune(rng.standard_normal((1561, 831)).astype(np.float32), 0.85)
    layer = sparseprune.SparseLinear(W)
    X16 = rng.standard_normal((16, 831)).astype(np.float32)
    n_in, hidden = (64, (128, 128)) if QUICK else (784, (1024, 1024))
    Xt = rng.standard_normal((512, n_in)).astype(np.float32)
    yt = np.abs(Xt[:, :10]).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = sparseprune.MLPClassifier(hidden_layer_sizes=hidden, max_iter=2, random_state=0).fit(Xt, yt)
    pruned = copy.deepcopy(mlp).prune(sparsity=0.9, scope="layer")
    x1 = np.ascontiguousarray(Xt[:1])
    return {
        "SparseLinear 1561x831, 15% density, batch 16": lambda: layer(X16),
        f"90%-pruned {n_in}-{hidden[0]}-{hidden[1]}-10 predict_proba, batch 1": lambda: pruned.predict_proba(x1),
    }


def mixed_loop(fn, iterations=ITERATIONS, seed=0):
    """(quiet median, mixed median, mixed p90) in seconds."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((512, 512)).astype(np.float32)
    for _ in range(50):  # warm-up: compile, measure, settle the plan
        fn()
    quiet = []
    for _ in range(QUIET_CALLS):
        t0 = time.perf_counter()
        fn()
        quiet.append(time.perf_counter() - t0)
    mixed = []
    for _ in range(iterations):
        for _ in range(5):
            A @ A
        time.sleep(rng.uniform(0, 0.15))
        t0 = time.perf_counter()
        fn()
        mixed.append(time.perf_counter() - t0)
    return float(np.median(quiet)), float(np.median(mixed)), float(np.percentile(mixed, 90))


def rows():
    out = []
    for name, fn in _cases().items():
        q, m, p90 = mixed_loop(fn)
        out.append((name, q, m, p90))
    return out


def print_rows(rs):
    print(f"\n{'call':62s} {'quiet median':>12s} {'mixed median':>12s} {'mixed p90':>10s}  p90/quiet")
    for name, q, m, p90 in rs:
        print(f"{name:62s} {q * 1e6:10.1f}us {m * 1e6:10.1f}us {p90 * 1e6:8.1f}us  {p90 / q:8.2f}x")


@pytest.fixture(autouse=True, scope="module")
def same_threads():
    # All the threads numba started with (benchmarks/conftest.py pins the same per test).
    with sparseprune.thread_limit(numba.config.NUMBA_NUM_THREADS):
        yield


def test_mixed_loop_table(capsys):
    rs = rows()
    with capsys.disabled():
        print_rows(rs)
    assert all(q > 0 and p90 > 0 for _, q, _, p90 in rs)


if __name__ == "__main__":
    with sparseprune.thread_limit(numba.config.NUMBA_NUM_THREADS):
        print_rows(rows())
