"""MLP estimators: training, accuracy targets, pruning, fine-tuning, neuron elimination, reports.

References are independent: the plain-numpy forward pass ref_mlp (naive.py),
scikit-learn's own MLP, and counts computed here from the weights.
"""
import copy
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_regression
from sklearn.exceptions import NotFittedError
from naive import model_layers, ref_mlp
from sklearn.model_selection import train_test_split

from sparseprune import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ---------------------------------------------------------------- helpers
def accuracy(model, X, y):
    return float(np.mean(model.predict(X) == y))


# ---------------------------------------------------------------- digits fixtures
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def dense_model(digits):
    Xtr, Xte, ytr, yte = digits
    return MLPClassifier(hidden_layer_sizes=(300, 100), random_state=0).fit(Xtr, ytr)


@pytest.fixture
def model(dense_model):
    return copy.deepcopy(dense_model)


# ---------------------------------------------------------------- training
def test_dense_digits_accuracy_at_least_97(dense_model, digits):
    Xtr, Xte, ytr, yte = digits
    assert accuracy(dense_model, Xte, yte) >= 0.97
    assert [layer.shape for layer in dense_model.layers_] == [(300, 64), (100, 300), (10, 100)]
    assert all(isinstance(layer.weight, np.ndarray) for layer in dense_model.layers_)


def test_predict_matches_numpy_forward(dense_model, digits):
    Xte = digits[1]
    logits = ref_mlp(model_layers(dense_model), Xte)
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    np.testing.assert_allclose(dense_model.predict_proba(Xte), P, atol=1e-4)
    np.testing.assert_array_equal(dense_model.predict(Xte), dense_model.classes_[np.argmax(logits, 1)])


def test_training_is_reproducible_and_input_untouched(digits):
    Xtr, _, ytr, _ = digits
    X0, y0 = Xtr[:300].copy(), ytr[:300].copy()
    a = MLPClassifier((20,), max_iter=20, random_state=3).fit(X0, y0)
    b = MLPClassifier((20,), max_iter=20, random_state=3).fit(X0, y0)
    np.testing.assert_array_equal(X0, Xtr[:300])
    np.testing.assert_array_equal(y0, ytr[:300])
    for la, lb in zip(a.layers_, b.layers_):
        np.testing.assert_array_equal(la.weight, lb.weight)


@pytest.mark.parametrize("solver,activation", [("sgd", "relu"), ("adam", "tanh"), ("adam", "logistic")])
def test_other_solvers_and_activations_learn(digits, solver, activation):
    Xtr, Xte, ytr, yte = digits
    m = MLPClassifier((64,), solver=solver, activation=activation, learning_rate_init=0.05 if solver == "sgd" else 0.01,
                      max_iter=40, random_state=0)
    m.fit(Xtr, ytr)
    assert accuracy(m, Xte, yte) > 0.9
    np.testing.assert_allclose(m.predict_proba(Xte).sum(1), 1, rtol=1e-5)
    logits = ref_mlp(model_layers(m), Xte, activation)
    np.testing.assert_array_equal(m.predict(Xte), m.classes_[np.argmax(logits, 1)])


def test_binary_uses_one_logistic_unit(digits):
    Xtr, Xte, ytr, yte = digits
    sel = ytr < 2
    m = MLPClassifier((16,), max_iter=50, random_state=0).fit(Xtr[sel], np.where(ytr[sel] == 1, "one", "zero"))
    assert m.layers_[-1].shape[0] == 1 and m.out_activation_ == "logistic"
    P = m.predict_proba(Xte)
    z = ref_mlp(model_layers(m), Xte)[:, 0]
    np.testing.assert_allclose(P[:, 1], 1 / (1 + np.exp(-z)), atol=1e-5)
    assert set(m.predict(Xte)) <= {"one", "zero"}


def test_early_stopping(digits):
    Xtr, Xte, ytr, yte = digits
    m = MLPClassifier((64,), early_stopping=True, max_iter=200, random_state=0).fit(Xtr, ytr)
    assert m.validation_scores_ and m.best_validation_score_ == max(m.validation_scores_)
    assert m.n_iter_ < 200 and accuracy(m, Xte, yte) > 0.93


