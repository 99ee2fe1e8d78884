"""Compiled tree inference and tree pruning, side by side with scikit-learn.

Run: ``pytest benchmarks/bench_tree.py -o python_files='bench_*.py'``
(add ``-s`` to see the interleaved ratio tables).

Every group holds the scikit-learn baseline and ours on the same rows, same
thread count (``thread_limit`` for numba/BLAS, ``n_jobs`` for the forest);
each callable runs once before timing so numba compilation is excluded.
``test_speed_targets`` measures the issue's ratios interleaved in one process
(median of repeats) and checks them; ``test_info_gain_targets`` checks the
pruning targets on digits and on Fashion-MNIST (or a 100k-row
``make_classification`` stand-in when the dataset package is absent).
"""
from __future__ import annotations

import gzip
import os
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from sparseprune import compile_tree, get_num_threads, prune_tree, thread_limit
from sparseprune.trees import pruning_curve

THREADS = get_num_threads()
# SPARSEPRUNE_BENCH_QUICK=1: tiny sizes and no target assertions, for CI's smoke run.
QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
N_ROWS = 2_000 if QUICK else 100_000
N_TREES = 5 if QUICK else 100
FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(2 * N_ROWS, 40, n_informative=20, n_classes=4, random_state=0)
    return X[:N_ROWS], y[:N_ROWS], X[N_ROWS:], y[N_ROWS:]


@pytest.fixture(scope="module")
def deep_tree(data):
    Xtr, ytr, _, _ = data
    return DecisionTreeClassifier(random_state=0).fit(Xtr, ytr)


@pytest.fixture(scope="module")
def forest(data):
    Xtr, ytr, _, _ = data
    return RandomForestClassifier(n_estimators=N_TREES, max_depth=12, random_state=0, n_jobs=THREADS).fit(Xtr, ytr)


def _run(benchmark, fn):
    with thread_limit(THREADS):
        fn()   # warm-up: numba compilation and first-touch excluded
        benchmark.pedantic(fn, rounds=7, iterations=1)


# --------------------------------------------------------------------------- single deep tree


@pytest.mark.benchmark(group="deep tree predict, 100k rows x 40")
def test_deep_tree_sklearn(benchmark, deep_tree, data):
    _run(benchmark, lambda: deep_tree.predict(data[2]))


@pytest.mark.benchmark(group="deep tree predict, 100k rows x 40")
def test_deep_tree_compiled(benchmark, deep_tree, data):
    model = compile_tree(deep_tree)
    np.testing.assert_array_equal(model.predict(data[2]), deep_tree.predict(data[2]))
    _run(benchmark, lambda: model.predict(data[2]))


# --------------------------------------------------------------------------- forest


@pytest.mark.benchmark(group="RF 100 trees depth 12 predict, 100k rows x 40")
def test_forest_sklearn(benchmark, forest, data):
    _run(benchmark, lambda: forest.predict(data[2]))


@pytest.mark.benchmark(group="RF 100 trees depth 12 predict, 100k rows x 40")
def test_forest_compiled(benchmark, forest, data):
    model = compile_tree(forest)
    np.testing.assert_array_equal(model.predict(data[2]), forest.predict(data[2]))
    _run(benchmark, lambda: model.predict(data[2]))


# --------------------------------------------------------------------------- pruned vs unpruned


@pytest.fixture(scope="module")
def pruned_tree(deep_tree):
    return prune_tree(deep_tree, "info_gain", threshold=2e-4)


@pytest.mark.benchmark(group="pruned vs unpruned deep tree, 100k rows")
@pytest.mark.parametrize("which", ["unpruned", "pruned"])
@pytest.mark.parametrize("engine", ["sklearn", "compiled"])
def test_pruned_vs_unpruned(benchmark, deep_tree, pruned_tree, data, which, engine):
    est = deep_tree if which == "unpruned" else pruned_tree
    fn = est.predict if engine == "sklearn" else compile_tree(est).predict
    benchmark.extra_info.update(nodes=int(est.tree_.node_count), accuracy=float(est.score(data[2], data[3])))
    _run(benchmark, lambda: fn(data[2]))


# --------------------------------------------------------------------------- interleaved ratios


