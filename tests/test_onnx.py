"""ONNX in and out, against onnxruntime on the same graph and a plain-numpy forward pass (naive.ref_mlp).

Graphs are built here with ``onnx.helper`` in each exporter's style: torch
(``Gemm`` with ``transB=1``, ``Flatten``), Keras/tf2onnx (``MatMul`` + ``Add``,
``Identity``/``Dropout``/``Cast`` plumbing) and skl2onnx (``Cast``, ``MatMul``
+ ``Add`` of a 1 x n bias, ``Softmax`` or ``Sigmoid``/``Sub``/``Concat``,
``ArgMax``/``ArrayFeatureExtractor``/``ZipMap`` class outputs).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from naive import ref_mlp  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import sparseprune  # noqa: E402
from sparseprune import MLPClassifier, MLPRegressor, SparseLinear, from_onnx  # noqa: E402

OPSET = 17
# float32 forward passes summed in different orders: agree to rounding.
RTOL, ATOL = 1e-4, 1e-5


def run_ort(model, X, output=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None if output is None else [output], {sess.get_inputs()[0].name: X})
    names = [o.name for o in sess.get_outputs()] if output is None else [output]
    return dict(zip(names, outs))


def weights(shape_in, hidden, n_out, sparsity=0.0, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    sizes = [shape_in, *hidden, n_out]
    Ws, bs = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        W = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(dtype)
        if sparsity:
            W[rng.random(W.shape) < sparsity] = 0
        Ws.append(W)
        bs.append((0.1 * rng.standard_normal(b)).astype(dtype))
    return Ws, bs


def make(nodes, inits, inputs, outputs, opset=OPSET, ml=False, sparse_inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits, sparse_initializer=list(sparse_inits))
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("ai.onnx.ml", 1)] if ml else [])
    m = helper.make_model(graph, opset_imports=ops, ir_version=8)
    onnx.checker.check_model(m)
    return m


def f32(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def torch_style(Ws, bs, head=None, image=None, hidden="Relu"):
    """nn.Sequential(Flatten, Linear, ReLU, ..., Linear[, Softmax(dim=1)]) as torch.onnx.export writes it."""
    nodes, inits = [], []
    x = "input"
    if image is not None:
        nodes.append(helper.make_node("Flatten", [x], ["/0/Flatten_output_0"], name="/0/Flatten", axis=1))
        x = "/0/Flatten_output_0"
    for i, (W, b) in enumerate(zip(Ws, bs)):
        inits += [numpy_helper.from_array(W, f"{i}.weight"), numpy_helper.from_array(b, f"{i}.bias")]
        out = f"/{i}/Gemm_output_0"
        nodes.append(helper.make_node("Gemm", [x, f"{i}.weight", f"{i}.bias"], [out], name=f"/{i}/Gemm",
                                      alpha=1.0, beta=1.0, transB=1))
        x = out
        if i < len(Ws) - 1 and hidden:
            nodes.append(helper.make_node(hidden, [x], [f"/{i}/act"], name=f"/{i}/{hidden}"))
            x = f"/{i}/act"
    if head:
        nodes.append(helper.make_node(head, [x], ["output"], name="/head", axis=1))
    else:
        nodes.append(helper.make_node("Identity", [x], ["output"], name="/out"))
    shape = ["batch", *image] if image is not None else ["batch", Ws[0].shape[1]]
    return make(nodes, inits, [f32("input", shape)], [f32("output", ["batch", Ws[-1].shape[0]])])


def keras_style(Ws, bs, dtype=np.float32):
    """tf2onnx's Dense layers: MatMul by the (in, out) kernel, Add of the bias, plumbing nodes around."""
    t = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    nodes = [helper.make_node("Cast", ["dense_input"], ["cast0"], to=t, name="Cast0"),
             helper.make_node("Identity", ["cast0"], ["id0"], name="Identity0")]
    inits, x = [], "id0"
    for i, (W, b) in enumerate(zip(Ws, bs)):
        inits += [numpy_helper.from_array(np.ascontiguousarray(W.T), f"dense_{i}/kernel"),
                  numpy_helper.from_array(b, f"dense_{i}/bias")]
        nodes += [helper.make_node("MatMul", [x, f"dense_{i}/kernel"], [f"mm{i}"], name=f"dense_{i}/MatMul"),
                  helper.make_node("Add", [f"mm{i}", f"dense_{i}/bias"], [f"add{i}"], name=f"dense_{i}/BiasAdd")]
        x = f"add{i}"
        if i < len(Ws) - 1:
            nodes += [helper.make_node("Relu", [x], [f"relu{i}"], name=f"dense_{i}/Relu"),
                      helper.make_node("Dropout", [f"relu{i}"], [f"drop{i}"], name=f"dropout_{i}")]
            x = f"drop{i}"
    nodes.append(helper.make_node("Softmax", [x], ["dense_out"], name="dense_out/Softmax", axis=-1))
    return make(nodes, inits, [f32("dense_input", [None, Ws[0].shape[1]], t)],
                [f32("dense_out", [None, Ws[-1].shape[0]], t)])


