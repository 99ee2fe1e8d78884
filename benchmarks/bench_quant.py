"""Quantized sparse kernels beside the float32 sparse kernel (issue #15).

Two parts, both with the same thread count for every competitor
(``SPARSEPRUNE_BENCH_THREADS``, default: all cores):

- The grid: 4096 x 4096 layers at 5, 10 and 30 % density, batch 1, 16 and 256,
  timing ``float32`` (``SparseLinear(W)(X, method="sparse")``, sparseprune's
  own sparse kernel) and the quantized kernels (``qlinear(X, Q)``) for
  ``linear8`` (int8 x per-row scale), ``kmeans8``, ``kmeans5`` and ``kmeans4``
  (codebook lookups). The issue's target: quantized no more than 10 % slower
  than float32 at any cell.
- The size sweep at batch 1 (10 % density by default): square layers from
  2048 to 32768, to find the size where the float32 weights (4-byte values,
  16-bit columns, row pointers: the bytes the SpMV streams) no longer fit in
  the last-level cache, and the quantized kernels' speedup beyond it (they
  stream 3 bytes per nonzero instead of 6).

Layers are random with exactly ``round(density * n_in)`` nonzeros per row,
columns spread over the row (a jittered grid, built row block by row block so
the 100M-nonzero layers of the sweep need no more memory than they hold).

Run as a pytest-benchmark suite::

    pytest benchmarks/bench_quant.py -o python_files='bench_*.py' --benchmark-group-by=group

or as a script, printing tables (median and p90 per call, ratio quantized /
float32 of the medians; competitors timed interleaved, round-robin)::

    python benchmarks/bench_quant.py                 # grid + sweep (several minutes, a few GB at 32768)
    python benchmarks/bench_quant.py --no-sweep      # grid only
    python benchmarks/bench_quant.py --sweep-only --sizes 4096 16384 32768
    python benchmarks/bench_quant.py --quick         # tiny sizes: checks it runs, figures meaningless

``SPARSEPRUNE_BENCH_QUICK=1`` (as CI's smoke run sets it) uses tiny sizes.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

import sparseprune
from sparseprune.quantize import QuantizedLinear, qlinear, quantize

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
N = 4096
DENSITIES = (0.05, 0.10, 0.30)
BATCHES = (1, 16, 256)
#: name -> (scheme, bits); "float32" is the unquantized baseline.
VARIANTS = {"float32": None, "linear8": ("linear", 8), "kmeans8": ("kmeans", 8), "kmeans5": ("kmeans", 5),
            "kmeans4": ("kmeans", 4),
            # what a quantized MLP layer runs: QuantizedLinear, which times its codes against the
            # float kernel on a dequantized copy (where that copy is small) and keeps the faster
            "kmeans4 layer": ("kmeans", 4, "layer"), "kmeans8 layer": ("kmeans", 8, "layer")}
SWEEP_SIZES = (2048, 4096, 8192, 12288, 16384, 24576, 32768)
SWEEP_DENSITY = 0.10
QUICK_N = 128
QUICK_SWEEP = (64, 128)


# --------------------------------------------------------------------------- layers

def random_layer(n_out: int, n_in: int, density: float, seed: int = 0, dtype=np.float32) -> sp.csr_array:
    """``n_out x n_in`` CSR with exactly ``max(1, round(density * n_in))`` nonzeros per row, spread evenly.

    Row ``i``'s columns: one random column in each of ``k`` equal strides of
    the row (strictly increasing, canonical); values standard normal.
    """
    rng = np.random.default_rng(seed)
    k = min(n_in, max(1, round(density * n_in)))
    step = n_in / k
    nnz = n_out * k
    idx_dt = np.int32 if nnz < 2**31 else np.int64
    indices = np.empty(nnz, idx_dt)
    data = np.empty(nnz, dtype)
    base = np.arange(k) * step
    rows_per_block = max(1, (1 << 22) // k)
    for r0 in range(0, n_out, rows_per_block):
        r1 = min(n_out, r0 + rows_per_block)
        cols = np.floor(base + rng.random((r1 - r0, k)) * step).astype(np.int64)
        indices[r0 * k:r1 * k] = np.minimum(cols, n_in - 1).reshape(-1)
        data[r0 * k:r1 * k] = rng.standard_normal((r1 - r0) * k).astype(dtype)
    indptr = (np.arange(n_out + 1, dtype=np.int64) * k).astype(idx_dt)
    return sp.csr_array((data, indices, indptr), shape=(n_out, n_in))


def float32_weight_bytes(W: sp.csr_array) -> int:
    """Bytes the float32 sparse SpMV streams per call: values, 16-bit (else 32-bit) columns, int64 row pointers."""
    col_bytes = 2 if W.shape[1] <= 65536 else 4
    return W.nnz * (4 + col_bytes) + 8 * (W.shape[0] + 1)


def last_level_cache_bytes() -> int | None:
    """This machine's last-level cache size from sysfs (Linux), or None."""
    best = None
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            level = int(open(os.path.join(d, "level")).read())
            ctype = open(os.path.join(d, "type")).read().strip()
            raw = open(os.path.join(d, "size")).read().strip()
        except OSError:
            continue
        if ctype == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1], 1)
        size = int(raw.rstrip("KMG")) * mult
        if best is None or level > best[0]:
            best = (level, size)
    return None if best is None else best[1]


