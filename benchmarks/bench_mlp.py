"""MLP predict latency: dense vs pruned vs neuron-eliminated, and scikit-learn with the same weights.

A wide 1024-4096-4096-10 ReLU MLP (one epoch of training on synthetic data, so
the weights have trained magnitudes), pruned per layer to 90/95/98 % sparsity,
or with half of each hidden layer eliminated. Batch 1 and 256; one
pytest-benchmark group per batch size so every model appears next to
scikit-learn's ``MLPClassifier.predict`` on the identical dense weights.
BLAS and numba get the same thread count (``sparseprune.thread_limit``).

Run: ``pytest benchmarks/bench_mlp.py -o python_files='bench_*.py'``.
``SPARSEPRUNE_BENCH_QUICK=1`` shrinks the network so CI can smoke-run it.
"""
from __future__ import annotations

import copy
import os
import warnings

import numba
import numpy as np
import pytest

import sparseprune

import _timing  # benchmarks/_timing.py (the script's folder; benchmarks/conftest.py for pytest)
from sparseprune import MLPClassifier

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
N_IN, HIDDEN = (64, (256, 256)) if QUICK else (1024, (4096, 4096))
ROUNDS = 3 if QUICK else 15
#: Untimed warm-up per model block in the speedup table (see block_medians).
WARMUP_S = 0.0 if QUICK else 0.15


@pytest.fixture(autouse=True, scope="module")
def same_threads():
    # All the threads numba started with (benchmarks/conftest.py pins the same per test).
    with sparseprune.thread_limit(numba.config.NUMBA_NUM_THREADS):
        yield


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, N_IN)).astype(np.float32)
    y = np.abs(X[:, :10]).argmax(1)  # 10 classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=1, batch_size=256, random_state=0).fit(X, y)
    out = {"sklearn-dense": dense.to_sklearn(), "dense": dense}
    for s in (0.90, 0.95, 0.98):
        out[f"pruned-{s:.0%}"] = copy.deepcopy(dense).prune(sparsity=s, scope="layer")
    out["eliminated-50%"] = copy.deepcopy(dense).eliminate_neurons(X, criterion="l2", fraction=0.5)
    out["eliminated-50%+pruned-95%"] = copy.deepcopy(out["eliminated-50%"]).prune(sparsity=0.95, scope="layer")
    return out


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(1)
    return {b: rng.standard_normal((b, N_IN)).astype(np.float32) for b in (1, 256)}


NAMES = ["sklearn-dense", "dense", "pruned-90%", "pruned-95%", "pruned-98%", "eliminated-50%",
         "eliminated-50%+pruned-95%"]


@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("name", NAMES)
def test_mlp_predict(benchmark, models, batches, name, batch):
    model, X = models[name], batches[batch]
    benchmark.group = f"MLP predict {N_IN}-{HIDDEN[0]}-{HIDDEN[1]}-10 float32 batch={batch}"
    benchmark.extra_info["nnz"] = int(sum(np.count_nonzero(c) for c in model.coefs_)) if name.startswith("sk") \
        else int(sum(layer.nnz for layer in model.layers_))
    pred = benchmark.pedantic(model.predict, args=(X,), rounds=ROUNDS, iterations=1, warmup_rounds=2)
    assert pred.shape == (batch,)
    if name == "dense":
        np.testing.assert_array_equal(pred, models["sklearn-dense"].predict(X))


def block_medians(models, X, names=NAMES, rounds=ROUNDS):
    """Median predict time per model, each model timed as a block of back-to-back calls.

    A block is untimed warm-up calls (at least two, and at least ``WARMUP_S``
    seconds) then ``rounds`` timed ones; two passes in opposite model order
    balance drift. Alternating single calls across models would time each
    model right after another one's BLAS call, while OpenBLAS's idle worker
    threads still spin on the cores (about 0.1 s): an interference a service
    running one model does not have. The timed warm-up outlasts that window
    even for batch-1 calls of a fraction of a millisecond.
    """
    stats = _timing.block_stats({name: models[name].predict for name in names}, X, rounds, WARMUP_S)
    return {name: med for name, (med, _) in stats.items()}


@pytest.mark.parametrize("threads", sorted({1, numba.config.NUMBA_NUM_THREADS}))
@pytest.mark.parametrize("batch", [1, 256])
def test_mlp_speedup_table(models, batches, batch, threads, capsys):
    """The ratios to report: each model's median predict time vs the dense model's.

    Also at one thread: on a busy 2-core machine a 2-thread BLAS matrix-vector
    product sometimes waits a scheduler slice for its second thread (dense batch-1
    times jumped between ~2 and ~16 ms from run to run), which one thread avoids.
    """
    with sparseprune.thread_limit(threads):
        med = block_medians(models, batches[batch])
    with capsys.disabled():
        print(f"\nMLP predict {N_IN}-{HIDDEN[0]}-{HIDDEN[1]}-10 float32, batch={batch}, "
              f"{threads} thread(s), median of 2 x {ROUNDS} timed calls per model")
        for name, t in med.items():
            print(f"  {name:28s} {t * 1e3:9.3f} ms   speedup vs dense {med['dense'] / t:6.2f}x   "
                  f"vs sklearn {med['sklearn-dense'] / t:6.2f}x")