def _interleaved(fns: dict, repeats: int = 7) -> dict:
    """Median seconds per callable, the callables alternating within each repeat."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def test_speed_targets(deep_tree, forest, pruned_tree, data):
    X = data[2]
    with thread_limit(THREADS):
        m_tree, m_forest, m_pruned = compile_tree(deep_tree), compile_tree(forest), compile_tree(pruned_tree)
        t = _interleaved({
            "tree sklearn": lambda: deep_tree.predict(X), "tree compiled": lambda: m_tree.predict(X),
            "pruned sklearn": lambda: pruned_tree.predict(X), "pruned compiled": lambda: m_pruned.predict(X),
        })
        t.update(_interleaved({"forest sklearn": lambda: forest.predict(X),
                               "forest compiled": lambda: m_forest.predict(X)}, repeats=5))
    with thread_limit(1):     # one thread each: less exposed to a busy machine
        forest.set_params(n_jobs=1)
        t1 = _interleaved({"tree sklearn": lambda: deep_tree.predict(X), "tree compiled": lambda: m_tree.predict(X)})
        t1.update(_interleaved({"forest sklearn": lambda: forest.predict(X),
                                "forest compiled": lambda: m_forest.predict(X)}, repeats=3))
        forest.set_params(n_jobs=THREADS)
    print(f"\n1 thread: deep tree {t1['tree sklearn'] / t1['tree compiled']:.2f}x "
          f"({1e3 * t1['tree sklearn']:.1f} vs {1e3 * t1['tree compiled']:.1f} ms), RF "
          f"{t1['forest sklearn'] / t1['forest compiled']:.2f}x "
          f"({1e3 * t1['forest sklearn']:.0f} vs {1e3 * t1['forest compiled']:.0f} ms)")
    tree_ratio = t["tree sklearn"] / t["tree compiled"]
    forest_ratio = t["forest sklearn"] / t["forest compiled"]
    print(f"\nthreads={THREADS}, rows={len(X)}")
    for k, v in t.items():
        print(f"  {k:18s} {1e3 * v:9.2f} ms")
    print(f"  deep tree ({deep_tree.tree_.node_count} nodes, depth {deep_tree.get_depth()}): "
          f"{tree_ratio:.2f}x; RF 100 x depth 12: {forest_ratio:.2f}x; "
          f"pruned ({pruned_tree.tree_.node_count} nodes) compiled vs unpruned sklearn: "
          f"{t['tree sklearn'] / t['pruned compiled']:.2f}x")
    if not QUICK:
        assert tree_ratio >= 3.0
        assert forest_ratio >= 3.0


# --------------------------------------------------------------------------- pruning targets


def _load_fashion():
    def read(name, offset):
        with gzip.open(os.path.join(FASHION, name)) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    Xtr = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype(np.float32)
    ytr = read("train-labels-idx1-ubyte.gz", 8)
    Xte = read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype(np.float32)
    yte = read("t10k-labels-idx1-ubyte.gz", 8)
    return Xtr, Xte, ytr, yte


def _report_target(name, base, Xte, yte):
    curve = pruning_curve(base, Xte, yte, n_points=30)
    best = curve.best_within(0.005)
    removed = 1 - best["n_nodes"] / curve.n_nodes_unpruned
    print(f"\n{name}: unpruned {curve.n_nodes_unpruned} nodes, accuracy {curve.score_unpruned:.4f}; "
          f"info_gain threshold {best['param']:.3g}: {best['n_nodes']} nodes ({100 * removed:.1f}% removed), "
          f"accuracy {best['score']:.4f} ({100 * (best['score'] - curve.score_unpruned):+.2f} pp)")
    ccp = curve.best_within(0.005, "cost_complexity")
    print(f"  ccp best within 0.5 pp: alpha {ccp['param']:.3g}: {ccp['n_nodes']} nodes, accuracy {ccp['score']:.4f}")
    for key in ("info_gain", "cost_complexity"):
        c = getattr(curve, key)
        print(f"  {key}: " + ", ".join(f"{n}:{s:.4f}" for n, s in zip(c["n_nodes"], c["score"])))
    assert removed >= 0.5
    return curve


def test_info_gain_targets():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    _report_target("digits", DecisionTreeClassifier(random_state=0).fit(Xtr, ytr), Xte, yte)
    if QUICK:
        return
    if os.path.exists(os.path.join(FASHION, "train-images-idx3-ubyte.gz")):
        Xtr, Xte, ytr, yte = _load_fashion()
        name = "Fashion-MNIST (60k train / 10k test)"
    else:
        X, y = make_classification(100_000, 40, n_informative=20, n_classes=4, flip_y=0.05, random_state=0)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
        name = "make_classification 100k stand-in"
    _report_target(name, DecisionTreeClassifier(random_state=0).fit(Xtr, ytr), Xte, yte)
