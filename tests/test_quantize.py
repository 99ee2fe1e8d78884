"""sparseprune.quantize: quantization, storage (gaps, packing, byte counts), k-means codebook, and the
quantized kernels against plain-numpy references (dequantize, then X @ W.T)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import random_csr, ref_dequantize, ref_encode, ref_linear

from sparseprune.quantize import (
    QuantizedCSR,
    centroid_gradients,
    decode_gaps,
    encode_gaps,
    pack_bits,
    packed_nbytes,
    qlinear,
    quantize,
    unpack_bits,
)

ACTS = [None, "identity", "relu", "tanh", "logistic"]


def tol(dtype, k):
    return (3e-5 if dtype == np.float32 else 1e-12) * max(1, k)


# ---------------------------------------------------------------- kernels vs reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scheme,bits", [("linear", 8), ("linear", 4), ("linear", 2), ("kmeans", 8),
                                         ("kmeans", 5), ("kmeans", 4), ("kmeans", 2)])
def test_kernels_match_dequantized_reference(scheme, bits, dtype):
    rng = np.random.default_rng(bits)
    W = random_csr(rng, 150, 90, 0.2, dtype)
    Q = quantize(W, bits=bits, scheme=scheme, index_bits=5)
    Wd = ref_dequantize(Q)
    np.testing.assert_array_equal(Q.dequantize().toarray(), Wd.astype(dtype))
    b = rng.standard_normal(150).astype(dtype)
    # batch 1 (SpMV), 2 (row kernel), 3..70 (all SpMM widths, full 64-row blocks and a remainder)
    for batch in (1, 2, 5, 16, 33, 64, 70, 130):
        X = rng.standard_normal((batch, 90)).astype(dtype)
        for act in ACTS:
            Y = qlinear(X, Q, b, act)
            assert Y.shape == (batch, 150) and Y.dtype == dtype and Y.flags.c_contiguous
            np.testing.assert_allclose(Y, ref_linear(X, Wd, b, act), rtol=tol(dtype, 90), atol=tol(dtype, 90))


@pytest.mark.parallel
@pytest.mark.parametrize("scheme,bits", [("linear", 8), ("kmeans", 4), ("kmeans", 8)])
@pytest.mark.parametrize("batch", [1, 2, 40, 200])
def test_parallel_and_serial_variants_agree(scheme, bits, batch):
    rng = np.random.default_rng(batch)
    W = random_csr(rng, 300, 200, 0.3)
    Q = quantize(W, bits=bits, scheme=scheme)
    X = rng.standard_normal((batch, 200)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    b_ = np.ascontiguousarray(b)
    ref = ref_linear(X, ref_dequantize(Q), b, "tanh")
    for parallel in (False, True):
        Y = Q._forward(X, b_, 2, parallel=parallel)
        np.testing.assert_allclose(Y, ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.sampled_from([0, 1, 2, 3, 8, 9, 17, 33, 65]),
    n_in=st.integers(0, 40),
    n_out=st.integers(0, 40),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    scheme=st.sampled_from(["linear", "kmeans"]),
    bits=st.integers(2, 8),
    activation=st.sampled_from(ACTS),
    order=st.sampled_from(["C", "F"]),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kernels_hypothesis(batch, n_in, n_out, density, dtype, scheme, bits, activation, order, with_bias, seed):
    rng = np.random.default_rng(seed)
    W = random_csr(rng, n_out, n_in, density, dtype)
    Q = quantize(W, bits=bits, scheme=scheme)
    X = np.asarray(rng.standard_normal((batch, n_in)), dtype=dtype, order=order)
    b = rng.standard_normal(n_out).astype(dtype) if with_bias else None
    Y = qlinear(X, Q, b, activation)
    assert Y.shape == (batch, n_out) and Y.dtype == dtype
    np.testing.assert_allclose(Y, ref_linear(X, ref_dequantize(Q), b, activation), rtol=tol(dtype, n_in),
                               atol=tol(dtype, n_in))


def test_nonfinite_inputs_propagate_like_dense():
    rng = np.random.default_rng(3)
    W = random_csr(rng, 20, 30, 0.3)
    Q = quantize(W, bits=4, scheme="kmeans")
    Wd = Q.dequantize().toarray()
    for batch in (1, 2, 40):
        X = rng.standard_normal((batch, 30)).astype(np.float32)
        X[0, 3] = np.nan
        if batch > 1:
            X[1, 5] = np.inf
        Y = qlinear(X, Q)
        with np.errstate(invalid="ignore", over="ignore"):
            R = X @ Wd.T
        np.testing.assert_array_equal(np.isnan(Y), np.isnan(R))
        assert np.isnan(Y[0]).all()


def test_input_is_never_modified():
    rng = np.random.default_rng(4)
    W = random_csr(rng, 30, 30, 0.3)
    copy = (W.data.copy(), W.indices.copy(), W.indptr.copy())
    Q = quantize(W, bits=5, scheme="kmeans", index_bits=4)
    Q.codebook  # noqa: B018
    assert Q.indices is not W.indices and not np.shares_memory(Q.indptr, W.indptr)
    for a, b in zip(copy, (W.data, W.indices, W.indptr)):
        np.testing.assert_array_equal(a, b)
    X = rng.standard_normal((3, 30)).astype(np.float32)
    X0 = X.copy()
    qlinear(X, Q)
    np.testing.assert_array_equal(X, X0)


# ---------------------------------------------------------------- quantization properties
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_linear_codes_and_error_bound(bits):
    rng = np.random.default_rng(bits)
    W = random_csr(rng, 40, 50, 0.4, np.float64)
    Q = quantize(W, bits=bits, scheme="linear")
    qmax = 2 ** (bits - 1) - 1
    assert Q.codes.dtype == np.int8 and np.abs(Q.codes).max() == qmax
    np.testing.assert_array_equal(Q.indices, W.indices)
    np.testing.assert_array_equal(Q.indptr, W.indptr)
    rows = np.repeat(np.arange(40), np.diff(W.indptr))
    np.testing.assert_allclose(Q.scales, np.abs(W.toarray()).max(axis=1) / qmax)
    err = np.abs(Q.dequantize().data - W.data)
    assert np.all(err <= Q.scales[rows] / 2 * (1 + 1e-9))


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_kmeans_codebook_is_a_lloyd_fixed_point(bits):
    rng = np.random.default_rng(bits)
    W = random_csr(rng, 60, 70, 0.3, np.float64)
    Q = quantize(W, bits=bits, scheme="kmeans")
    cb, v, codes = Q.codebook, Q.dequantize(), Q.codes
    assert cb.shape == (2 ** bits,) and np.all(np.diff(cb) >= 0) and codes.dtype == np.uint8
    w = W.data
    # Every weight's code is (one of) its nearest centroid(s).
    dist = np.abs(w[:, None] - cb[None, :])
    assert np.all(dist[np.arange(w.size), codes] <= dist.min(axis=1) + 1e-12)
    # Every non-empty cluster's centroid is the mean of its members.
    for c in range(cb.size):
        members = w[codes == c]
        if members.size:
            np.testing.assert_allclose(cb[c], members.mean(), rtol=1e-9, atol=1e-12)
    # Linear initialisation: the extreme centroids lie within [min, max].
    assert cb[0] >= w.min() - 1e-12 and cb[-1] <= w.max() + 1e-12
    np.testing.assert_array_equal(v.data, cb[codes])


def test_kmeans_empty_clusters_do_not_crash():
    # Three distinct values, 256 centroids: most clusters are empty.
    W = sp.csr_array(np.array([[1.0, 0, 2.0, 2.0], [0, 3.0, 0, 1.0]], np.float32))
    Q = quantize(W, bits=8, scheme="kmeans")
    np.testing.assert_array_equal(Q.dequantize().toarray(), W.toarray())
    assert np.isfinite(Q.codebook).all() and Q.codebook.shape == (256,)
    # All values equal: one value, every centroid the same.
    Q1 = quantize(sp.csr_array(np.full((3, 3), 0.5, np.float32)), bits=3, scheme="kmeans")
    np.testing.assert_array_equal(Q1.dequantize().toarray(), np.full((3, 3), 0.5, np.float32))


@pytest.mark.parametrize("scheme", ["linear", "kmeans"])
def test_empty_matrix_gives_valid_container(scheme):
    for shape in [(5, 7), (0, 3), (3, 0)]:
        Q = quantize(sp.csr_array(shape, dtype=np.float32), bits=4, scheme=scheme, index_bits=5)
        assert Q.nnz == 0 and Q.dequantize().shape == shape
        X = np.ones((4, shape[1]), np.float32)
        np.testing.assert_array_equal(qlinear(X, Q, activation="relu"), np.zeros((4, shape[0]), np.float32))
        Q2 = QuantizedCSR.from_arrays(Q.to_arrays())
        assert Q2.shape == shape and Q2.nnz == 0


def test_dense_input_quantizes_its_nonzeros_and_noncanonical_csr():
    rng = np.random.default_rng(5)
    D = rng.standard_normal((8, 9)).astype(np.float32)
    D[D < 0.3] = 0
    Q = quantize(D, bits=8)
    assert Q.nnz == np.count_nonzero(D)
    np.testing.assert_allclose(Q.dequantize().toarray(), D, atol=np.abs(D).max() / 127)
    # Duplicates are summed and indices sorted, on a copy.
    W = sp.csr_array((np.array([1.0, 2.0, 4.0], np.float32), np.array([2, 0, 2]), np.array([0, 3])), shape=(1, 3))
    Qd = quantize(W, bits=8)
    np.testing.assert_allclose(Qd.dequantize().toarray(), [[2.0, 0, 5.0]], rtol=1e-2)


# ---------------------------------------------------------------- gaps, packing, byte counts
@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_gap_round_trip_with_fillers(bits):
    rng = np.random.default_rng(bits)
    n_in = 5000
    W = random_csr(rng, 30, n_in, 0.01)
    # Rows with extreme gaps: first and last column, an empty row, an adjacent run.
    extra = sp.csr_array((np.ones(6, np.float32), np.array([0, n_in - 1, n_in - 1, 10, 11, 12]),
                          np.array([0, 2, 3, 3, 6])), shape=(4, n_in))
    W = sp.vstack([W, extra], format="csr")
    gaps, ptr = encode_gaps(W.indices, W.indptr, bits)
    rg, rp = ref_encode(W.indices, W.indptr, bits)
    np.testing.assert_array_equal(gaps, rg)
    np.testing.assert_array_equal(ptr, rp)
    assert gaps.max() <= 2 ** bits - 1
    ind, indptr = decode_gaps(gaps, ptr, bits, n_cols=n_in)
    np.testing.assert_array_equal(ind, W.indices)
    np.testing.assert_array_equal(indptr, W.indptr)


def test_gap_encoding_example_and_overflow_sizes():
    gaps, ptr = encode_gaps(np.array([0, 2, 40]), np.array([0, 3]), 4)
    assert gaps.tolist() == [0, 1, 15, 15, 7] and ptr.tolist() == [0, 5]
    # A gap of exactly M zeros is one filler and a 0 field; M - 1 fits without one.
    for g, want in [(14, [14]), (15, [15, 0]), (29, [15, 14]), (30, [15, 15, 0])]:
        assert encode_gaps(np.array([g]), np.array([0, 1]), 4)[0].tolist() == want
    # A huge gap (1e6 columns at 4 bits: 66,666 fillers) round-trips.
    big = np.array([3, 1_000_003])
    g, p = encode_gaps(big, np.array([0, 2]), 4)
    assert g.size == 2 + 999_999 // 15
    np.testing.assert_array_equal(decode_gaps(g, p, 4)[0], big)
    with pytest.raises(ValueError, match="corrupt"):
        decode_gaps(g, p, 4, n_cols=1000)
    with pytest.raises(ValueError, match="strictly increasing"):
        encode_gaps(np.array([3, 3]), np.array([0, 2]), 4)


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 7, 8])
def test_pack_bits_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 8, 9, 1001):
        v = rng.integers(0, 2 ** bits, n).astype(np.uint8)
        packed = pack_bits(v, bits)
        assert packed.dtype == np.uint8 and packed.size == packed_nbytes(n, bits) == -(-n * bits // 8)
        np.testing.assert_array_equal(unpack_bits(packed, bits, n), v)
    assert pack_bits(np.array([1, 2, 3]), 4).tolist() == [0x21, 0x03]  # low nibble first
    with pytest.raises(ValueError):
        pack_bits(np.array([16]), 4)


def test_byte_counts_by_hand():
    # 3 x 300 matrix, row 0: columns 0, 20, 299; row 1: empty; row 2: 1, 2.
    indices = np.array([0, 20, 299, 1, 2])
    indptr = np.array([0, 3, 3, 5])
    vals = np.array([1.0, -2.0, 3.0, 4.0, -5.0], np.float32)
    W = sp.csr_array((vals, indices, indptr), shape=(3, 300))
    header = 9 * 8
    # kmeans 4 bits, 5-bit gaps (M = 31): row 0 gaps 0, 19, 278 = 8 fillers + 30 -> 11 entries; row 2: 1, 0.
    Q = quantize(W, bits=4, scheme="kmeans", index_bits=5)
    n_stored = 3 + 8 + 2
    assert Q.n_stored == n_stored
    want = {"header": header, "codes": -(-n_stored // 2), "row_counts": 3 * 1, "gaps": -(-n_stored * 5 // 8),
            "codebook": 16 * 4}
    assert Q.storage_breakdown() == want
    assert Q.nbytes_stored() == sum(want.values()) and Q.nbytes_stored(header=False) == sum(want.values()) - 72
    # linear 8 bits, plain indices: uint16 columns (300 inputs), int8 codes, one scale per row.
    L = quantize(W, bits=8, scheme="linear")
    assert L.storage_breakdown() == {"header": header, "codes": 5, "row_counts": 3, "indices": 5 * 2, "scales": 12}
    # kmeans 6 bits, 8-bit gaps (M = 255): one filler in row 0 (gap 278); 6 codes of 6 bits = 36 bits -> 5 bytes.
    K = quantize(W.astype(np.float64), bits=6, scheme="kmeans", index_bits=8)
    assert K.storage_breakdown() == {"header": header, "codes": 5, "row_counts": 3, "gaps": 6, "codebook": 64 * 8}
    arrays = K.to_arrays()
    assert sum(a.nbytes for a in arrays.values()) == K.nbytes_stored()


@pytest.mark.parametrize("scheme,bits,index_bits", [("linear", 8, None), ("linear", 3, 4), ("kmeans", 4, 5),
                                                    ("kmeans", 3, None), ("kmeans", 8, 8)])
def test_arrays_round_trip_through_npz(scheme, bits, index_bits, tmp_path):
    rng = np.random.default_rng(bits)
    W = random_csr(rng, 25, 700, 0.02)
    Q = quantize(W, bits=bits, scheme=scheme, index_bits=index_bits)
    np.savez(tmp_path / "q.npz", **Q.to_arrays(prefix="layer0_"))
    with np.load(tmp_path / "q.npz", allow_pickle=False) as f:
        Q2 = QuantizedCSR.from_arrays(f, prefix="layer0_")
    assert (Q2.shape, Q2.scheme, Q2.bits, Q2.index_bits, Q2.dtype) == (Q.shape, Q.scheme, Q.bits, Q.index_bits,
                                                                        Q.dtype)
    np.testing.assert_array_equal(Q2.indices, Q.indices)
    np.testing.assert_array_equal(Q2.indptr, Q.indptr)
    np.testing.assert_array_equal(Q2.codes, Q.codes)
    np.testing.assert_array_equal(Q2.dequantize().toarray(), Q.dequantize().toarray())
    assert Q2.nbytes_stored() == Q.nbytes_stored()
    X = rng.standard_normal((3, 700)).astype(np.float32)
    np.testing.assert_array_equal(qlinear(X, Q2), qlinear(X, Q))


def test_fillers_contribute_nothing():
    # Gaps that overflow 4 bits many times; kmeans codebook without an exact 0.
    W = sp.csr_array((np.array([0.5, 0.7, 0.9], np.float32), np.array([0, 100, 399]), np.array([0, 3])),
                     shape=(1, 400))
    Q = quantize(W, bits=2, scheme="kmeans", index_bits=4)
    arrays = Q.to_arrays()
    assert arrays["header"][7] > 3  # fillers were stored
    Q2 = QuantizedCSR.from_arrays(arrays)
    assert Q2.nnz == 3
    X = np.ones((1, 400), np.float32)
    np.testing.assert_allclose(qlinear(X, Q2), [[W.data.sum()]], rtol=1e-6)


def test_from_arrays_rejects_bad_data():
    rng = np.random.default_rng(0)
    Q = quantize(random_csr(rng, 10, 40, 0.3), bits=4, scheme="kmeans", index_bits=5)
    good = Q.to_arrays()

    def broken(**changes):
        a = dict(good)
        for k, v in changes.items():
            if v is None:
                a.pop(k)
            else:
                a[k] = v
        return a

    h = good["header"].copy()
    h[0] = 99
    cases = [
        (broken(codes=None), "'codes' is missing"),
        (broken(header=h), "format version"),
        (broken(header=good["header"].astype(np.int32)), "int64"),
        (broken(codebook=np.full(16, np.nan, np.float32)), "NaN"),
        (broken(codebook=np.zeros(8, np.float32)), "codebook"),
        (broken(row_counts=good["row_counts"][:-1]), "row_counts"),
        (broken(row_counts=good["row_counts"] + np.uint8(1)), "sum to"),
        (broken(gaps=good["gaps"][:-1]), "gaps"),
        (broken(codes=good["codes"].astype(np.int8)), "codes"),
        (broken(codes=np.array(["x"] * 3)), "numeric"),
    ]
    for arrays, match in cases:
        with pytest.raises(ValueError, match=match):
            QuantizedCSR.from_arrays(arrays)
    # Plain indices out of range / unsorted.
    L = quantize(random_csr(rng, 4, 40, 0.3), bits=8)
    la = L.to_arrays()
    ind = la["indices"].copy()
    ind[0] = 200
    with pytest.raises(ValueError, match="outside"):
        QuantizedCSR.from_arrays({**la, "indices": ind})
    ind = la["indices"].copy()
    ind[[0, 1]] = ind[[1, 0]]
    with pytest.raises(ValueError, match="increasing"):
        QuantizedCSR.from_arrays({**la, "indices": ind})
    sc = la["scales"].copy()
    sc[0] = np.inf
    with pytest.raises(ValueError, match="scales"):
        QuantizedCSR.from_arrays({**la, "scales": sc})
    codes = la["codes"].copy()
    codes[0] = -128
    with pytest.raises(ValueError, match="outside"):
        QuantizedCSR.from_arrays({**la, "codes": codes})


# ---------------------------------------------------------------- centroid gradients
def test_centroid_gradients_sum_per_code_and_update():
    rng = np.random.default_rng(7)
    W = random_csr(rng, 12, 15, 0.4)
    Q = quantize(W, bits=3, scheme="kmeans")
    G = rng.standard_normal((12, 15))
    rows = np.repeat(np.arange(12), np.diff(Q.indptr))
    g_nz = G[rows, Q.indices]
    want = np.zeros(8)
    for c, g in zip(Q.codes, g_nz):
        want[c] += g
    np.testing.assert_allclose(centroid_gradients(Q, G), want, rtol=1e-6)
    np.testing.assert_allclose(centroid_gradients(Q, g_nz), want, rtol=1e-6)
    Gs = sp.csr_array(G * (rng.random(G.shape) < 0.5))
    want_s = np.bincount(Q.codes, weights=Gs.toarray()[rows, Q.indices], minlength=8)
    np.testing.assert_allclose(centroid_gradients(Q, Gs), want_s, rtol=1e-6)
    Q2 = Q.with_codebook(Q.codebook - 0.1 * centroid_gradients(Q, G))
    np.testing.assert_array_equal(Q2.codes, Q.codes)
    np.testing.assert_allclose(Q2.dequantize().data, (Q.codebook - 0.1 * want.astype(np.float32))[Q.codes],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="kmeans"):
        centroid_gradients(quantize(W), G)
    with pytest.raises(ValueError, match="one per nonzero"):
        centroid_gradients(Q, g_nz[:-1])
    with pytest.raises(ValueError, match="shape"):
        centroid_gradients(Q, G[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        Q.with_codebook(np.zeros(4))


# ---------------------------------------------------------------- bad input
def test_bad_input_errors():
    rng = np.random.default_rng(0)
    W = random_csr(rng, 5, 6, 0.5)
    for bits in (1, 9, 0, -3):
        with pytest.raises(ValueError, match="'bits'"):
            quantize(W, bits=bits)
    with pytest.raises(TypeError, match="'bits'"):
        quantize(W, bits=4.0)
    with pytest.raises(ValueError, match="'scheme'"):
        quantize(W, scheme="log")
    with pytest.raises(TypeError, match="'scheme'"):
        quantize(W, scheme=None)
    for ib in (3, 6, 16, 0):
        with pytest.raises(ValueError, match="'index_bits'"):
            quantize(W, index_bits=ib)
    with pytest.raises(TypeError, match="'index_bits'"):
        quantize(W, index_bits="5")
    Wn = W.copy()
    Wn.data[0] = np.nan
    with pytest.raises(ValueError, match="S holds NaN"):
        quantize(Wn, scheme="kmeans")
    Wi = W.toarray()
    Wi[0, 0] = np.inf
    with pytest.raises(ValueError, match="S holds NaN or inf"):
        quantize(Wi)
    with pytest.raises(TypeError, match="S"):
        quantize(W.tocoo())
    with pytest.raises(TypeError, match="dtype"):
        quantize(W.astype(np.int32))
    with pytest.raises(TypeError, match="S must be"):
        quantize("weights")
    with pytest.raises(ValueError, match="2-D"):
        quantize(np.ones(3, np.float32))
    Q = quantize(W, bits=4)
    with pytest.raises(TypeError, match="QuantizedCSR"):
        qlinear(np.ones((2, 6), np.float32), W)
    with pytest.raises(TypeError, match="dtype"):
        qlinear(np.ones((2, 6), np.float64), Q)
    with pytest.raises(ValueError, match="features"):
        qlinear(np.ones((2, 7), np.float32), Q)
    with pytest.raises(ValueError, match="bias"):
        qlinear(np.ones((2, 6), np.float32), Q, bias=np.ones(4))
    with pytest.raises(ValueError, match="activation"):
        qlinear(np.ones((2, 6), np.float32), Q, activation="gelu")
    with pytest.raises(TypeError, match="sparse"):
        qlinear(sp.csr_array(np.ones((2, 6), np.float32)), Q)


@pytest.mark.parametrize("bits", [2, 4, 5])
def test_batch1_register_codebook_kernel(bits):
    """The AVX-512 batch-1 path (codebook in two registers) against numpy, rows of 0..50 nonzeros."""
    from sparseprune.kernels import quant as kq

    rng = np.random.default_rng(bits)
    n_out, n_in = 67, 900
    counts = np.r_[0, 1, 15, 16, 17, 31, 32, 33, rng.integers(0, 51, n_out - 8)]
    rows = np.repeat(np.arange(n_out), counts)
    cols = np.concatenate([np.sort(rng.choice(n_in, c, replace=False)) for c in counts])
    W = sp.csr_array((rng.standard_normal(cols.size).astype(np.float32), (rows, cols)), shape=(n_out, n_in))
    Q = quantize(W, bits=bits, scheme="kmeans")
    assert Q._perm_ok() == kq.HAVE_PERM32
    if not kq.HAVE_PERM32:
        pytest.skip("this CPU has no AVX-512F: the register-codebook kernel is not used")
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    for act in ACTS:
        got = qlinear(x, Q, b, act)
        np.testing.assert_allclose(got, ref_linear(x, Q.dequantize().toarray(), b, act), rtol=1e-5, atol=1e-5)
    x[0, 5] = np.nan
    assert np.isnan(qlinear(x, Q, b)[0, Q.dequantize().toarray()[:, 5] != 0]).all()


@pytest.mark.dispatcher
def test_quantized_layer_measures_its_float_copy_once_paid_for(monkeypatch):
    # The codes run from the first call; the float copy is made and measured once the calls have
    # paid for it (dispatch.EXPLORE_BUDGET); every answer matches the dequantized reference.
    import sparseprune
    from sparseprune.inference import dispatch
    from sparseprune.quantize import QuantizedLinear

    monkeypatch.setattr(dispatch, "CONFIRM_AFTER_S", 0.0)
    rng = np.random.default_rng(5)
    W = random_csr(rng, 200, 120, 0.2)
    Q = quantize(W, bits=4, scheme="kmeans")
    b = rng.standard_normal(200).astype(np.float32)
    layer = QuantizedLinear(Q, b, "relu")
    X = rng.standard_normal((4, 120)).astype(np.float32)
    ref = ref_linear(X, ref_dequantize(Q).astype(np.float32), b, "relu")
    ch = layer._choice_for(4, sparseprune.get_num_threads())
    assert ch.chosen == "quantized" and not ch.settled and layer._float is None
    paths = []
    for _ in range(20000):
        np.testing.assert_allclose(layer(X), ref, rtol=1e-4, atol=1e-4)
        paths.append(layer.last_path)
        if ch.settled:
            break
    assert ch.settled and paths[0] == "quantized" and "float" in paths and layer._float is not None
    assert set(ch.measured) == {"quantized", "float"}
    # The copy came only after the calls had paid for it: its price within the budget of their time.
    first_float = paths.index("float")
    assert first_float >= dispatch.WATCH_EVERY