def make_callables(W: sp.csr_array, batch: int, variants=tuple(VARIANTS), seed: int = 0) -> dict:
    """name -> zero-argument callable computing ``X @ W.T`` with that variant (each run once: compiled, warm)."""
    X = np.random.default_rng(seed + batch).standard_normal((batch, W.shape[1])).astype(np.float32)
    fns = {}
    for name in variants:
        spec = VARIANTS[name]
        if spec is None:
            layer = sparseprune.SparseLinear(W)
            fns[name] = (lambda layer=layer: layer(X, method="sparse"))
        elif len(spec) == 3:
            op = QuantizedLinear(quantize(W, bits=spec[1], scheme=spec[0]), None)
            fns[name] = (lambda op=op: op(X))
            for _ in range(24):  # its first calls measure both paths
                op(X)
        else:
            Q = quantize(W, bits=spec[1], scheme=spec[0])
            fns[name] = (lambda Q=Q: qlinear(X, Q))
        fns[name]()
    return fns


# --------------------------------------------------------------------------- pytest-benchmark suite

_cache: dict = {}


def _grid_layer(density: float) -> sp.csr_array:
    key = ("grid", density)
    if key not in _cache:
        _cache.clear()  # one layer at a time keeps memory flat
        n = QUICK_N if QUICK else N
        _cache[key] = random_layer(n, n, density, seed=int(density * 1000))
    return _cache[key]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("density", DENSITIES)
def test_quantized_vs_float32(benchmark, density, batch, variant):
    W = _grid_layer(density)
    fn = make_callables(W, batch, (variant,))[variant]
    benchmark.group = f"{W.shape[0]}x{W.shape[1]} density={density:.2f} batch={batch}"
    benchmark.extra_info.update(density=density, batch=batch, variant=variant, n=W.shape[0])
    benchmark(fn)


_SWEEP_PARAMS = [pytest.param(n, marks=pytest.mark.slow_bench) if n > 8192 else n
                 for n in (QUICK_SWEEP if QUICK else SWEEP_SIZES)]


@pytest.mark.parametrize("variant", ["float32", "linear8", "kmeans4"])
@pytest.mark.parametrize("n", _SWEEP_PARAMS)
def test_llc_sweep_batch1(benchmark, n, variant):
    key = ("sweep", n)
    if key not in _cache:
        _cache.clear()
        _cache[key] = random_layer(n, n, SWEEP_DENSITY, seed=n)
    W = _cache[key]
    fn = make_callables(W, 1, (variant,))[variant]
    llc = last_level_cache_bytes()
    benchmark.group = f"sweep batch=1 density={SWEEP_DENSITY:.2f} n={n}"
    benchmark.extra_info.update(n=n, variant=variant, float32_weight_bytes=float32_weight_bytes(W), llc_bytes=llc)
    benchmark(fn)


# --------------------------------------------------------------------------- script

def time_interleaved(fns: dict, repeats: int, min_time: float) -> dict:
    """name -> (median, p90) seconds per call; round-robin repeats, order alternating, each repeat >= min_time."""
    from sparseprune.studies.measure import _calibrate

    numbers = {k: _calibrate(f, min_time) for k, f in fns.items()}
    samples = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            f, number = fns[k], numbers[k]
            t0 = time.perf_counter()
            for _ in range(number):
                f()
            samples[k].append((time.perf_counter() - t0) / number)
    return {k: (float(np.median(v)), float(np.percentile(v, 90))) for k, v in samples.items()}


def _fmt_us(s: float) -> str:
    return f"{s * 1e6:10.1f}"


