"""Plain-numpy references the kernel tests compare against, written for clarity (float64 throughout).

Each kernel family is tested directly against the references here, kept in
this one file (importable as ``naive``: tests/conftest.py puts tests/ on
sys.path). They use numpy (and scipy.sparse only to read a sparse input),
never the library's kernels; the one exception is said where it is made.

Masking (tests/test_masking.py)
    ref_threshold        keep |w| >= t
    ref_remove_smallest  keep-vector dropping the k smallest, lower position first among ties
    ref_magnitude        magnitude pruning of the whole matrix
    ref_magnitude_rows   magnitude pruning row by row
    ref_global           one magnitude threshold over several matrices
    ref_nm               N:M structured sparsity

Neurons (tests/test_neurons.py)
    ref_activation_stats per-neuron activation statistics (mean/max |a|, APoZ, min, max, constant)
    ref_weight_norms     L1/L2 norms of a neuron's incoming or outgoing weights
    ref_remove_neurons   neuron removal, the removed neurons' values folded into the next bias

Linear layers and MLPs (tests/test_spmm.py, test_quantize.py, test_mlp.py, test_mlp_quantize.py,
test_onnx.py, test_plan.py)
    ref_linear           act(X @ W.T + b)
    ref_mlp              a network's output: ref_linear layer by layer, then its output head
                         (identity, softmax, log_softmax, binary logistic as two columns (1-p, p))
    model_layers         a fitted model's layers as (weight, bias) pairs, quantized weights rebuilt
                         from their codes by ref_dequantize

Quantization (tests/test_quantize.py, test_mlp_quantize.py)
    ref_dequantize       dense weights from a QuantizedCSR's codes
    ref_encode           relative-index (gap) encoding with filler entries

Tree pruning (tests/test_tree_pruning.py): the set of internal nodes each method collapses
    ref_info_gain        info-gain pruning
    ref_reduced_error    Quinlan's reduced-error pruning
    ref_error_based      C4.5 error-based pruning

Test data shared by several files
    random_csr           a random scipy CSR array with standard-normal values
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import sparseprune.trees


def _dense(W):
    return W.toarray() if sp.issparse(W) else np.asarray(W)


# ---------------------------------------------------------------- masking
def ref_threshold(W, t):
    """Keep |w| >= t, compared as real numbers (float64 holds every float32 exactly)."""
    keep = np.abs(W.astype(np.float64)) >= t
    return np.where(keep, W, 0).astype(W.dtype)


def ref_remove_smallest(flat_abs, k):
    """Boolean keep-vector: drop the k smallest, ties broken by lower position first."""
    order = np.lexsort((np.arange(flat_abs.size), flat_abs))
    keep = np.ones(flat_abs.size, bool)
    keep[order[:k]] = False
    return keep


def ref_magnitude(W, sparsity):
    k = int(round(sparsity * W.size))
    keep = ref_remove_smallest(np.abs(W).ravel(order="C"), k).reshape(W.shape)
    return np.where(keep, W, 0)


def ref_magnitude_rows(W, sparsity):
    k = int(round(sparsity * W.shape[1]))
    out = np.zeros_like(W)
    for i in range(W.shape[0]):
        keep = ref_remove_smallest(np.abs(W[i]), k)
        out[i] = np.where(keep, W[i], 0)
    return out


def ref_global(mats, sparsity):
    total = sum(M.size for M in mats)
    k = int(round(sparsity * total))
    flat = np.concatenate([np.abs(M).ravel(order="C") for M in mats]) if mats else np.array([])
    keep = ref_remove_smallest(flat, k)
    out, pos = [], 0
    for M in mats:
        out.append(np.where(keep[pos:pos + M.size].reshape(M.shape), M, 0))
        pos += M.size
    return out


def ref_nm(W, n, m):
    out = np.zeros_like(W)
    for i in range(W.shape[0]):
        for g0 in range(0, W.shape[1], m):
            cols = np.arange(g0, min(g0 + m, W.shape[1]))
            # largest magnitude first; among equals the lower column first
            order = sorted(cols, key=lambda j: (-abs(float(W[i, j])), j))
            for j in order[:n]:
                out[i, j] = W[i, j]
    return out


# ---------------------------------------------------------------- neurons
def ref_activation_stats(A):
    A = A.astype(np.float64)
    return {
        "mean_abs": np.abs(A).mean(axis=0),
        "max_abs": np.abs(A).max(axis=0),
        "apoz": (A == 0).mean(axis=0),
        "min": A.min(axis=0),
        "max": A.max(axis=0),
        "constant": np.array([len(set(A[:, j].tolist())) == 1 for j in range(A.shape[1])]),
    }


def ref_weight_norms(W, ord, direction):
    D = _dense(W).astype(np.float64)
    axis = 1 if direction == "incoming" else 0
    return np.abs(D).sum(axis=axis) if ord == 1 else np.sqrt((D ** 2).sum(axis=axis))


def ref_remove_neurons(W, b, W2, b2, keep, values):
    W = W.toarray() if sp.issparse(W) else W
    W2 = W2.toarray() if sp.issparse(W2) else W2
    out_b2 = b2.astype(np.float64).copy()
    for i in range(len(keep)):
        if not keep[i]:
            out_b2 += values[i] * W2[:, i].astype(np.float64)
    return W[keep], b[keep], W2[:, keep], out_b2


# ---------------------------------------------------------------- linear layers and MLPs
def ref_linear(X, Wd, bias=None, activation=None):
    """act(X @ W.T + b) in float64 with numpy only."""
    Z = X.astype(np.float64) @ Wd.astype(np.float64).T
    if bias is not None:
        Z = Z + np.asarray(bias, np.float64)
    if activation == "relu":
        Z = np.maximum(Z, 0)
    elif activation == "tanh":
        Z = np.tanh(Z)
    elif activation == "logistic":
        Z = 1 / (1 + np.exp(-Z))
    return Z


def ref_mlp(layers, X, hidden="relu", out="identity"):
    """The network's output in float64: ref_linear layer by layer, then the output head.

    ``layers`` are (weight, bias) pairs, weights (out, in), dense or scipy sparse.
    ``hidden`` is the hidden layers' activation (relu, tanh, logistic, identity);
    ``out`` the output head: "identity" (raw outputs), "softmax", "log_softmax",
    or "logistic" (binary: one output column p, returned as two columns (1 - p, p)).
    """
    H = np.asarray(X, np.float64)
    for i, (W, b) in enumerate(layers):
        H = ref_linear(H, _dense(W), b, hidden if i < len(layers) - 1 else None)
    if out == "softmax":
        E = np.exp(H - H.max(axis=1, keepdims=True))
        return E / E.sum(axis=1, keepdims=True)
    if out == "log_softmax":
        Z = H - H.max(axis=1, keepdims=True)
        return Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    if out == "logistic":
        assert H.shape[1] == 1, "the binary logistic head has one output column"
        p = 1 / (1 + np.exp(-H[:, 0]))
        return np.stack([1 - p, p], axis=1)
    assert out in ("identity", None), out
    return H


def model_layers(model):
    """A fitted model's layers as (weight, bias) pairs for ref_mlp; a quantized layer's
    weights are rebuilt from its codes by ref_dequantize, not read from the library."""
    return [(ref_dequantize(layer.quant) if layer.quant is not None else layer.weight, layer.bias)
            for layer in model.layers_]


# ---------------------------------------------------------------- quantization
def ref_dequantize(Q):
    """Dense weights from the codes, written independently of QuantizedCSR.values."""
    W = np.zeros(Q.shape, np.float64)
    for i in range(Q.shape[0]):
        for p in range(Q.indptr[i], Q.indptr[i + 1]):
            c = int(Q.codes[p])
            W[i, Q.indices[p]] = c * float(Q.scales[i]) if Q.scheme == "linear" else float(Q.codebook[c])
    return W


def ref_encode(indices, indptr, bits):
    """Gap encoding written as a plain loop (fillers skip M = 2**bits - 1 columns)."""
    M = (1 << bits) - 1
    gaps, ptr = [], [0]
    for i in range(len(indptr) - 1):
        prev = -1
        for p in range(indptr[i], indptr[i + 1]):
            g = int(indices[p]) - prev - 1
            while g >= M:
                gaps.append(M)
                g -= M
            gaps.append(g)
            prev = int(indices[p])
        ptr.append(len(gaps))
    return np.array(gaps, np.uint8), np.array(ptr)


# ---------------------------------------------------------------- tree pruning
def ref_info_gain(t, tau):
    """Collapse set by the documented rule, recursively."""
    N = t.weighted_n_node_samples
    collapse = set()

    def visit(i):
        L, R = t.children_left[i], t.children_right[i]
        if L == -1:
            return True
        a, b = visit(L), visit(R)
        gain = N[i] / N[0] * (t.impurity[i] - N[L] / N[i] * t.impurity[L] - N[R] / N[i] * t.impurity[R])
        if a and b and gain < tau:
            collapse.add(i)
            return True
        return False

    visit(0)
    return collapse


def ref_reduced_error(est, X, y):
    """Quinlan's REP by routing rows explicitly (float32 features, as scikit-learn compares)."""
    t = est.tree_
    X32 = np.asarray(X, np.float32)
    classifier = hasattr(est, "classes_")
    collapse = set()

    def node_err(i, rows):
        v = t.value[i, 0]
        if classifier:
            return float(np.sum(est.classes_[np.argmax(v)] != y[rows]))
        return float(np.sum((y[rows] - v[0]) ** 2))

    def visit(i, rows):
        L = t.children_left[i]
        if L == -1:
            return node_err(i, rows)
        go_left = X32[rows, t.feature[i]] <= t.threshold[i]
        sub = visit(L, rows[go_left]) + visit(t.children_right[i], rows[~go_left])
        own = node_err(i, rows)
        if own <= sub:
            collapse.add(i)
            return own
        return sub

    visit(0, np.arange(len(y)))
    return collapse


def ref_error_based(t, cf):
    collapse = set()

    def est(i):
        N = t.weighted_n_node_samples[i]
        e = N - np.max(t.value[i, 0]) * N
        e = max(e, 0.0)
        # the leaf's pessimistic error: the C4.5 bound, itself checked against independent
        # figures in test_c45_added_errors_against_the_binomial_bound (tests/test_tree_pruning.py)
        return e + sparseprune.trees.c45_added_errors(np.array([N]), np.array([e]), cf)[0]

    def visit(i):
        L = t.children_left[i]
        if L == -1:
            return est(i)
        sub = visit(L) + visit(t.children_right[i])
        if est(i) <= sub + 0.1:
            collapse.add(i)
            return est(i)
        return sub

    visit(0)
    return collapse


# ---------------------------------------------------------------- test data
def random_csr(rng, n_out, n_in, density, dtype=np.float32):
    return sp.random_array((n_out, n_in), density=density, format="csr", dtype=dtype, rng=rng,
                           data_sampler=lambda size: rng.standard_normal(size))
