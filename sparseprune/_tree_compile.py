"""Compiled traversal of fitted scikit-learn trees and forests (public entry: :func:`sparseprune.compile_tree`)."""
from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from sklearn.base import is_classifier

from sparseprune._threading import parallel_guard, thread_limit
from sparseprune._tree_common import check_tree_estimator
from sparseprune._validation import check_int
from sparseprune.kernels.tree import (
    fill_compact,
    fill_padded,
    forest_accumulate,
    forest_accumulate_serial,
)

# Rows per parallel work item: large enough that a tree's hot nodes are reused
# across many rows, small enough to balance two to a few dozen threads.
_BLOCK = 1024
DEFAULT_MAX_PAD_DEPTH = 12


def thresholds_float32(threshold: np.ndarray) -> np.ndarray:
    """Largest float32 <= each float64 threshold, so ``x32 <= t32`` iff ``x32 <= t64`` for float32 ``x32``.

    scikit-learn compares float32 features against float64 thresholds; rounding
    to nearest could move a threshold past a float32 value and flip its branch.
    """
    t32 = threshold.astype(np.float32)
    up = t32.astype(np.float64) > threshold
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32


class CompiledTree:
    """A fitted tree or forest flattened for numba traversal; build it with :func:`compile_tree`.

    Attributes
    ----------
    n_features_in_ : int
    n_trees_ : int
    classes_ : ndarray (classifiers only)
    n_padded_, n_compact_ : int
        Trees stored in the padded complete-tree layout (depth <= ``max_pad_depth``)
        and in the compact layout.
    """

    def __init__(self, estimator, *, max_pad_depth: int = DEFAULT_MAX_PAD_DEPTH):
        trees = check_tree_estimator(estimator)
        self.max_pad_depth = check_int(max_pad_depth, "max_pad_depth", low=0, high=20)
        self.estimator_type_ = type(estimator).__name__
        self.is_classifier_ = bool(is_classifier(estimator))
        self.n_features_in_ = int(estimator.n_features_in_)
        self.n_trees_ = len(trees)
        self._is_forest = hasattr(estimator, "estimators_")
        if self.is_classifier_:
            self.classes_ = np.asarray(estimator.classes_).copy()
            n_cols = len(self.classes_)
        else:
            n_cols = 1
        pad_depth = np.full(self.n_trees_, -1, np.int64)
        node_off = np.zeros(self.n_trees_, np.int64)
        leaf_off = np.zeros(self.n_trees_, np.int64)
        n_pad_nodes = n_compact_nodes = n_leaf_map = n_slots = 0
        for k, t in enumerate(trees):
            tr = t.tree_
            if tr.max_depth <= self.max_pad_depth:
                pad_depth[k] = tr.max_depth
                n_pad_nodes += (1 << tr.max_depth) - 1
                n_leaf_map += 1 << tr.max_depth
            else:
                n_compact_nodes += tr.node_count
            n_slots += tr.n_leaves
        # packed records: (feature, threshold) for padded splits, (feature, threshold, child,
        # leaf slot) for compact nodes, so one step touches one cache line, not one per field
        pad_i = np.zeros((n_pad_nodes, 2), np.int32)
        pad_f = pad_i.view(np.float32)
        pad_f[:, 1] = np.inf
        nodes_i = np.zeros((n_compact_nodes, 4), np.int32)
        nodes_f = nodes_i.view(np.float32)
        leaf_map = np.zeros(n_leaf_map, np.int32)
        values = np.zeros((n_slots, n_cols), np.float64)
        pad_pos = node_pos = leaf_pos = slot_pos = 0
        for k, t in enumerate(trees):
            tr = t.tree_
            left = tr.children_left.astype(np.int64)
            right = tr.children_right.astype(np.int64)
            feature = tr.feature.astype(np.int32)
            thr32 = thresholds_float32(tr.threshold)
            is_leaf = left == -1
            slot = np.full(tr.node_count, -1, np.int64)
            slot[is_leaf] = slot_pos + np.arange(tr.n_leaves)
            v = tr.value[is_leaf, 0, :]
            values[slot_pos:slot_pos + tr.n_leaves] = v[:, :n_cols]
            slot_pos += tr.n_leaves
            if pad_depth[k] >= 0:
                d = int(pad_depth[k])
                node_off[k], leaf_off[k] = pad_pos, leaf_pos
                end = pad_pos + (1 << d) - 1
                fill_padded(left, right, feature, thr32, slot, d, pad_i[pad_pos:end], pad_f[pad_pos:end],
                            leaf_map[leaf_pos:leaf_pos + (1 << d)])
                pad_pos = end
                leaf_pos += 1 << d
            else:
                node_off[k] = node_pos
                fill_compact(left, right, feature, thr32, slot, node_pos, nodes_i, nodes_f)
                node_pos += tr.node_count
        self._pad_depth, self._node_off, self._leaf_off = pad_depth, node_off, leaf_off
        self._pad_i, self._pad_f, self._nodes_i, self._nodes_f = pad_i, pad_f, nodes_i, nodes_f
        self._leaf_map, self._values = leaf_map, values
        self.n_padded_ = int(np.sum(pad_depth >= 0))
        self.n_compact_ = self.n_trees_ - self.n_padded_

    def __repr__(self) -> str:
        return (f"CompiledTree({self.estimator_type_}, n_trees={self.n_trees_}, padded={self.n_padded_}, "
                f"compact={self.n_compact_}, n_features={self.n_features_in_})")

    @property
    def nbytes(self) -> int:
        """Memory held by the compiled node and value arrays."""
        return sum(a.nbytes for a in (self._pad_i, self._nodes_i, self._leaf_map, self._values))

    # ------------------------------------------------------------------ input

    def _check_X(self, X) -> np.ndarray:
        if sp.issparse(X):
            raise TypeError(f"X is a sparse matrix ({type(X).__name__}); compiled trees take dense rows: "
                            "pass X.toarray().")
        X = np.asarray(X)
        if X.dtype.kind in "biu" or (X.dtype.kind == "f" and X.dtype not in (np.float32, np.float64)):
            X = X.astype(np.float32)   # scikit-learn converts every input to float32 too
        elif X.dtype.kind != "f":
            raise TypeError(f"X has dtype {X.dtype}; pass numeric features (float32 or float64).")
        if X.ndim != 2:
            raise ValueError(f"X is {X.ndim}-dimensional with shape {X.shape}; pass a 2-D array "
                             "(n_samples, n_features).")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but the compiled {self.estimator_type_} is "
                             f"expecting {self.n_features_in_} features as input.")
        return np.ascontiguousarray(X)

    def _sum(self, X, n_threads) -> np.ndarray:
        X = self._check_X(X)
        out = np.zeros((X.shape[0], self._values.shape[1]), np.float64)
        if X.shape[0] == 0:
            return out
        kernel = forest_accumulate if X.shape[0] >= 2 * _BLOCK else forest_accumulate_serial
        # chunk size 1: threads take row blocks one at a time, so a thread that the OS
        # delays (busy machine) does not hold back a statically assigned half of the rows
        with thread_limit(n_threads), parallel_guard(), numba.parallel_chunksize(1):
            finite = kernel(X, self._pad_depth, self._node_off, self._leaf_off, self._pad_i.view(np.uint32),
                            self._pad_f, self._nodes_i.view(np.uint32), self._nodes_f, self._leaf_map,
                            self._values, out, _BLOCK)
        if not finite:
            raise ValueError(
                "Input X contains NaN or infinity (after the float32 conversion trees apply). Compiled trees "
                "do not route missing values: impute them, or call the estimator's own predict."
            )
        return out

    # ------------------------------------------------------------------ predictions

    def predict_proba(self, X, n_threads: int | None = None) -> np.ndarray:
        """Class probabilities, equal to the estimator's ``predict_proba`` (kernel ``forest_accumulate``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), finite values.
        n_threads : int, optional
            Threads for this call (default: numba's current setting).
        """
        if not self.is_classifier_:
            raise AttributeError(f"predict_proba is only available for classifiers; this compiles a "
                                 f"{self.estimator_type_}.")
        out = self._sum(X, n_threads)
        if self._is_forest:
            out /= self.n_trees_
        return out

    def predict(self, X, n_threads: int | None = None) -> np.ndarray:
        """Class labels or regression values, equal to the estimator's ``predict`` (kernel ``forest_accumulate``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), finite values.
        n_threads : int, optional
            Threads for this call (default: numba's current setting).
        """
        out = self._sum(X, n_threads)
        if self._is_forest:
            out /= self.n_trees_
        if self.is_classifier_:
            return self.classes_.take(np.argmax(out, axis=1), axis=0)
        return out[:, 0]