def run_grid(n: int, densities, batches, repeats: int, min_time: float) -> list[dict]:
    rows = []
    print(f"\n{n} x {n} layers, float32 sparse kernel vs quantized kernels "
          f"({sparseprune.get_num_threads()} threads; us per call; ratio = quantized / float32 median)")
    print(f"{'density':>8} {'batch':>6} {'variant':>13} {'median':>10} {'p90':>10} {'ratio':>7}")
    for d in densities:
        W = random_layer(n, n, d, seed=int(d * 1000))
        for b in batches:
            res = time_interleaved(make_callables(W, b), repeats, min_time)
            base = res["float32"][0]
            for name, (med, p90) in res.items():
                ratio = med / base
                rows.append(dict(n=n, density=d, batch=b, variant=name, median_s=med, p90_s=p90, ratio=ratio))
                print(f"{d:8.2f} {b:6d} {name:>13} {_fmt_us(med)} {_fmt_us(p90)} {ratio:7.3f}")
        del W
    return rows


def run_sweep(sizes, density: float, repeats: int, min_time: float) -> list[dict]:
    llc = last_level_cache_bytes()
    llc_txt = f"{llc / 2**20:.0f} MiB" if llc else "unknown"
    print(f"\nBatch-1 size sweep at {density:.0%} density; last-level cache {llc_txt} "
          f"(float32 MiB = values + 16-bit columns + row pointers streamed per call)")
    print(f"{'n':>7} {'f32 MiB':>8} {'> LLC':>6} {'variant':>13} {'median':>10} {'p90':>10} {'ratio':>7}")
    rows = []
    first_over = None
    knee, first_per_nnz = None, None
    for n in sizes:
        W = random_layer(n, n, density, seed=n)
        wb = float32_weight_bytes(W)
        over = llc is not None and wb > llc
        if over and first_over is None:
            first_over = n
        res = time_interleaved(make_callables(W, 1, ("float32", "linear8", "kmeans8", "kmeans4", "kmeans4 layer")),
                               repeats, min_time)
        base = res["float32"][0]
        # The cache knee as this machine shows it (the reported LLC size of a VM can be fiction):
        # float32 time per nonzero against the smallest size swept.
        per_nnz = base / W.nnz
        first_per_nnz = first_per_nnz if rows else per_nnz
        if knee is None and per_nnz > 1.5 * first_per_nnz:
            knee = n
        print(f"{n:7d} float32: {per_nnz * 1e9:.3f} ns per nonzero ({per_nnz / first_per_nnz:.2f}x the smallest size)")
        for name, (med, p90) in res.items():
            rows.append(dict(n=n, density=density, batch=1, variant=name, median_s=med, p90_s=p90, ratio=med / base,
                             float32_weight_bytes=wb, llc_bytes=llc))
            print(f"{n:7d} {wb / 2**20:8.1f} {'yes' if over else 'no':>6} {name:>13} {_fmt_us(med)} {_fmt_us(p90)} "
                  f"{med / base:7.3f}")
        del W
    if knee is not None:
        print(f"Measured cache knee: float32 time per nonzero is 1.5x+ its small-layer value from {knee} x {knee} on.")
    if first_over is None:
        print("The float32 weights fit in the reported last-level cache at every size swept: pass larger --sizes.")
    else:
        print(f"First swept size whose float32 weights exceed the last-level cache: {first_over} x {first_over}.")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: checks that it runs")
    p.add_argument("--threads", type=int, default=None, help="threads for every competitor (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 15; quick 3)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per repeat (default 0.02)")
    p.add_argument("--n", type=int, default=None, help=f"grid layer size (default {N})")
    p.add_argument("--densities", type=float, nargs="+", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="sweep layer sizes")
    p.add_argument("--sweep-density", type=float, default=SWEEP_DENSITY)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--sweep-only", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args(argv)
    quick = a.quick or QUICK
    repeats = a.repeats or (3 if quick else 15)
    min_time = a.min_time if a.min_time is not None else (0.002 if quick else 0.02)
    n = a.n or (QUICK_N if quick else N)
    densities = a.densities or DENSITIES
    batches = a.batches or ((1, 16, 70) if quick else BATCHES)
    sizes = a.sizes or (QUICK_SWEEP if quick else SWEEP_SIZES)
    rows = []
    with sparseprune.thread_limit(a.threads):
        if not a.sweep_only:
            rows += run_grid(n, densities, batches, repeats, min_time)
        if not a.no_sweep:
            rows += run_sweep(sizes, a.sweep_density, repeats, min_time)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": _machine(), "results": rows}, f, indent=1)
    return 0


def _machine() -> dict:
    from sparseprune.studies.measure import machine_info

    info = machine_info()
    info["llc_bytes"] = last_level_cache_bytes()
    return info


if __name__ == "__main__":
    sys.exit(main())