def skl2onnx_style(Ws, bs, classes, zipmap=True):
    """skl2onnx's MLPClassifier converter: class outputs through ArgMax/ArrayFeatureExtractor (and ZipMap)."""
    nodes = [helper.make_node("Cast", ["X"], ["cast_input"], to=TensorProto.FLOAT, name="Cast")]
    inits, x = [], "cast_input"
    for i, (W, b) in enumerate(zip(Ws, bs)):
        inits += [numpy_helper.from_array(np.ascontiguousarray(W.T), f"coefficient{i}"),
                  numpy_helper.from_array(b.reshape(1, -1), f"intercepts{i}")]
        nodes += [helper.make_node("MatMul", [x, f"coefficient{i}"], [f"mul_result{i}"], name=f"MatMul{i}"),
                  helper.make_node("Add", [f"mul_result{i}", f"intercepts{i}"], [f"add_result{i}"], name=f"Add{i}")]
        x = f"add_result{i}"
        if i < len(Ws) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"next_activations{i}"], name=f"Relu{i}"))
            x = f"next_activations{i}"
    binary = Ws[-1].shape[0] == 1
    if binary:
        inits.append(numpy_helper.from_array(np.array(1, np.float32), "unity"))
        nodes += [helper.make_node("Sigmoid", [x], ["out_activations_result"], name="Sigmoid"),
                  helper.make_node("Sub", ["unity", "out_activations_result"], ["negative_class_proba"], name="Sub"),
                  helper.make_node("Concat", ["negative_class_proba", "out_activations_result"], ["probabilities"],
                                   name="Concat", axis=1)]
    else:
        nodes.append(helper.make_node("Softmax", [x], ["probabilities"], name="Softmax"))
    classes = np.asarray(classes)
    inits += [numpy_helper.from_array(classes.astype(np.int32), "classes"),
              numpy_helper.from_array(np.array([-1], np.int64), "shape_tensor")]
    nodes += [helper.make_node("ArgMax", ["probabilities"], ["argmax_output"], name="ArgMax", axis=1),
              helper.make_node("ArrayFeatureExtractor", ["classes", "argmax_output"],
                               ["array_feature_extractor_result"], name="AFE", domain="ai.onnx.ml"),
              helper.make_node("Reshape", ["array_feature_extractor_result", "shape_tensor"], ["reshaped_result"],
                               name="Reshape"),
              helper.make_node("Cast", ["reshaped_result"], ["label"], to=TensorProto.INT64, name="Cast1")]
    outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, [None])]
    if zipmap:
        nodes.append(helper.make_node("ZipMap", ["probabilities"], ["output_probability"], name="ZipMap",
                                      domain="ai.onnx.ml", classlabels_int64s=[int(c) for c in classes]))
        outputs.append(helper.make_value_info("output_probability", helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))))
    else:
        outputs.append(f32("probabilities", [None, len(classes)]))
    return make(nodes, inits, [f32("X", [None, Ws[0].shape[1]])], outputs, ml=True)


