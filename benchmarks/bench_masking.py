"""Masking: sparseprune vs the numpy+scipy baseline, side by side in one group per case.

Run: see benchmarks/README.md (commands and figures). benchmarks/conftest.py pins BLAS and numba
to the same thread count; SPARSEPRUNE_BENCH_QUICK=1 shrinks the matrices so CI can
smoke-run the suite.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

import sparseprune

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
N = 256 if QUICK else 4096
ROUNDS = 1 if QUICK else 9


@pytest.fixture(scope="module")
def W():
    return np.random.default_rng(0).standard_normal((N, N)).astype(np.float32)


def _run(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def baseline_threshold(W, t):
    return sp.csr_array(np.where(np.abs(W) < t, 0, W))


def baseline_magnitude(W, sparsity):
    k = int(round(sparsity * W.size))
    t = np.partition(np.abs(W), k, axis=None)[k]
    return baseline_threshold(W, t)


@pytest.mark.parametrize("density", [0.01, 0.10, 0.30, 0.50])
@pytest.mark.parametrize("impl", ["scipy", "sparseprune"])
def test_threshold_mask(benchmark, W, density, impl):
    t = np.float32(np.quantile(np.abs(W), 1 - density))
    benchmark.group = f"threshold_mask {N}x{N} float32 density={density:.0%}"
    fn = (lambda: baseline_threshold(W, t)) if impl == "scipy" else (lambda: sparseprune.threshold_mask(W, t))
    out = _run(benchmark, fn)
    assert abs(out.nnz / W.size - density) < 0.01


@pytest.mark.parametrize("impl", ["scipy", "sparseprune", "sparseprune-row"])
def test_magnitude_prune(benchmark, W, impl):
    benchmark.group = f"magnitude_prune {N}x{N} float32 sparsity=90%"
    fn = {
        "scipy": lambda: baseline_magnitude(W, 0.9),
        "sparseprune": lambda: sparseprune.magnitude_prune(W, 0.9),
        "sparseprune-row": lambda: sparseprune.magnitude_prune(W, 0.9, scope="row"),
    }[impl]
    out = _run(benchmark, fn)
    kept = N * (N - int(round(0.9 * N))) if impl == "sparseprune-row" else W.size - int(round(0.9 * W.size))
    assert out.nnz == kept