def compile_tree(estimator, *, max_pad_depth: int = DEFAULT_MAX_PAD_DEPTH) -> CompiledTree:
    """Flatten a fitted tree or forest into arrays traversed by a parallel numba kernel.

    Trees no deeper than ``max_pad_depth`` are stored as padded complete trees
    (every row takes exactly ``depth`` branch-free steps); deeper trees use a
    compact breadth-first layout with adjacent siblings. Row blocks run in
    parallel, trees inner, leaf values summed in float64 in tree order, so
    results equal scikit-learn's for every row: features are cast to float32
    and thresholds rounded down to float32 exactly as scikit-learn's
    float32-vs-float64 comparison decides.

    Missing values: rows with NaN or infinity are rejected with a ValueError
    (scikit-learn >= 1.3 can route NaN in some trees; compiled trees do not).

    Parameters
    ----------
    estimator : fitted single-output DecisionTree*/ExtraTree* or RandomForest*/ExtraTrees* model.
    max_pad_depth : int, default=12
        Deepest tree stored in the padded layout (``2**depth`` slots per tree).

    Returns
    -------
    CompiledTree
        With ``predict`` and, for classifiers, ``predict_proba``.

    Notes
    -----
    Kernels: ``forest_accumulate`` (traversal and finiteness check),
    ``fill_padded``/``fill_compact`` (layout) in ``sparseprune.kernels.tree``.
    """
    return CompiledTree(estimator, max_pad_depth=max_pad_depth)
