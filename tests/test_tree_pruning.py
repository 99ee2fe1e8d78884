"""prune_tree against scikit-learn (ccp) and plain recursive Python references in naive.py."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import ref_error_based, ref_info_gain, ref_reduced_error
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    make_classification,
)
from sklearn.ensemble import (
    ExtraTreesClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

import sparseprune
from sparseprune import prune_tree, tree_report
from sparseprune.trees import ccp_path, pruning_curve


# --------------------------------------------------------------------------- comparing trees
def canon(t, node=0, collapse=frozenset()):
    """Nested-tuple form of a tree: ('leaf', value) or (feature, threshold, left, right)."""
    if t.children_left[node] == -1 or node in collapse:
        return ("leaf", tuple(np.round(t.value[node].ravel(), 12)))
    return (int(t.feature[node]), float(t.threshold[node]),
            canon(t, t.children_left[node], collapse), canon(t, t.children_right[node], collapse))


def assert_same_tree(a, b):
    """Node-for-node equality of two fitted Tree objects."""
    assert a.node_count == b.node_count
    assert a.max_depth == b.max_depth
    for f in ("children_left", "children_right", "feature", "threshold", "impurity",
              "n_node_samples", "weighted_n_node_samples", "value"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    internal = a.children_left != -1
    np.testing.assert_array_equal(a.missing_go_to_left[internal], b.missing_go_to_left[internal])


def assert_valid(est, X):
    """The pruned estimator's attributes agree with its own node arrays (no orphans)."""
    t = est.tree_
    depths = {}

    def walk(i, d):
        depths[i] = d
        if t.children_left[i] != -1:
            walk(t.children_left[i], d + 1)
            walk(t.children_right[i], d + 1)

    walk(0, 0)
    assert sorted(depths) == list(range(t.node_count))          # every node reachable, ids compact
    leaves = [i for i in depths if t.children_left[i] == -1]
    assert est.get_n_leaves() == len(leaves)
    assert est.get_depth() == max(depths.values())
    ids = est.apply(X)
    assert set(ids.tolist()) <= set(leaves)
    P = est.decision_path(X)
    np.testing.assert_array_equal(np.diff(P.indptr), [depths[i] + 1 for i in ids])
    imp = np.zeros(est.n_features_in_)
    w, I = t.weighted_n_node_samples, t.impurity
    for i in depths:
        if t.children_left[i] != -1:
            L, R = t.children_left[i], t.children_right[i]
            imp[t.feature[i]] += w[i] * I[i] - w[L] * I[L] - w[R] * I[R]
    if imp.sum() > 0:
        np.testing.assert_allclose(est.feature_importances_, imp / imp.sum(), rtol=1e-10, atol=1e-15)


# --------------------------------------------------------------------------- data


def _digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


DATASETS = {
    "iris": lambda: load_iris(return_X_y=True),
    "cancer": lambda: load_breast_cancer(return_X_y=True),
    "digits": lambda: load_digits(return_X_y=True),
    "diabetes": lambda: load_diabetes(return_X_y=True),
}


# --------------------------------------------------------------------------- cost complexity


@pytest.mark.parametrize("name", list(DATASETS))
@pytest.mark.parametrize("weighted", [False, True])
def test_ccp_equals_sklearn_node_for_node(name, weighted):
    X, y = DATASETS[name]()
    cls = DecisionTreeRegressor if name == "diabetes" else DecisionTreeClassifier
    sw = np.random.default_rng(0).uniform(0.5, 2.0, len(y)) if weighted else None
    base = cls(random_state=0).fit(X, y, sample_weight=sw)
    path = base.cost_complexity_pruning_path(X, y, sample_weight=sw).ccp_alphas
    alphas = sorted({0.0, *np.quantile(path, [0.1, 0.5, 0.8, 0.95]), path[-1], float(path[-1]) * 2})
    for a in alphas:
        ours = prune_tree(base, "cost_complexity", alpha=a)
        ref = cls(random_state=0, ccp_alpha=a).fit(X, y, sample_weight=sw)
        assert_same_tree(ours.tree_, ref.tree_)
        np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_ccp_alphas_between_path_points_and_best_first():
    X, y = load_breast_cancer(return_X_y=True)
    base = DecisionTreeClassifier(random_state=1, max_leaf_nodes=30).fit(X, y)   # best-first builder
    for a in (1e-4, 3e-3, 0.01):
        ref = DecisionTreeClassifier(random_state=1, max_leaf_nodes=30, ccp_alpha=a).fit(X, y)
        assert_same_tree(prune_tree(base, "cost_complexity", alpha=a).tree_, ref.tree_)


