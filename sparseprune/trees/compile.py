"""Compiled traversal of fitted scikit-learn trees and forests (public entry: :func:`sparseprune.compile_tree`)."""
from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from sklearn.base import is_classifier

from sparseprune._validation import check_int
from sparseprune.inference.threads import parallel_guard, parallel_pays, thread_limit
from sparseprune.kernels.tree import (
    fill_compact,
    fill_padded,
    forest_accumulate_parallel,
    forest_accumulate_serial,
)
from sparseprune.trees.common import check_shape, check_tree_estimator

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
        Trees stored whole in the padded complete-tree layout (depth <= ``max_pad_depth``),
        and deeper trees: their top ``max_pad_depth`` levels padded, the rest compact.
    """

    def __init__(self, estimator, *, max_pad_depth: int = DEFAULT_MAX_PAD_DEPTH):
        trees = check_tree_estimator(estimator)
        self.max_pad_depth = check_int(max_pad_depth, "max_pad_depth", low=0, high=20)
        self.estimator_type_ = type(estimator).__name__
        self.is_classifier_ = bool(is_classifier(estimator))
        self.n_features_in_ = int(estimator.n_features_in_)
        self.n_trees_ = len(trees)
        if self.is_classifier_:
            self.classes_ = np.asarray(estimator.classes_).copy()
            n_cols = len(self.classes_)
        else:
            n_cols = 1
        hybrid = np.zeros(self.n_trees_, np.uint8)
        top_depth = np.zeros(self.n_trees_, np.int64)
        top_off = np.zeros(self.n_trees_, np.int64)
        map_off = np.zeros(self.n_trees_, np.int64)
        n_pad = n_map = n_compact = n_slots = 0
        for k, t in enumerate(trees):
            tr = t.tree_
            hybrid[k] = tr.max_depth > self.max_pad_depth
            top_depth[k] = min(tr.max_depth, self.max_pad_depth)
            top_off[k], map_off[k] = n_pad, n_map
            n_pad += (1 << int(top_depth[k])) - 1
            n_map += 1 << int(top_depth[k])
            n_compact += tr.node_count if hybrid[k] else 0
            n_slots += tr.n_leaves
        # packed records, so one step touches one cache line rather than one per field:
        # (feature, threshold) for the padded tops, (feature, threshold, child, leaf slot)
        # for the compact nodes below them
        pad_i = np.zeros((n_pad, 2), np.int32)
        pad_f = pad_i.view(np.float32)
        pad_f[:, 1] = np.inf
        nodes_i = np.zeros((n_compact, 4), np.int32)
        nodes_f = nodes_i.view(np.float32)
        leaf_map = np.zeros(n_map, np.int32)
        values = np.zeros((n_slots, n_cols), np.float64)
        compact_pos = slot_pos = 0
        for k, t in enumerate(trees):
            tr = t.tree_
            left = tr.children_left.astype(np.int64)
            right = tr.children_right.astype(np.int64)
            feature = tr.feature.astype(np.int32)
            thr32 = thresholds_float32(tr.threshold)
            is_leaf = left == -1
            slot = np.full(tr.node_count, -1, np.int64)
            slot[is_leaf] = slot_pos + np.arange(tr.n_leaves)
            values[slot_pos:slot_pos + tr.n_leaves] = tr.value[is_leaf, 0, :n_cols]
            slot_pos += tr.n_leaves
            if hybrid[k]:
                target = fill_compact(left, right, feature, thr32, slot, compact_pos, nodes_i, nodes_f)
                compact_pos += tr.node_count
            else:
                target = slot
            d, p0, m0 = int(top_depth[k]), int(top_off[k]), int(map_off[k])
            fill_padded(left, right, feature, thr32, target, d, pad_i[p0:p0 + (1 << d) - 1],
                        pad_f[p0:p0 + (1 << d) - 1], leaf_map[m0:m0 + (1 << d)])
        self._hybrid, self._top_depth, self._top_off, self._map_off = hybrid, top_depth, top_off, map_off
        self._pad_i, self._pad_f, self._nodes_i, self._nodes_f = pad_i, pad_f, nodes_i, nodes_f
        self._leaf_map, self._values = leaf_map, values
        # a single tree predicts argmax of its leaf's raw value, like DecisionTreeClassifier.predict
        self._leaf_class = np.argmax(values, axis=1) if self.is_classifier_ else None
        self.n_compact_ = int(hybrid.sum())
        self.n_padded_ = self.n_trees_ - self.n_compact_

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
        check_shape(X, self.n_features_in_, "X", f"the compiled {self.estimator_type_}")
        return np.ascontiguousarray(X)

    def _run(self, X, n_threads):
        """Leaf slot per row (single tree) or the sum of leaf values over trees (forest)."""
        X = self._check_X(X)
        n = X.shape[0]
        single = self.n_trees_ == 1
        out = np.zeros((0 if single else n, self._values.shape[1]), np.float64)
        slots = np.zeros(n if single else 0, np.int32)
        if n == 0:
            return slots if single else out
        blocks = n // _BLOCK  # full row blocks: the parallel kernel hands out blocks, and needs two to gain
        kernel = forest_accumulate_parallel if parallel_pays("forest", blocks, n_threads) else forest_accumulate_serial
        # chunk size 1: threads take row blocks one at a time, so a thread that the OS
        # delays (busy machine) does not hold back a statically assigned half of the rows
        with thread_limit(n_threads), parallel_guard(), numba.parallel_chunksize(1):
            finite = kernel(X, self._hybrid, self._top_depth, self._top_off, self._map_off,
                            self._pad_i.view(np.uint32), self._pad_f, self._nodes_i.view(np.uint32), self._nodes_f,
                            self._leaf_map, self._values, out, slots, _BLOCK)
        if not finite:
            raise ValueError(
                "Input X contains NaN or infinity (after the float32 conversion trees apply). Compiled trees "
                "do not route missing values: impute them, or call the estimator's own predict."
            )
        return slots if single else out

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
        res = self._run(X, n_threads)
        if self.n_trees_ == 1:
            return self._values[res]
        return res / self.n_trees_

    def predict(self, X, n_threads: int | None = None) -> np.ndarray:
        """Class labels or regression values, equal to the estimator's ``predict`` (kernel ``forest_accumulate``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), finite values.
        n_threads : int, optional
            Threads for this call (default: numba's current setting).
        """
        res = self._run(X, n_threads)
        if self.n_trees_ == 1:
            if self.is_classifier_:
                return self.classes_.take(self._leaf_class.take(res))
            return self._values[:, 0].take(res)
        res /= self.n_trees_
        if self.is_classifier_:
            return self.classes_.take(np.argmax(res, axis=1), axis=0)
        return res[:, 0]


def compile_tree(estimator, *, max_pad_depth: int = DEFAULT_MAX_PAD_DEPTH) -> CompiledTree:
    """Flatten a fitted tree or forest into arrays traversed by a parallel numba kernel.

    Trees no deeper than ``max_pad_depth`` are stored as padded complete trees
    (every row takes exactly ``depth`` branch-free steps); deeper trees keep
    their top ``max_pad_depth`` levels padded and continue in a compact
    breadth-first layout with adjacent siblings. Row blocks run in parallel,
    trees inner, leaf values summed in float64 in tree order, so results equal
    scikit-learn's for every row: features are cast to float32 and thresholds
    rounded down to float32 exactly as scikit-learn's float32-vs-float64
    comparison decides.

    Missing values: rows with NaN or infinity (also after the float32 cast)
    are rejected with a ValueError. scikit-learn >= 1.3 can route NaN in some
    trees; compiled trees do not, rather than risk a silently different answer.

    Parameters
    ----------
    estimator : fitted single-output DecisionTree*/ExtraTree* or RandomForest*/ExtraTrees* model.
    max_pad_depth : int, default=12
        Levels stored padded (``2**max_pad_depth`` slots per tree at most).

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
