"""Serving latency: a fitted model's ``predict_proba`` against bare numpy on its dense weights.

"Bare numpy" is the floor any serving path should beat: the dense weights run
as ``relu(X @ W.T + b)`` per layer and a softmax, no validation. Each model is
timed as a block (warm-up calls, then timed calls, median and p90), blocks in
two passes of opposite order, BLAS and numba on the same thread count.

Run: ``pytest benchmarks/bench_serving.py -o python_files='bench_*.py' -s``
(or ``python benchmarks/bench_serving.py``). ``SPARSEPRUNE_BENCH_QUICK=1``
shrinks it to a smoke run.
"""
from __future__ import annotations

import copy
import os
import time
import warnings

import numpy as np
import pytest

import sparseprune
from sparseprune import MLPClassifier

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
SHAPES = [(16, (8,), 2), (64, (300, 100), 10), (784, (300, 100), 10)] if not QUICK else [(16, (8,), 2)]
BIG = (1024, (4096, 4096), 10)
BATCHES = (1, 256)
ROUNDS = 5 if QUICK else 200
WARMUP_S = 0.0 if QUICK else 0.2


def _fit(n_in, hidden, n_out, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((max(4 * n_out, 512), n_in)).astype(np.float32)
    y = np.abs(X[:, :n_out]).argmax(1) if n_out > 2 else (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MLPClassifier(hidden_layer_sizes=hidden, max_iter=2, batch_size=256, random_state=seed).fit(X, y)


def bare_numpy(model):
    """``predict_proba`` as three lines of numpy on the model's dense weights."""
    Ws = [np.ascontiguousarray(layer.dense_weight()) for layer in model.layers_]
    bs = [layer.bias for layer in model.layers_]
    last = len(Ws) - 1
    binary = model.out_activation_ == "logistic"

    def forward(X):
        H = X
        for i, (W, b) in enumerate(zip(Ws, bs)):
            H = H @ W.T + b
            if i < last:
                np.maximum(H, 0, out=H)
        if binary:
            p = 1 / (1 + np.exp(-H))
            return np.hstack([1 - p, p])
        H = np.exp(H - H.max(axis=1, keepdims=True))
        return H / H.sum(axis=1, keepdims=True)

    return forward


def block_stats(fns, X, rounds=ROUNDS):
    """Per callable: (median, p90) seconds of ``rounds`` timed calls after a warm-up, two passes."""
    times = {k: [] for k in fns}
    for order in (list(fns), list(fns)[::-1]):
        for k in order:
            f = fns[k]
            f(X)
            f(X)
            end = time.perf_counter() + WARMUP_S
            while time.perf_counter() < end:
                f(X)
            for _ in range(rounds):
                t0 = time.perf_counter()
                f(X)
                times[k].append(time.perf_counter() - t0)
    return {k: (float(np.median(v)), float(np.percentile(v, 90))) for k, v in times.items()}


def serving_rows(shapes=SHAPES, batches=BATCHES, sparsity=0.95):
    rows = []
    for n_in, hidden, n_out in shapes:
        dense = _fit(n_in, hidden, n_out)
        pruned = copy.deepcopy(dense).prune(sparsity=sparsity, scope="layer")
        rng = np.random.default_rng(1)
        for b in batches:
            X = rng.standard_normal((b, n_in)).astype(np.float32)
            np.testing.assert_allclose(dense.predict_proba(X), bare_numpy(dense)(X), rtol=1e-4, atol=1e-5)
            fns = {"bare": bare_numpy(dense), "dense": dense.predict_proba, "pruned": pruned.predict_proba}
            st = block_stats(fns, X)
            name = f"{n_in}-{'-'.join(map(str, hidden))}-{n_out}"
            rows.append((name, b, st))
    return rows


def print_rows(rows):
    print(f"\n{'model':22s} {'batch':>5s} | {'bare numpy':>17s} | {'dense model':>17s} | {'95% pruned':>17s} |"
          f" pruned/bare  pruned/dense  dense/bare")
    for name, b, st in rows:
        cells = " | ".join(f"{st[k][0] * 1e6:7.1f} p90 {st[k][1] * 1e6:6.1f}" for k in ("bare", "dense", "pruned"))
        print(f"{name:22s} {b:5d} | {cells} | {st['bare'][0] / st['pruned'][0]:8.2f}x {st['dense'][0] / st['pruned'][0]:10.2f}x"
              f" {st['bare'][0] / st['dense'][0]:10.2f}x")


@pytest.fixture(autouse=True, scope="module")
def same_threads():
    with sparseprune.thread_limit(os.cpu_count()):
        yield


def test_serving_table(capsys):
    rows = serving_rows()
    with capsys.disabled():
        print_rows(rows)
    for _, _, st in rows:
        assert all(np.isfinite(v[0]) for v in st.values())


if __name__ == "__main__":
    import sys

    with sparseprune.thread_limit(os.cpu_count()):
        print_rows(serving_rows(shapes=SHAPES + ([BIG] if "--big" in sys.argv else [])))
