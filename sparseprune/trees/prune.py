"""Post-pruning of fitted scikit-learn trees and forests (public entry: :func:`sparseprune.prune_tree`)."""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.stats import norm
from sklearn.base import is_classifier
from sklearn.tree._tree import Tree

from sparseprune._validation import check_number
from sparseprune.kernels.tree import (
    ccp_prune,
    collapse_by_cost,
    collapse_where,
    preorder_keep,
)
from sparseprune.trees.common import (
    check_shape,
    check_tree_estimator,
    class_index,
    is_forest,
    leaf_predictions,
)

METHODS = ("info_gain", "cost_complexity", "reduced_error", "error_based", "merge_leaves")
_PARAMS = {
    "info_gain": ("threshold",),
    "cost_complexity": ("alpha",),
    "reduced_error": ("X_val", "y_val"),
    "error_based": ("confidence",),
    "merge_leaves": (),
}
_REQUIRED = {"info_gain": ("threshold",), "cost_complexity": ("alpha",),
             "reduced_error": ("X_val", "y_val")}
# C4.5 replaces a subtree by a leaf when the leaf's estimated errors are at most
# the subtree's + 0.1 (Quinlan's C4.5 release 8, prune.c); same tolerance here.
_C45_TOLERANCE = 0.1


# --------------------------------------------------------------------------- parameters


def _check_params(estimator, method, params: dict) -> dict:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"The 'method' parameter must be one of {list(METHODS)}. Got {method!r} instead.")
    allowed = _PARAMS[method]
    for key in params:
        if key not in allowed:
            hint = f"it accepts {list(allowed)}" if allowed else "it takes no parameters"
            raise TypeError(f"prune_tree(method={method!r}) got an unexpected parameter {key!r}; {hint}.")
    for key in _REQUIRED.get(method, ()):
        if key not in params or params[key] is None:
            raise ValueError(f"prune_tree(method={method!r}) needs the {key!r} parameter.")
    out = dict(params)
    if method == "info_gain":
        out["threshold"] = check_number(params["threshold"], "threshold", low=0.0)
    elif method == "cost_complexity":
        out["alpha"] = check_number(params["alpha"], "alpha", low=0.0)
    elif method == "error_based":
        if not is_classifier(estimator):
            raise ValueError("method='error_based' (C4.5 pessimistic error) needs a classifier; for "
                             "regressors use 'cost_complexity', 'info_gain' or 'reduced_error'.")
        out["confidence"] = check_number(params.get("confidence", 0.25), "confidence", low=0.0,
                                         high=0.5, low_inclusive=False)
    elif method == "reduced_error":
        X_val = _check_X(estimator, params["X_val"], "X_val")
        y_val = np.asarray(params["y_val"])
        if y_val.ndim != 1 or y_val.shape[0] != X_val.shape[0]:
            raise ValueError(f"y_val must be 1-D with one target per row of X_val ({X_val.shape[0]} rows); "
                             f"got shape {y_val.shape}.")
        if is_classifier(estimator):
            y_val = class_index(estimator, y_val, "y_val")
        else:
            if y_val.dtype.kind not in "biuf":
                raise TypeError(f"y_val has dtype {y_val.dtype}; a regressor needs numeric targets.")
            y_val = y_val.astype(np.float64)
            if not np.all(np.isfinite(y_val)):
                raise ValueError("y_val contains NaN or infinity.")
        out["X_val"], out["y_val"] = X_val, y_val
    elif method == "merge_leaves":
        pass
    return out


def _check_X(estimator, X, name: str):
    """Check rows for ``decision_path``: 2-D, the fitted width (scikit-learn validates the rest)."""
    X = X.tocsr() if sp.issparse(X) else np.asarray(X)
    check_shape(X, estimator.n_features_in_, name, type(estimator).__name__)
    return X


# --------------------------------------------------------------------------- leaf masks


def _arrays(tree):
    t = tree.tree_
    return t.children_left.astype(np.int64), t.children_right.astype(np.int64)


