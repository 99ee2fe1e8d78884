"""The cost model behind the dispatcher's first guess (:func:`sparseprune.linear`, ``SparseLinear``).

The dispatcher measures dense BLAS against the sparse kernels on the real
layer's first calls (:mod:`sparseprune.inference.dispatch`); this table only rules out
candidates that cannot win (predicted ``HOPELESS`` times slower) and orders
the rest. It gives, per batch size, the cost of one dense multiply-add
(``dense_per_mac``), of one sparse nonzero (``sparse_per_nnz``) and, for
batches above 1, the sparse path's fixed cost per input column
(``pack_per_col``) and per output row (``out_per_row``). A hand-made table
needs only the first two.

The built-in table was measured on the project's 2-core AVX-512 machine.
:func:`sparseprune.calibrate` re-measures it on this machine (about a
second; one layer, ``CAL_ROWS x CAL_COLS``, float32) and caches it as JSON in
``$SPARSEPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sparseprune``, else
``~/.cache/sparseprune``, keyed by the CPU, core count, library versions,
thread count and ``FORMAT``; only that explicit call measures, reads or
writes the cache.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import threading
import time
from pathlib import Path

import numba
import numpy as np
import scipy

FORMAT = 7
CAL_ROWS, CAL_COLS, CAL_DENSITY = 2048, 4096, 0.2
BATCHES = (1, 8, 16, 32, 64, 256)
#: Sparse is chosen only when predicted at least this much faster than dense,
#: so model error and timing noise fall on the dense side.
SAFETY = 0.85
#: Seconds per (weight row, input row) pair of the SpMV row kernel beyond its nonzeros: the
#: row's loop set-up and reduction (0.8-1.5 ns measured on 60-180-row layers at batches 22-124).
ROW_PAIR_S = 1.0e-9
#: A one-off ``linear(X, W_csr)`` on the dense path first expands W: zeroing and writing the
#: ``out x in`` array costs about this many dense matrix-vector products over W, and each
#: nonzero's scatter about this many of the SpMV's gathered nonzeros (Zen 5, 4096 x 4096:
#: ``toarray`` 5.1 ms at 1 % and 10.7 ms at 50 % density, against a 1.3 ms product and
#: 0.32 ns per gathered nonzero; priced as one product before, which kept 50 % at batch 256
#: dense at 75 ms where the sparse kernel took 45 ms).
EXPAND_GEMVS = 4.0
EXPAND_PER_NNZ = 2.0
#: A candidate predicted this many times slower than the other is not measured.
HOPELESS = 4.0
#: ... and dense BLAS predicted this many times slower than the batched SpMM kernels
#: (see spmm._new_choice).
HOPELESS_DENSE_SPMM = 2.5
#: Wall-clock budget for one calibration; what is left unmeasured keeps defaults.
BUDGET_S = 3.0
#: Rounds of (all sparse, all dense) timings, best kept; the pause between
#: rounds lets BLAS's spinning worker threads go to sleep.
ROUNDS = 2
BLAS_SETTLE_S = 0.2

# Built-in table (seconds per unit, for 2 threads), measured by `calibrate`
# on a 2-core AVX-512 Xeon with OpenBLAS, sparse costs then raised by 25% so
# the defaults lean to dense BLAS. Used on CI and when calibration is off.
_DEFAULT = {
    "dense_per_mac": {"1": 7.7e-11, "8": 3.4e-10, "16": 3.8e-10, "32": 5.4e-10, "64": 6.8e-10, "256": 1.8e-9},
    "sparse_per_nnz": {"1": 3.2e-10, "8": 4.4e-10, "16": 4.9e-10, "32": 6.4e-10, "64": 1.03e-9, "256": 3.8e-9},
    # The batched sparse path's cost that does not grow with nnz, per input
    # column (packing X, the NaN/inf check) and per output row (the row loop,
    # bias and activation, writing Y): it decides small layers (e.g. a
    # 10-output classifier head).
    "pack_per_col": {"1": 4.6e-10, "8": 1.0e-8, "16": 5.3e-9, "32": 1.3e-8, "64": 4.0e-8, "256": 9.1e-8},
    "out_per_row": {"1": 5.0e-9, "8": 5.0e-9, "16": 8.5e-9, "32": 6.2e-9, "64": 2.3e-8, "256": 7.3e-8},
}
# Seconds per call on each path for a tiny layer (not scaled with threads).
# "sparse" is the SpMV row kernel (one row, or a few: see spmm.ROWS_MAX_BATCH and ROWS_MAX_WORK),
# "sparse_batched" the SpMM path (packing, more Python).
_DEFAULT_OVERHEAD = {"dense": 1.5e-6, "sparse": 1.5e-6, "sparse_batched": 1.0e-5}

_lock = threading.Lock()
_tables: dict[str, dict] = {}
_override: dict | None = None
#: Bumped whenever the table in force may change, so callers may cache decisions.
generation = 0


def _bump() -> None:
    global generation
    generation += 1


def cache_dir() -> Path:
    """Directory holding the calibration cache (created on first save)."""
    env = os.environ.get("SPARSEPRUNE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparseprune"


@functools.lru_cache(maxsize=None)
def _machine_key(n_threads: int) -> str:
    # Cached: the dispatcher asks for it on every call, and reading
    # /proc/cpuinfo each time cost ~80 us per layer.
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from sparseprune import __version__

    parts = [cpu, str(os.cpu_count()), f"threads={n_threads}", f"numpy={np.__version__}",
             f"numba={numba.__version__}", f"scipy={scipy.__version__}", f"sparseprune={__version__}",
             f"format={FORMAT}"]
    return "|".join(parts)


def cache_file() -> Path:
    return cache_dir() / "calibration.json"


def _load_all() -> dict:
    try:
        with open(cache_file()) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(key: str, table: dict) -> None:
    try:
        path = cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load_all()
        data[key] = table
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    except OSError:
        pass  # a read-only home must not break inference; the table stays in memory


def default_table(n_threads: int) -> dict:
    """The built-in table, scaled to ``n_threads`` (the reference machine had 2)."""
    scale = 2.0 / max(1, n_threads)
    return {
        "source": "default",
        "n_threads": n_threads,
        "dense_per_mac": {b: v * scale for b, v in _DEFAULT["dense_per_mac"].items()},
        "sparse_per_nnz": {b: v * scale for b, v in _DEFAULT["sparse_per_nnz"].items()},
        "pack_per_col": {b: v * scale for b, v in _DEFAULT["pack_per_col"].items()},
        "out_per_row": {b: v * scale for b, v in _DEFAULT["out_per_row"].items()},
        "call_overhead_s": dict(_DEFAULT_OVERHEAD),
    }


def _best(fn, reps: int, deadline: float) -> float:
    fn()  # warm-up (and JIT compile) excluded
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return best


def _fixed_part(layer, X, n_threads: int, n_out: int | None = None):
    """A call doing the batched sparse path's work that does not grow with nnz, for ``layer`` at ``X``.

    The same kernel calls as ``layer(X, method="sparse")`` (same blocks,
    threads and packing) on a weight matrix with no nonzeros, of the layer's
    shape or with ``n_out`` rows: packing, the NaN/inf check, the empty row
    loop and the output.
    """
    import scipy.sparse as sp

    from sparseprune.inference.spmm import SparseLinear, _spmm_forward

    shape = (layer.shape[0] if n_out is None else n_out, layer.shape[1])
    empty = SparseLinear(sp.csr_array(shape, dtype=layer.dtype))
    steps = []
    for b0, b1, width, n_it, n_blk, by_rows, _, parts, fn, parallel in layer._steps(X.shape[0], n_threads):
        t = empty._tiled(width, not by_rows)
        if by_rows:
            parts = t.parts(n_it)
            n_it = parts.size - 1
        else:
            parts = t.chunk_ptr_ends
        steps.append((b0, b1, width, n_it, n_blk, by_rows, t, parts, fn, parallel))
    steps = tuple(steps)
    return lambda: _spmm_forward(X, steps, empty.bias, 0, shape[0])


def measure(n_threads: int, *, reps: int = 4, budget_s: float = BUDGET_S, rows: int | None = None,
            cols: int | None = None) -> dict:
    """Run the micro-benchmark and return a fresh table (not cached); ``rows``/``cols`` default to
    ``CAL_ROWS``/``CAL_COLS``."""
    import scipy.sparse as sp

    from sparseprune.inference import spmm as _spmm
    from sparseprune.inference.spmm import SparseLinear

    rows = CAL_ROWS if rows is None else rows
    cols = CAL_COLS if cols is None else cols
    rng = np.random.default_rng(0)
    W = sp.random_array((rows, cols), density=CAL_DENSITY, format="csr", dtype=np.float32, rng=rng)
    layer = SparseLinear(W)
    dense_w = W.toarray()
    table = default_table(n_threads)
    table["source"] = "measured"
    inputs = {b: rng.standard_normal((b, cols)).astype(np.float32) for b in BATCHES}
    for X in inputs.values():  # compile every kernel variant before the clock starts
        layer(X[:, :], method="sparse")
    # The fixed part's empty layouts are built here, before the clock starts.
    # The same with an eighth of the outputs separates the cost per input
    # column (packing) from the cost per output row (the row loop and writing Y).
    small_rows = max(1, rows // 8)
    fixed = {b: _fixed_part(layer, X, n_threads) if b > 1 else (lambda X=X: np.isfinite(X[0]).all())
             for b, X in inputs.items()}
    fixed_small = {b: _fixed_part(layer, X, n_threads, small_rows) if b > 1 else fixed[b]
                   for b, X in inputs.items()}
    deadline = time.perf_counter() + budget_s
    best = {name: {b: math.inf for b in BATCHES} for name in ("dense", "sparse", "pack", "pack_small")}
    for rnd in range(ROUNDS):
        # All sparse timings before all dense ones, and a pause after the
        # dense ones: a multi-threaded BLAS call leaves its worker threads
        # spinning for ~0.1 s (OpenBLAS's default), which slowed the next
        # parallel sparse kernel 2-3x here and made the table steer to dense.
        if rnd:
            time.sleep(BLAS_SETTLE_S)
        for name in ("sparse", "pack", "pack_small", "dense"):
            for b in BATCHES:
                if time.perf_counter() > deadline:
                    break
                X = inputs[b]
                if name == "sparse":
                    fn = lambda: layer(X, method="sparse")  # noqa: E731
                elif name == "pack":
                    fn = fixed[b]
                elif name == "pack_small":
                    fn = fixed_small[b]
                else:
                    fn = lambda: X @ dense_w.T  # noqa: E731
                best[name][b] = min(best[name][b], _best(fn, reps, deadline))
    measured = []
    for b in BATCHES:
        td, ts, tp, tps = best["dense"][b], best["sparse"][b], best["pack"][b], best["pack_small"][b]
        if not math.isfinite(td + ts + tp + tps):
            continue
        table["dense_per_mac"][str(b)] = td / (rows * cols)
        # The layer time includes packing X and writing Y; keep them apart from
        # the nonzeros' share (at least a tenth of the time, whatever noise says).
        tp = max(min(tp, 0.9 * ts), 1e-12)
        per_row = 0.0
        if b > 1 and rows > small_rows:
            per_row = max(tp - min(tps, tp), 0.0) / (rows - small_rows)
            table["out_per_row"][str(b)] = max(per_row, 1e-12)
        table["pack_per_col"][str(b)] = max(tp - per_row * rows, 0.1 * tp) / cols
        table["sparse_per_nnz"][str(b)] = max(ts - tp, 0.1 * ts) / max(1, W.nnz)
        measured.append(str(b))
    if len(measured) < len(BATCHES):
        table["source"] = "measured (partial: time budget ran out)"
        if measured:
            # Unmeasured batch sizes keep the default shape, rescaled to this machine.
            last = measured[-1]
            ref = default_table(n_threads)
            # out_per_row keeps its defaults there: one noisy small figure would scale them to ~0.
            for name in ("dense_per_mac", "sparse_per_nnz", "pack_per_col"):
                f = table[name][last] / ref[name][last]
                for b in map(str, BATCHES):
                    if b not in measured:
                        table[name][b] = ref[name][b] * f
    # Batch 1 (the SpMV) has no per-row fixed part of its own; its entry only anchors the
    # interpolation for batches 2-7, which run the batched path like batch 8.
    table["out_per_row"]["1"] = table["out_per_row"]["8"]
    # Per-call overhead of each path, from a layer so small the product is negligible.
    tiny = SparseLinear(sp.random_array((8, 8), density=0.5, format="csr", dtype=np.float32, rng=rng))
    x1 = inputs[1][:, :8].copy()
    x64 = inputs[64][:, :8].copy()
    end = time.perf_counter() + 0.3
    table["call_overhead_s"] = {
        "dense": _best(lambda: tiny(x1, method="dense"), 50, end),
        "sparse": _best(lambda: tiny(x1, method="sparse"), 50, end),
        # The SpMM path (the row kernel would take a layer this small at any batch).
        "sparse_batched": _best(lambda: _spmm._sparse_forward(
            x64, tiny._data, tiny._indices, tiny._indptr, tiny.bias, 0, 8, tiny._parts, tiny._tiled,
            steps_for=tiny._steps, n_threads=n_threads), 50, end),
    }
    table["shape"] = [rows, cols]
    table["density"] = CAL_DENSITY
    table["seconds"] = round(budget_s - max(0.0, deadline - time.perf_counter()), 3)
    return table


def get_table(n_threads: int) -> dict:
    """The cost-model table in force for ``n_threads``: injected, measured by :func:`calibrate`, or built in.

    Nothing is measured or read from disk here: the dispatcher measures the
    real layers on their first calls (:mod:`sparseprune.inference.dispatch`) and uses
    this table only to rule out hopeless candidates, so a library call never
    blocks on a micro-benchmark or touches the user's home directory unasked.
    """
    if _override is not None:
        return _override
    table = _tables.get(_machine_key(n_threads))
    return table if table is not None else default_table(n_threads)


def calibrate(n_threads: int, force: bool) -> dict:
    """Measure (if ``force`` or nothing cached) and cache the table for ``n_threads``."""
    key = _machine_key(n_threads)
    with _lock:
        table = None if force else _load_all().get(key)
        if not _valid(table):
            table = measure(n_threads)
            _save(key, table)
        _tables[key] = table
        _bump()
    return table


def set_override(table: dict | None) -> None:
    global _override
    if table is not None and not _valid(table):
        raise ValueError(
            "A calibration table needs 'dense_per_mac' and 'sparse_per_nnz' mappings from batch size "
            "to seconds (optionally 'pack_per_col' and 'out_per_row', all positive); get one from "
            "sparseprune.calibrate() and edit it."
        )
    _override = table
    _bump()


def forget() -> None:
    """Drop tables cached in memory (the disk cache stays)."""
    with _lock:
        _tables.clear()
        _bump()


def _valid(table) -> bool:
    if not isinstance(table, dict):
        return False
    try:
        # pack_per_col and out_per_row may be absent from a hand-made table (then
        # those costs count as free).
        for name in ("dense_per_mac", "sparse_per_nnz", "pack_per_col", "out_per_row"):
            if name in ("pack_per_col", "out_per_row") and name not in table:
                continue
            vals = {int(k): float(v) for k, v in table[name].items()}
            if not vals or not all(v > 0 and math.isfinite(v) for v in vals.values()):
                return False
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return True


def per_unit(table: dict, name: str, batch: int) -> float:
    """Cost per unit at ``batch``, interpolated linearly in log(batch) between calibrated points."""
    pts = sorted((int(k), float(v)) for k, v in table[name].items())
    b = max(1, batch)
    if b <= pts[0][0]:
        return pts[0][1]
    if b >= pts[-1][0]:
        # Beyond the last point both costs grow linearly with the batch.
        return pts[-1][1] * b / pts[-1][0]
    for (b0, v0), (b1, v1) in zip(pts, pts[1:]):
        if b <= b1:
            f = (math.log(b) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return math.exp(math.log(v0) + f * (math.log(v1) - math.log(v0)))
    return pts[-1][1]
