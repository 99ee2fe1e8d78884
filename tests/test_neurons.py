"""Neuron scores and removal against the plain-numpy references in naive.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import ref_activation_stats, ref_remove_neurons, ref_weight_norms
from scipy import sparse

from sparseprune.pruning.neurons import activation_scores, remove_neurons, weight_norm_scores

DTYPES = [np.float32, np.float64]


def relu_acts(rng, n, k, dtype, dead=()):
    A = np.maximum(rng.standard_normal((n, k)), 0).astype(dtype)
    for j in dead:
        A[:, j] = 0
    return A


# ---------------------------------------------------------------- activation scores
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 150), seed=st.integers(0, 2**31 - 1))
def test_activation_scores_match_numpy(dtype, n, k, seed):
    rng = np.random.default_rng(seed)
    A = relu_acts(rng, n, k, dtype, dead=range(0, k, 7))
    if k > 3:
        A[:, 3] = 0.25  # a constant, non-zero neuron
    before = A.copy()
    got = activation_scores(A)
    ref = ref_activation_stats(A)
    np.testing.assert_array_equal(A, before)
    for key in ("max_abs", "apoz", "min", "max", "constant"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    np.testing.assert_allclose(got["mean_abs"], ref["mean_abs"], rtol=1e-12, atol=1e-12)
    const = ref["constant"]
    np.testing.assert_array_equal(got["value"][const], ref["min"][const])


@pytest.mark.parallel
def test_activation_scores_parallel_path_matches():
    rng = np.random.default_rng(1)
    A = relu_acts(rng, 600, 500, np.float32, dead=[0, 499])  # above the parallel threshold
    got, ref = activation_scores(A), ref_activation_stats(A)
    for key in ("max_abs", "apoz", "constant"):
        np.testing.assert_array_equal(got[key], ref[key])
    np.testing.assert_allclose(got["mean_abs"], ref["mean_abs"], rtol=1e-10)


def test_activation_scores_bad_input():
    with pytest.raises(ValueError, match="0 rows"):
        activation_scores(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        activation_scores(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match="float32"):
        activation_scores(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="2-D"):
        activation_scores(np.zeros(3))


# ---------------------------------------------------------------- weight norms
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("ord", [1, 2])
@pytest.mark.parametrize("direction", ["incoming", "outgoing"])
@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 30), density=st.floats(0, 1), seed=st.integers(0, 1000))
def test_weight_norms_match_numpy(dtype, fmt, ord, direction, rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    D = (rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < density)).astype(dtype)
    W = sparse.csr_array(D) if fmt == "csr" else D
    got = weight_norm_scores(W, ord=ord, direction=direction)
    np.testing.assert_allclose(got, ref_weight_norms(D, ord, direction), rtol=1e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-12)


def test_weight_norm_bad_args():
    with pytest.raises(ValueError, match="'ord'"):
        weight_norm_scores(np.ones((2, 2)), ord=3)
    with pytest.raises(ValueError, match="'direction'"):
        weight_norm_scores(np.ones((2, 2)), direction="sideways")


# ---------------------------------------------------------------- removal
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt1", ["dense", "csr"])
@pytest.mark.parametrize("fmt2", ["dense", "csr"])
@settings(max_examples=10, deadline=None)
@given(n_in=st.integers(1, 12), n=st.integers(1, 20), n_out=st.integers(1, 12), seed=st.integers(0, 1000))
def test_remove_neurons_matches_numpy(dtype, fmt1, fmt2, n_in, n, n_out, seed):
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((n, n_in)) * (rng.random((n, n_in)) < 0.5)).astype(dtype)
    W2 = (rng.standard_normal((n_out, n)) * (rng.random((n_out, n)) < 0.5)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    b2 = rng.standard_normal(n_out).astype(dtype)
    keep = rng.random(n) < 0.5
    values = rng.standard_normal(n)
    A = sparse.csr_array(W) if fmt1 == "csr" else W.copy()
    A2 = sparse.csr_array(W2) if fmt2 == "csr" else W2.copy()
    copies = [W.copy(), W2.copy(), b.copy(), b2.copy()]
    rW, rb, rW2, rb2 = remove_neurons(A, b, A2, b2, keep, values)
    eW, eb, eW2, eb2 = ref_remove_neurons(W, b, W2, b2, keep, values)
    assert sparse.issparse(rW) == (fmt1 == "csr") and sparse.issparse(rW2) == (fmt2 == "csr")
    dense = lambda M: M.toarray() if sparse.issparse(M) else M  # noqa: E731
    np.testing.assert_array_equal(dense(rW), eW)
    np.testing.assert_array_equal(rb, eb)
    np.testing.assert_array_equal(dense(rW2), eW2)
    np.testing.assert_allclose(rb2, eb2, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    assert rb2.dtype == dtype
    if fmt2 == "csr":
        assert rW2.has_sorted_indices
        rW2.check_format(full_check=True)
    for orig, now in zip(copies, [W, W2, b, b2]):
        np.testing.assert_array_equal(orig, now)


def test_folding_constant_neurons_is_exact():
    # h = relu(x W^T + b); next = h W2^T + b2. Dead/constant neurons folded: same output.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 6))
    W = rng.standard_normal((10, 6))
    b = rng.standard_normal(10)
    W[[2, 5]] = 0.0
    b[2], b[5] = -1.0, 0.7  # neuron 2 dead (relu(-1)=0), neuron 5 constant 0.7
    W2, b2 = rng.standard_normal((4, 10)), rng.standard_normal(4)
    H = np.maximum(X @ W.T + b, 0)
    st_ = activation_scores(H)
    assert st_["constant"].tolist() == [i in (2, 5) for i in range(10)]
    rW, rb, rW2, rb2 = remove_neurons(W, b, sparse.csr_array(W2), b2, ~st_["constant"], st_["value"])
    out = np.maximum(X @ rW.T + rb, 0) @ rW2.toarray().T + rb2
    np.testing.assert_allclose(out, H @ W2.T + b2, rtol=1e-12, atol=1e-12)


def test_remove_neurons_bad_input():
    W, b, W2, b2 = np.ones((3, 2)), np.ones(3), np.ones((2, 3)), np.ones(2)
    with pytest.raises(ValueError, match="keep"):
        remove_neurons(W, b, W2, b2, np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="W_next"):
        remove_neurons(W, b, np.ones((2, 4)), b2, np.ones(3, bool))
    with pytest.raises(ValueError, match="fold_values"):
        remove_neurons(W, b, W2, b2, np.ones(3, bool), [np.nan, 0, 0])
    with pytest.raises(ValueError, match="b must"):
        remove_neurons(W, np.ones(2), W2, b2, np.ones(3, bool))
