"""Save/load (.npz, never pickle) and conversion to/from scikit-learn's MLP."""
import copy
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_regression
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.neural_network import MLPRegressor as SkMLPRegressor

import sparseprune
import sparseprune.mlp
from sparseprune import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16.0, y[:600]


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return MLPClassifier((40, 20), max_iter=30, random_state=0).fit(X, y)


def roundtrip(model, tmp_path, name="m.npz"):
    path = tmp_path / name
    model.save(path)
    return sparseprune.load(path), path


# ---------------------------------------------------------------- save / load
@pytest.mark.parametrize("pruned", [False, True])
def test_save_load_roundtrip_classifier(fitted, data, tmp_path, pruned):
    X, y = data
    m = copy.deepcopy(fitted)
    if pruned:
        m.prune(sparsity=0.8)
        m.eliminate_neurons(X, criterion="l1", fraction=0.2)
    loaded, _ = roundtrip(m, tmp_path)
    assert type(loaded) is MLPClassifier
    assert loaded.get_params() == m.get_params()
    # Equal to rounding: each model measures for itself whether a layer runs dense BLAS or the
    # sparse kernel, and the two sum in different orders (the weights are compared exactly below).
    np.testing.assert_allclose(loaded.predict_proba(X), m.predict_proba(X), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(loaded.classes_, m.classes_)
    for a, b in zip(loaded.layers_, m.layers_):
        assert a.is_sparse == b.is_sparse == pruned
        if pruned:
            assert a.weight.nnz == b.weight.nnz
            np.testing.assert_array_equal(a.weight.toarray(), b.weight.toarray())


def test_pruned_file_is_smaller(data, tmp_path):
    big = MLPClassifier((300, 100), max_iter=2, random_state=0).fit(*data)
    _, dense_path = roundtrip(big, tmp_path, "dense.npz")
    _, sparse_path = roundtrip(big.prune(sparsity=0.95), tmp_path, "sparse.npz")
    assert os.path.getsize(sparse_path) < 0.3 * os.path.getsize(dense_path)


def test_save_load_regressor_and_string_labels(data, tmp_path):
    X, y = data
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    c = MLPClassifier((8,), max_iter=5, random_state=0).fit(X, labels.astype(object))
    lc, _ = roundtrip(c, tmp_path, "c.npz")
    np.testing.assert_array_equal(lc.predict(X), c.predict(X))
    Xr, yr = make_regression(100, 5, random_state=0)
    r = MLPRegressor((8,), max_iter=5, random_state=0).fit(Xr, np.c_[yr, yr])
    lr, _ = roundtrip(r, tmp_path, "r.npz")
    assert type(lr) is MLPRegressor
    np.testing.assert_array_equal(lr.predict(Xr), r.predict(Xr))


def write_npz(path, arrays):
    np.savez(path, **arrays)
    return path


def saved_arrays(model, tmp_path):
    path = tmp_path / "base.npz"
    model.save(path)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_truncated_and_corrupted_files(fitted, tmp_path):
    path = tmp_path / "m.npz"
    fitted.save(path)
    raw = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a valid sparseprune MLP file"):
        sparseprune.load(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ValueError, match="not a valid sparseprune MLP file"):
        sparseprune.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        sparseprune.load(tmp_path / "missing.npz")
    # A text file: numpy reads it as a pickle, and its message suggests allow_pickle=True.
    # That hint must never reach the user (unpickling an untrusted file runs code).
    (tmp_path / "notes.txt").write_text("hello\n" * 20)
    with pytest.raises(ValueError, match="not an .npz archive") as err:
        sparseprune.load(tmp_path / "notes.txt")
    assert "pickle=" not in str(err.value) and "unsafely" not in str(err.value)


def test_reloaded_model_after_elimination_tells_its_real_widths(fitted, data, tmp_path):
    m = copy.deepcopy(fitted).eliminate_neurons(data[0], criterion="l2", fraction=0.5)
    widths = tuple(layer.shape[0] for layer in m.layers_[:-1])
    assert widths[0] <= 20 and widths[1] <= 10 and m.hidden_layer_sizes == widths  # fitted with (40, 20)
    loaded, _ = roundtrip(m, tmp_path)
    assert loaded.hidden_layer_sizes == widths and f"hidden_layer_sizes={widths}" in repr(loaded)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.target}",))


def test_pickled_object_array_is_never_executed(fitted, tmp_path):
    target = tmp_path / "pwned"
    _Evil.target = str(target)
    arrays = saved_arrays(fitted, tmp_path)
    arrays["b0"] = np.array([_Evil()], dtype=object)
    path = write_npz(tmp_path / "evil.npz", arrays)
    with pytest.raises(ValueError, match="not a valid sparseprune MLP file"):
        sparseprune.load(path)
    assert not target.exists()
    # A raw pickle renamed to .npz is not an archive either.
    (tmp_path / "evil2.npz").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError, match="not a valid sparseprune MLP file"):
        sparseprune.load(tmp_path / "evil2.npz")
    assert not target.exists()


