"""sparseprune.linear / SparseLinear against a plain-numpy reference kept here, plus the dispatcher."""
from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import random_csr, ref_linear

import sparseprune
from sparseprune.inference import costmodel as cal
from sparseprune.inference import dispatch as dispatch_mod
from sparseprune.inference import spmm as spmm_mod
from sparseprune.inference import threads as threads_mod

ACTS = [None, "identity", "relu", "tanh", "logistic"]


# ---------------------------------------------------------------- reference
def tol(dtype, k):
    # float32 sums of k terms of size ~1: error grows like sqrt(k) eps, bound it loosely.
    return (2e-5 if dtype == np.float32 else 1e-12) * max(1, k)


@pytest.fixture(autouse=True)
def _no_measuring(tmp_path, monkeypatch):
    """No test reads a calibration measured earlier: built-in table, private cache dir."""
    monkeypatch.setenv("SPARSEPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    cal.forget()
    sparseprune.set_calibration(None)
    yield
    sparseprune.set_calibration(None)
    cal.forget()


# ---------------------------------------------------------------- correctness
@settings(max_examples=60, deadline=None)
@given(
    batch=st.sampled_from([0, 1, 2, 3, 7, 8, 9, 16, 17, 31, 33, 64, 65, 70]),
    n_in=st.integers(0, 40),
    n_out=st.integers(0, 40),
    density=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    activation=st.sampled_from(ACTS),
    order=st.sampled_from(["C", "F"]),
    with_bias=st.booleans(),
    method=st.sampled_from(["auto", "sparse", "dense"]),
    seed=st.integers(0, 2**16),
)
def test_matches_dense_reference(batch, n_in, n_out, density, dtype, activation, order, with_bias, method, seed):
    rng = np.random.default_rng(seed)
    W = random_csr(rng, n_out, n_in, density, dtype)
    X = np.asarray(rng.standard_normal((batch, n_in)), dtype=dtype, order=order)
    b = rng.standard_normal(n_out).astype(dtype) if with_bias else None
    Y = sparseprune.linear(X, W, b, activation, method=method)
    assert Y.shape == (batch, n_out) and Y.dtype == dtype and Y.flags.c_contiguous
    np.testing.assert_allclose(Y, ref_linear(X, W.toarray(), b, activation), rtol=tol(dtype, n_in),
                               atol=tol(dtype, n_in))


@pytest.mark.parallel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 5, 16, 40, 64, 100, 150, 200, 300])
def test_parallel_sizes_every_width(dtype, batch, monkeypatch):
    # Every call on the threads; batches cover each block width, blocks per
    # thread, leftover blocks split by rows, and partial last blocks.
    monkeypatch.setitem(threads_mod.SERIAL_WORK, "spmm", 0)
    monkeypatch.setitem(threads_mod.SERIAL_WORK, "spmv", 0)
    rng = np.random.default_rng(batch)
    W = random_csr(rng, 301, 257, 0.4, dtype)
    X = rng.standard_normal((batch, 257)).astype(dtype)
    b = rng.standard_normal(301).astype(dtype)
    layer = sparseprune.SparseLinear(W, b, "relu")
    expected = ref_linear(X, W.toarray(), b, "relu")
    outputs = [layer(X, method="sparse"), sparseprune.linear(X, W, b, "relu", method="sparse")]
    if batch in (5, 150):  # other input layouts compile their own variants: two sizes suffice
        Xr = X.copy()
        Xr.setflags(write=False)
        outputs += [layer(np.asfortranarray(X), method="sparse"), layer(Xr, method="sparse")]
    for Y in outputs:
        np.testing.assert_allclose(Y, expected, rtol=tol(dtype, 257), atol=tol(dtype, 257))
    with sparseprune.thread_limit(1):
        np.testing.assert_allclose(layer(X, method="sparse"), expected, rtol=tol(dtype, 257),
                                   atol=tol(dtype, 257))


@settings(max_examples=300, deadline=None)
@given(n_batch=st.integers(0, 1000), n_threads=st.integers(1, 8), parallel=st.booleans())
def test_forward_plan_splits_batches(n_batch, n_threads, parallel):
    # The rule of the docstring, checked as properties (not a copy of the code's output):
    # kernel calls cover the batch once, in order; in parallel, whole rounds of one 64-row
    # block per thread, then the rest split by weight rows; serially, blocks of 64 then the
    # rest in the narrowest width that holds it.
    plan = spmm_mod._forward_plan(n_batch, n_threads, parallel)
    assert [p[0] for p in plan] == ([0] + [p[1] for p in plan[:-1]] if plan else [])
    assert (plan[-1][1] if plan else 0) == n_batch

    def narrowest(rows):
        return min(w for w in (8, 16, 32, 64) if w >= rows)

    for b0, b1, width, n_it, by_rows in plan:
        assert b1 > b0 and width in (8, 16, 32, 64)
        if not parallel:
            assert n_it == 1 and not by_rows
            assert width == (64 if (b1 - b0) % 64 == 0 else narrowest(b1 - b0))
        elif not by_rows:
            assert n_it == n_threads and width == 64
            assert -(-(b1 - b0) // 64) % n_threads == 0  # every thread gets the same number of blocks
        else:
            assert n_it == n_threads and b1 == n_batch
            assert -(-(b1 - b0) // 64) < n_threads or (b1 - b0) <= 64  # fewer blocks than threads
            assert width == narrowest(min(b1 - b0, 64))
    if parallel and n_batch:
        assert sum(not p[4] for p in plan) <= 1 and sum(p[4] for p in plan) <= 1


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 64),
    n_feat=st.integers(0, 70),
    width=st.sampled_from([8, 16, 32, 64]),
    dtype=st.sampled_from([np.float32, np.float64]),
    layout=st.sampled_from(["C", "F", "strided"]),
    seed=st.integers(0, 2**16),
)
def test_pack_block_matches_numpy_transpose(n, n_feat, width, dtype, layout, seed):
    from sparseprune.kernels import spmm as K

    n = min(n, width)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2 * n_feat)).astype(dtype)
    x = x[:, ::2] if layout == "strided" else np.asarray(x[:, :n_feat], order=layout)
    before = x.copy()
    xp = np.full((n_feat, width), np.nan, dtype)  # stale contents must not survive in the padding
    K.pack_block(x, xp)
    expected = np.zeros((n_feat, width), dtype)
    expected[:, :n] = x.T
    np.testing.assert_array_equal(xp, expected)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("src_order, dst_order", [("C", "C"), ("C", "F"), ("F", "C"), ("F", "F")])