def split_gains(tree) -> np.ndarray:
    """Weighted impurity decrease of every split (0 for leaves), as scikit-learn's ``min_impurity_decrease``.

    ``gain(t) = N_t/N * (I(t) - N_L/N_t * I(L) - N_R/N_t * I(R))`` with ``N`` the
    weighted sample counts and ``I`` the tree's own criterion, from the fitted tree.
    """
    t = tree.tree_
    left, right = _arrays(tree)
    internal = left != -1
    wn, imp = t.weighted_n_node_samples, t.impurity
    gains = np.zeros(t.node_count)
    i, L, R = np.flatnonzero(internal), left[internal], right[internal]
    gains[i] = wn[i] / wn[0] * (imp[i] - wn[L] / wn[i] * imp[L] - wn[R] / wn[i] * imp[R])
    return gains


def _mask_info_gain(tree, threshold):
    left, right = _arrays(tree)
    return collapse_where(left, right, split_gains(tree) < threshold)


def _mask_ccp(tree, alpha):
    t = tree.tree_
    left, right = _arrays(tree)
    leaves, *_ = ccp_prune(left, right, t.weighted_n_node_samples, t.impurity, float(alpha))
    return leaves


def _mask_merge(tree):
    left, right = _arrays(tree)
    pred = leaf_predictions(tree)
    internal = left != -1
    allowed = np.zeros(left.shape[0], np.uint8)
    L, R = left[internal], right[internal]
    # the collapsed node must itself predict what both leaves predicted, so predict() is unchanged
    allowed[internal] = (pred[L] == pred[R]) & (pred[internal] == pred[L])
    return collapse_where(left, right, allowed)


def _validation_costs(tree, X_val, y_val) -> np.ndarray:
    """Validation error each node would make as a leaf, from node-indicator algebra.

    ``P = decision_path(X_val)`` is CSR (rows x nodes); for classifiers the
    node x class counts are ``P.T @ onehot(y)`` and a node's error is its count
    minus the count of its own predicted class. For regressors the node's
    squared error follows from ``P.T @ [1, y, y**2]``.
    """
    P = sp.csr_array(tree.decision_path(X_val)).astype(np.float64)
    n_nodes = P.shape[1]
    pred = leaf_predictions(tree)
    if is_classifier(tree):
        n_classes = tree.tree_.value.shape[2]
        onehot = sp.csr_array((np.ones(len(y_val)), (np.arange(len(y_val)), y_val)),
                              shape=(len(y_val), n_classes))
        counts = (P.T @ onehot).toarray()
        return counts.sum(axis=1) - counts[np.arange(n_nodes), pred]
    moments = np.column_stack([np.ones_like(y_val), y_val, y_val * y_val])
    s = P.T @ moments
    sse = s[:, 2] - 2.0 * pred * s[:, 1] + pred * pred * s[:, 0]
    return np.maximum(sse, 0.0)


def _mask_reduced_error(tree, X_val, y_val):
    left, right = _arrays(tree)
    return collapse_by_cost(left, right, _validation_costs(tree, X_val, y_val), 0.0)


def c45_added_errors(N: np.ndarray, e: np.ndarray, confidence: float) -> np.ndarray:
    """C4.5's ``AddErrs``: extra errors of the upper ``confidence`` limit for ``e`` errors in ``N`` cases.

    Same case split as C4.5 release 8 (exact binomial bound for ``e == 0``,
    linear interpolation for ``0 < e < 1``, ``0.67 * (N - e)`` when
    ``e + 0.5 >= N``, otherwise the normal-approximation upper limit) with the
    deviate ``z = Phi^-1(1 - CF)`` computed exactly instead of C4.5's table.
    """
    N = np.asarray(N, np.float64)
    e = np.asarray(e, np.float64)
    z2 = norm.isf(confidence) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        val0 = N * (1.0 - np.exp(math.log(confidence) / N))
        ee = e + 0.5
        pr = (ee + z2 / 2 + np.sqrt(z2 * (ee * (1 - ee / N) + z2 / 4))) / (N + z2)
        normal = N * pr - e
        pr1 = (1.5 + z2 / 2 + np.sqrt(z2 * (1.5 * (1 - 1.5 / N) + z2 / 4))) / (N + z2)
        at_one = np.where(1.5 >= N, 0.67 * (N - 1.0), N * pr1 - 1.0)
    return np.select([e < 1e-6, e < 0.9999, ee >= N], [val0, val0 + e * (at_one - val0), 0.67 * (N - e)],
                     default=normal)


