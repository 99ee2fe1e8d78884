"""Masking kernels against the plain-numpy references in naive.py, and against scipy."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from naive import ref_global, ref_magnitude, ref_magnitude_rows, ref_nm, ref_threshold

import sparseprune
from sparseprune._validation import index_dtype


def assert_canonical_equal(S, expected, dtype):
    assert isinstance(S, sp.csr_array)
    assert S.dtype == dtype
    assert S.shape == expected.shape
    S.check_format(full_check=True)
    assert S.indices.dtype == np.int32 and S.indptr.dtype == np.int32
    # canonical: sorted, no duplicates, no stored zeros
    assert np.all(S.data != 0)
    fresh = sp.csr_array(S.toarray())
    assert np.array_equal(S.indptr, fresh.indptr) and np.array_equal(S.indices, fresh.indices)
    np.testing.assert_array_equal(S.toarray(), expected)


# ---------------------------------------------------------------- strategies
# A small value pool forces ties, zeros and signs to collide.
_pool = st.sampled_from([0.0, -0.0, 0.25, -0.25, 0.5, 1.0, -1.0, 2.0, 1e-30, -3.5])
_any = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def matrices(draw, max_side=12):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=max_side))
    elements = draw(st.sampled_from([_pool, _any]))
    W = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["C", "F", "strided", "readonly"]))
    if layout == "F":
        W = np.asfortranarray(W)
    elif layout == "strided":
        W = np.repeat(np.repeat(W, 2, axis=0), 2, axis=1)[::2, ::2]
    elif layout == "readonly":
        W = W.copy()
        W.flags.writeable = False
    return W


_sparsity = st.floats(0.0, 0.999, exclude_max=False)


# ---------------------------------------------------------------- properties
@settings(max_examples=150, deadline=None)
@given(W=matrices(), t=st.one_of(_pool.map(abs), st.floats(0, 10)))
def test_threshold_matches_reference(W, t):
    before = W.copy()
    S = sparseprune.threshold_mask(W, t)
    assert_canonical_equal(S, ref_threshold(W, t), W.dtype)
    np.testing.assert_array_equal(W, before)


@settings(max_examples=100, deadline=None)
@given(W=matrices(), t=_pool.map(abs))
def test_threshold_matches_scipy_baseline(W, t):
    # t is representable in both dtypes here, so numpy's comparison is exact too.
    baseline = sp.csr_array(np.where(np.abs(W) < t, 0, W))
    S = sparseprune.threshold_mask(W, t)
    assert (S != baseline).nnz == 0
    assert S.nnz == baseline.count_nonzero()


@settings(max_examples=150, deadline=None)
@given(W=matrices(), s=_sparsity)
def test_magnitude_tensor_exact_count(W, s):
    before = W.copy()
    S = sparseprune.magnitude_prune(W, s)
    expected = ref_magnitude(W, s)
    assert_canonical_equal(S, expected, W.dtype)
    k = int(round(s * W.size))
    assert S.nnz == min(W.size - k, np.count_nonzero(expected))
    assert W.size - S.nnz >= k
    np.testing.assert_array_equal(W, before)


@settings(max_examples=150, deadline=None)
@given(W=matrices(), s=_sparsity)
def test_magnitude_row_scope(W, s):
    S = sparseprune.magnitude_prune(W, s, scope="row")
    assert_canonical_equal(S, ref_magnitude_rows(W, s), W.dtype)


@settings(max_examples=100, deadline=None)
@given(mats=st.lists(matrices(max_side=8), min_size=1, max_size=4), s=_sparsity)
def test_global_single_cutoff(mats, s):
    mats = [M.astype(mats[0].dtype) for M in mats]
    out = sparseprune.global_magnitude_prune(mats, s)
    for S, expected, M in zip(out, ref_global(mats, s), mats):
        assert_canonical_equal(S, expected, M.dtype)


@settings(max_examples=150, deadline=None)
@given(W=matrices(), nm=st.tuples(st.integers(1, 8), st.integers(1, 8)).filter(lambda p: p[0] <= p[1]))
def test_nm_matches_reference(W, nm):
    n, m = nm
    S = sparseprune.nm_prune(W, n, m)
    assert_canonical_equal(S, ref_nm(W, n, m), W.dtype)


@pytest.mark.parallel
# ---------------------------------------------------------------- larger matrices: the parallel kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_parallel_path_large(dtype, order):
    rng = np.random.default_rng(1)
    # rounding creates many ties at the cut-off, the hard case for exact counts
    W = np.round(rng.standard_normal((257, 301)), 1).astype(dtype, order=order)
    assert W.size >= 1 << 15
    assert_canonical_equal(sparseprune.threshold_mask(W, 0.7), ref_threshold(W, 0.7), W.dtype)
    for s in (0.0, 0.5, 0.9, 0.99):
        assert_canonical_equal(sparseprune.magnitude_prune(W, s), ref_magnitude(W, s), W.dtype)
        assert_canonical_equal(sparseprune.magnitude_prune(W, s, scope="row"), ref_magnitude_rows(W, s), W.dtype)
    mats = [W, W[:100].copy() * 2, W[:, :50].copy()]
    for S, expected in zip(sparseprune.global_magnitude_prune(mats, 0.8), ref_global(mats, 0.8)):
        assert_canonical_equal(S, expected, W.dtype)
    assert_canonical_equal(sparseprune.nm_prune(W, 2, 4), ref_nm(W, 2, 4), W.dtype)


def test_magnitude_is_exact_on_distinct_values():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((64, 64))
    for s in (0.1, 0.5, 0.95):
        S = sparseprune.magnitude_prune(W, s)
        k = int(round(s * W.size))
        assert S.nnz == W.size - k
        assert np.abs(S.data).min() == np.sort(np.abs(W).ravel())[k]


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_matrices(shape, dtype):
    W = np.zeros(shape, dtype)
    for S in (sparseprune.threshold_mask(W, 0.1), sparseprune.magnitude_prune(W, 0.5),
              sparseprune.magnitude_prune(W, 0.5, scope="row"), sparseprune.nm_prune(W),
              *sparseprune.global_magnitude_prune([W, W], 0.5)):
        assert S.shape == shape and S.nnz == 0 and S.dtype == dtype
        S.check_format(full_check=True)


def test_zero_threshold_keeps_every_nonzero():
    W = np.array([[0.0, -0.0, 1e-45, -2.0]], np.float32)  # 1e-45 is a float32 subnormal
    S = sparseprune.threshold_mask(W, 0.0)
    np.testing.assert_array_equal(S.indices, [2, 3])


def test_float64_threshold_is_exact_on_float32():
    w = np.float32(1.0)
    t = 1.0 + 1e-12  # rounds to 1.0 in float32, but 1.0 < t as real numbers
    assert sparseprune.threshold_mask(np.array([[w]]), t).nnz == 0
    assert sparseprune.threshold_mask(np.array([[w]]), 1.0).nnz == 1


def test_sparsity_info():
    W = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    S = sparseprune.threshold_mask(W, 0.5)
    info = sparseprune.sparsity_info(S)
    assert (info.nnz, info.density, info.dense_bytes) == (2, 0.5, 16)
    assert info.csr_bytes == 2 * 4 + 2 * 4 + 3 * 4
    assert sparseprune.sparsity_info(W) == info
    assert info.to_dict()["compression"] == pytest.approx(16 / 28)
    assert "nnz=2" in str(info)
    assert "CSR 1.75x larger" in str(info) and "smaller" not in str(info)  # 28 B of CSR for 16 B dense
    big = sparseprune.sparsity_info(sparseprune.threshold_mask(np.eye(100, dtype=np.float32), 0.5))
    assert "CSR 33.22x smaller" in str(big)  # 40,000 B dense; CSR 100 values + 100 columns + 101 row starts, 4 B each


def test_index_dtype_rule():
    assert index_dtype(10, 5, 5) is np.int32
    assert index_dtype(2**31, 5, 5) is np.int64
    assert index_dtype(10, 2**31, 1) is np.int64


def test_kernels_not_importable_top_level():
    assert importlib.util.find_spec("kernels") is None
    assert importlib.util.find_spec("sparseprune.kernels") is not None


# ---------------------------------------------------------------- bad input
W_OK = np.ones((3, 4), np.float32)


@pytest.mark.parametrize("t", [float("nan"), float("inf"), -0.1])
def test_bad_threshold_value(t):
    with pytest.raises(ValueError, match="'threshold'"):
        sparseprune.threshold_mask(W_OK, t)


@pytest.mark.parametrize("t", ["0.1", None, True, 1j])
def test_bad_threshold_type(t):
    with pytest.raises(TypeError, match="'threshold'"):
        sparseprune.threshold_mask(W_OK, t)


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity(s):
    with pytest.raises(ValueError, match=r"'sparsity' parameter must be a finite number in \[0.0, 1.0\)"):
        sparseprune.magnitude_prune(W_OK, s)
    with pytest.raises(ValueError, match="'sparsity'"):
        sparseprune.global_magnitude_prune([W_OK], s)


def test_bad_scope():
    with pytest.raises(ValueError, match="'scope'"):
        sparseprune.magnitude_prune(W_OK, 0.5, scope="column")


@pytest.mark.parametrize("n,m,exc", [(3, 2, ValueError), (0, 4, ValueError), (2, 0, ValueError),
                                      (-1, 4, ValueError), (2.0, 4, TypeError), (2, "4", TypeError)])
def test_bad_nm(n, m, exc):
    with pytest.raises(exc, match="'n'|'m'"):
        sparseprune.nm_prune(W_OK, n, m)


@pytest.mark.parametrize("W,exc,msg", [
    (np.ones(4, np.float32), ValueError, "1-dimensional.*2-D"),
    (np.ones((2, 2, 2), np.float32), ValueError, "3-dimensional"),
    (np.ones((2, 2), np.int64), TypeError, r"astype\(np.float32\)"),
    (np.ones((2, 2), bool), TypeError, r"astype\(np.float32\)"),
    (np.ones((2, 2), np.complex64), TypeError, "complex"),
    (np.ones((2, 2), np.float16), TypeError, r"astype\(np.float32\)"),
    (np.array([[object()]]), TypeError, "dtype object"),
    (sp.csr_array(np.ones((2, 2))), TypeError, "sparse"),
])
def test_bad_matrix(W, exc, msg):
    for call in (lambda: sparseprune.threshold_mask(W, 0.1), lambda: sparseprune.magnitude_prune(W, 0.5),
                 lambda: sparseprune.nm_prune(W)):
        with pytest.raises(exc, match=msg):
            call()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights_rejected(bad):
    W = np.ones((40, 1000), np.float32)  # large enough for the parallel kernels
    W[17, 3] = bad
    for call in (lambda: sparseprune.threshold_mask(W, 0.1), lambda: sparseprune.magnitude_prune(W, 0.5),
                 lambda: sparseprune.magnitude_prune(W, 0.5, scope="row"), lambda: sparseprune.nm_prune(W),
                 lambda: sparseprune.global_magnitude_prune([W_OK, W], 0.5)):
        with pytest.raises(ValueError, match="NaN or infinite.*row 17"):
            call()


def test_bad_weights_list():
    with pytest.raises(TypeError, match="'weights'.*list"):
        sparseprune.global_magnitude_prune(W_OK, 0.5)
    with pytest.raises(ValueError, match="empty list"):
        sparseprune.global_magnitude_prune([], 0.5)
    with pytest.raises(TypeError, match=r"weights\[1\] has dtype float64"):
        sparseprune.global_magnitude_prune([W_OK, W_OK.astype(np.float64)], 0.5)
    with pytest.raises(ValueError, match=r"weights\[1\] is 1-dimensional"):
        sparseprune.global_magnitude_prune([W_OK, np.ones(3, np.float32)], 0.5)


@pytest.mark.parametrize("order", ["C", "F"])
def test_threshold_mask_extra_memory_is_output_plus_rows(order):
    """Peak allocation stays within the CSR output plus O(rows): no dense temporary."""
    tracemalloc = pytest.importorskip("tracemalloc")
    rng = np.random.default_rng(3)
    W = np.asarray(rng.standard_normal((1024, 1024)).astype(np.float32), order=order)
    sparseprune.threshold_mask(W, 1.0)  # compile outside the measurement
    tracemalloc.start()
    try:
        S = sparseprune.threshold_mask(W, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out_bytes = S.data.nbytes + S.indices.nbytes + S.indptr.nbytes
    per_row = 8 * 24 * W.shape[0]  # a couple dozen int64/float vectors of length n_rows
    assert peak <= out_bytes + per_row + 64 * 1024, (peak, out_bytes)
    assert peak < W.nbytes  # ~32% density: the CSR (8 B per nonzero) is smaller than W