@pytest.mark.parametrize("tamper,match", [
    (lambda a: a.pop("meta"), "meta"),
    (lambda a: a.update(meta=np.array("{not json")), "JSON"),
    (lambda a: a.update(meta=np.array(json.dumps({"format": "other"}))), "format"),
    (lambda a: a.update(b0=a["b0"][:-1]), "b0"),
    (lambda a: a.update(w1=a["w1"][:, :-1]), "layer 1"),
    (lambda a: a.update(w0=a["w0"].astype(np.int64)), "w0"),
    (lambda a: a.update(extra=np.zeros(2)), "unexpected"),
    (lambda a: a.update(classes=np.zeros(10)), "classes"),
    (lambda a: a["w2"].__setitem__((0, 0), np.nan), "NaN"),
])
def test_hand_crafted_dense_files(fitted, tmp_path, tamper, match):
    arrays = saved_arrays(fitted, tmp_path)
    tamper(arrays)
    with pytest.raises(ValueError, match=match):
        sparseprune.load(write_npz(tmp_path / "bad.npz", arrays))


def _bad_meta_params(a):
    meta = json.loads(str(a["meta"]))
    meta["params"]["learning_rate_init"] = -1
    a["meta"] = np.array(json.dumps(meta))


@pytest.mark.parametrize("tamper,match", [
    (lambda a: a["w0_indices"].__setitem__(0, 10_000), "CSR"),
    (lambda a: a["w0_indptr"].__setitem__(-1, 10**6), "CSR"),
    (lambda a: a.update(w0_indptr=a["w0_indptr"][::-1].copy()), "CSR"),
    (lambda a: a.update(w0_shape=np.array([5, 5])), "CSR|shape"),
    (lambda a: a.pop("w1_data"), "weight"),
    (_bad_meta_params, "learning_rate_init"),
])
def test_hand_crafted_csr_files(fitted, tmp_path, tamper, match):
    arrays = saved_arrays(copy.deepcopy(fitted).prune(sparsity=0.5), tmp_path)
    tamper(arrays)
    with pytest.raises(ValueError, match=match):
        sparseprune.load(write_npz(tmp_path / "bad.npz", arrays))


def test_load_accepts_file_objects(fitted, data):
    buf = io.BytesIO()
    fitted.save(buf)
    buf.seek(0)
    np.testing.assert_array_equal(sparseprune.load(buf).predict(data[0]), fitted.predict(data[0]))
    assert zipfile.is_zipfile(io.BytesIO(buf.getvalue()))


# ---------------------------------------------------------------- scikit-learn interop
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
def test_from_sklearn_classifier_agrees(data, activation):
    X, y = data
    sk = SkMLPClassifier(hidden_layer_sizes=(30, 10), activation=activation, max_iter=30, random_state=0).fit(X, y)
    ours = sparseprune.mlp.from_sklearn(sk)
    assert type(ours) is MLPClassifier and ours.layers_[0].weight.dtype == np.float64
    np.testing.assert_array_equal(ours.predict(X), sk.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), rtol=1e-9, atol=1e-12)


def test_from_sklearn_binary_and_regressor(data):
    X, y = data
    sk = SkMLPClassifier(hidden_layer_sizes=(10,), max_iter=30, random_state=0).fit(X, y % 2)
    ours = MLPClassifier.from_sklearn(sk)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), rtol=1e-9, atol=1e-12)
    Xr, yr = make_regression(100, 5, random_state=0)
    skr = SkMLPRegressor(hidden_layer_sizes=(10,), max_iter=50, random_state=0).fit(Xr, yr)
    r = sparseprune.mlp.from_sklearn(skr)
    assert type(r) is MLPRegressor
    np.testing.assert_allclose(r.predict(Xr), skr.predict(Xr), rtol=1e-9, atol=1e-9)
    with pytest.raises(TypeError, match="MLPClassifier"):
        MLPClassifier.from_sklearn(skr)


def test_to_sklearn_agrees_after_pruning(fitted, data):
    X, y = data
    m = copy.deepcopy(fitted).prune(sparsity=0.7)
    m.eliminate_neurons(X, criterion="max_abs", fraction=0.25)
    sk = m.to_sklearn()
    assert isinstance(sk, SkMLPClassifier)
    assert sk.hidden_layer_sizes == tuple(layer.shape[0] for layer in m.layers_[:-1])
    np.testing.assert_array_equal(sk.predict(X), m.predict(X))
    np.testing.assert_allclose(sk.predict_proba(X), m.predict_proba(X), rtol=1e-4, atol=1e-6)
    back = MLPClassifier.from_sklearn(sk)
    np.testing.assert_array_equal(back.predict(X), m.predict(X))
