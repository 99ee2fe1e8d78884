"""A quantized MLP (model.quantize): predictions, centroid fine-tuning, stored bytes, save/load, interop.

References are plain numpy (naive.py): the forward pass ref_mlp on the
weights rebuilt from the codes by ref_dequantize (codebook[code] or
code * scale[row]), and scikit-learn / onnxruntime for the exports.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from naive import model_layers, ref_mlp

import sparseprune
from sparseprune import MLPClassifier, MLPRegressor


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16).astype(np.float32), d.target


@pytest.fixture(scope="module")
def pruned(digits):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MLPClassifier((64, 32), max_iter=40, random_state=0).fit(X, y)
    return m.prune(0.9)


def expected_proba(model, X):
    """A classifier's probabilities by the plain-numpy forward pass, quantized weights rebuilt from their codes."""
    return ref_mlp(model_layers(model), X, out="softmax")


@pytest.mark.parametrize("scheme, bits, index_bits", [("kmeans", 4, 5), ("kmeans", 5, None), ("kmeans", 8, 8),
                                                      ("linear", 8, 4), ("linear", 6, None)])
@pytest.mark.parametrize("batch", [1, 5, 300])
def test_quantized_model_predicts_like_numpy(pruned, digits, scheme, bits, index_bits, batch):
    X, _ = digits
    q = copy.deepcopy(pruned).quantize(bits=bits, scheme=scheme, index_bits=index_bits)
    assert all(layer.quant is not None and layer.quant.bits == bits for layer in q.layers_)
    Xb = np.ascontiguousarray(X[:batch])
    np.testing.assert_allclose(q.predict_proba(Xb), expected_proba(q, Xb), rtol=1e-4, atol=2e-6)
    # the plan runs the quantized kernels on the layer-by-layer path
    assert "quantized" in q.plan_.explain()
    # structure kept: the pruned zeros stay zeros
    assert [lay.nnz for lay in q.layers_] == [lay.nnz for lay in pruned.layers_]


def test_dense_layers_quantize_too(digits):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MLPClassifier((32,), max_iter=20, random_state=0).fit(X, y)
    q = copy.deepcopy(m).quantize(bits=8, scheme="linear", index_bits=None)
    np.testing.assert_allclose(q.predict_proba(X), expected_proba(q, X), rtol=1e-4, atol=2e-6)
    assert np.mean(q.predict(X) == m.predict(X)) > 0.97


def test_centroid_fine_tuning_trains_shared_values_only(pruned, digits):
    X, y = digits
    q = copy.deepcopy(pruned).quantize(bits=3, scheme="kmeans", index_bits=5)
    before = [(lay.quant.codes.copy(), lay.quant.indices.copy(), lay.quant.codebook.copy()) for lay in q.layers_]
    loss = lambda m: -np.mean(np.log(m.predict_proba(X)[np.arange(len(y)), np.searchsorted(m.classes_, y)]))
    l0 = loss(q)
    q.fine_tune(X, y, epochs=5, learning_rate=1e-3)
    assert loss(q) < l0
    for lay, (codes, ind, cb) in zip(q.layers_, before):
        np.testing.assert_array_equal(lay.quant.codes, codes)      # same codes
        np.testing.assert_array_equal(lay.quant.indices, ind)      # same zeros
        assert not np.array_equal(lay.quant.codebook, cb)          # trained centroids
        assert np.unique(lay.weight.data).size <= 8                # still 2**3 shared values
    np.testing.assert_allclose(q.predict_proba(X[:50]), expected_proba(q, X[:50]), rtol=1e-4, atol=2e-6)


def test_linear_fine_tuning_trains_scales(pruned, digits):
    X, y = digits
    q = copy.deepcopy(pruned).quantize(bits=4, scheme="linear", index_bits=None)
    codes = [lay.quant.codes.copy() for lay in q.layers_]
    q.fine_tune(X, y, epochs=2)
    for lay, c in zip(q.layers_, codes):
        np.testing.assert_array_equal(lay.quant.codes, c)
    np.testing.assert_allclose(q.predict_proba(X[:50]), expected_proba(q, X[:50]), rtol=1e-4, atol=2e-6)


def test_stored_bytes_are_what_save_writes(pruned, tmp_path):
    q = copy.deepcopy(pruned).quantize(bits=4, scheme="kmeans", index_bits=5)
    q.save(tmp_path / "q.npz")
    with np.load(tmp_path / "q.npz", allow_pickle=False) as f:
        on_disk = {k: f[k].nbytes for k in f.files}
    report = q.sparsity_report()
    for i, row in enumerate(report[:-1]):
        assert row["stored_bytes"] == sum(v for k, v in on_disk.items() if k.startswith(f"q{i}_") or k == f"b{i}")
        assert row["format"] == "kmeans4"
        out, inp = row["shape"]
        assert row["compression"] == pytest.approx(4 * (out * inp + out) / row["stored_bytes"])
    assert report[-1]["stored_bytes"] == sum(r["stored_bytes"] for r in report[:-1])
    # codes: 4 bits each, gaps: 5 bits each, biases float16
    assert on_disk["b0"] == 2 * q.layers_[0].shape[0]