def _mask_error_based(tree, confidence):
    t = tree.tree_
    left, right = _arrays(tree)
    N = t.weighted_n_node_samples
    counts = t.value[:, 0, :] * N[:, None]   # fractions since scikit-learn 1.4
    e = N - counts.max(axis=1)
    e = np.maximum(e, 0.0)
    estimate = e + c45_added_errors(N, e, confidence)
    return collapse_by_cost(left, right, estimate, _C45_TOLERANCE)


# --------------------------------------------------------------------------- rebuilding


def _rebuild(tree, leaf_mask) -> None:
    """Replace ``tree.tree_`` by the compacted tree whose leaves are ``leaf_mask`` (in place on a copy)."""
    old = tree.tree_
    left, right = _arrays(tree)
    old_id, new_left, new_right, depth = preorder_keep(left, right, leaf_mask.astype(np.uint8))
    state = old.__getstate__()
    nodes = state["nodes"][old_id].copy()
    is_leaf = new_left == -1
    nodes["left_child"] = new_left
    nodes["right_child"] = new_right
    # scikit-learn's own leaf encoding (Tree._add_node)
    nodes["feature"][is_leaf] = -2
    nodes["threshold"][is_leaf] = -2.0
    values = np.ascontiguousarray(state["values"][old_id])
    new = Tree(old.n_features, np.asarray(old.n_classes, dtype=np.intp), old.n_outputs)
    new.__setstate__({"max_depth": int(depth.max()), "node_count": int(len(old_id)),
                      "nodes": nodes, "values": values})
    tree.tree_ = new


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class PruningReport:
    """Size, depth and (when data is given) score of a tree model before and after pruning.

    Counts are summed over a forest's trees, ``depth`` is the deepest tree and
    ``mean_path`` is the mean number of nodes on a decision path (root and leaf
    included, as in ``decision_path``), averaged over trees: measured on ``X``
    when given, otherwise the training-weighted expectation from the fitted
    node counts. ``score`` is accuracy for classifiers and R^2 for regressors.
    """

    estimator: str
    method: str | None
    params: dict
    n_trees: int
    n_nodes_before: int
    n_nodes_after: int
    n_leaves_before: int
    n_leaves_after: int
    depth_before: int
    depth_after: int
    mean_path_before: float
    mean_path_after: float
    score_name: str
    score_before: float | None = None
    score_after: float | None = None
    n_eval_rows: int | None = None

    @property
    def nodes_removed(self) -> float:
        """Fraction of nodes removed by pruning."""
        return 1.0 - self.n_nodes_after / self.n_nodes_before

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        d = dataclasses.asdict(self)
        d["nodes_removed"] = self.nodes_removed
        return d

    def __str__(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params.items())
        rows = [
            f"Pruning report: {self.estimator} ({self.n_trees} tree{'s' if self.n_trees > 1 else ''}), "
            f"method={self.method}" + (f" ({p})" if p else ""),
            f"{'':22s}{'before':>12s}{'after':>12s}",
            f"{'nodes':22s}{self.n_nodes_before:12d}{self.n_nodes_after:12d}"
            f"   ({100 * self.nodes_removed:.1f}% removed)",
            f"{'leaves':22s}{self.n_leaves_before:12d}{self.n_leaves_after:12d}",
            f"{'depth':22s}{self.depth_before:12d}{self.depth_after:12d}",
            f"{'mean path length':22s}{self.mean_path_before:12.2f}{self.mean_path_after:12.2f}",
        ]
        if self.score_before is not None:
            rows.append(f"{self.score_name + f' ({self.n_eval_rows} rows)':22s}"
                        f"{self.score_before:12.4f}{self.score_after:12.4f}")
        return "\n".join(rows)


