"""Tree pruning and compiled tree inference for fitted scikit-learn trees and forests.

* :func:`prune_tree` post-prunes a fitted ``DecisionTree*``/``ExtraTree*`` or
  ``RandomForest*``/``ExtraTrees*`` model (info_gain, cost_complexity,
  reduced_error, error_based, merge_leaves) and returns a new estimator of the
  same class.
* :func:`compile_tree` flattens a fitted model into arrays traversed by a
  parallel numba kernel; its ``predict``/``predict_proba`` equal scikit-learn's.
* :func:`tree_report` and :func:`pruning_curve` measure what pruning did.

Example
-------
>>> from sklearn.datasets import load_digits
>>> from sklearn.tree import DecisionTreeClassifier
>>> import sparseprune
>>> X, y = load_digits(return_X_y=True)
>>> tree = DecisionTreeClassifier(random_state=0).fit(X, y)
>>> pruned = sparseprune.prune_tree(tree, method="info_gain", threshold=1e-3)
>>> pruned.tree_.node_count < tree.tree_.node_count
True
>>> model = sparseprune.compile_tree(pruned)
>>> bool((model.predict(X) == pruned.predict(X)).all())
True
"""
from sparseprune.trees.compile import CompiledTree, compile_tree
from sparseprune.trees.curves import PruningCurve, ccp_path, pruning_curve
from sparseprune.trees.prune import (
    METHODS,
    PruningReport,
    c45_added_errors,
    prune_tree,
    split_gains,
    tree_report,
)

__all__ = [
    "METHODS",
    "CompiledTree",
    "PruningCurve",
    "PruningReport",
    "c45_added_errors",
    "ccp_path",
    "compile_tree",
    "prune_tree",
    "pruning_curve",
    "split_gains",
    "tree_report",
]