@pytest.fixture(scope="module")
def X64():
    from sklearn.datasets import load_digits

    return (load_digits().data[:300] / 16).astype(np.float32)


# ---------------------------------------------------------------- reading exporters' graphs
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
@pytest.mark.parametrize("head", [None, "Softmax", "LogSoftmax"])
def test_torch_style_matches_onnxruntime_and_numpy(X64, sparsity, head):
    Ws, bs = weights(64, (40, 20), 10, sparsity)
    g = torch_style(Ws, bs, head=head, image=(1, 8, 8))
    X = np.ascontiguousarray(X64.reshape(-1, 1, 8, 8))
    want = run_ort(g, X)["output"]
    model = from_onnx(g.SerializeToString())
    flat = X64
    out = {None: "identity", "Softmax": "softmax", "LogSoftmax": "log_softmax"}[head]
    ref = ref_mlp(list(zip(Ws, bs)), flat, out=out)
    if head is None:
        assert isinstance(model, MLPRegressor)
        got = model.predict(flat)
    elif head == "Softmax":
        assert isinstance(model, MLPClassifier)
        got = model.predict_proba(flat)
    else:
        got = model.predict_log_proba(flat)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    if head:
        np.testing.assert_array_equal(model.predict(flat), np.argmax(want, 1))
    # zeros counted exactly: pruned initializers become CSR with exactly their nonzeros
    for layer, W in zip(model.layers_, Ws):
        assert layer.is_sparse == (sparsity > 0)
        assert layer.nnz == np.count_nonzero(W)
        np.testing.assert_array_equal(layer.dense_weight(), W)