def test_save_load_round_trip_and_bad_files(pruned, digits, tmp_path):
    X, _ = digits
    q = copy.deepcopy(pruned).quantize(bits=5, scheme="kmeans", index_bits=5)
    q.save(tmp_path / "q.npz")
    back = sparseprune.load(tmp_path / "q.npz")
    assert all(lay.quant is not None for lay in back.layers_)
    np.testing.assert_array_equal(back.predict_proba(X), q.predict_proba(X))
    with np.load(tmp_path / "q.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    bad = dict(arrays)
    bad["q1_codebook"] = np.full_like(arrays["q1_codebook"], np.nan)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="layer 1.*codebook"):
        sparseprune.load(tmp_path / "bad.npz")
    bad = dict(arrays)
    bad["q0_codes"] = arrays["q0_codes"][:-1]
    np.savez(tmp_path / "bad2.npz", **bad)
    with pytest.raises(ValueError, match="layer 0.*codes"):
        sparseprune.load(tmp_path / "bad2.npz")


def test_to_sklearn_and_onnx_dequantize(pruned, digits):
    X, _ = digits
    q = copy.deepcopy(pruned).quantize(bits=4, scheme="kmeans", index_bits=5)
    sk = q.to_sklearn()
    np.testing.assert_allclose(sk.predict_proba(X.astype(np.float64)), expected_proba(q, X), rtol=1e-4, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(q.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["probabilities"], {"X": X})[0], expected_proba(q, X), rtol=1e-4, atol=2e-6)


def test_regressor_float64_and_pruning_after(digits):
    X, y = digits
    X64 = X.astype(np.float64)
    from sklearn.neural_network import MLPRegressor as SkMLP

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = MLPRegressor.from_sklearn(SkMLP(hidden_layer_sizes=(24,), max_iter=20, random_state=0).fit(X64, y / 9.0))  # float64
    r.prune(0.8).quantize(bits=6, scheme="kmeans", index_bits=8)
    assert r.layers_[0].quant.dtype == np.float64
    ref = ref_mlp(model_layers(r), X64)[:, 0]  # the weights rebuilt from the codes
    np.testing.assert_allclose(r.predict(X64), ref, rtol=1e-10, atol=1e-12)
    r.prune(0.9)   # back to float weights
    assert all(lay.quant is None and sp.issparse(lay.weight) for lay in r.layers_)


def test_quantize_bad_arguments(pruned):
    m = copy.deepcopy(pruned)
    with pytest.raises(ValueError, match="bits"):
        m.quantize(bits=9)
    with pytest.raises(ValueError, match="scheme"):
        m.quantize(scheme="product")
    with pytest.raises(ValueError, match="index_bits"):
        m.quantize(index_bits=3)
    assert all(lay.quant is None for lay in m.layers_)   # nothing changed by a refused call


@pytest.mark.dispatcher
def test_frozen_choices_of_a_quantized_model_save_and_load(pruned, digits, tmp_path):
    X, _ = digits
    q = copy.deepcopy(pruned).quantize(bits=4, scheme="kmeans", index_bits=5)
    for b in (1, 300):
        for _ in range(40):
            q.predict_proba(np.ascontiguousarray(X[:b]))
    q.plan_.freeze()
    saved = q.plan_.to_dict()
    assert saved["layers"] and all(set(d.values()) <= {"quantized", "float"} for d in saved["layers"].values())
    q.save(tmp_path / "q.npz")
    back = sparseprune.load(tmp_path / "q.npz")
    assert back.plan_.to_dict() == saved
    np.testing.assert_allclose(back.predict_proba(X), q.predict_proba(X), rtol=1e-6, atol=1e-7)


def test_quantized_linear_paths_and_bad_arguments(pruned, digits):
    from naive import ref_linear

    from sparseprune.quantize import QuantizedLinear, quantize

    X, _ = digits
    W = pruned.layers_[0].weight
    b = np.asarray(pruned.layers_[0].bias)
    op = QuantizedLinear(quantize(W, bits=4, scheme="kmeans"), b, "relu")
    Xc = X[:33].copy()
    want = ref_linear(Xc, op.Q.dequantize().toarray(), b, "relu")
    for method in ("auto", "quantized", "float", "dense"):
        np.testing.assert_allclose(op(Xc, method), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(Xc, X[:33])   # input untouched
    with pytest.raises(ValueError, match="method must be"):
        op(Xc, "turbo")
    with pytest.raises(TypeError, match="QuantizedCSR"):
        QuantizedLinear(W, b)