def test_ccp_forest_equals_sklearn():
    X, y = load_breast_cancer(return_X_y=True)
    for a in (0.002, 0.01):
        base = RandomForestClassifier(n_estimators=4, random_state=0).fit(X, y)
        ref = RandomForestClassifier(n_estimators=4, random_state=0, ccp_alpha=a).fit(X, y)
        ours = prune_tree(base, "cost_complexity", alpha=a)
        for t1, t2 in zip(ours.estimators_, ref.estimators_):
            assert_same_tree(t1.tree_, t2.tree_)
        np.testing.assert_array_equal(ours.predict_proba(X), ref.predict_proba(X))
    Xr, yr = load_diabetes(return_X_y=True)
    base = RandomForestRegressor(n_estimators=3, random_state=0).fit(Xr, yr)
    ref = RandomForestRegressor(n_estimators=3, random_state=0, ccp_alpha=50.0).fit(Xr, yr)
    ours = prune_tree(base, "cost_complexity", alpha=50.0)
    for t1, t2 in zip(ours.estimators_, ref.estimators_):
        assert_same_tree(t1.tree_, t2.tree_)


def test_ccp_path_equals_sklearn():
    X, y = load_diabetes(return_X_y=True)
    t = DecisionTreeRegressor(random_state=0, max_depth=8).fit(X, y)
    a, imp = ccp_path(t)
    ref = t.cost_complexity_pruning_path(X, y)
    np.testing.assert_array_equal(a, ref.ccp_alphas)
    np.testing.assert_array_equal(imp, ref.impurities)


# --------------------------------------------------------------------------- info gain, REP, C4.5


@pytest.mark.parametrize("criterion", ["gini", "entropy"])
def test_info_gain_matches_reference(criterion):
    Xtr, Xte, ytr, yte = _digits()
    base = DecisionTreeClassifier(random_state=0, criterion=criterion).fit(Xtr, ytr)
    for tau in (0.0, 1e-3, 3e-3, 0.02, 1.0):
        ours = prune_tree(base, "info_gain", threshold=tau)
        assert canon(ours.tree_) == canon(base.tree_, collapse=frozenset(ref_info_gain(base.tree_, tau)))
        assert_valid(ours, Xte)


def test_info_gain_regressor_and_weights():
    X, y = load_diabetes(return_X_y=True)
    sw = np.random.default_rng(1).uniform(0.2, 3.0, len(y))
    base = DecisionTreeRegressor(random_state=0, min_samples_leaf=3).fit(X, y, sample_weight=sw)
    for tau in (1.0, 20.0, 200.0):
        ours = prune_tree(base, "info_gain", threshold=tau)
        assert canon(ours.tree_) == canon(base.tree_, collapse=frozenset(ref_info_gain(base.tree_, tau)))
        assert_valid(ours, X)


def test_reduced_error_matches_reference_classifier():
    Xtr, Xte, ytr, yte = _digits()
    Xa, Xv, ya, yv = train_test_split(Xtr, ytr, test_size=0.3, random_state=0)
    base = DecisionTreeClassifier(random_state=0).fit(Xa, ya)
    ours = prune_tree(base, "reduced_error", X_val=Xv, y_val=yv)
    assert canon(ours.tree_) == canon(base.tree_, collapse=frozenset(ref_reduced_error(base, Xv, yv)))
    assert ours.tree_.node_count < base.tree_.node_count
    # REP never makes the validation error worse
    assert ours.score(Xv, yv) >= base.score(Xv, yv)
    assert_valid(ours, Xte)


