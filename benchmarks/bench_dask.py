"""Predict throughput on Dask vs in-process, and the quick study on 2 workers vs locally.

Run (the issue's figures; minutes on 2 cores)::

    python benchmarks/bench_dask.py --rows 4000000

Smoke run (tiny sizes; what ``SPARSEPRUNE_BENCH_QUICK=1 pytest benchmarks`` does)::

    python benchmarks/bench_dask.py --rows 20000 --repeats 1 --quick-study-sparsities 0,0.5

What is measured
----------------
The model is a 784-300-100-10 :class:`sparseprune.MLPClassifier` (float32)
fitted briefly on random data and pruned to 95 % weight sparsity
(``model.prune(0.95)``, global magnitude). Throughput is rows/s of ``predict``
over ``--rows`` rows (random float32 data), median over ``--repeats`` runs:

* ``local, N threads``: in-process ``model.predict`` on blocks of
  ``--block-rows`` rows (default ``sparseprune.dask.default_block_rows(784, 4)``,
  42 799 rows = 128 MiB),
  one call per block, predictions concatenated, under
  ``sparseprune.thread_limit(N)``;
* ``dask, W workers``: ``sparseprune.dask.predict(model, X).compute()`` on a
  local cluster of W worker processes x ``--threads-per-worker`` (1), started by
  ``sparseprune.dask.connect("local")`` as ``--scheduler local`` starts it, where ``X`` is a dask
  array whose blocks are all one block scattered to every worker beforehand
  (so neither side pays for generating or shipping the input; labels are
  gathered to the client, as a user would). Each task uses
  ``max(1, cores // (threads of all workers on the host))`` threads
  (``sparseprune.dask.task_threads``): 1 worker on 2 cores runs its task on 2
  threads, 2 workers run one task each on 1 thread.

Every configuration is warmed up first (imports, numba caches, the model's plan
measuring its first calls on each worker); cluster start-up is not timed but
reported. "vs local" divides by the in-process throughput on all usable cores
(equal cores: the clusters use all cores too); the Dask overhead is 1 - that.

Then the demo's quick MLP study (``sparseprune.studies.dask``): all cells in this
process vs on a 2-worker cluster, wall time (cluster start-up excluded) and
whether every row's accuracy is identical.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK", "") not in ("", "0")


def build_model(seed: int = 0, sparsity: float = 0.95):
    """A 784-300-100-10 MLPClassifier (float32) fitted 2 epochs on random data, then pruned."""
    import sparseprune

    rng = np.random.default_rng(seed)
    X = rng.random((3000, 784), dtype=np.float32)
    y = (X @ rng.standard_normal((784, 10)).astype(np.float32)).argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sparseprune.MLPClassifier(hidden_layer_sizes=(300, 100), max_iter=2, random_state=seed).fit(X, y)
    return model.prune(sparsity)


def _median_iqr(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[0], q[2]


def time_local(model, block: np.ndarray, n_blocks: int, threads: int, repeats: int) -> dict:
    import sparseprune

    with sparseprune.thread_limit(threads):
        for _ in range(20):  # the plan measures dense vs sparse on its first calls
            model.predict(block)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = np.concatenate([model.predict(block) for _ in range(n_blocks)])
            times.append(time.perf_counter() - t0)
    return {"times": times, "labels": out}


def _aliased(base, block: np.ndarray, n_blocks: int):
    """A dask array of ``n_blocks`` row blocks that all are the scattered ``base`` (no copy, no compute)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    name = f"bench-input-{n_blocks}-{base.key}"
    dsk = {(name, i, 0): base for i in range(n_blocks)}
    return da.Array(HighLevelGraph.from_collections(name, dsk, dependencies=[]), name,
                    chunks=((block.shape[0],) * n_blocks, (block.shape[1],)), dtype=block.dtype)


def time_dask(model, block: np.ndarray, n_blocks: int, workers: int, repeats: int, threads_per_worker: int = 1) -> dict:
    from sparseprune import dask as spd

    t0 = time.perf_counter()
    client = spd.connect("local", n_workers=workers, threads_per_worker=threads_per_worker)
    try:
        startup = time.perf_counter() - t0
        base = client.scatter(block, broadcast=True)
        X = _aliased(base, block, n_blocks)
        spd.predict(model, _aliased(base, block, 8 * workers)).compute()  # imports, numba caches, first calls
        times = []
        for _ in range(repeats):
            t1 = time.perf_counter()
            out = spd.predict(model, X).compute()
            times.append(time.perf_counter() - t1)
        # the thread share each worker's tasks run with (asked by a task on each worker)
        host = spd._host_threads(client)
        threads = {a: client.submit(spd.task_threads, host, pure=False, workers=[a]).result()
                   for a in client.scheduler_info()["workers"]}
    finally:
        client.close()
    return {"times": times, "labels": out, "startup_s": startup, "task_threads": sorted(set(threads.values()))}