def test_torch_logits_read_as_classifier(X64):
    Ws, bs = weights(64, (32,), 10, 0.8, seed=3)
    g = torch_style(Ws, bs, head=None)
    logits = run_ort(g, X64)["output"]
    model = MLPClassifier.from_onnx(g)
    assert isinstance(model, MLPClassifier)
    np.testing.assert_array_equal(model.predict(X64), logits.argmax(1))
    np.testing.assert_allclose(model.predict_proba(X64), ref_mlp(list(zip(Ws, bs)), X64, out="softmax"),
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="classifier"):
        MLPRegressor.from_onnx(torch_style(Ws, bs, head="Softmax"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keras_style(X64, dtype):
    Ws, bs = weights(64, (50, 30), 10, 0.95, seed=1, dtype=dtype)
    g = keras_style(Ws, bs, dtype)
    X = X64.astype(dtype)
    want = run_ort(g, X)["dense_out"]
    model = from_onnx(g)
    assert model.layers_[0].bias.dtype == dtype
    got = model.predict_proba(X)
    tol = dict(rtol=RTOL, atol=ATOL) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)
    np.testing.assert_allclose(got, ref_mlp(list(zip(Ws, bs)), X, out="softmax"), **tol)


@pytest.mark.parametrize("zipmap", [True, False])
def test_skl2onnx_style_multiclass(X64, zipmap):
    Ws, bs = weights(64, (30,), 4, 0.7, seed=2)
    classes = [3, 5, 7, 11]
    g = skl2onnx_style(Ws, bs, classes, zipmap=zipmap)
    out = run_ort(g, X64)
    model = from_onnx(g)
    assert isinstance(model, MLPClassifier)
    np.testing.assert_array_equal(model.classes_, classes)
    np.testing.assert_array_equal(model.predict(X64), out["label"])
    probs = (np.array([[d[c] for c in classes] for d in out["output_probability"]]) if zipmap
             else out["probabilities"])
    np.testing.assert_allclose(model.predict_proba(X64), probs, rtol=RTOL, atol=ATOL)


def test_skl2onnx_style_binary(X64):
    Ws, bs = weights(64, (20,), 1, 0.5, seed=4)
    g = skl2onnx_style(Ws, bs, [0, 1], zipmap=False)
    out = run_ort(g, X64)
    model = from_onnx(g)
    assert model.out_activation_ == "logistic"
    np.testing.assert_allclose(model.predict_proba(X64), out["probabilities"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(model.predict(X64), out["label"])
    np.testing.assert_allclose(model.predict_proba(X64), ref_mlp(list(zip(Ws, bs)), X64, out="logistic"),
                               rtol=RTOL, atol=ATOL)


def test_against_real_sklearn_model(X64):
    """An MLP trained by scikit-learn, written in skl2onnx's layout: labels and probabilities as sklearn's."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier as SkMLP

    d = load_digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short training budget is enough for the comparison
        sk = SkMLP((30,), max_iter=60, random_state=0).fit(d.data / 16, d.target)
    Ws = [c.T.astype(np.float32) for c in sk.coefs_]
    bs = [b.astype(np.float32) for b in sk.intercepts_]
    model = from_onnx(skl2onnx_style(Ws, bs, sk.classes_, zipmap=False))
    np.testing.assert_allclose(model.predict_proba(X64), sk.predict_proba(X64.astype(np.float64)), atol=1e-4)


def test_gemm_alpha_beta_and_transposed_weight(X64):
    rng = np.random.default_rng(5)
    W1 = rng.standard_normal((64, 16)).astype(np.float32)   # (in, out): transB=0
    b1 = rng.standard_normal(16).astype(np.float32)
    W2 = rng.standard_normal((3, 16)).astype(np.float32)
    b2 = rng.standard_normal((1, 3)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], alpha=0.5, beta=2.0),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Gemm", ["t", "W2", "b2"], ["y"], transB=1)]
    g = make(nodes, [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))],
             [f32("x", [None, 64])], [f32("y", [None, 3])])
    model = from_onnx(g)
    assert model.activation == "tanh"
    np.testing.assert_allclose(model.predict(X64), run_ort(g, X64)["y"], rtol=RTOL, atol=ATOL)
    ref = ref_mlp([(0.5 * W1.T, 2 * b1), (W2, b2.ravel())], X64, hidden="tanh")
    np.testing.assert_allclose(model.predict(X64), ref, rtol=RTOL, atol=ATOL)


def test_sparse_initializers_and_constant_nodes(X64):
    Ws, bs = weights(64, (24,), 5, 0.9, seed=6)
    S = sp.coo_array(Ws[0])
    values = numpy_helper.from_array(S.data.astype(np.float32), "W0")
    idx = numpy_helper.from_array(np.stack([S.row, S.col], 1).astype(np.int64), "W0_idx")  # [NNZ, 2] form
    sparse_w0 = helper.make_sparse_tensor(values, idx, list(Ws[0].shape))
    nodes = [helper.make_node("Constant", [], ["W1"], value=numpy_helper.from_array(Ws[1], "c")),
             helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W1", "b1"], ["y"], transB=1)]
    g = make(nodes, [numpy_helper.from_array(bs[0], "b0"), numpy_helper.from_array(bs[1], "b1")],
             [f32("x", [None, 64])], [f32("y", [None, 5])], sparse_inits=[sparse_w0])
    model = from_onnx(g)
    assert model.layers_[0].is_sparse and model.layers_[0].nnz == S.nnz
    np.testing.assert_allclose(model.predict(X64), ref_mlp(list(zip(Ws, bs)), X64), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(model.predict(X64), run_ort(g, X64)["y"], rtol=RTOL, atol=ATOL)


def test_density_threshold_counts_zeros_exactly():
    Ws, bs = weights(10, (10,), 3)
    Ws[0].ravel()[:50] = 0          # exactly half: CSR at the default 0.5
    Ws[1].ravel()[:14] = 0          # 16 of 30 nonzero: dense
    model = from_onnx(torch_style(Ws, bs))
    assert model.layers_[0].is_sparse and model.layers_[0].nnz == 50
    assert not model.layers_[1].is_sparse
    assert not from_onnx(torch_style(Ws, bs), max_density=0.2).layers_[0].is_sparse


def test_external_data(tmp_path, X64):
    from onnx.external_data_helper import convert_model_to_external_data

    Ws, bs = weights(64, (32,), 10, 0.5)
    g = torch_style(Ws, bs, head="Softmax")
    convert_model_to_external_data(g, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    path = tmp_path / "m.onnx"
    onnx.save_model(g, str(path))
    model = from_onnx(path)
    np.testing.assert_allclose(model.predict_proba(X64), ref_mlp(list(zip(Ws, bs)), X64, out="softmax"),
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="external file"):
        from_onnx(path.read_bytes())       # bytes: no directory to find weights.bin in
    os.remove(tmp_path / "weights.bin")
    with pytest.raises(FileNotFoundError, match="weights.bin"):
        from_onnx(path)


# ---------------------------------------------------------------- writing
def _fitted(X, y, binary=False):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MLPClassifier((32, 16), max_iter=30, random_state=0).fit(X, y % 2 if binary else y)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16).astype(np.float32), d.target


@pytest.mark.parametrize("variant", ["dense", "pruned", "eliminated", "binary", "strings"])
def test_to_onnx_runs_in_onnxruntime_and_reads_back(digits, variant, tmp_path):
    X, y = digits
    if variant == "strings":
        y = np.array(["digit%d" % v for v in y])
    model = _fitted(X, y, binary=variant == "binary")
    if variant in ("pruned", "eliminated"):
        model.prune(0.9)
    if variant == "eliminated":
        model.eliminate_neurons(X[:200], threshold=0.99)
    g = model.to_onnx(tmp_path / "m.onnx")
    onnx.checker.check_model(g)
    out = run_ort(g, X[:200])
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(X[:200]), rtol=RTOL, atol=ATOL)
    labels = out["label"]
    if variant == "strings":
        labels = np.array([s.decode() if isinstance(s, bytes) else s for s in labels])
    np.testing.assert_array_equal(labels, model.predict(X[:200]))
    back = from_onnx(tmp_path / "m.onnx")
    assert type(back) is MLPClassifier
    np.testing.assert_array_equal(back.classes_, model.classes_)
    np.testing.assert_allclose(back.predict_proba(X[:200]), model.predict_proba(X[:200]), rtol=RTOL, atol=ATOL)
    assert [lay.nnz for lay in back.layers_] == [lay.nnz for lay in model.layers_]


def test_to_onnx_sparse_initializers_and_regressor(digits):
    X, y = digits
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MLPRegressor((20,), max_iter=20, random_state=0).fit(X, np.c_[y, -y] / 9.0)
    reg.prune(0.8)
    g = reg.to_onnx(sparse_initializers=True)
    assert len(g.graph.sparse_initializer) == 2
    np.testing.assert_allclose(run_ort(g, X)["predictions"], reg.predict(X), rtol=RTOL, atol=1e-5)
    back = MLPRegressor.from_onnx(g)
    np.testing.assert_allclose(back.predict(X), reg.predict(X), rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("activation", [None, "relu", "logistic"])
def test_sparse_linear_to_onnx(activation):
    rng = np.random.default_rng(0)
    W = sp.random_array((40, 70), density=0.1, random_state=1, format="csr", dtype=np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    X = rng.standard_normal((9, 70)).astype(np.float32)
    layer = SparseLinear(W, b, activation)
    out = run_ort(layer.to_onnx(), X)["Y"]
    np.testing.assert_allclose(out, layer(X), rtol=RTOL, atol=ATOL)


def test_unsorted_class_table_is_reordered(X64):
    Ws, bs = weights(64, (16,), 3, seed=7)
    g = skl2onnx_style(Ws, bs, [9, 2, 5], zipmap=False)
    out = run_ort(g, X64)
    model = from_onnx(g)
    np.testing.assert_array_equal(model.classes_, [2, 5, 9])
    np.testing.assert_array_equal(model.predict(X64), out["label"])
    np.testing.assert_allclose(model.predict_proba(X64), out["probabilities"][:, [1, 2, 0]], rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- bad input
def test_not_onnx_and_truncated(tmp_path):
    Ws, bs = weights(8, (4,), 2)
    data = torch_style(Ws, bs).SerializeToString()
    with pytest.raises(ValueError, match="not an ONNX model"):
        from_onnx(b"this is plainly not protobuf \xff\xfe")
    with pytest.raises(ValueError, match="empty"):
        from_onnx(b"")
    with pytest.raises(ValueError, match="truncated|not an ONNX|no Gemm|reads"):
        from_onnx(data[: len(data) // 2])
    p = tmp_path / "text.onnx"
    p.write_text("name,value\n1,2\n")
    with pytest.raises(ValueError, match="not an ONNX model"):
        from_onnx(p)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="src must be"):
        from_onnx(42)


def test_unknown_opset():
    Ws, bs = weights(8, (4,), 2)
    g = torch_style(Ws, bs)
    g.opset_import[0].version = 999
    with pytest.raises(ValueError, match="opset 999"):
        from_onnx(g)


def test_nan_initializer():
    Ws, bs = weights(8, (4,), 2)
    Ws[1][0, 0] = np.nan
    with pytest.raises(ValueError, match="'1.weight'.*NaN or inf"):
        from_onnx(torch_style(Ws, bs))
    bs[0][1] = np.inf
    Ws[1][0, 0] = 0
    with pytest.raises(ValueError, match="'0.bias'.*NaN or inf"):
        from_onnx(torch_style(Ws, bs))


def test_shapes_that_do_not_chain():
    Ws, bs = weights(8, (4,), 2)
    Ws[1] = np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match="/1/Gemm.*takes 5 inputs.*4 columns"):
        from_onnx(torch_style(Ws, bs))
    Ws, bs = weights(8, (4,), 2)
    g = torch_style(Ws, bs, image=(1, 3, 3))    # 9 features into an 8-input layer
    with pytest.raises(ValueError, match="do not chain"):
        from_onnx(g)


def _graph_with(node, extra_inits=(), inputs=None):
    Ws, bs = weights(8, (4,), 2)
    inits = [numpy_helper.from_array(Ws[0], "W0"), numpy_helper.from_array(bs[0], "b0"),
             numpy_helper.from_array(Ws[1], "W1"), numpy_helper.from_array(bs[1], "b1"), *extra_inits]
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1, name="fc1"), node,
             helper.make_node("Gemm", ["a", "W1", "b1"], ["y"], transB=1, name="fc2")]
    return make(nodes, inits, inputs or [f32("x", [None, 8])], [f32("y", [None, 2])])


@pytest.mark.parametrize("node, match", [
    (helper.make_node("LeakyRelu", ["h"], ["a"], name="act"), "'act' \\(LeakyRelu\\)"),
    (helper.make_node("Erf", ["h"], ["a"], name="gelu_part"), "'gelu_part' \\(Erf\\).*not supported"),
    (helper.make_node("Add", ["h", "x"], ["a"], name="residual"), "'residual' \\(Add\\)"),
    (helper.make_node("Shape", ["h"], ["a"], name="shape"), "'shape' \\(Shape\\)"),
    (helper.make_node("Softmax", ["h"], ["a"], name="mid", axis=1), "'fc2' \\(Gemm\\).*after the output"),
])
def test_unsupported_nodes_are_named(node, match):
    with pytest.raises(ValueError, match=match):
        from_onnx(_graph_with(node))


def test_conv_and_unknown_domain_refused():
    W = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "k")
    g = make([helper.make_node("Conv", ["x", "k"], ["y"], name="conv1")], [W], [f32("x", [None, 1, 5, 5])],
             [f32("y", [None, 1, 3, 3])])
    with pytest.raises(ValueError, match="'conv1' \\(Conv\\)"):
        from_onnx(g)
    Ws, bs = weights(8, (4,), 2)
    g = torch_style(Ws, bs)
    g.graph.node[0].domain = "com.microsoft"
    with pytest.raises(ValueError, match="domain 'com.microsoft'"):
        from_onnx(g)


def test_mixed_hidden_activations_and_second_input():
    Ws, bs = weights(8, (6, 4), 2)
    g = torch_style(Ws, bs)
    g.graph.node[3].op_type = "Tanh"      # /1/Relu -> Tanh
    with pytest.raises(ValueError, match="one activation for all hidden layers"):
        from_onnx(g)
    g = _graph_with(helper.make_node("Relu", ["h"], ["a"]), inputs=[f32("x", [None, 8]), f32("x2", [None, 8])])
    with pytest.raises(ValueError, match="2 data inputs"):
        from_onnx(g)


def test_classes_argument_checked():
    Ws, bs = weights(8, (4,), 3)
    with pytest.raises(ValueError, match="3 labels"):
        from_onnx(torch_style(Ws, bs, head="Softmax"), classes=[0, 1])
    with pytest.raises(ValueError, match="kind must be"):
        from_onnx(torch_style(Ws, bs), kind="tree")
    m = from_onnx(torch_style(Ws, bs, head="Softmax"), classes=["a", "b", "c"])
    np.testing.assert_array_equal(m.classes_, ["a", "b", "c"])


def test_lazy_import_and_top_level_names():
    assert sparseprune.from_onnx is from_onnx
    assert callable(sparseprune.to_onnx)


# ---------------------------------------------------------------- CLI
def test_cli_bench_model(tmp_path, digits):
    import json

    from sparseprune.cli import main

    X, y = digits
    model = _fitted(X, y).prune(0.9)
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    rc = main(["bench", "--model", str(path), "--quick", "--quiet", "--json", "--out", str(tmp_path / "out"),
               "--batches", "1,8"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    sec = doc["sections"]["model"]
    assert sec["status"] == "ok", sec["reason"]
    assert [r["batch"] for r in sec["rows"]] == [1, 8]
    assert {"onnxruntime", "numpy dense", "sparseprune"} <= set(sec["rows"][0]["timings"])
    for r in sec["rows"]:
        assert r["max_abs_diff"]["onnxruntime"] < 1e-5 and r["max_abs_diff"]["numpy dense"] < 1e-5
    assert [lay["nnz"] for lay in sec["layers"]] == [lay.nnz for lay in model.layers_]


def test_cli_bench_model_bad_files(tmp_path, capsys):
    from sparseprune.cli import main

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    assert main(["bench", "--model", str(bad), "--quiet", "--out", str(tmp_path)]) == 1
    assert "not an ONNX model" in capsys.readouterr().err
    assert main(["bench", "--model", str(tmp_path / "none.onnx"), "--quiet", "--out", str(tmp_path)]) == 1
    assert "no such ONNX file" in capsys.readouterr().err


def test_imported_model_saves_prunes_and_fine_tunes(tmp_path, digits):
    X, y = digits
    Ws, bs = weights(64, (40,), 10, 0.5, seed=8)
    model = from_onnx(torch_style(Ws, bs, head="Softmax"))
    model.save(tmp_path / "m.npz")
    back = sparseprune.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    model.prune(0.9).fine_tune(X, y, epochs=2)
    assert sum(lay.nnz for lay in model.layers_) <= 0.1 * sum(W.size for W in Ws) + 1
    assert model.predict(X).shape == (X.shape[0],)


def test_to_onnx_bad_arguments_and_input_untouched(digits):
    X, y = digits
    with pytest.raises(TypeError, match="model must be"):
        sparseprune.to_onnx(object())
    with pytest.raises(ValueError, match="opset must be"):
        _fitted(X, y).to_onnx(opset=5)
    # from_onnx never changes the ModelProto it is given
    Ws, bs = weights(8, (4,), 2, 0.5)
    g = torch_style(Ws, bs, head="Softmax")
    before = g.SerializeToString()
    from_onnx(g)
    assert g.SerializeToString() == before