def test_reduced_error_matches_reference_regressor_string_labels():
    X, y = load_diabetes(return_X_y=True)
    base = DecisionTreeRegressor(random_state=0, max_depth=7).fit(X[:300], y[:300])
    ours = prune_tree(base, "reduced_error", X_val=X[300:], y_val=y[300:])
    assert canon(ours.tree_) == canon(base.tree_, collapse=frozenset(ref_reduced_error(base, X[300:], y[300:])))
    Xi, yi = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[yi]
    clf = DecisionTreeClassifier(random_state=0).fit(Xi[::2], names[::2])
    ours = prune_tree(clf, "reduced_error", X_val=Xi[1::2], y_val=names[1::2])
    assert canon(ours.tree_) == canon(clf.tree_, collapse=frozenset(
        ref_reduced_error(clf, Xi[1::2], names[1::2])))


@pytest.mark.parametrize("cf", [0.05, 0.25, 0.5])
def test_error_based_matches_reference(cf):
    X, y = load_breast_cancer(return_X_y=True)
    base = DecisionTreeClassifier(random_state=0).fit(X, y)
    ours = prune_tree(base, "error_based", confidence=cf)
    assert canon(ours.tree_) == canon(base.tree_, collapse=frozenset(ref_error_based(base.tree_, cf)))
    assert_valid(ours, X)


def test_c45_added_errors_against_the_binomial_bound():
    # The C4.5 bound is the upper CF confidence limit U_CF(e, N) of the error rate, times N,
    # minus e. References: the exact (Clopper-Pearson) binomial limit from scipy's beta
    # quantile, and the figures of Quinlan's C4.5 book (1993, ch. 4: U25%(0,6) = 0.206,
    # U25%(0,9) = 0.143, U25%(0,1) = 0.750, U25%(1,16) = 0.157).
    from scipy.stats import beta

    def bound(N, e, cf=0.25):
        return (sparseprune.trees.c45_added_errors(np.array([N]), np.array([e]), cf)[0] + e) / N

    for N in (1.0, 2.0, 6.0, 9.0, 100.0):  # no errors: the exact binomial limit
        for cf in (0.05, 0.25, 0.5):
            assert bound(N, 0.0, cf) == pytest.approx(beta.ppf(1 - cf, 1, N), rel=1e-9)
    for N, e, book in ((6, 0, 0.206), (9, 0, 0.143), (1, 0, 0.750), (16, 1, 0.157)):
        assert bound(float(N), float(e)) == pytest.approx(book, rel=0.02)
    for N, e in ((16, 1), (10, 2), (30, 3), (100, 7), (50, 10), (1000, 100)):  # normal approximation: 3.1 % off at worst
        assert bound(float(N), float(e)) == pytest.approx(beta.ppf(0.75, e + 1, N - e), rel=0.035)
    # Fractional errors lie between the bounds at 0 and 1 errors; the limit never exceeds N.
    lo, hi = bound(10.0, 0.0) * 10, bound(10.0, 1.0) * 10
    assert lo < bound(10.0, 0.5) * 10 < hi
    assert 0 < bound(6.0, 5.8) <= 1


def test_error_based_default_confidence_prunes_less_than_small_cf():
    X, y = load_breast_cancer(return_X_y=True)
    base = DecisionTreeClassifier(random_state=0).fit(X, y)
    n25 = prune_tree(base, "error_based").tree_.node_count
    n05 = prune_tree(base, "error_based", confidence=0.05).tree_.node_count
    assert n05 <= n25 <= base.tree_.node_count


# --------------------------------------------------------------------------- merge leaves


def test_merge_leaves_is_lossless():
    X, y = make_classification(600, 6, n_informative=3, n_classes=3, flip_y=0.2, random_state=0)
    base = DecisionTreeClassifier(random_state=0, max_depth=7).fit(X, y)
    ours = prune_tree(base, "merge_leaves")
    assert ours.tree_.node_count < base.tree_.node_count
    Xq = np.random.default_rng(0).normal(size=(2000, 6)) * 2
    np.testing.assert_array_equal(ours.predict(Xq), base.predict(Xq))
    assert_valid(ours, Xq)
    # nothing left to merge: no internal node has two leaf children that predict the same class
    t = ours.tree_
    for i in range(t.node_count):
        L, R = t.children_left[i], t.children_right[i]
        if L != -1 and t.children_left[L] == -1 and t.children_left[R] == -1:
            assert np.argmax(t.value[L]) != np.argmax(t.value[R]) or np.argmax(t.value[i]) != np.argmax(t.value[L])