def test_regressor_fits_prunes_and_matches_numpy():
    X, y = make_regression(n_samples=300, n_features=8, noise=1.0, random_state=0)
    y = y / y.std()
    m = MLPRegressor((64,), max_iter=300, learning_rate_init=1e-2, random_state=0).fit(X, y)
    assert m.score(X, y) > 0.95
    np.testing.assert_allclose(m.predict(X), ref_mlp(model_layers(m), X)[:, 0], atol=1e-4)
    m.prune(sparsity=0.5)
    assert all(layer.is_sparse for layer in m.layers_)
    np.testing.assert_allclose(m.predict(X), ref_mlp(model_layers(m), X)[:, 0], atol=1e-4)
    Y2 = np.c_[y, -y]
    m2 = MLPRegressor((16,), max_iter=100, random_state=0).fit(X, Y2)
    assert m2.predict(X).shape == (300, 2)


# ---------------------------------------------------------------- one-shot pruning
def total_density(model):
    nnz = sum(layer.nnz for layer in model.layers_)
    return nnz / sum(layer.shape[0] * layer.shape[1] for layer in model.layers_)


def test_prune_global_keeps_the_largest_weights(model, digits):
    dense = [layer.weight.copy() for layer in model.layers_]
    model.prune(sparsity=0.9)
    assert all(layer.is_sparse for layer in model.layers_)
    allw = np.concatenate([np.abs(W).ravel() for W in dense])
    k = int(np.floor(0.9 * allw.size))
    cut = np.sort(allw)[k - 1]
    for layer, W in zip(model.layers_, dense):
        ref = np.where(np.abs(W) > cut, W, 0)
        np.testing.assert_array_equal(layer.weight.toarray(), ref)
    assert abs(total_density(model) - 0.1) < 1e-3
    logits = ref_mlp(model_layers(model), digits[1])
    np.testing.assert_array_equal(model.predict(digits[1]), model.classes_[logits.argmax(1)])


def test_prune_layer_scope_and_threshold(model):
    dense = [layer.weight.copy() for layer in model.layers_]
    m1 = copy.deepcopy(model).prune(sparsity=0.8, scope="layer")
    for layer, W in zip(m1.layers_, dense):
        assert abs(layer.nnz / W.size - 0.2) < 0.01
    m2 = copy.deepcopy(model).prune(threshold=0.05)
    for layer, W in zip(m2.layers_, dense):
        np.testing.assert_array_equal(layer.weight.toarray(), np.where(np.abs(W) >= 0.05, W, 0))


def test_fine_tune_keeps_pruned_weights_exactly_zero(model, digits):
    """Masked fine-tuning: same CSR structure afterwards, int32 sorted indices, zeros stay zeros."""
    Xtr, Xte, ytr, yte = digits
    model.prune(sparsity=0.9)
    before = [layer.weight.copy() for layer in model.layers_]
    X0, y0 = Xtr.copy(), ytr.copy()
    model.fine_tune(Xtr, ytr, epochs=3)
    np.testing.assert_array_equal(X0, Xtr)
    np.testing.assert_array_equal(y0, ytr)
    for layer, W in zip(model.layers_, before):
        assert layer.is_sparse and layer.weight.indices.dtype == np.int32
        layer.weight.check_format(full_check=True)
        np.testing.assert_array_equal(layer.weight.indptr, W.indptr)
        np.testing.assert_array_equal(layer.weight.indices, W.indices)
        assert not np.array_equal(layer.weight.data, W.data)  # it did train
        D = layer.weight.toarray()
        assert np.all(D[W.toarray() == 0] == 0)


def test_gradual_prune_defaults_95_percent_within_half_a_point(dense_model, model, digits):
    # The bar, with gradual_prune's default arguments (80 epochs, 3 * learning_rate_init).
    Xtr, Xte, ytr, yte = digits
    base = accuracy(dense_model, Xte, yte)
    model.gradual_prune(Xtr, ytr, sparsity=0.95)
    assert 1 - total_density(model) >= 0.95 - 1e-4
    acc = accuracy(model, Xte, yte)
    assert acc >= base - 0.005, (acc, base)
    # Zhu & Gupta cubic schedule, checked against the formula.
    n = len(model.sparsity_schedule_)
    ref = [0.95 + (0.0 - 0.95) * (1 - (t + 1) / n) ** 3 for t in range(n)]
    np.testing.assert_allclose(model.sparsity_schedule_, ref)
    assert np.all(np.diff(ref) >= 0) and ref[-1] == pytest.approx(0.95)