def time_study(sparsities: list[float], workers: int = 2) -> dict:
    from sparseprune.studies import dask as st
    from sparseprune import dask as spd
    from sparseprune.datasets import load_dataset

    ds = load_dataset("digits")
    t0 = time.perf_counter()
    local = st.mlp_study_local(ds, sparsities, quick=True, progress=False)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    client = spd.connect("local", n_workers=workers, threads_per_worker=1)
    startup = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        dist = st.mlp_study(client, ds, sparsities, quick=True, progress=False)
        t_dask = time.perf_counter() - t0
    finally:
        client.close()
    same = [(r["label"], r["accuracy"]) for r in local["rows"]] == [(r["label"], r["accuracy"]) for r in dist["rows"]]
    return {"local_s": t_local, "dask_s": t_dask, "startup_s": startup, "same_results": same,
            "cells": len(dist["rows"]), "workers_used": sorted({r["worker"] for r in dist["rows"]})}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=20000 if QUICK else 4_000_000)
    p.add_argument("--block-rows", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1 if QUICK else 5)
    p.add_argument("--workers", default="1,2", help="cluster sizes to time (comma-separated)")
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--no-study", action="store_true", help="skip the quick-study comparison")
    p.add_argument("--quick-study-sparsities", default="0,0.5,0.9")
    args = p.parse_args(argv)
    from sparseprune import dask as spd

    import numba

    # the cores the local runs can use: numba cannot start more threads than it was started with
    cores = min(spd._usable_cores(), numba.config.NUMBA_NUM_THREADS)
    block_rows = min(args.block_rows or spd.default_block_rows(784, 4), args.rows)
    n_blocks = max(1, -(-args.rows // block_rows))
    rows = n_blocks * block_rows
    model = build_model()
    block = np.random.default_rng(1).random((block_rows, 784), dtype=np.float32)
    print(f"model 784-300-100-10, {1 - sum(lay.nnz for lay in model.layers_) / sum(lay.shape[0] * lay.shape[1] for lay in model.layers_):.1%} "
          f"sparse, float32; {rows} rows in {n_blocks} blocks of {block_rows}; {cores} usable cores; "
          f"median of {args.repeats}", flush=True)

    results = []
    ref = None
    for threads in sorted({1, cores}):
        r = time_local(model, block, n_blocks, threads, args.repeats)
        ref = r["labels"] if ref is None else ref
        results.append({"config": f"local predict, {threads} thread(s)", "cores": threads, **r})
    for w in [int(v) for v in args.workers.split(",") if v.strip()]:
        r = time_dask(model, block, n_blocks, w, args.repeats, args.threads_per_worker)
        assert np.array_equal(r["labels"], ref), "dask predictions differ from local predict"
        results.append({"config": f"dask.predict, {w} worker(s) x {args.threads_per_worker} thread "
                                  f"(task threads {r['task_threads']})",
                        "cores": cores, **r})
    local_all = next(r for r in results if r["config"].startswith("local") and r["cores"] == cores)
    base = rows / _median_iqr(local_all["times"])[0]
    print(f"\n{'configuration':62s} {'rows/s (median)':>16s} {'IQR':>22s} {'vs local':>9s} {'start-up':>9s}")
    for r in results:
        med, q1, q3 = _median_iqr(r["times"])
        tput = rows / med
        r.update(rows_per_s=tput, vs_local=tput / base)
        start = f"{r['startup_s']:.1f} s" if "startup_s" in r else ""
        print(f"{r['config']:62s} {tput:16,.0f} {rows / q3:10,.0f}-{rows / q1:<11,.0f} {tput / base:8.2f}x {start:>9s}")
    for r in results:
        if "startup_s" in r:
            print(f"Dask overhead at equal cores ({r['config'].split(',')[1].strip()}): {1 - r['vs_local']:+.1%}")
    out = {"rows": rows, "block_rows": block_rows, "cores": cores,
           "predict": [{k: v for k, v in r.items() if k != "labels"} for r in results]}
    if not args.no_study:
        sparsities = [float(v) for v in args.quick_study_sparsities.split(",")]
        s = time_study(sparsities)
        print(f"\nquick MLP study ({s['cells']} cells): local {s['local_s']:.1f} s, 2 workers {s['dask_s']:.1f} s "
              f"(+ {s['startup_s']:.1f} s cluster start-up), same results: {s['same_results']}")
        out["study"] = s
    return out


def test_bench_dask_smoke():
    """Smoke run at tiny sizes (SPARSEPRUNE_BENCH_QUICK=1): every configuration runs and agrees."""
    out = main(["--rows", "20000", "--repeats", "1", "--quick-study-sparsities", "0,0.5"])
    assert all(r["rows_per_s"] > 0 for r in out["predict"])
    assert out["study"]["same_results"]


if __name__ == "__main__":
    main(sys.argv[1:])