def test_merge_leaves_forest_trees_unchanged():
    X, y = make_classification(400, 5, n_informative=3, flip_y=0.2, random_state=1)
    base = ExtraTreesClassifier(n_estimators=5, max_depth=6, random_state=0).fit(X, y)
    ours = prune_tree(base, "merge_leaves")
    for a, b in zip(ours.estimators_, base.estimators_):
        np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert sum(t.tree_.node_count for t in ours.estimators_) < sum(t.tree_.node_count for t in base.estimators_)


# --------------------------------------------------------------------------- estimator contract


def test_input_untouched_and_new_object():
    Xtr, Xte, ytr, yte = _digits()
    base = RandomForestClassifier(n_estimators=3, random_state=0).fit(Xtr, ytr)
    before = pickle.dumps(base)
    Xv, yv = Xte.copy(), yte.copy()
    for method, params in [("info_gain", {"threshold": 1e-3}), ("cost_complexity", {"alpha": 1e-3}),
                           ("reduced_error", {"X_val": Xv, "y_val": yv}), ("error_based", {}),
                           ("merge_leaves", {})]:
        out = prune_tree(base, method, **params)
        assert type(out) is type(base) and out is not base
        assert all(a is not b for a, b in zip(out.estimators_, base.estimators_))
        assert pickle.dumps(base) == before
        for t in out.estimators_:
            assert_valid(t, Xte[:50])
        out.predict_proba(Xte)
        assert out.pruning_method_ == method
    np.testing.assert_array_equal(Xv, Xte)
    np.testing.assert_array_equal(yv, yte)


def test_pruned_estimator_pickles_and_predicts_the_same():
    Xtr, Xte, ytr, yte = _digits()
    base = DecisionTreeClassifier(random_state=0).fit(Xtr, ytr)
    out = prune_tree(base, "info_gain", threshold=2e-3)
    back = pickle.loads(pickle.dumps(out))
    np.testing.assert_array_equal(back.predict_proba(Xte), out.predict_proba(Xte))
    assert_same_tree(back.tree_, out.tree_)


def test_report_str_and_dict():
    Xtr, Xte, ytr, yte = _digits()
    base = DecisionTreeClassifier(random_state=0).fit(Xtr, ytr)
    out = prune_tree(base, "info_gain", threshold=2e-3)
    r = out.pruning_report_
    assert r.n_nodes_before == base.tree_.node_count and r.n_nodes_after == out.tree_.node_count
    assert r.n_leaves_after == out.get_n_leaves() and r.depth_after == out.get_depth()
    assert r.score_before is None
    r2 = tree_report(base, out, Xte, yte)
    assert r2.score_before == base.score(Xte, yte) and r2.score_after == out.score(Xte, yte)
    assert r2.mean_path_after == pytest.approx(np.mean(np.diff(out.decision_path(Xte).indptr)))
    d = r2.to_dict()
    assert d["method"] == "info_gain" and d["params"] == {"threshold": 2e-3}
    assert 0 < d["nodes_removed"] < 1
    text = str(r2)
    for word in ("nodes", "leaves", "depth", "mean path length", "accuracy", "info_gain"):
        assert word in text
    # the training-weighted mean path equals the one measured on the training data
    assert r.mean_path_before == pytest.approx(np.mean(np.diff(base.decision_path(Xtr).indptr)))


# --------------------------------------------------------------------------- targets and curve