def test_transpose_tile_any_layout(dtype, src_order, dst_order):
    import numba
    from sparseprune.kernels._jit import transpose_tile

    @numba.njit
    def tile(s, r0, c0, d, r1, c1):
        transpose_tile(s, r0, c0, d, r1, c1)

    T = 16 if dtype == np.float32 else 8  # one 512-bit vector
    rng = np.random.default_rng(0)
    s = np.asarray(rng.standard_normal((40, 50)), dtype=dtype, order=src_order)
    d = np.zeros((45, 47), dtype, order=dst_order)
    tile(s, 3, 5, d, 7, 11)
    expected = np.zeros((45, 47), dtype)
    expected[7:7 + T, 11:11 + T] = s[3:3 + T, 5:5 + T].T
    np.testing.assert_array_equal(d, expected)


def test_skewed_rows_balanced_partition():
    # All nonzeros in a few rows: the nnz-balanced split must still cover every row once.
    rng = np.random.default_rng(0)
    Wd = np.zeros((500, 300), np.float32)
    Wd[[3, 4, 250, 499]] = rng.standard_normal((4, 300))
    W = sp.csr_array(Wd)
    X = rng.standard_normal((70, 300)).astype(np.float32)
    np.testing.assert_allclose(sparseprune.linear(X, W, method="sparse"), ref_linear(X, Wd), rtol=1e-4,
                               atol=1e-4)
    from sparseprune.kernels.spmm import balanced_row_starts
    for parts in (1, 2, 3, 8, 1000):
        rs = balanced_row_starts(W.indptr, parts)
        assert rs[0] == 0 and rs[-1] == 500 and np.all(np.diff(rs) > 0) and len(rs) <= parts + 1


def test_dense_weights_and_csr_matrix_and_int64_indices():
    rng = np.random.default_rng(1)
    W = random_csr(rng, 20, 30, 0.3)
    X = rng.standard_normal((9, 30)).astype(np.float32)
    expected = ref_linear(X, W.toarray())
    W64 = sp.csr_array((W.data, W.indices.astype(np.int64), W.indptr.astype(np.int64)), shape=W.shape)
    for w in (W.toarray(), sp.csr_matrix(W), W64, sparseprune.SparseLinear(W.toarray())):
        for method in ("auto", "sparse", "dense"):
            np.testing.assert_allclose(sparseprune.linear(X, w, method=method), expected, rtol=1e-5, atol=1e-5)


def test_inputs_are_never_modified():
    rng = np.random.default_rng(2)
    W = random_csr(rng, 70, 50, 0.5)
    # Unsorted + duplicate indices force the canonicalising path too.
    data = np.concatenate([W.data, [1.5, -2.0]]).astype(np.float32)
    indices = np.concatenate([W.indices, [3, 3]]).astype(np.int32)
    indptr = W.indptr.copy()
    indptr[-1] += 2
    Wn = sp.csr_array((data, indices, indptr), shape=W.shape)
    X = rng.standard_normal((65, 50)).astype(np.float32)
    X[4, 7] = np.nan
    b = rng.standard_normal(70).astype(np.float32)
    snapshots = [a.copy() for a in (X, b, Wn.data, Wn.indices, Wn.indptr, W.data, W.indices, W.indptr)]
    for w in (W, Wn):
        for method in ("auto", "sparse", "dense"):
            sparseprune.linear(X, w, b, "relu", method=method)
            sparseprune.SparseLinear(w, b, "tanh")(X, method=method)
    for before, after in zip(snapshots, (X, b, Wn.data, Wn.indices, Wn.indptr, W.data, W.indices, W.indptr)):
        np.testing.assert_array_equal(before, after)


def test_noncanonical_csr_is_canonicalised_on_a_copy():
    # Row 0: columns 2, 0, 2 (unsorted, duplicate); row 1: column 1.
    data = np.array([1.0, 2.0, 3.0, 4.0], np.float64)
    indices = np.array([2, 0, 2, 1], np.int32)
    indptr = np.array([0, 3, 4], np.int32)
    W = sp.csr_array((data, indices, indptr), shape=(2, 3))
    Wd = np.array([[2.0, 0.0, 4.0], [0.0, 4.0, 0.0]])
    X = np.array([[1.0, 10.0, 100.0], [0.5, 0.25, 0.125]])
    np.testing.assert_allclose(sparseprune.linear(X, W, method="sparse"), X @ Wd.T)
    layer = sparseprune.SparseLinear(W)
    assert layer.nnz == 3 and layer.weight.has_sorted_indices
    np.testing.assert_array_equal(W.indices, [2, 0, 2, 1])


def test_prepared_layer_snapshots_weights():
    rng = np.random.default_rng(3)
    W = random_csr(rng, 10, 12, 0.5, np.float64)
    layer = sparseprune.SparseLinear(W)
    X = rng.standard_normal((3, 12))
    expected = ref_linear(X, W.toarray())
    W.data[:] = 0  # the caller changes their matrix afterwards
    np.testing.assert_allclose(layer(X), expected, rtol=1e-12, atol=1e-12)
    assert layer.shape == (10, 12) and layer.dtype == np.float64
    assert "SparseLinear" in repr(layer)