def node_depths(tree_) -> np.ndarray:
    """Depth of every node of a fitted ``Tree`` (root 0), by node id."""
    left = tree_.children_left.astype(np.int64)
    old_id, _, _, depth = preorder_keep(left, tree_.children_right.astype(np.int64),
                                        (left == -1).astype(np.uint8))
    out = np.empty_like(depth)
    out[old_id] = depth
    return out


def _trees(est):
    return list(est.estimators_) if is_forest(est) else [est]


def _mean_path(trees, X=None) -> float:
    out = []
    for t in trees:
        if X is not None:
            P = t.decision_path(X)
            out.append(np.diff(P.indptr).mean())
        else:
            tr = t.tree_
            depth = node_depths(tr)
            leaves = tr.children_left == -1
            w = tr.weighted_n_node_samples
            out.append(float(np.sum(w[leaves] * (depth[leaves] + 1)) / w[0]))
    return float(np.mean(out))


def tree_report(before, after, X=None, y=None) -> PruningReport:
    """Compare two tree models (typically an estimator and ``prune_tree``'s result).

    Parameters
    ----------
    before, after : fitted tree or forest estimators of the same kind.
    X, y : optional evaluation data; with them the report holds the score
        (accuracy or R^2 via ``estimator.score``) and the measured mean decision-path length.

    Returns
    -------
    PruningReport
    """
    tb, ta = check_tree_estimator(before, "before"), check_tree_estimator(after, "after")
    if (y is None) != (X is None):
        raise ValueError("Pass both X and y to score the models, or neither.")
    if X is not None:
        X = _check_X(before, X, "X")
    report = PruningReport(
        estimator=type(before).__name__,
        method=getattr(after, "pruning_method_", None),
        params=dict(getattr(after, "pruning_params_", {})),
        n_trees=len(tb),
        n_nodes_before=int(sum(t.tree_.node_count for t in tb)),
        n_nodes_after=int(sum(t.tree_.node_count for t in ta)),
        n_leaves_before=int(sum(t.tree_.n_leaves for t in tb)),
        n_leaves_after=int(sum(t.tree_.n_leaves for t in ta)),
        depth_before=int(max(t.tree_.max_depth for t in tb)),
        depth_after=int(max(t.tree_.max_depth for t in ta)),
        mean_path_before=_mean_path(tb, X),
        mean_path_after=_mean_path(ta, X),
        score_name="accuracy" if is_classifier(before) else "r2",
    )
    if X is not None:
        report.score_before = float(before.score(X, y))
        report.score_after = float(after.score(X, y))
        report.n_eval_rows = int(X.shape[0])
    return report