def test_digits_info_gain_target_and_curve():
    Xtr, Xte, ytr, yte = _digits()
    base = DecisionTreeClassifier(random_state=0).fit(Xtr, ytr)
    curve = pruning_curve(base, Xte, yte)
    ig = curve.info_gain
    ok = [i for i in range(len(ig["param"]))
          if ig["n_nodes"][i] <= 0.5 * curve.n_nodes_unpruned and ig["score"][i] >= curve.score_unpruned - 0.005]
    assert ok, curve.to_dict()
    assert len(curve.cost_complexity["param"]) > 5
    assert curve.cost_complexity["n_nodes"][-1] < curve.n_nodes_unpruned


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    X, y = load_iris(return_X_y=True)
    tree = DecisionTreeClassifier(random_state=0).fit(X, y)
    reg = DecisionTreeRegressor(random_state=0).fit(X, y.astype(float))
    with pytest.raises(NotFittedError):
        prune_tree(DecisionTreeClassifier(), "merge_leaves")
    with pytest.raises(TypeError, match="RandomForestClassifier"):
        prune_tree(KNeighborsClassifier().fit(X, y), "merge_leaves")
    with pytest.raises(ValueError, match="'method'"):
        prune_tree(tree, "magic")
    with pytest.raises(ValueError, match="X_val"):
        prune_tree(tree, "reduced_error", y_val=y)
    with pytest.raises(ValueError, match="y_val"):
        prune_tree(tree, "reduced_error", X_val=X)
    with pytest.raises(ValueError, match="y_val"):
        prune_tree(tree, "reduced_error", X_val=X, y_val=y[:-1])
    with pytest.raises(ValueError, match="never saw"):
        prune_tree(tree, "reduced_error", X_val=X, y_val=y + 5)
    with pytest.raises(ValueError, match="features"):
        prune_tree(tree, "reduced_error", X_val=X[:, :2], y_val=y)
    with pytest.raises(ValueError, match="'threshold'"):
        prune_tree(tree, "info_gain", threshold=-0.1)
    with pytest.raises(ValueError, match="threshold"):
        prune_tree(tree, "info_gain")
    with pytest.raises(ValueError, match="'alpha'"):
        prune_tree(tree, "cost_complexity", alpha=-1)
    with pytest.raises(TypeError, match="'alpha'"):
        prune_tree(tree, "cost_complexity", alpha="big")
    for cf in (0.0, 0.51, -0.2, float("nan")):
        with pytest.raises(ValueError, match="'confidence'"):
            prune_tree(tree, "error_based", confidence=cf)
    with pytest.raises(ValueError, match="classifier"):
        prune_tree(reg, "error_based")
    with pytest.raises(TypeError, match="unexpected parameter 'alpha'"):
        prune_tree(tree, "info_gain", threshold=0.1, alpha=0.1)
    multi = DecisionTreeRegressor().fit(X, np.column_stack([y, y]))
    with pytest.raises(ValueError, match="outputs"):
        prune_tree(multi, "cost_complexity", alpha=0.1)
    with pytest.raises(ValueError, match="both X and y"):
        tree_report(tree, tree, X)


# --------------------------------------------------------------------------- hypothesis


@st.composite
def small_problem(draw):
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(12, 80))
    d = draw(st.integers(1, 4))
    k = draw(st.integers(2, 3))
    # few distinct values so ties and equal thresholds occur
    X = rng.integers(0, 6, size=(n, d)).astype(np.float64) / draw(st.sampled_from([1.0, 3.0, 7.0]))
    y = rng.integers(0, k, size=n)
    return X, y, seed


@settings(max_examples=40, deadline=None)
@given(small_problem(), st.floats(0.0, 0.2))
def test_hypothesis_info_gain_and_reduced_error(problem, tau):
    X, y, seed = problem
    half = len(y) // 2
    base = DecisionTreeClassifier(random_state=seed).fit(X[:half], y[:half])
    ours = prune_tree(base, "info_gain", threshold=tau)
    assert canon(ours.tree_) == canon(base.tree_, collapse=frozenset(ref_info_gain(base.tree_, tau)))
    assert_valid(ours, X)
    yv = y[half:]
    if np.isin(yv, base.classes_).all():
        rep = prune_tree(base, "reduced_error", X_val=X[half:], y_val=yv)
        assert canon(rep.tree_) == canon(base.tree_, collapse=frozenset(ref_reduced_error(base, X[half:], yv)))
    merged = prune_tree(base, "merge_leaves")
    np.testing.assert_array_equal(merged.predict(X), base.predict(X))