def test_gradual_prune_layer_scope_from_a_sparse_start(model, digits):
    Xtr, Xte, ytr, yte = digits
    model.prune(sparsity=0.5)
    model.gradual_prune(Xtr, ytr, sparsity=0.9, epochs=6, scope="layer", initial_sparsity=0.5, pruning_epochs=3)
    for layer in model.layers_:
        assert layer.is_sparse and abs(layer.nnz / (layer.shape[0] * layer.shape[1]) - 0.1) < 0.01
    np.testing.assert_allclose(model.sparsity_schedule_, [0.9 - 0.4 * (1 - t / 3) ** 3 for t in (1, 2, 3)])
    r = MLPRegressor((8,), max_iter=5, random_state=0).fit(Xtr[:100], ytr[:100].astype(float))
    with pytest.raises(ValueError, match="outputs"):
        r.fine_tune(Xtr[:100], np.c_[ytr[:100], ytr[:100]].astype(float), epochs=1)


# ---------------------------------------------------------------- neuron elimination
def n_hidden(model):
    return sum(layer.shape[0] for layer in model.layers_[:-1])


def test_dead_neuron_removal_changes_no_prediction(model, digits):
    Xtr, Xte, ytr, yte = digits
    Xcal = np.vstack([Xtr, Xte])
    A1 = np.maximum(Xcal @ model.layers_[0].weight.T.astype(np.float64) + model.layers_[0].bias, 0)
    dead1 = int(np.sum(np.all(A1 == 0, axis=0)))
    assert dead1 > 0  # the fixture really has dead ReLUs
    P = model.predict_proba(Xcal)
    pred = model.predict(Xcal)
    model.eliminate_neurons(Xcal)
    assert model.neurons_removed_[0] == dead1
    assert model.layers_[0].shape[0] == 300 - dead1 and model.layers_[1].shape[1] == 300 - dead1
    np.testing.assert_array_equal(model.predict(Xcal), pred)
    np.testing.assert_allclose(model.predict_proba(Xcal), P, atol=1e-5)


@pytest.mark.parametrize("order", ["prune_then_eliminate", "eliminate_then_prune"])
def test_elimination_combines_with_weight_pruning(model, digits, order):
    Xtr, Xte, ytr, yte = digits
    if order == "prune_then_eliminate":
        model.prune(sparsity=0.8)
        pred = model.predict(Xtr)
        model.eliminate_neurons(Xtr)  # exact: constant neurons only
        assert all(layer.is_sparse for layer in model.layers_)
        np.testing.assert_array_equal(model.predict(Xtr), pred)
        model.eliminate_neurons(Xtr, criterion="mean_abs", fraction=0.3)
    else:
        model.eliminate_neurons(Xtr, criterion="l2", fraction=0.3)
        model.prune(sparsity=0.8)
    assert n_hidden(model) <= 0.7 * 400 + 2
    for a, b in zip(model.layers_[:-1], model.layers_[1:]):
        assert a.shape[0] == b.shape[1] == a.bias.shape[0]
    np.testing.assert_array_equal(model.predict(Xte), model.classes_[ref_mlp(model_layers(model), Xte).argmax(1)])
    model.fine_tune(Xtr, ytr, epochs=5)
    assert accuracy(model, Xte, yte) > 0.95


@pytest.mark.parametrize("criterion", ["l2", "max_abs"])
def test_eliminating_half_the_neurons_within_half_a_point(dense_model, model, digits, criterion):
    Xtr, Xte, ytr, yte = digits
    base = accuracy(dense_model, Xte, yte)
    model.eliminate_neurons(Xtr, criterion=criterion, fraction=0.5)
    assert n_hidden(model) <= 200
    model.fine_tune(Xtr, ytr, epochs=10)
    assert accuracy(model, Xte, yte) >= base - 0.005


