"""Pruning curves: accuracy against size along a pruning method's parameter (``pruning_curve``, ``ccp_path``)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sparseprune._validation import check_int
from sparseprune.kernels.tree import ccp_prune
from sparseprune.trees.common import check_tree_estimator
from sparseprune.trees.prune import prune_tree, split_gains

__all__ = ["PruningCurve", "ccp_path", "pruning_curve"]


def ccp_path(estimator) -> tuple[np.ndarray, np.ndarray]:
    """Cost-complexity pruning path of a fitted single tree, from the tree itself (kernel ``ccp_prune``).

    Equal to scikit-learn's ``cost_complexity_pruning_path`` on the training
    data, without refitting.

    Returns
    -------
    ccp_alphas, impurities : ndarray
    """
    trees = check_tree_estimator(estimator)
    if len(trees) != 1:
        raise ValueError("ccp_path takes a single tree; for a forest call it on each of estimators_.")
    t = trees[0].tree_
    _, alphas, imp, n = ccp_prune(t.children_left.astype(np.int64), t.children_right.astype(np.int64),
                                  t.weighted_n_node_samples, t.impurity, np.inf)
    return alphas[:n].copy(), imp[:n].copy()


@dataclasses.dataclass
class PruningCurve:
    """Test score against node count for info_gain thresholds and cost-complexity alphas.

    Each curve is a dict of equal-length lists: ``param`` (threshold or
    alpha), ``n_nodes`` (summed over a forest's trees) and ``score``
    (accuracy or R^2 on the given data).
    """

    score_name: str
    n_nodes_unpruned: int
    score_unpruned: float
    info_gain: dict
    cost_complexity: dict

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def best_within(self, tolerance: float = 0.005, curve: str = "info_gain") -> dict:
        """Smallest model whose score is at least the unpruned score minus ``tolerance``."""
        c = getattr(self, curve)
        ok = [i for i, s in enumerate(c["score"]) if s >= self.score_unpruned - tolerance]
        i = min(ok, key=lambda k: c["n_nodes"][k])
        return {"param": c["param"][i], "n_nodes": c["n_nodes"][i], "score": c["score"][i]}


def _grid(values: np.ndarray, n_points: int) -> np.ndarray:
    values = np.unique(values[values > 0])
    if values.size <= n_points:
        return values
    return np.unique(np.quantile(values, np.linspace(0, 1, n_points), method="nearest"))


def pruning_curve(estimator, X, y, *, thresholds=None, alphas=None, n_points: int = 25) -> PruningCurve:
    """Score against size for ``info_gain`` thresholds and scikit-learn's cost-complexity path.

    Parameters
    ----------
    estimator : fitted tree or forest (see :func:`prune_tree`).
    X, y : evaluation data (held out from training).
    thresholds : array-like, optional
        info_gain thresholds; default: up to ``n_points`` quantiles of the
        trees' split gains (each one is where some split starts to go).
    alphas : array-like, optional
        ccp alphas; default: up to ``n_points`` quantiles of the trees'
        cost-complexity path (``ccp_path``), the alphas scikit-learn's
        ``cost_complexity_pruning_path`` gives.
    n_points : int, default=25

    Returns
    -------
    PruningCurve
        Use ``to_dict()`` for plotting; both curves include the unpruned model.
    """
    trees = check_tree_estimator(estimator)
    n_points = check_int(n_points, "n_points", low=2)
    if thresholds is None:
        thresholds = _grid(np.concatenate([split_gains(t) for t in trees]), n_points)
    if alphas is None:
        alphas = _grid(np.concatenate([ccp_path(t)[0] for t in trees]), n_points)
    thresholds = np.asarray(thresholds, np.float64)
    alphas = np.asarray(alphas, np.float64)
    n0 = int(sum(t.tree_.node_count for t in trees))
    s0 = float(estimator.score(X, y))
    curves = {}
    for name, key, grid in (("info_gain", "threshold", thresholds), ("cost_complexity", "alpha", alphas)):
        c = {"param": [0.0], "n_nodes": [n0], "score": [s0]}
        for v in grid:
            p = prune_tree(estimator, name, **{key: float(v)})
            c["param"].append(float(v))
            c["n_nodes"].append(int(p.pruning_report_.n_nodes_after))
            c["score"].append(float(p.score(X, y)))
        curves[name] = c
    return PruningCurve(score_name="accuracy" if hasattr(estimator, "classes_") else "r2",
                        n_nodes_unpruned=n0, score_unpruned=s0, **curves)
