"""Shared checks for the tree pruner and compiler: supported estimators, node arrays."""
from __future__ import annotations

import numpy as np
from sklearn.base import is_classifier
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import BaseDecisionTree
from sklearn.utils.validation import check_is_fitted

_FORESTS = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)
SUPPORTED = (
    "DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor, "
    "RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor"
)


def is_forest(estimator) -> bool:
    return isinstance(estimator, _FORESTS)


def check_tree_estimator(estimator, name: str = "estimator") -> list:
    """Check a fitted, supported, single-output tree model; return its list of fitted trees."""
    if not isinstance(estimator, (BaseDecisionTree, *_FORESTS)):
        raise TypeError(
            f"{name} is a {type(estimator).__name__}; supported estimators are fitted {SUPPORTED}."
        )
    check_is_fitted(estimator)
    trees = list(estimator.estimators_) if is_forest(estimator) else [estimator]
    if estimator.n_outputs_ != 1:
        raise ValueError(
            f"{name} was fitted with {estimator.n_outputs_} outputs; only single-output trees and "
            "forests are supported (fit one model per output)."
        )
    for t in trees:
        left = t.tree_.children_left
        internal = np.flatnonzero(left != -1)
        # every kernel walks nodes in reverse index order as a bottom-up order
        if internal.size and (np.any(left[internal] <= internal)
                              or np.any(t.tree_.children_right[internal] <= internal)):
            raise ValueError(f"{name} has a tree whose children precede their parents; "
                             "it was not built by scikit-learn's tree builders.")
    return trees


def class_index(estimator, y, name: str) -> np.ndarray:
    """Map labels ``y`` to indices into ``estimator.classes_``; unknown labels are an error."""
    classes = estimator.classes_
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one label per row; got shape {y.shape}.")
    idx = np.searchsorted(classes, y)
    idx_c = np.clip(idx, 0, len(classes) - 1)
    bad = classes[idx_c] != y
    if np.any(bad):
        raise ValueError(
            f"{name} contains labels the estimator never saw, e.g. {y[bad][0]!r}; "
            f"known classes are {list(classes)}."
        )
    return idx_c


def leaf_predictions(tree) -> np.ndarray:
    """Per node: predicted class index (classifiers) or value (regressors) if the node were a leaf."""
    v = tree.tree_.value[:, 0, :]
    if is_classifier(tree):
        return np.argmax(v, axis=1)
    return v[:, 0]


def check_shape(X, n_features: int, name: str, model: str):
    """``X`` must be 2-D with ``n_features`` columns; ``model`` names what expects them."""
    if X.ndim != 2:
        raise ValueError(f"{name} is {X.ndim}-dimensional with shape {X.shape}; pass a 2-D array "
                         "(n_samples, n_features).")
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features, but {model} is expecting {n_features} "
                         "features as input.")