def test_threshold_criteria(model, digits):
    Xtr = digits[0]
    A1 = np.maximum(Xtr @ model.layers_[0].weight.T.astype(np.float64) + model.layers_[0].bias, 0)
    apoz = (A1 == 0).mean(0)
    m = copy.deepcopy(model).eliminate_neurons(Xtr, criterion="apoz", threshold=0.9)
    assert m.neurons_removed_[0] == int(np.sum(apoz > 0.9))
    m = copy.deepcopy(model).eliminate_neurons(Xtr, criterion="max_abs", threshold=0.5)
    assert m.neurons_removed_[0] == int(np.sum(A1.max(0) < 0.5))


# ---------------------------------------------------------------- report
def test_sparsity_report(model):
    model.prune(sparsity=0.9)
    rows = model.sparsity_report()
    assert [r["layer"] for r in rows] == [0, 1, 2, "total"]
    for r, layer in zip(rows, model.layers_):
        W = layer.weight
        out, inp = W.shape
        assert r["shape"] == (out, inp) and r["nnz"] == np.count_nonzero(W.toarray())
        item = W.dtype.itemsize  # the model's dtype: float64 here (digits / 16 is float64)
        assert r["dense_bytes"] == out * inp * item
        assert r["csr_bytes"] == r["nnz"] * (item + W.indices.itemsize) + (out + 1) * W.indptr.itemsize
        assert r["flops_sparse"] == 2 * r["nnz"] and r["flops_dense"] == 2 * out * inp
        assert r["density"] == pytest.approx(r["nnz"] / (out * inp))
        assert r["path"] in ("dense", "sparse") and r["format"] == "csr"
        assert W.indices.dtype == np.int32 and W.has_sorted_indices
    tot = rows[-1]
    assert tot["nnz"] == sum(r["nnz"] for r in rows[:-1])
    assert tot["density"] == pytest.approx(0.1, abs=1e-3)
    assert tot["csr_bytes"] < tot["dense_bytes"] / 4


# ---------------------------------------------------------------- bad input
def test_bad_input(model, digits):
    Xtr, Xte, ytr, yte = digits
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(Xte)
    with pytest.raises(NotFittedError):
        MLPClassifier().prune(sparsity=0.5)
    with pytest.raises(ValueError, match="64 features"):
        model.predict(Xte[:, :10])
    with pytest.raises(ValueError, match="class"):
        MLPClassifier().fit(Xtr[:20], np.zeros(20))
    Xn = Xtr[:50].copy()
    Xn[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLPClassifier().fit(Xn, ytr[:50])
    Xi = Xtr[:50].copy()
    Xi[3, 3] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        model.predict(Xi)
    with pytest.raises(ValueError, match="NaN"):
        MLPRegressor().fit(Xtr[:50], np.r_[np.nan, np.ones(49)])
    with pytest.raises(ValueError, match="Unknown label type|NaN"):
        MLPClassifier().fit(Xtr[:50], np.r_[np.nan, np.ones(49)])
    with pytest.raises(ValueError, match="'learning_rate_init'"):
        MLPClassifier(learning_rate_init=-0.1).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="'hidden_layer_sizes'"):
        MLPClassifier(hidden_layer_sizes=()).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="'hidden_layer_sizes'"):
        MLPClassifier(hidden_layer_sizes=(10, 0)).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="'solver'"):
        MLPClassifier(solver="lbfgs").fit(Xtr, ytr)
    with pytest.raises(ValueError, match=r"'sparsity'.*\[0.0, 1.0\)"):
        model.prune(sparsity=1.0)
    with pytest.raises(ValueError, match="'sparsity'"):
        model.gradual_prune(Xtr, ytr, sparsity=1.5)
    with pytest.raises(ValueError, match="exactly one"):
        model.prune()
    with pytest.raises(ValueError, match="'scope'"):
        model.prune(sparsity=0.5, scope="row")
    with pytest.raises(ValueError, match="'epochs'"):
        model.fine_tune(Xtr, ytr, epochs=0)
    with pytest.raises(ValueError, match="X_calib: .*64 features"):
        model.eliminate_neurons(Xtr[:, :5])
    with pytest.raises(ValueError, match="X_calib has 0 samples"):
        model.eliminate_neurons(Xtr[:0])
    with pytest.raises(ValueError, match="X_calib: .*NaN"):
        model.eliminate_neurons(np.full((3, 64), np.nan))
    with pytest.raises(ValueError, match="'criterion'"):
        model.eliminate_neurons(Xtr, criterion="random")
    with pytest.raises(ValueError, match="'fraction'"):
        model.eliminate_neurons(Xtr, fraction=1.0)
    with pytest.raises(ValueError, match="labels not seen"):
        model.fine_tune(Xtr[:10], np.full(10, 42), epochs=1)


