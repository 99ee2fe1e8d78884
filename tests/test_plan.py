"""A model's inference plan (sparseprune.inference.plan) and its fused kernel, against naive.ref_mlp."""
from __future__ import annotations

import copy
import threading
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import model_layers, ref_mlp
from sklearn.exceptions import NotFittedError
from sparseprune.kernels import plan as kplan

import sparseprune
from sparseprune.inference import plan as plan_mod
from sparseprune.inference import threads as threads_mod


def _fit(cls=sparseprune.MLPClassifier, n_in=20, hidden=(30, 12), n_classes=3, activation="relu", seed=0,
         dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((120, n_in)).astype(dtype)
    y = (np.abs(X[:, :n_classes]).argmax(1) if n_classes > 2 else (X[:, 0] > 0).astype(int)) if \
        cls is sparseprune.MLPClassifier else X[:, 0] - X[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(hidden_layer_sizes=hidden, activation=activation, max_iter=3, random_state=seed).fit(X, y), X


CASES = {
    "dense-softmax": dict(),
    "binary": dict(n_classes=2),
    "tanh": dict(activation="tanh"),
    "logistic": dict(activation="logistic"),
    "regressor": dict(cls=sparseprune.MLPRegressor),
    "one-hidden": dict(hidden=(7,)),
    "three-hidden": dict(hidden=(16, 9, 5)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def fitted(request):
    return _fit(**CASES[request.param])


@pytest.mark.parametrize("sparsity", [None, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("batch", [1, 2, 17, 70])
def test_each_path_of_the_plan_equals_numpy(fitted, sparsity, batch):
    m, X = fitted
    m = copy.deepcopy(m)
    if sparsity is not None:
        m.prune(sparsity=sparsity, scope="layer")
    Xb = np.ascontiguousarray(np.resize(X, (batch, X.shape[1])))
    ref = ref_mlp(model_layers(m), Xb, m.activation, m.out_activation_)
    plan = m.plan_
    for path in ("fused", "fused-dense", "layers"):
        out = plan._layers(Xb, sparseprune.get_num_threads()) if path == "layers" else plan._fused(Xb, 1, path=path)
        np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-5, err_msg=path)
    # And through the public calls, as many times as the measuring takes.
    for _ in range(12):
        got = m.predict_proba(Xb) if hasattr(m, "predict_proba") else m.predict(Xb)
        want = ref if hasattr(m, "predict_proba") else (ref[:, 0] if ref.shape[1] == 1 else ref)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parallel
def test_fused_parallel_rows_equal_serial(monkeypatch):
    m, X = _fit(hidden=(40, 20))
    m.prune(sparsity=0.7, scope="layer")
    Xb = np.ascontiguousarray(np.resize(X, (37, X.shape[1])))
    plan = m.plan_
    serial = plan._fused(Xb, 1)
    monkeypatch.setitem(threads_mod.SERIAL_WORK, "fused", 0)
    np.testing.assert_array_equal(plan._fused(Xb, 2), serial)
    np.testing.assert_allclose(serial, ref_mlp(model_layers(m), Xb, "relu", "softmax"), rtol=2e-4, atol=2e-5)


def test_float64_model_and_float32_input():
    m, X = _fit(dtype=np.float64)
    m.layers_ = [sparseprune.mlp.Layer(np.asarray(layer.weight, np.float64), np.asarray(layer.bias, np.float64))
                 for layer in m.layers_]
    ref = ref_mlp(model_layers(m), X, "relu", "softmax")
    np.testing.assert_allclose(m.predict_proba(X.astype(np.float64)), ref, rtol=1e-10)
    np.testing.assert_allclose(m.predict_proba(X.astype(np.float32)), ref, rtol=1e-6)  # converted once
    np.testing.assert_allclose(m.predict_proba(np.asfortranarray(X)), ref, rtol=1e-10)  # non-C input too


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("batch", [1, 3, 100])
def test_nonfinite_input_gives_the_same_error(bad, batch):
    m, X = _fit()
    Xb = np.ascontiguousarray(np.resize(X, (batch, X.shape[1])))
    Xb[batch // 2, 3] = bad
    for _ in range(3):
        with pytest.raises(ValueError, match="NaN|infinity"):
            m.predict_proba(Xb)
        with pytest.raises(ValueError, match="NaN|infinity"):
            m.predict(Xb)


def test_wrong_width_dtype_and_not_fitted():
    m, X = _fit()
    with pytest.raises(ValueError, match="features"):
        m.predict(X[:, :5])
    with pytest.raises(ValueError):
        m.predict(X.astype(np.complex64))
    with pytest.raises(NotFittedError):
        sparseprune.MLPClassifier().predict(X)
    with pytest.raises(NotFittedError):
        sparseprune.MLPClassifier().plan_


def test_layers_that_do_not_chain_are_refused_clearly():
    m, X = _fit()
    m.layers_[1].weight = np.ones((12, 29), np.float32)  # the first hidden layer has 30 outputs
    with pytest.raises(ValueError, match=r"layers_\[1\] has shape \(12, 29\)"):
        m.predict(X)


def test_plan_is_rebuilt_when_the_model_changes():
    m, X = _fit()
    p0 = m.plan_
    assert m.plan_ is p0
    m.prune(sparsity=0.9, scope="layer")
    p1 = m.plan_
    assert p1 is not p0 and p1.layer_kinds == ["sparse"] * 3
    np.testing.assert_allclose(m.predict_proba(X), ref_mlp(model_layers(m), X, "relu", "softmax"),
                               rtol=2e-4, atol=2e-5)
    m.layers_[0].bias = m.layers_[0].bias + 1
    assert m.plan_ is not p1
    np.testing.assert_allclose(m.predict_proba(X), ref_mlp(model_layers(m), X, "relu", "softmax"),
                               rtol=2e-4, atol=2e-5)
    p2 = m.plan_
    m.set_params(activation="tanh")
    assert m.plan_ is not p2
    np.testing.assert_allclose(m.predict_proba(X), ref_mlp(model_layers(m), X, "tanh", "softmax"),
                               rtol=2e-4, atol=2e-5)
    m.eliminate_neurons(X, criterion="l2", fraction=0.3)
    assert m.plan_.shapes == [layer.shape for layer in m.layers_]


@pytest.mark.dispatcher
def test_explain_measure_and_freeze(tmp_path):
    m, X = _fit(n_in=64, hidden=(300, 100), n_classes=10)
    m.prune(sparsity=0.9, scope="layer")
    X40 = np.ascontiguousarray(np.resize(X, (40, 64)))
    for _ in range(40):
        m.predict(X40)
        m.predict(X40[:1])
    text = m.plan_.explain()
    assert "layer 0: 300 x 64 (csr, density 10.0%)" in text
    assert "batch 1 row" in text and "batch 32-63 rows" in text
    ch = m.plan_.choices[(32, sparseprune.get_num_threads())]
    assert ch.chosen in ("fused", "fused-dense", "layers") and ch.state() in ("measured", "the only candidate")
    m.plan_.freeze()
    assert ch.frozen
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = sparseprune.load(path)
    ch2 = m2.plan_.choices[(32, sparseprune.get_num_threads())]
    assert ch2.frozen and ch2.chosen == ch.chosen
    np.testing.assert_array_equal(m2.predict(X40), m.predict(X40))
    # A saved plan with a bad entry is rejected clearly.
    import json
    import zipfile
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    meta["plan"]["model"]["32:2"] = "turbo"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="plan"):
        sparseprune.load(tmp_path / "bad.npz")
    assert zipfile.is_zipfile(path)


@pytest.mark.dispatcher
@pytest.mark.parametrize("sparsity", [0.9, 0.95])
def test_settled_once_every_candidate_is_measured(sparsity):
    # Whichever of the fused calls goes first, the other is measured (at once, or once the calls
    # have paid for its dense copy) before the plan reports itself settled; answers stay right.
    from sparseprune.studies.common import settle_plan

    m, X = _fit(n_in=64, hidden=(300, 100), n_classes=10)
    m.prune(sparsity=sparsity, scope="layer")
    x1 = np.ascontiguousarray(X[:1])
    assert not m.plan_.settled(1)
    for bad, err in (("1", TypeError), (1.0, TypeError), (0, ValueError), (-3, ValueError)):
        with pytest.raises(err, match="batch"):
            m.plan_.settled(bad)
    m.predict(x1)
    ch = m.plan_.choices[(1, sparseprune.get_num_threads())]
    assert set(ch.candidates) == {"fused", "fused-dense"} and not m.plan_.settled(1)
    assert settle_plan(m, x1, 10.0) and m.plan_.settled(1) and ch.settled
    assert set(ch.measured) == {"fused", "fused-dense"}
    np.testing.assert_allclose(m.predict_proba(x1), ref_mlp(model_layers(m), x1, "relu", "softmax"),
                               rtol=2e-4, atol=2e-5)
    # Layer by layer (batch 256): settled only once each sparse layer's own choice is.
    X256 = np.ascontiguousarray(np.resize(X, (256, 64)))
    assert settle_plan(m, X256, 10.0)
    threads = sparseprune.get_num_threads()
    assert m.plan_.choices[(256, threads)].chosen == "layers"
    assert all(op._choice_for(256, threads).settled for op in m.plan_._ops if hasattr(op, "_choice_for"))


def test_fused_dense_is_a_candidate_unless_hopeless(tmp_path):
    """A small model at moderate sparsity measures its fused call with every layer dense too
    (gathers can lose there); at 99.9 % the cost model leaves it out."""
    m, X = _fit(n_in=64, hidden=(300, 100), n_classes=10)
    m.prune(sparsity=0.9, scope="layer")
    x1 = np.ascontiguousarray(X[:1])
    ref = ref_mlp(model_layers(m), x1, "relu", "softmax")
    for _ in range(30):
        np.testing.assert_allclose(m.predict_proba(x1), ref, rtol=2e-4, atol=2e-5)
    ch = m.plan_.choices[(1, sparseprune.get_num_threads())]
    assert set(ch.candidates) == {"fused", "fused-dense"} and ch.chosen in ch.candidates
    assert "every layer dense" in m.plan_.explain(1)
    ch.freeze("fused-dense")
    m.save(tmp_path / "m.npz")
    m2 = sparseprune.load(tmp_path / "m.npz")
    assert m2.plan_.choices[(1, sparseprune.get_num_threads())].chosen == "fused-dense"
    for _ in range(3):
        np.testing.assert_allclose(m2.predict_proba(x1), ref, rtol=2e-4, atol=2e-5)
    m.prune(sparsity=0.999, scope="layer")
    m.predict_proba(x1)
    assert "fused-dense" not in m.plan_.choices[(1, sparseprune.get_num_threads())].candidates


@pytest.mark.parallel
@pytest.mark.parametrize("change", ["prune", "eliminate"])
def test_predict_while_another_thread_changes_the_model(change):
    m, X = _fit(n_in=32, hidden=(64, 32), n_classes=4)
    X8 = np.ascontiguousarray(X[:8])

    def apply(model):
        if change == "prune":
            return model.prune(sparsity=0.9, scope="layer")
        return model.eliminate_neurons(X, criterion="l2", fraction=0.5)

    before = ref_mlp(model_layers(m), X8, "relu", "softmax")
    after = ref_mlp(model_layers(apply(copy.deepcopy(m))), X8, "relu", "softmax")
    errors, outs = [], []
    stop = threading.Event()

    def serve():
        try:
            while not stop.is_set():
                outs.append(m.predict_proba(X8))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for t in threads:
        t.start()
    apply(m)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and outs
    for out in outs:  # the old model's answer or the new one's, never a mix
        assert (np.allclose(out, before, rtol=2e-4, atol=2e-5) or np.allclose(out, after, rtol=2e-4, atol=2e-5))


# ---------------------------------------------------------------- the fused kernel itself
@st.composite
def networks(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    widths = draw(st.lists(st.integers(1, 12), min_size=2, max_size=5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layers = []
    for n_in, n_out in zip(widths, widths[1:]):
        W = rng.standard_normal((n_out, n_in)).astype(dtype)
        W[rng.random(W.shape) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))] = 0
        sparse = draw(st.booleans())
        layers.append((sp.csr_array(W) if sparse else W, rng.standard_normal(n_out).astype(dtype)))
    X = rng.standard_normal((draw(st.integers(1, 9)), widths[0])).astype(dtype)
    hidden = draw(st.sampled_from(["relu", "tanh", "logistic", "identity"]))
    out = draw(st.sampled_from(["softmax", "identity"] + (["logistic"] if widths[-1] == 1 else [])))
    return layers, hidden, out, X


@settings(max_examples=60, deadline=None)
@given(networks())
def test_fused_kernel_matches_numpy(net):
    layers, hidden, out, X = net
    objs = [sparseprune.mlp.Layer(W, b) for W, b in layers]
    plan = plan_mod.ModelPlan(objs, hidden, out)
    ref = ref_mlp(layers, X, hidden, out)
    tol = 1e-4 if X.dtype == np.float32 else 1e-10
    np.testing.assert_allclose(plan._fused(X, 1), ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(plan._fused(X, 1, path="fused-dense"), ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(plan._layers(X, 1), ref, rtol=tol, atol=tol)
    assert plan._fused(np.where(X == X[0, 0], np.nan, X), 1) is None  # NaN reported, not hidden


@pytest.mark.parametrize("n_in", [65_536, 65_537])
def test_fused_kernel_on_layers_wider_than_16_bit_indices(n_in):
    """Column indices are 16-bit up to 65,536 inputs and 32-bit beyond; both give numpy's answer."""
    rng = np.random.default_rng(n_in)
    W = sp.random_array((3, n_in), density=0.01, format="csr", dtype=np.float32, rng=rng)
    W.indices[-1] = n_in - 1  # the last column is read
    layers = [(sp.csr_array(W), rng.standard_normal(3).astype(np.float32)),
              (rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32))]
    plan = plan_mod.ModelPlan([sparseprune.mlp.Layer(W, b) for W, b in layers], "relu", "softmax")
    assert plan._fused_layouts["fused"].args[3].dtype == (np.uint16 if n_in <= 65_536 else np.int32)
    X = rng.standard_normal((2, n_in)).astype(np.float32)
    ref = ref_mlp(layers, X, "relu", "softmax")
    for path in ("fused", "fused-dense"):
        np.testing.assert_allclose(plan._fused(X, 1, path=path), ref, rtol=1e-4, atol=1e-5)


def test_fused_kernel_reports_output_modes():
    assert (kplan.OUT_NONE, kplan.OUT_SOFTMAX, kplan.OUT_BINARY) == (0, 1, 2)


def test_compile_notice_is_said_once_and_only_for_our_kernels(caplog):
    from types import SimpleNamespace

    from sparseprune.kernels import _jit
    from sparseprune.kernels import spmm as kspmm

    ours = SimpleNamespace(data={"dispatcher": kspmm.csr_status})
    theirs = SimpleNamespace(data={"dispatcher": SimpleNamespace(py_func=len)})
    notice = _jit._CompileNotice()
    with caplog.at_level("INFO", logger="sparseprune"):
        notice.on_start(theirs)
        assert not caplog.records
        notice.on_start(ours)
        notice.on_start(ours)
    assert len(caplog.records) == 1 and "compiling" in caplog.text and "csr_status" in caplog.text


def test_tbb_layer_is_loadable_when_the_wheel_is_installed():
    """The tbb wheel's library sits outside the loader's path; sparseprune preloads it for numba's layer."""
    import os
    import subprocess
    import sys

    lib = os.path.join(sys.prefix, "lib", "libtbb.so.12")
    if not os.path.isfile(lib) or "NUMBA_THREADING_LAYER" in os.environ:
        pytest.skip("no tbb wheel in this environment (or the layer is chosen by the user)")
    code = ("import numpy as np, scipy.sparse as sp, sparseprune\n"
            "W = sp.random_array((256, 256), density=0.2, format='csr', dtype=np.float32, random_state=0)\n"
            "sparseprune.linear(np.ones((64, 256), np.float32), W, method='sparse')\n"
            "print(sparseprune.threading_layer())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "tbb"