def _describe_params(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        out[k] = f"<{type(v).__name__} of shape {tuple(np.shape(v))}>" if np.ndim(v) else v
    return out


# --------------------------------------------------------------------------- entry point


def prune_tree(estimator, method: str = "info_gain", **params):
    """Post-prune a fitted scikit-learn tree or forest; return a new estimator of the same class.

    The input is deep-copied and left untouched. Every tree of a forest is
    pruned independently. The result's node arrays are compacted (renumbered
    depth-first, left child first, exactly as scikit-learn's own ccp pruning
    builds them), so ``predict``, ``predict_proba``, ``apply``,
    ``decision_path``, ``get_depth``, ``get_n_leaves`` and
    ``feature_importances_`` all describe the pruned structure. Pruned nodes
    keep their fitted ``value``, ``impurity`` and sample counts. Forest
    attributes computed at fit time from the trees' predictions
    (``oob_score_``, ``oob_decision_function_``) are not recomputed.

    Methods (parameters in brackets). All work bottom-up: a split can only
    collapse into a leaf once both its children are leaves (originally or
    after collapsing).

    ``"info_gain"`` (``threshold`` >= 0)
        The split at node t collapses when its weighted impurity decrease
        ``N_t/N * (I(t) - N_L/N_t * I(L) - N_R/N_t * I(R))`` is strictly below
        ``threshold``. ``I`` is the tree's own criterion (gini, entropy,
        log_loss, squared error, ...), ``N`` weighted training sample counts as
        stored in the fitted tree, ``N`` the root's. It is the quantity
        ``min_impurity_decrease`` uses at fit time, applied after fitting and
        only where all splits below have collapsed, so a weak split above a
        strong one survives. ``threshold=0`` keeps every split whose decrease
        is non-negative.
    ``"cost_complexity"`` (``alpha`` >= 0)
        Minimal cost-complexity pruning; node for node the tree scikit-learn
        builds with ``ccp_alpha=alpha`` on the same data and seed.
    ``"reduced_error"`` (``X_val``, ``y_val``)
        Quinlan's reduced-error pruning: a split collapses when the
        validation error of the node as a leaf is at most the validation
        error of its (already pruned) subtree: misclassified rows for
        classifiers, the sum of squared errors for regressors. Subtrees that
        no validation row reaches collapse. Node statistics come from
        ``decision_path(X_val)``: node x class counts ``P.T @ onehot(y_val)``.
    ``"error_based"`` (``confidence`` in (0, 0.5], default 0.25; classifiers)
        C4.5's pessimistic pruning without subtree raising: a node's estimated
        errors are ``E + AddErrs(N, E)`` (upper confidence limit of the
        training error rate, see :func:`c45_added_errors`); a split collapses
        when the node's estimate is at most its subtree's summed leaf
        estimates + 0.1, as in C4.5.
    ``"merge_leaves"``
        Lossless: sibling leaves collapse into their parent when both and the
        parent predict the same class (classifiers) or exactly the same value
        (regressors). ``predict`` of every tree is unchanged; ``predict_proba``
        of the merged leaves becomes the parent's distribution, so a forest's
        soft vote can change where trees disagree.

    Parameters
    ----------
    estimator : fitted DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier,
        ExtraTreeRegressor, RandomForestClassifier, RandomForestRegressor,
        ExtraTreesClassifier or ExtraTreesRegressor (single output).
    method : str, default="info_gain"
    **params : the method's parameters listed above.

    Returns
    -------
    estimator
        A new fitted estimator of the same class, with ``pruning_method_``,
        ``pruning_params_`` and ``pruning_report_`` (a :class:`PruningReport`
        without scores; call :func:`tree_report` with test data for scores).

    Notes
    -----
    Kernels: ``ccp_prune``, ``collapse_where``, ``collapse_by_cost`` and
    ``preorder_keep`` in ``sparseprune.kernels.tree``.
    """
    check_tree_estimator(estimator)
    params = _check_params(estimator, method, params)
    out = copy.deepcopy(estimator)
    for tree in _trees(out):
        if method == "info_gain":
            mask = _mask_info_gain(tree, params["threshold"])
        elif method == "cost_complexity":
            mask = _mask_ccp(tree, params["alpha"])
        elif method == "reduced_error":
            mask = _mask_reduced_error(tree, params["X_val"], params["y_val"])
        elif method == "error_based":
            mask = _mask_error_based(tree, params["confidence"])
        else:
            mask = _mask_merge(tree)
        # scikit-learn rebuilds (renumbers) whenever ccp_alpha > 0, even if nothing is cut
        if mask.sum() != tree.tree_.n_leaves or (method == "cost_complexity" and params["alpha"] > 0):
            _rebuild(tree, mask)
    out.pruning_method_ = method
    out.pruning_params_ = _describe_params(params)
    out.pruning_report_ = tree_report(estimator, out)
    return out
