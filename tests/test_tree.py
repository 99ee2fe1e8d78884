"""compile_tree against scikit-learn's own predict / predict_proba, row for row."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import NotFittedError
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier

from sparseprune import compile_tree, prune_tree, thread_limit
from sparseprune.trees.compile import thresholds_float32

CLASSIFIERS = [
    lambda: DecisionTreeClassifier(random_state=0),
    lambda: DecisionTreeClassifier(random_state=0, max_depth=5),
    lambda: ExtraTreeClassifier(random_state=0),
    lambda: RandomForestClassifier(n_estimators=7, random_state=0),
    lambda: RandomForestClassifier(n_estimators=7, max_depth=6, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=5, random_state=0),
]
REGRESSORS = [
    lambda: DecisionTreeRegressor(random_state=0),
    lambda: DecisionTreeRegressor(random_state=0, max_depth=4),
    lambda: RandomForestRegressor(n_estimators=6, random_state=0),
    lambda: ExtraTreesRegressor(n_estimators=4, max_depth=8, random_state=0),
]


def _clf_data(n=600, classes=4, seed=0):
    X, y = make_classification(n, 8, n_informative=5, n_classes=classes, random_state=seed)
    return X, y


def _queries(X, n, seed=0):
    """Held-out style rows plus rows sitting exactly on, just above and just below the training values."""
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(n, X.shape[1])) * X.std(axis=0) + X.mean(axis=0)
    on = X[rng.integers(0, len(X), n // 2)].copy()
    up = np.nextafter(on.astype(np.float32), np.float32(np.inf)).astype(np.float64)
    return np.vstack([Q, on, up])


@pytest.mark.parametrize("make", CLASSIFIERS)
@pytest.mark.parametrize("max_pad_depth", [0, 3, 20])
@pytest.mark.parametrize("weighted", [False, True])
def test_classifier_equals_sklearn(make, max_pad_depth, weighted):
    X, y = _clf_data()
    sw = np.random.default_rng(1).uniform(0.1, 3.0, len(y)) if weighted else None
    est = make().fit(X, y, sample_weight=sw)
    model = compile_tree(est, max_pad_depth=max_pad_depth)
    for Q in (_queries(X, 300), _queries(X, 2500, seed=1)):     # serial and parallel paths
        np.testing.assert_array_equal(model.predict(Q), est.predict(Q))
        np.testing.assert_array_equal(model.predict_proba(Q), est.predict_proba(Q))
        np.testing.assert_array_equal(model.predict(Q.astype(np.float32)), est.predict(Q.astype(np.float32)))


@pytest.mark.parametrize("make", REGRESSORS)
@pytest.mark.parametrize("max_pad_depth", [0, 12])
def test_regressor_equals_sklearn(make, max_pad_depth):
    X, y = make_regression(500, 6, noise=3.0, random_state=0)
    sw = np.random.default_rng(2).uniform(0.5, 2.0, len(y))
    est = make().fit(X, y, sample_weight=sw)
    model = compile_tree(est, max_pad_depth=max_pad_depth)
    for Q in (_queries(X, 200), _queries(X, 3000, seed=2)):
        np.testing.assert_array_equal(model.predict(Q), est.predict(Q))
    with pytest.raises(AttributeError, match="classifiers"):
        model.predict_proba(X)


@pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.parallel)])
def test_string_labels_and_threads(n):
    import numba

    if n > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba was started with {numba.config.NUMBA_NUM_THREADS} thread(s)")
    X, y = _clf_data(classes=3)
    names = np.array(["ant", "bee", "cat"])[y]
    est = RandomForestClassifier(n_estimators=5, max_depth=9, random_state=0).fit(X, names)
    model = compile_tree(est)
    Q = _queries(X, 3000)
    with thread_limit(n):
        np.testing.assert_array_equal(model.predict(Q), est.predict(Q))
    np.testing.assert_array_equal(model.predict(Q, n_threads=n), est.predict(Q))


def test_pruned_models_compile():
    X, y = _clf_data()
    est = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    pruned = prune_tree(est, "info_gain", threshold=1e-3)
    Q = _queries(X, 1000)
    np.testing.assert_array_equal(compile_tree(pruned).predict_proba(Q), pruned.predict_proba(Q))


def test_single_leaf_and_one_row():
    X = np.zeros((10, 3))
    y = np.ones(10)
    est = DecisionTreeClassifier().fit(X, y)
    model = compile_tree(est)
    np.testing.assert_array_equal(model.predict(X[:1]), est.predict(X[:1]))
    assert model.predict(np.empty((0, 3))).shape == (0,)


def test_thresholds_round_down():
    rng = np.random.default_rng(0)
    t64 = rng.normal(size=10_000) * 10.0 ** rng.integers(-5, 5, 10_000)
    t32 = thresholds_float32(t64)
    assert np.all(t32.astype(np.float64) <= t64)
    above = np.nextafter(t32, np.float32(np.inf))
    assert np.all(above.astype(np.float64) > t64)


def test_boundary_rows_exactly_at_thresholds():
    X, y = _clf_data(400)
    est = DecisionTreeClassifier(random_state=0).fit(X, y)
    t = est.tree_
    internal = t.children_left != -1
    rows = []
    for f, thr in zip(t.feature[internal], t.threshold[internal]):
        for v in (np.float32(thr), np.nextafter(np.float32(thr), np.float32(np.inf)),
                  np.nextafter(np.float32(thr), np.float32(-np.inf)), thr):
            r = X[len(rows) % len(X)].copy()
            r[f] = v
            rows.append(r)
    Q = np.array(rows)
    np.testing.assert_array_equal(compile_tree(est).predict_proba(Q), est.predict_proba(Q))
    np.testing.assert_array_equal(compile_tree(est, max_pad_depth=20).predict(Q), est.predict(Q))


def test_input_untouched():
    X, y = _clf_data()
    est = DecisionTreeClassifier(random_state=0).fit(X, y)
    Q = _queries(X, 100)
    Q_f = np.asfortranarray(Q)
    keep = Q.copy()
    compile_tree(est).predict(Q)
    compile_tree(est).predict(Q_f)
    np.testing.assert_array_equal(Q, keep)
    np.testing.assert_array_equal(Q_f, keep)


def test_bad_input():
    X, y = _clf_data()
    est = DecisionTreeClassifier(random_state=0).fit(X, y)
    model = compile_tree(est)
    for bad in (np.nan, np.inf, -np.inf, 1e39):     # 1e39 overflows float32 as scikit-learn casts it
        Q = X[:5].copy()
        Q[2, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            model.predict(Q)
    Q = np.repeat(X[:5], 600, axis=0)
    Q[-1, 0] = np.nan                                    # parallel path
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.predict_proba(Q)
    with pytest.raises(ValueError, match="7 features"):
        model.predict(X[:, :7])
    with pytest.raises(ValueError, match="2-D"):
        model.predict(X[0])
    with pytest.raises(TypeError, match="sparse"):
        model.predict(sp.csr_array(X))
    with pytest.raises(TypeError, match="dtype"):
        model.predict(X.astype(object))
    np.testing.assert_array_equal(model.predict(X.round().astype(np.int64)), est.predict(X.round()))
    with pytest.raises(NotFittedError):
        compile_tree(RandomForestClassifier())
    with pytest.raises(TypeError, match="DecisionTreeClassifier"):
        compile_tree(GradientBoostingClassifier(n_estimators=2).fit(X, y))
    with pytest.raises(ValueError, match="outputs"):
        compile_tree(DecisionTreeRegressor().fit(X, np.column_stack([y, y])))
    with pytest.raises(ValueError, match="'max_pad_depth'"):
        compile_tree(est, max_pad_depth=40)


@st.composite
def problem(draw):
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(5, 120))
    d = draw(st.integers(1, 5))
    X = rng.integers(-4, 5, size=(n, d)) / draw(st.sampled_from([1.0, 3.0, 10.0]))
    y = rng.integers(0, draw(st.integers(1, 4)), size=n)
    kind = draw(st.sampled_from(["tree", "forest", "reg"]))
    return X, y, seed, kind, draw(st.integers(0, 14))


@settings(max_examples=40, deadline=None)
@given(problem())
def test_hypothesis_compiled_equals_sklearn(p):
    X, y, seed, kind, pad = p
    if kind == "tree":
        est = DecisionTreeClassifier(random_state=seed).fit(X, y)
    elif kind == "forest":
        est = RandomForestClassifier(n_estimators=3, random_state=seed).fit(X, y)
    else:
        est = DecisionTreeRegressor(random_state=seed).fit(X, y * 1.5)
    model = compile_tree(est, max_pad_depth=pad)
    Q = np.vstack([X, X + 1 / 7, -X])
    np.testing.assert_array_equal(model.predict(Q), est.predict(Q))
    if kind != "reg":
        np.testing.assert_array_equal(model.predict_proba(Q), est.predict_proba(Q))