@pytest.mark.parametrize("weights", ["incoming", "outgoing"])
def test_weight_norm_criterion_on_sparse_layers_removes_the_weakest(model, digits, weights):
    Xtr = digits[0]
    model.prune(sparsity=0.5)
    W0, W1 = model.layers_[0].weight.toarray(), model.layers_[1].weight.toarray()
    A1 = np.maximum(Xtr @ W0.T.astype(np.float64) + model.layers_[0].bias, 0)
    const = np.all(A1 == A1[0], axis=0)
    norms = np.abs(W0).sum(1) if weights == "incoming" else np.abs(W1).sum(0)
    weakest = set(np.argsort(norms, kind="stable")[:60].tolist()) | set(np.flatnonzero(const).tolist())
    kept_rows = [i for i in range(300) if i not in weakest]
    model.eliminate_neurons(Xtr, criterion="l1", fraction=0.2, weights=weights)
    assert model.layers_[0].is_sparse and model.layers_[0].shape == (len(kept_rows), 64)
    np.testing.assert_array_equal(model.layers_[0].weight.toarray(), W0[kept_rows])


@pytest.mark.parametrize("n", [1, 2, 37, 200])
def test_pruned_forward_through_consecutive_sparse_layers(model, digits, n):
    # A cheap-sparse table sends every pruned layer to the sparse kernels, one
    # after the other; the result must equal the plain numpy forward pass.
    import sparseprune
    from sparseprune.inference import costmodel as cal

    Xte = digits[1][:n]
    model.prune(sparsity=0.8, scope="layer")
    table = {"source": "test", "dense_per_mac": {str(b): 1e-9 * b for b in cal.BATCHES},
             "sparse_per_nnz": {str(b): 1e-12 * b for b in cal.BATCHES}}
    sparseprune.set_calibration(table)
    try:
        assert all(layer.is_sparse for layer in model.layers_)
        assert all(layer._prepared("relu").explain(n).path == "sparse" for layer in model.layers_)
        out = model._forward(np.ascontiguousarray(Xte, dtype=model.layers_[0].bias.dtype))
    finally:
        sparseprune.set_calibration(None)
    assert out.shape == (n, 10) and out.flags.c_contiguous
    np.testing.assert_allclose(out, ref_mlp(model_layers(model), Xte), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("cls", ["MLPClassifier", "MLPRegressor"])
def test_model_dtype_follows_the_input_as_in_scikit_learn(cls, in_dtype, digits):
    # scikit-learn's own MLP is the reference: float32 in, float32 weights; else float64.
    from sklearn import neural_network

    import sparseprune

    Xtr, _, ytr, _ = digits
    X = (Xtr * 16).astype(in_dtype)[:300]
    y = ytr[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(neural_network, cls)(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, y)
        ours = getattr(sparseprune, cls)(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, y)
    want = ref.coefs_[0].dtype
    assert all(layer.weight.dtype == want and layer.bias.dtype == want for layer in ours.layers_)
    method = "predict_proba" if cls == "MLPClassifier" else "predict"
    assert getattr(ours, method)(X).dtype == getattr(ref, method)(X).dtype
    # Pruned and served sparse, the model keeps its dtype.
    ours.prune(sparsity=0.5)
    assert all(layer.weight.dtype == want for layer in ours.layers_)
