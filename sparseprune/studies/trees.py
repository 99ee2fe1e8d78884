"""The tree and forest studies of ``sparseprune demo``: post-prune a fitted scikit-learn tree or
forest along info_gain and cost_complexity, and time compiled inference against scikit-learn."""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np

from sparseprune.datasets import Dataset
from sparseprune.inference.threads import get_num_threads
from sparseprune.studies.common import Run, baseline, latency


def _trees_of(est) -> list:
    return list(getattr(est, "estimators_", [est]))


def _tree_stats(est, X_test: np.ndarray, y_test: np.ndarray, nodes0: int) -> dict:
    trees = _trees_of(est)
    nodes = sum(int(t.tree_.node_count) for t in trees)
    leaves = sum(int(t.get_n_leaves()) for t in trees)
    depth = max(int(t.get_depth()) for t in trees)
    # sklearn's own storage: the node records plus the value array.
    nbytes = sum(t.tree_.__getstate__()["nodes"].nbytes + t.tree_.value.nbytes for t in trees)
    path = est.decision_path(X_test)
    indicator = path[0] if isinstance(path, tuple) else path
    # Nodes on the decision paths minus one leaf per tree = comparisons per sample.
    comparisons = indicator.nnz / X_test.shape[0] - len(trees)
    return {
        "sparsity": 1.0 - nodes / nodes0,
        "params_kept": nodes,
        "nodes": nodes,
        "leaves": leaves,
        "depth": depth,
        "bytes": nbytes,
        "flops_per_sample": comparisons,
        "accuracy": float(np.mean(est.predict(X_test) == y_test)),
    }


def _pooled_split_gains(est) -> np.ndarray:
    """Weighted impurity decrease of every split (``trees.prune.split_gains``), pooled over the trees."""
    from sparseprune.trees.prune import split_gains

    gains = []
    for t in _trees_of(est):
        g = split_gains(t)
        gains.append(g[t.tree_.children_left != -1])
    return np.concatenate(gains) if gains else np.zeros(0)


def _pruning_curves(est, X_test: np.ndarray, y_test: np.ndarray, n_points: int) -> dict[str, list]:
    """Accuracy vs nodes for info_gain and cost_complexity post-pruning (``sparseprune.pruning_curve``)."""
    from sparseprune.trees import pruning_curve

    pc = pruning_curve(est, X_test, y_test, n_points=n_points).to_dict()
    return {name: [{"param": p, "nodes": n, "accuracy": a}
                   for p, n, a in zip(pc[name]["param"], pc[name]["n_nodes"], pc[name]["score"])]
            for name in ("info_gain", "cost_complexity")}


def study(run: Run, ds: Dataset, family: str) -> dict:
    import sklearn.base
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    from sparseprune.trees import compile_tree, prune_tree

    seed = run.args.seed
    X, y, Xt, yt = ds.X_train, ds.y_train, ds.X_test, ds.y_test
    n_trees = 10 if run.quick else 50
    if family == "forest":
        # n_jobs = the thread count our kernels get, so the comparison is fair.
        n_jobs = run.threads or get_num_threads()
        est = RandomForestClassifier(n_estimators=n_trees, random_state=seed, n_jobs=n_jobs).fit(X, y)
        title = f"random forest ({n_trees} trees) on {ds.name}"
    else:
        n_jobs = 1
        est = DecisionTreeClassifier(random_state=seed).fit(X, y)
        title = f"decision tree on {ds.name}"
    run.say(f"{family}: fitted {title}")
    nodes0 = sum(int(t.tree_.node_count) for t in _trees_of(est))
    batches = [1, 256]

    def engine(model) -> Callable:
        return compile_tree(model).predict

    variants = None
    if family == "forest" and n_jobs != 1:
        # joblib dispatch dominates small batches; a fair baseline is sklearn's best setting.
        est_1 = copy.deepcopy(est).set_params(n_jobs=1)
        variants = {"dense_n_jobs_1": est_1.predict}

    base = baseline(run, Xt, est.predict, batches, variants)

    def row(label: str, kind: str, param: float | None, model) -> dict:
        r = {"label": label, "kind": kind, "param": param}
        r.update(_tree_stats(model, Xt, yt, nodes0))
        extra = {"pruned_sklearn": model.predict}
        r["latency"] = latency(run, Xt, base, engine(model), batches, extra)
        r["pruned_engine"] = "sparseprune.compile_tree"
        return r

    # Thresholds from the fitted model's own split gains and scikit-learn's ccp path, so the
    # sweep spans light to heavy pruning on any dataset.
    gains = _pooled_split_gains(est)
    single = est if family == "tree" else DecisionTreeClassifier(random_state=seed).fit(X, y)
    alphas = single.cost_complexity_pruning_path(X, y).ccp_alphas
    table_q = (0.5, 0.9) if run.quick else (0.5, 0.8, 0.9, 0.95)
    taus = np.unique(np.quantile(gains, table_q)) if gains.size else np.zeros(0)
    table_alphas = np.unique(np.quantile(alphas, table_q)) if alphas.size else np.zeros(0)

    rows = [row("unpruned", "unpruned", None, est)]
    curves: dict[str, list] = {}
    for tau in run.progress(taus, f"{family}: info_gain"):
        p = prune_tree(est, method="info_gain", threshold=float(tau))
        rows.append(row(f"info_gain τ={tau:.2g}", "info_gain", float(tau), p))
    for a in run.progress(table_alphas, f"{family}: cost_complexity"):
        p = prune_tree(est, method="cost_complexity", alpha=float(a))
        rows.append(row(f"cost_complexity α={a:.2g}", "cost_complexity", float(a), p))
    curves.update(_pruning_curves(est, Xt, yt, 8 if run.quick else 25))
    if not curves.get("cost_complexity"):
        curves["cost_complexity"] = [{"param": r["param"], "nodes": r["nodes"], "accuracy": r["accuracy"]}
                                     for r in rows if r["kind"] == "cost_complexity"]
    # scikit-learn's own answer: refit with ccp_alpha along its pruning path (for the forest,
    # the path of one tree fitted on the same data, and fewer points: each is a forest refit).
    n_pick = (8 if run.quick else 25) if family == "tree" else (3 if run.quick else 8)
    pick = np.unique(np.quantile(alphas, np.linspace(0.0, 0.995, n_pick)))
    curves["ccp_path"] = []
    for a in run.progress(pick, f"{family}: sklearn ccp path"):
        m = sklearn.base.clone(est).set_params(ccp_alpha=float(a)).fit(X, y)
        nodes = (int(m.tree_.node_count) if family == "tree"
                 else int(sum(t.tree_.node_count for t in m.estimators_)))
        curves["ccp_path"].append({"param": float(a), "nodes": nodes, "accuracy": float(m.score(Xt, yt))})
    return {"title": title, "family": family, "dataset": ds.name, "batches": batches,
            "latency_meaning": "dense = scikit-learn predict of the unpruned model (timed once per batch size)"
                               + (f" (faster of n_jobs={n_jobs} and n_jobs=1)" if variants else "")
                               + "; pruned = the pruned model through sparseprune.compile_tree",
            "rows": rows, "curves": curves}