# ---------------------------------------------------------------- NaN / inf
@pytest.mark.parametrize("method", ["sparse", "auto"])
@pytest.mark.parametrize("batch", [1, 2, 20, 70, 150])
@pytest.mark.parametrize("parallel", [False, pytest.param(True, marks=pytest.mark.parallel)])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # dense BLAS on NaN, on purpose
def test_nonfinite_inputs_propagate_like_dense(method, batch, parallel, monkeypatch):
    if parallel:  # flags from blocks and rows checked by different threads must all arrive
        monkeypatch.setitem(threads_mod.SERIAL_WORK, "spmm", 0)
        monkeypatch.setitem(threads_mod.SERIAL_WORK, "spmv", 0)
    rng = np.random.default_rng(4)
    W = random_csr(rng, 40, 30, 0.3)
    W.data[:5] = 0.0  # explicit stored zeros: 0 * inf is NaN in the dense product too
    X = rng.standard_normal((batch, 30)).astype(np.float32)
    X[0, 3] = np.inf
    if batch > 1:
        X[1, 5] = np.nan
    if batch > 2:
        X[2, 7] = -np.inf
        X[2, 9] = np.inf
    if batch > 64:
        X[66, 29] = np.nan  # in the second batch block
    if batch > 128:
        X[140, 0] = -np.inf  # in the block split by weight rows
    with np.errstate(invalid="ignore"):
        dense = X @ W.toarray().T  # BLAS: the behaviour users know
    Y = sparseprune.linear(X, W, method=method)
    layer = sparseprune.SparseLinear(W)  # the prepared layer too (16-bit columns, cached parts)
    for _ in range(3):  # the first call settles; later ones take its direct path (SparseLinear._hot)
        Yl = layer(X, method=method)
        np.testing.assert_array_equal(np.isnan(Yl), np.isnan(dense))
        np.testing.assert_array_equal(np.isinf(Yl), np.isinf(dense))
    np.testing.assert_array_equal(np.isnan(Y), np.isnan(dense))
    np.testing.assert_array_equal(np.isinf(Y), np.isinf(dense))
    finite = np.isfinite(dense)
    np.testing.assert_allclose(Y[finite], dense[finite], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- bad input
def test_shape_mismatch_names_both_shapes():
    W = sp.csr_array(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(3, 6\).*5"):
        sparseprune.linear(np.ones((3, 6), np.float32), W)


@pytest.mark.parametrize("X", [np.ones(5, np.float32), np.ones((2, 3, 5), np.float32)])
def test_wrong_ndim(X):
    with pytest.raises(ValueError, match="2-D"):
        sparseprune.linear(X, sp.csr_array(np.ones((4, 5), np.float32)))


def test_dtype_mismatch_says_what_to_cast():
    W = sp.csr_array(np.ones((4, 5), np.float64))
    with pytest.raises(TypeError, match=r"astype\(np.float64\)"):
        sparseprune.linear(np.ones((3, 5), np.float32), W)
    with pytest.raises(TypeError, match="astype"):
        sparseprune.linear(np.ones((3, 5), np.int64), W)
    with pytest.raises(TypeError, match="astype"):
        sparseprune.linear(np.ones((3, 5)), sp.csr_array(np.ones((4, 5), np.int32)))


@pytest.mark.parametrize("parallel", [False, pytest.param(True, marks=pytest.mark.parallel)])
@pytest.mark.parametrize("dtype, index", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("batch", [1, 2, 40])  # the SpMV, the row kernel, the SpMM
def test_one_off_call_checks_inside_the_kernel(monkeypatch, parallel, dtype, index, batch):
    # linear(X, W_csr) trusts scipy's cached canonical flag and checks the index bounds
    # inside the kernel (batch 1) or the 16-bit copy of the indices (batches): a matrix
    # corrupted after scipy cached the flag must still give a clear error, never a
    # wrong answer or a crash.
    if parallel:
        monkeypatch.setitem(threads_mod.SERIAL_WORK, "spmv", 0)
        monkeypatch.setitem(threads_mod.SERIAL_WORK, "spmm", 0)
    rng = np.random.default_rng(12)
    W = random_csr(rng, 90, 70, 0.2, dtype)
    W.indices, W.indptr = W.indices.astype(index), W.indptr.astype(index)
    b = rng.standard_normal(90).astype(dtype)
    x = rng.standard_normal((batch, 70)).astype(dtype)
    assert W.has_canonical_format  # scipy computes and caches the flag
    tol = 1e-4 if dtype == np.float32 else 1e-10
    method = "sparse" if batch > 1 else "auto"  # batches: the cost model might expand W (dense)
    for act in ACTS:
        np.testing.assert_allclose(sparseprune.linear(x, W, b, act, method=method), ref_linear(x, W.toarray(), b, act),
                                   rtol=tol, atol=tol)
    np.testing.assert_allclose(sparseprune.linear(np.asfortranarray(x), W, method=method), ref_linear(x, W.toarray()),
                               rtol=tol, atol=tol)
    for bad in (70, 10**6, -1):
        C = W.copy()
        assert C.has_canonical_format
        C.indices[5] = bad
        with pytest.raises(ValueError, match="outside"):
            sparseprune.linear(x, C, method=method)
    C = W.copy()
    assert C.has_canonical_format
    C.indptr[40] = C.indptr[42] + 3  # decreasing
    with pytest.raises(ValueError, match="malformed"):
        sparseprune.linear(x, C, method=method)
    # The caller's matrix is never modified.
    before = (W.data.copy(), W.indices.copy(), W.indptr.copy())
    sparseprune.linear(x, W, method=method)
    for a, c in zip(before, (W.data, W.indices, W.indptr)):
        np.testing.assert_array_equal(a, c)
    # NaN and inf in x propagate as in the dense product (through the validated path).
    x2 = x.copy()
    x2[0, 3] = np.inf
    with np.errstate(invalid="ignore"):  # the dense reference (and a dense path) warn on inf * 0
        want = x2.astype(np.float64) @ W.toarray().astype(np.float64).T
        got = sparseprune.linear(x2, W)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_out_of_range_and_malformed_csr_rejected_before_kernels():
    data = np.ones(2, np.float32)
    X = np.ones((2, 3), np.float32)
    bad_col = sp.csr_array((data, np.array([0, 3], np.int32), np.array([0, 1, 2], np.int32)), shape=(2, 3),
                           copy=False)
    neg_col = sp.csr_array((data, np.array([0, -1], np.int32), np.array([0, 1, 2], np.int32)), shape=(2, 3))
    for W in (bad_col, neg_col):
        with pytest.raises(ValueError, match="outside"):
            sparseprune.linear(X, W, method="sparse")
        with pytest.raises(ValueError, match="outside"):
            sparseprune.SparseLinear(W)
    bad_ptr = sp.csr_array((data, np.array([0, 1], np.int32), np.array([0, 1, 2], np.int32)), shape=(2, 3))
    bad_ptr.indptr[1] = 5  # points past the end
    with pytest.raises(ValueError, match="malformed"):
        sparseprune.linear(X, bad_ptr)


def test_other_bad_arguments():
    W = sp.csr_array(np.ones((4, 5), np.float32))
    X = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match="'activation'"):
        sparseprune.linear(X, W, activation="gelu")
    with pytest.raises(ValueError, match="'method'"):
        sparseprune.linear(X, W, method="fast")
    with pytest.raises(ValueError, match=r"\(4,\)"):
        sparseprune.linear(X, W, bias=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="tocsr"):
        sparseprune.linear(X, sp.coo_array(np.ones((4, 5), np.float32)))
    with pytest.raises(TypeError, match="dense"):
        sparseprune.linear(sp.csr_array(X), W)
    with pytest.raises(ValueError, match="SparseLinear"):
        sparseprune.linear(X, sparseprune.SparseLinear(W), bias=np.ones(4, np.float32))


# ---------------------------------------------------------------- dispatcher
def _table(dense_cost, sparse_cost):
    batches = cal.BATCHES
    return {"source": "test", "dense_per_mac": {str(b): dense_cost * b for b in batches},
            "sparse_per_nnz": {str(b): sparse_cost * b for b in batches}}


def test_cost_model_follows_the_calibration_table():
    # The cost model's verdict (the measuring dispatcher's prior), asked directly.
    rng = np.random.default_rng(5)
    W = random_csr(rng, 64, 64, 0.25)
    layer = sparseprune.SparseLinear(W)

    def prior(batch, weights="prepared"):
        return spmm_mod._decide(batch, (64, 64), W.nnz, method="auto", weights=weights)

    # Batch 64 runs the SpMM kernels (64 x 1024 nonzeros > ROWS_MAX_WORK).
    # sparse nonzero = 2 dense multiply-adds: at 25% density sparse costs 0.5x dense -> sparse.
    sparseprune.set_calibration(_table(1e-9, 2e-9))
    d = prior(64)
    assert d.path == "sparse" and "spmm_forward" in d.kernel and "0.50x" in d.reason
    # sparse nonzero = 4 dense multiply-adds: 1.0x > 0.85 safety threshold -> dense.
    sparseprune.set_calibration(_table(1e-9, 4e-9))
    d = prior(64)
    assert d.path == "dense" and "safety" in d.reason and d.kernel.startswith("numpy")
    np.testing.assert_allclose(layer(X := rng.standard_normal((64, 64)).astype(np.float32)),
                               ref_linear(X, W.toarray()), rtol=1e-5, atol=1e-5)
    # Batch 1 picks the SpMV kernel.
    sparseprune.set_calibration(_table(1e-9, 1e-9))
    assert "spmv" in sparseprune.explain(1, W).kernel
    # Bare csr: the dense side pays for expanding W, so sparse wins more often.
    sparseprune.set_calibration(_table(1e-9, 3.44e-9))  # 0.86x prepared, 0.85x when W must be expanded
    assert prior(64).path == "dense"
    assert prior(64, "csr").path == "sparse"
    # Fixed costs per input column and per output row count on the SpMM path:
    # per unit x batch: 64 x 64 dense = 4096 x 1e-9; sparse 1024 nnz x 2e-9 plus 64 rows x 2e-8 -> 0.81x.
    table = _table(1e-9, 2e-9)
    table["out_per_row"] = {str(b): 2e-8 * b for b in cal.BATCHES}
    sparseprune.set_calibration(table)
    assert "0.81x" in prior(64).reason
    table["pack_per_col"] = {str(b): 1e-8 * b for b in cal.BATCHES}
    sparseprune.set_calibration(table)
    assert prior(64).path == "dense"  # plus 64 columns x 1e-8: 0.97x
    # 16 rows run the SpMV row kernel: 16 x (the batch-1 cost per nonzero, plus ROW_PAIR_S per
    # weight row), whatever the batched costs: 16 x (1024 x 2e-9 + 64 x 1e-9) / (16 x 4096 x 1e-9) = 0.52x.
    d = prior(16)
    assert "spmv_rows" in d.kernel and "0.52x" in d.reason and d.path == "sparse"


def test_cost_model_only_rules_out_hopeless_candidates():
    rng = np.random.default_rng(5)
    W = random_csr(rng, 64, 64, 0.25)
    # sparse predicted 0.5x dense: both measured, sparse first.
    sparseprune.set_calibration(_table(1e-9, 2e-9))
    assert sparseprune.SparseLinear(W)._choice_for(16, 2).candidates == ("sparse", "dense")
    # sparse predicted 8x faster: dense never measured.
    sparseprune.set_calibration(_table(1e-9, 0.5e-9))
    ch = sparseprune.SparseLinear(W)._choice_for(16, 2)
    assert ch.candidates == ("sparse",) and ch.chosen == "sparse"
    # sparse predicted 8x slower: sparse never measured.
    sparseprune.set_calibration(_table(1e-9, 32e-9))
    ch = sparseprune.SparseLinear(W)._choice_for(16, 2)
    assert ch.candidates == ("dense",) and ch.chosen == "dense"
    # sparse predicted about 3.2x faster (batch 16, the row kernel: 16 x 4096 x 1e-9 against
    # 16 x (1024 x 1.2e-9 + 64 x 1e-9); batch 64, the SpMM kernels: 3.3x). On the row kernel only
    # HOPELESS (4x) rules a path out; on the SpMM path dense is not measured from
    # HOPELESS_DENSE_SPMM (2.5x) on.
    sparseprune.set_calibration(_table(1e-9, 1.2e-9))
    assert sparseprune.SparseLinear(W)._choice_for(16, 2).candidates == ("sparse", "dense")
    assert sparseprune.SparseLinear(W)._choice_for(64, 2).candidates == ("sparse",)
    # ... but sparse predicted 3.25x slower on the SpMM path is still measured (sparse is left
    # unmeasured only from HOPELESS).
    sparseprune.set_calibration(_table(1e-9, 13e-9))
    assert sparseprune.SparseLinear(W)._choice_for(64, 2).candidates == ("sparse", "dense")


@pytest.mark.dispatcher
def test_measuring_dispatcher_settles_and_every_call_is_right():
    rng = np.random.default_rng(8)
    W = random_csr(rng, 300, 200, 0.1)
    b = rng.standard_normal(300).astype(np.float32)
    layer = sparseprune.SparseLinear(W, b, "relu")
    sparseprune.set_calibration(_table(1e-9, 8e-9))  # sparse predicted 0.8x dense: both paths measured
    ch = layer._choice_for(16, sparseprune.get_num_threads())
    assert ch.candidates == ("sparse", "dense")
    X = rng.standard_normal((16, 200)).astype(np.float32)
    ref = ref_linear(X, W.toarray(), b, "relu")
    paths = []
    # Until settled: sparse first, dense once the calls have paid for its dense copy (or at once
    # where sparse measures slower than the cost model's dense price), then a confirming round
    # where the two are close; by time, not call count (the budget is a share of the calls' time).
    deadline = time.perf_counter() + 10
    while (not ch.settled or len(paths) < 10) and time.perf_counter() < deadline:
        np.testing.assert_allclose(layer(X), ref, rtol=1e-4, atol=1e-4)
        paths.append(layer.last_path)
    for _ in range(10):
        np.testing.assert_allclose(layer(X), ref, rtol=1e-4, atol=1e-4)
        paths.append(layer.last_path)
    assert ch.settled and paths[0] == "sparse" and {"dense", "sparse"} <= set(paths)
    assert ch.chosen in ("dense", "sparse") and ch.state().startswith("measured")
    assert set(paths[-10:]) == {ch.chosen}  # then the winner only
    assert len(ch.measured) == 2
    d = layer.explain(X)
    assert d.path == ch.chosen and "measured" in d.reason
    assert d.measured_dense_s > 0 and d.measured_sparse_s > 0
    # Other batch sizes in the same bucket share the measurement; other buckets have their own.
    assert layer._choice_for(16, sparseprune.get_num_threads()) is layer._choice_for(
        spmm_mod.bucket_of(31), sparseprune.get_num_threads())
    assert layer._choice_for(spmm_mod.bucket_of(32), sparseprune.get_num_threads()) is not ch
    # Frozen: no more measuring or re-checking.
    layer.freeze()
    assert ch.frozen and layer._frozen_choices()[f"16:{sparseprune.get_num_threads()}"] == ch.chosen


@pytest.mark.parametrize("forced", ["dense", "sparse"])
def test_environment_variable_forces_the_path(monkeypatch, forced):
    monkeypatch.setenv("SPARSEPRUNE_METHOD", forced)
    rng = np.random.default_rng(9)
    W = random_csr(rng, 50, 40, 0.2)
    layer = sparseprune.SparseLinear(W)
    X = rng.standard_normal((8, 40)).astype(np.float32)
    for _ in range(10):
        np.testing.assert_allclose(layer(X), ref_linear(X, W.toarray()), rtol=1e-5, atol=1e-5)
        assert layer.last_path == forced
    assert layer.explain(X).path == forced


def test_dense_array_weights_stay_dense_and_forced_methods():
    W = np.eye(8, dtype=np.float32)
    d = sparseprune.explain(4, W)
    assert d.path == "dense" and "SparseLinear" in d.reason
    assert sparseprune.explain(4, W, method="sparse").path == "sparse"
    assert sparseprune.explain(np.ones((4, 8)), sp.csr_array(W), method="dense").path == "dense"
    assert str(d).startswith("dense")
    assert d.to_dict()["batch"] == 4
    with pytest.raises(ValueError, match="2-D"):
        sparseprune.explain(np.ones(3), W)


def test_injected_table_is_validated():
    with pytest.raises(ValueError, match="dense_per_mac"):
        sparseprune.set_calibration({"dense_per_mac": {}})


# ---------------------------------------------------------------- calibration
def test_default_table_without_calibrate_and_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    table = cal.get_table(2)
    assert table["source"] == "default"
    X = np.ones((4, 8), np.float32)
    sparseprune.SparseLinear(sp.csr_array(np.eye(8, dtype=np.float32)))(X)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "home").exists()  # nothing written unasked
    assert cal.cache_file() == tmp_path / "cache" / "calibration.json"
    monkeypatch.delenv("SPARSEPRUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cal.cache_dir() == tmp_path / "xdg" / "sparseprune"


def test_calibrate_measures_caches_and_reloads(monkeypatch):
    # A tiny, fast calibration: the real one uses a 2048 x 4096 layer.
    monkeypatch.setattr(cal, "CAL_ROWS", 64)
    monkeypatch.setattr(cal, "CAL_COLS", 96)
    table = sparseprune.calibrate(force=True)
    assert table["source"].startswith("measured")
    for name in ("dense_per_mac", "sparse_per_nnz", "pack_per_col", "out_per_row"):
        assert set(table[name]) == {str(b) for b in cal.BATCHES}
        assert all(v > 0 and math.isfinite(v) for v in table[name].values())
    stored = json.loads(cal.cache_file().read_text())
    assert table in stored.values()
    cal.forget()
    # The dispatcher never reads the disk cache unasked: the built-in table until calibrate() is called.
    assert cal.get_table(sparseprune.get_num_threads())["source"] == "default"
    assert sparseprune.calibrate() == table  # read back from the cache: not re-measured
    assert cal.get_table(sparseprune.get_num_threads()) == table
    # A corrupt cache file is ignored, never fatal: calibrate() measures again.
    cal.cache_file().write_text("{not json")
    cal.forget()
    assert sparseprune.calibrate()["source"].startswith("measured")


def test_interpolation_between_batches():
    t = _table(1e-9, 2e-9)
    assert cal.per_unit(t, "dense_per_mac", 16) == pytest.approx(16e-9)
    assert cal.per_unit(t, "dense_per_mac", 24) == pytest.approx(24e-9, rel=1e-6)
    assert cal.per_unit(t, "sparse_per_nnz", 512) == pytest.approx(1024e-9)


# ---------------------------------------------------------------- threads
def _in_threads(work, n: int = 8) -> list:
    """Run ``work(k)`` for k in range(n) on n threads started together; the exceptions they raised."""
    errors: list = []
    start = threading.Barrier(n)

    def run(k):
        try:
            start.wait()
            work(k)
        except Exception as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parallel
def test_eight_python_threads_same_results(monkeypatch):
    monkeypatch.setitem(threads_mod.SERIAL_WORK, "spmm", 0)  # every call launches parallel kernels
    monkeypatch.setitem(threads_mod.SERIAL_WORK, "spmv", 0)
    rng = np.random.default_rng(6)
    W = random_csr(rng, 400, 300, 0.3)
    layer = sparseprune.SparseLinear(W, rng.standard_normal(400).astype(np.float32), "relu")
    inputs = [rng.standard_normal((b, 300)).astype(np.float32) for b in (1, 7, 16, 33, 64, 100, 128, 200)]
    # The prepared layer and the one-off call sum in different orders (tiled
    # vs plain CSR), so each is compared with its own single-threaded result.
    expected = [(layer(x, method="sparse"), sparseprune.linear(x, W, layer.bias, "relu", method="sparse"))
                for x in inputs]
    results: list = [None] * 8

    def work(k):
        out = []
        for _ in range(5):
            out.append(layer(inputs[k], method="sparse"))
            out.append(sparseprune.linear(inputs[k], W, layer.bias, "relu", method="sparse"))
        results[k] = out

    assert not _in_threads(work)
    for k in range(8):
        for i, Y in enumerate(results[k]):
            np.testing.assert_array_equal(Y, expected[k][i % 2])


@pytest.mark.parametrize("shape, dtype", [((3, 5, 64), np.float32), ((1, 7, 8), np.float64), ((0, 4, 16), np.float32)])
def test_packed_input_buffer_is_cache_line_aligned(shape, dtype):
    # The SpMM inner loop loads xp[blk, j, :] runs: a 16-byte offset (numpy's
    # usual start for large arrays) makes every 64-byte run straddle two lines.
    a = spmm_mod._aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    if a.size:  # numpy may hand an empty view any address; nothing is loaded from it
        assert a.ctypes.data % 64 == 0
    a[...] = 1  # the whole buffer is usable
    assert a.sum() == math.prod(shape)
    # Many allocations, so a plain np.empty (16-byte aligned) could not pass by luck.
    assert all(spmm_mod._aligned_empty((k, 64), dtype).ctypes.data % 64 == 0 for k in range(1, 40))


def test_single_thread_blas_is_counted_and_restored():
    import threading

    from threadpoolctl import threadpool_info

    from sparseprune.inference.threads import single_thread_blas

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):  # BLAS only: numba may have one thread
        before = blas_threads()
        with single_thread_blas():
            assert set(blas_threads()) <= {1}
            with single_thread_blas():
                pass
            assert set(blas_threads()) <= {1}  # the inner exit must not restore early
        assert blas_threads() == before

        barrier = threading.Barrier(8)

        def worker():
            with single_thread_blas():
                barrier.wait()  # all eight inside at once
            for _ in range(50):
                with single_thread_blas():
                    pass
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert blas_threads() == before


@pytest.mark.dispatcher
def test_measuring_and_settled_calls_from_many_threads(monkeypatch):
    # Eight threads call one layer at once, each with its own batch size, while the dispatcher
    # measures (both paths run), settles and then takes the settled calls' direct path: every
    # answer matches the reference, nothing raises, and every batch size ends up settled.
    monkeypatch.setenv("SPARSEPRUNE_DISPATCH", "measure")
    monkeypatch.setattr(dispatch_mod, "CONFIRM_AFTER_S", 0.0)  # the confirming round happens too
    rng = np.random.default_rng(21)
    W = random_csr(rng, 120, 90, 0.2)
    b = rng.standard_normal(120).astype(np.float32)
    layer = sparseprune.SparseLinear(W, b, "relu")
    sparseprune.set_calibration(_table(1e-9, 8e-9))  # both paths measured at every batch
    inputs = [rng.standard_normal((n, 90)).astype(np.float32) for n in (1, 1, 2, 3, 16, 16, 40, 130)]
    expected = [ref_linear(x, W.toarray(), b, "relu") for x in inputs]

    def work(k):
        for _ in range(150):
            np.testing.assert_allclose(layer(inputs[k]), expected[k], rtol=1e-4, atol=1e-4)

    errors = _in_threads(work)
    assert not errors, errors[:1]
    n = sparseprune.get_num_threads()
    for x, want in zip(inputs, expected):
        ch = layer._choice_for(spmm_mod.bucket_of(x.shape[0]), n)
        # A confirming round may still be under way: finish it here (after dense calls, the
        # sparse path's calls within dispatch.BLAS_SPIN_S are warm-up, so give it time, not calls).
        deadline = time.perf_counter() + 5.0
        while not ch.settled and time.perf_counter() < deadline:
            np.testing.assert_allclose(layer(x), want, rtol=1e-4, atol=1e-4)
        assert ch.settled and ch.chosen in ("dense", "sparse") and set(ch.measured) == {"dense", "sparse"}


def test_prepared_layer_dense_fallback_matches_reference():
    # A small dense fallback among sparse layers runs BLAS on one thread; same numbers.
    rng = np.random.default_rng(11)
    W = random_csr(rng, 10, 300, 0.05)
    X = rng.standard_normal((64, 300)).astype(np.float32)
    layer = sparseprune.SparseLinear(W, np.ones(10, np.float32), "relu")
    expected = ref_linear(X, W.toarray(), np.ones(10), "relu")
    for among_sparse in (False, True):
        np.testing.assert_allclose(layer(X, method="dense", among_sparse=among_sparse), expected,
                                   rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- tiled layout
@settings(max_examples=40, deadline=None)
@given(
    n_out=st.integers(1, 30),
    n_in=st.integers(1, 50),
    density=st.sampled_from([0.05, 0.3, 0.8, 1.0]),
    rows_per_chunk=st.integers(1, 9),
    min_panel=st.sampled_from([1, 2, 4, 8]),
    pad_to=st.integers(1, 4),
    batch=st.sampled_from([2, 5, 8, 16, 31, 64, 65, 130]),
    dtype=st.sampled_from([np.float32, np.float64]),
    activation=st.sampled_from(ACTS),
    seed=st.integers(0, 2**16),
)
def test_tiled_layout_matches_reference(n_out, n_in, density, rows_per_chunk, min_panel, pad_to, batch, dtype,
                                        activation, seed):
    # Small chunks and panels put many chunk and panel boundaries (and padded
    # segments) inside small matrices, which the default sizes never would.
    rng = np.random.default_rng(seed)
    W = random_csr(rng, n_out, n_in, density, dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    X = rng.standard_normal((batch, n_in)).astype(dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spmm_mod, "ROWS_PER_CHUNK", rows_per_chunk)
        mp.setattr(spmm_mod, "BLOCK_ROWS_PER_CHUNK", rows_per_chunk + 3)
        mp.setattr(spmm_mod, "MIN_PANEL", min_panel)
        mp.setattr(spmm_mod, "PANEL_NNZ", 1)
        mp.setattr(spmm_mod, "PAD_TO", pad_to)
        mp.setitem(threads_mod.SERIAL_WORK, "spmm", 0 if seed % 2 else 10**12)
        layer = sparseprune.SparseLinear(W, b, activation)
        t = layer._tiled()
        Y = layer(X, method="sparse")
    # The layout itself, decoded independently: every stored weight once, in its
    # row and column; padding entries are zeros.
    Wd = W.toarray()
    rebuilt = np.zeros_like(Wd)
    n_chunks = -(-n_out // rows_per_chunk)
    assert t.seg.size == n_chunks * t.n_panels * rows_per_chunk + 1 and np.all(np.diff(t.seg) % pad_to == 0)
    for c in range(n_chunks):
        for q in range(t.n_panels):
            for r in range(rows_per_chunk):
                s = (c * t.n_panels + q) * rows_per_chunk + r
                lo, hi = t.seg[s], t.seg[s + 1]
                if lo == hi:
                    continue
                row = c * rows_per_chunk + r
                cols = q * t.panel + t.cols[lo:hi].astype(np.int64)
                assert row < n_out and np.all(cols < n_in)
                np.add.at(rebuilt[row], cols, t.data[lo:hi])
    np.testing.assert_array_equal(rebuilt, Wd)
    np.testing.assert_allclose(Y, ref_linear(X, Wd, b, activation), rtol=tol(dtype, n_in), atol=tol(dtype, n_in))


def test_wide_vector_kernels_match_plain_loops():
    # The 512-bit attribute must not change results: same kernel, default
    # width (here: a plain numba function without the hook) as reference.
    from sparseprune.kernels import spmm as K

    rng = np.random.default_rng(10)
    W = random_csr(rng, 300, 200, 0.2)
    X = rng.standard_normal((64, 200)).astype(np.float32)
    layer = sparseprune.SparseLinear(W)
    t = layer._tiled()
    xp = spmm_mod._aligned_empty((1, 200, 64), np.float32)
    K.pack_block(X, xp[0])
    y = np.empty((64, 300), np.float32)
    acc = np.empty((min(t.rows_per_chunk, 300), 64), np.float32)
    K.spmm_kernel(64)(t.data, t.cols, t.seg, t.n_panels, t.rows_per_chunk, t.panel, xp,
                      layer.bias, 0, 0, t.chunk_ptr.size - 1, y, acc)
    np.testing.assert_allclose(y, (W @ X.T).T, rtol=1e-5, atol=1e-5)


def test_packed_buffers_are_reused_per_thread_but_not_when_huge(monkeypatch):
    a = spmm_mod._scratch_array(0, (2, 100, 64), np.float32)
    b = spmm_mod._scratch_array(0, (1, 50, 64), np.float32)
    assert np.shares_memory(a, b) and b.ctypes.data % 64 == 0  # same thread, same slot: reused
    other = {}
    t = threading.Thread(target=lambda: other.setdefault("x", spmm_mod._scratch_array(0, (1, 50, 64), np.float32)))
    t.start()
    t.join()
    assert not np.shares_memory(other["x"], b)  # another thread has its own
    monkeypatch.setattr(spmm_mod, "SCRATCH_MAX_BYTES", 1000)
    big = spmm_mod._scratch_array(0, (1, 50, 64), np.float32)
    assert not np.shares_memory(big, b) and big.shape == (1, 50, 64) and big.ctypes.data % 64 == 0


@pytest.mark.parametrize("batch", [1, 3])
def test_relu_of_minus_inf_is_zero_like_np_maximum(batch):
    # -inf (from an infinite input or from overflow) must give 0 after relu, as
    # np.maximum does, not NaN; the next layer must then carry on from the 0.
    W1 = sp.csr_array(np.array([[1e38, 1e38, 0], [0, 0, 1]], np.float32))
    W2 = sp.csr_array(np.array([[1, 1]], np.float32))
    X = np.tile(np.array([-10, -10, 1], np.float32), (batch, 1))
    l1 = sparseprune.SparseLinear(W1, activation="relu")
    l2 = sparseprune.SparseLinear(W2)
    with np.errstate(over="ignore", invalid="ignore"):
        dense = np.maximum(X @ W1.toarray().T, 0) @ W2.toarray().T
        h = l1(X, method="sparse")
        np.testing.assert_array_equal(h, np.maximum(X @ W1.toarray().T, 0))
        np.testing.assert_array_equal(l2(h, method="sparse"), dense)
    Xi = np.array([[-np.inf, 1.0, 1.0]], np.float32).repeat(batch, 0)
    with np.errstate(invalid="ignore"):
        ref = np.maximum(Xi @ W1.toarray().T, 0)
    np.testing.assert_array_equal(l1(Xi, method="sparse"), ref)


def test_layer_keeps_its_own_bias_copy():
    b = np.ones(3, np.float32)
    layer = sparseprune.SparseLinear(sp.csr_array(np.eye(3, dtype=np.float32)), b)
    b[:] = 5
    np.testing.assert_array_equal(layer(np.zeros((2, 3), np.float32), method="sparse"), np.ones((2, 3)))


def test_kernel_variant_key_sets_apart_read_only_weights_and_bias():
    # The fused kernel's call key must change when the caller's weights or
    # bias are read-only (numba types them apart): otherwise such a call would
    # compile a variant without the SLP vectoriser (slow, and cached on disk).
    from sparseprune.kernels import spmm as K

    rng = np.random.default_rng(11)
    W = random_csr(rng, 50, 40, 0.3)
    X = rng.standard_normal((64, 40)).astype(np.float32)
    b = rng.standard_normal(50).astype(np.float32)
    fn = K.spmm_forward(64, parallel=False)
    expected = ref_linear(X, W.toarray(), b)
    with sparseprune.thread_limit(1):
        np.testing.assert_allclose(sparseprune.linear(X, W, b, method="sparse"), expected, rtol=1e-4, atol=1e-4)
        seen = len(fn._seen)
        b_ro = b.copy()
        b_ro.setflags(write=False)
        np.testing.assert_allclose(sparseprune.linear(X, W, b_ro, method="sparse"), expected, rtol=1e-4,
                                   atol=1e-4)
        assert len(fn._seen) == seen + 1
        data = W.data.copy()
        data.setflags(write=False)
        W_ro = sp.csr_array((data, W.indices, W.indptr), shape=W.shape)
        np.testing.assert_allclose(sparseprune.linear(X, W_ro, b, method="sparse"), expected, rtol=1e-4,
                                   atol=1e-4)
        assert len(fn._seen) == seen + 2


def test_dispatch_policy_model_takes_the_cost_models_path_without_measuring(monkeypatch):
    # The test suite runs with SPARSEPRUNE_DISPATCH=model (tests/conftest.py); here both settings.
    rng = np.random.default_rng(11)
    W = random_csr(rng, 300, 200, 0.1)
    X = rng.standard_normal((16, 200)).astype(np.float32)
    threads = sparseprune.get_num_threads()
    for table, want in (((1e-9, 3e-8), "dense"), ((1e-9, 5e-9), "sparse")):
        # sparse predicted 3x slower, then 2x faster: within HOPELESS (4x) and HOPELESS_DENSE_SPMM
        # (2.5x), so both are candidates
        sparseprune.set_calibration(_table(*table))
        try:
            monkeypatch.setenv("SPARSEPRUNE_DISPATCH", "model")
            layer = sparseprune.SparseLinear(W)
            ch = layer._choice_for(16, threads)
            assert ch.candidates == ("sparse", "dense") and ch.chosen == want and ch.state() == "cost model"
            for _ in range(40):
                np.testing.assert_allclose(layer(X), X @ W.toarray().T, rtol=1e-4, atol=1e-4)
                assert layer.last_path == want
            assert ch.measured == {} and ch.n_remeasured == 0
            monkeypatch.setenv("SPARSEPRUNE_DISPATCH", "measure")
            ch = sparseprune.SparseLinear(W)._choice_for(16, threads)
            # Measures: sparse runs first (timed), dense waits until the calls have paid for it.
            assert ch.state() != "cost model" and not ch.settled and ch.next() == "sparse"
        finally:
            sparseprune.set_calibration(None)
    monkeypatch.setenv("SPARSEPRUNE_DISPATCH", "fastest")
    with pytest.raises(ValueError, match="SPARSEPRUNE_DISPATCH"):
        sparseprune.SparseLinear(W)(X)
