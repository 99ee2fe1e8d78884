"""Serving latency: a fitted model's ``predict_proba`` against bare numpy on its dense weights.

"Bare numpy" is the floor any serving path should beat: the dense weights run
as ``relu(X @ W.T + b)`` per layer and a softmax, no validation. Each model is
timed as a block (warm-up calls, then timed calls, median and p90), blocks in
two passes of opposite order, BLAS and numba on the same thread count.

Also the cost of the plan's measuring: a fresh model's first 100 calls against
the same calls with its choices already known.

Run: ``pytest benchmarks/bench_serving.py -o python_files='bench_*.py' -s``
(or ``python benchmarks/bench_serving.py [--big | --cost | --fixed]``).
``SPARSEPRUNE_BENCH_QUICK=1`` shrinks it to a smoke run.
"""
from __future__ import annotations

import copy
import os
import time
import warnings

import numba
import numpy as np
import pytest

import sparseprune

import _timing  # benchmarks/_timing.py (the script's folder; benchmarks/conftest.py for pytest)
from sparseprune import MLPClassifier
from sparseprune.studies.common import settle_plan

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
    """Per callable: (median, p90) seconds per call (see ``_timing.block_stats``)."""
    return _timing.block_stats(fns, X, rounds, WARMUP_S)


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
            # Both plans measured to the end first (deferred candidates, confirming rounds): the
            # figures are a serving process's after its first calls, not a mix of paths.
            for m in (dense, pruned):
                settle_plan(m, X, 0.3 if QUICK else 3.0)
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


def measuring_cost(n_calls=100, repeats=5):
    """Total time of a fresh model's first ``n_calls`` calls against the same calls on a fresh
    copy given its choices up front (frozen choices measured beforehand, restored as
    :func:`sparseprune.load` restores a saved model's), per case.

    Both start from an unused copy of the model, so both build their plan (timed); kernels
    are compiled before either is timed. The difference is the cost of measuring itself:
    the calls that ran the slower candidate, the warm-up calls, a dense copy of the weights.
    Medians over ``repeats`` pairs, the pair's order alternating.
    """
    rng = np.random.default_rng(3)
    out = []
    cases = [(64, (300, 100), 10, 1), (64, (300, 100), 10, 256), (784, (300, 100), 10, 1),
             (784, (300, 100), 10, 256)] if not QUICK else [(16, (8,), 2, 1)]
    for n_in, hidden, n_out, b in cases:
        base = _fit(n_in, hidden, n_out).prune(sparsity=0.95, scope="layer")
        X = rng.standard_normal((b, n_in)).astype(np.float32)
        warm = copy.deepcopy(base)  # compiles every kernel either path needs
        for _ in range(60):
            warm.predict_proba(X)
        choices = warm.plan_.freeze().to_dict()

        def fresh_calls():
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            for _ in range(n_calls):
                m.predict_proba(X)
            return time.perf_counter() - t0

        def known_calls():
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            m.plan_.load_dict(choices)
            for _ in range(n_calls):
                m.predict_proba(X)
            return time.perf_counter() - t0

        fresh, known = [], []
        for r in range(repeats):
            for name in (("fresh", "known") if r % 2 == 0 else ("known", "fresh")):
                (fresh if name == "fresh" else known).append(fresh_calls() if name == "fresh" else known_calls())
        out.append((f"{n_in}-{'-'.join(map(str, hidden))}-{n_out} at 95%", b, float(np.median(fresh)),
                    float(np.median(known))))
    return out


def fixed_cost():
    """The fixed cost of a call, where the work itself is a few hundred multiply-adds.

    Per case, (name, ours, baseline) as (median, p90) seconds: a settled
    ``SparseLinear`` call against the bare operation it ends in (``X @ W.T``
    when it keeps dense BLAS; the SpMV row kernel called directly, output
    allocated, when it runs sparse), and a fitted 16-8-2 model's
    ``predict_proba`` against bare numpy on its dense weights, at batch 1.
    """
    from sparseprune.kernels import spmm as kspmm

    rng = np.random.default_rng(4)
    out = []
    for n_out, n_in, sparsity in ((32, 64, 0.0), (1024, 256, 0.99)):
        W = rng.standard_normal((n_out, n_in)).astype(np.float32)
        layer = sparseprune.SparseLinear(sparseprune.magnitude_prune(W, sparsity) if sparsity else W)
        x = rng.standard_normal((1, n_in)).astype(np.float32)
        for _ in range(300):  # settle the dispatcher
            layer(x)
        path = layer.explain(x).path
        if path == "dense":
            WT = layer._dense().T

            def bare(X, WT=WT):
                return X @ WT
        else:
            rs, ptr, d, c, b = layer._parts(1), layer._indptr, layer._data, layer._spmv_cols, layer.bias

            def bare(X, rs=rs, ptr=ptr, d=d, c=c, b=b, n=n_out):
                Y = np.empty((1, n), np.float32)
                kspmm.spmv_rows_serial(d, c, ptr, X, b, 0, rs, Y)
                return Y

        st = block_stats({"ours": layer, "bare": bare}, x)
        what = "X @ W.T" if path == "dense" else "its kernel"
        out.append((f"SparseLinear {n_out}x{n_in}, {1 - sparsity:.0%} dense, batch 1 ({path}; bare: {what})",
                    st["ours"], st["bare"]))
    model = _fit(16, (8,), 2)
    x16 = rng.standard_normal((1, 16)).astype(np.float32)
    st = block_stats({"ours": model.predict_proba, "bare": bare_numpy(model)}, x16)
    out.append(("16-8-2 predict_proba, batch 1 (bare: numpy forward)", st["ours"], st["bare"]))
    return out


def print_fixed(rows):
    print(f"\n{'call':66s} {'ours (median, p90)':>20s} {'bare (median, p90)':>20s}  ours - bare")
    for name, o, b in rows:
        print(f"{name:66s} {o[0] * 1e6:8.2f} {o[1] * 1e6:8.2f} us {b[0] * 1e6:8.2f} {b[1] * 1e6:8.2f} us"
              f" {1e6 * (o[0] - b[0]):+8.2f} us")


def print_cost(rows):
    print(f"\n{'model':28s} {'batch':>5s}  first 100 calls, fresh   same calls, choices known   overhead")
    for name, b, tf, tk in rows:
        print(f"{name:28s} {b:5d}  {tf * 1e3:18.2f} ms   {tk * 1e3:22.2f} ms   {100 * (tf / tk - 1):+7.1f}%")


@pytest.fixture(autouse=True, scope="module")
def same_threads():
    # All the threads numba started with (benchmarks/conftest.py pins the same per test).
    with sparseprune.thread_limit(numba.config.NUMBA_NUM_THREADS):
        yield


def test_serving_table(capsys):
    rows = serving_rows()
    cost = measuring_cost()
    with capsys.disabled():
        print_rows(rows)
        print_cost(cost)
    for _, _, st in rows:
        assert all(np.isfinite(v[0]) for v in st.values())


if __name__ == "__main__":
    import sys

    with sparseprune.thread_limit(numba.config.NUMBA_NUM_THREADS):
        if "--cost" in sys.argv:
            print_cost(measuring_cost())
        elif "--fixed" in sys.argv:
            print_fixed(fixed_cost())
        else:
            print_rows(serving_rows(shapes=SHAPES + ([BIG] if "--big" in sys.argv else [])))
