"""How sparseprune measures: one methodology shared by the CLI, the report and the benchmarks.

- Warm-up calls are excluded (they pay numba compilation, cache misses, page faults).
- Each repeat times ``number`` back-to-back calls, with ``number`` calibrated so a
  repeat lasts at least ``min_time`` seconds (a 20 µs call is not timed alone).
- The figure is the median over repeats of the per-call time; the spread is
  reported as the interquartile range and the min/max.
- Competitors are timed interleaved, round-robin in one process (ours, baseline,
  ours, baseline, ...), so background load on a shared machine hits them alike,
  and all under one :func:`~sparseprune.thread_limit` (BLAS and numba threads equal).
- With ``settle`` > 0 (``sparseprune bench``), each competitor is instead timed as
  a group of repeats after a pause of ``settle`` seconds, in two passes of
  opposite order. A multi-threaded BLAS call leaves OpenBLAS's workers
  spinning on the cores for about 0.1 s; a parallel kernel timed right after
  it ran 2-3x slower here, which measures the neighbour, not the kernel.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import numpy as np

from sparseprune._validation import check_int, check_number
from sparseprune.inference.threads import get_num_threads, thread_limit, threading_layer

__all__ = ["Timing", "compare", "machine_info"]


@dataclass(frozen=True)
class Timing:
    """Per-call wall time statistics over ``repeats`` repeats of ``number`` calls each (seconds)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    repeats: int
    number: int
    warmup: int

    @classmethod
    def from_samples(cls, samples: np.ndarray, number: int, warmup: int) -> "Timing":
        q1, med, q3 = np.percentile(samples, [25, 50, 75])
        return cls(float(med), float(q1), float(q3), float(samples.min()), float(samples.max()),
                   int(samples.size), int(number), int(warmup))

    def to_dict(self) -> dict:
        """JSON-ready dict; keys end in ``_s`` where the value is seconds."""
        d = asdict(self)
        return {f"{k}_s" if k in ("median", "q1", "q3", "min", "max") else k: v for k, v in d.items()}


def _calibrate(fn: Callable[[], object], min_time: float) -> int:
    """Calls per repeat so one repeat lasts at least ``min_time`` (powers of 2, capped)."""
    number = 1
    while number < 1 << 16:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - t0 >= min_time:
            break
        number *= 2
    return number


def compare(fns: Mapping[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 2,
            min_time: float = 0.01, threads: int | None = None, settle: float = 0.0) -> dict[str, Timing]:
    """Time several zero-argument callables interleaved, warm-up excluded.

    Parameters
    ----------
    fns : mapping name -> callable
        Each is called with no arguments; results are discarded.
    repeats : int, default=7
        Timed repeats per callable (the median and quartiles are over these).
    warmup : int, default=2
        Untimed calls per callable before anything is timed.
    min_time : float, default=0.01
        Minimum duration of one repeat, in seconds; fast calls are looped.
    threads : int, optional
        Run everything under ``thread_limit(threads)`` (BLAS and numba alike).
    settle : float, default=0.0
        If positive, time each callable as a group of repeats after sleeping
        this long (two passes in opposite order, half the repeats each)
        instead of round-robin; see the module docstring.

    Returns
    -------
    dict name -> :class:`Timing` (per-call seconds).
    """
    repeats = check_int(repeats, "repeats", low=1)
    warmup = check_int(warmup, "warmup", low=0)
    min_time = check_number(min_time, "min_time", low=0.0)
    settle = check_number(settle, "settle", low=0.0)
    names = list(fns)
    with thread_limit(threads):
        for name in names:
            for _ in range(warmup):
                fns[name]()
        numbers = {name: _calibrate(fns[name], min_time) for name in names}
        samples = {name: np.empty(repeats) for name in names}
        if settle > 0:
            for p, order in enumerate((names, names[::-1])):
                for name in order:
                    fn, number = fns[name], numbers[name]
                    time.sleep(settle)
                    fn()  # first call after the pause: wakes threads, refills caches
                    for r in range(p, repeats, 2):
                        t0 = time.perf_counter()
                        for _ in range(number):
                            fn()
                        samples[name][r] = (time.perf_counter() - t0) / number
            return {name: Timing.from_samples(samples[name], numbers[name], warmup) for name in names}
        for r in range(repeats):
            # Round-robin, and alternate the order so no competitor always runs
            # right after the same neighbour (cache and turbo effects).
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                fn, number = fns[name], numbers[name]
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                samples[name][r] = (time.perf_counter() - t0) / number
    return {name: Timing.from_samples(samples[name], numbers[name], warmup) for name in names}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture")
    return [{k: pool.get(k) for k in keep if k in pool} for pool in threadpool_info()]


def machine_info() -> dict:
    """CPU, cores, library versions, BLAS pools and numba threading, as a JSON-ready dict.

    Call it after the measured work: numba reports its threading layer only once a
    parallel kernel has run (``"unset"`` before).
    """
    import numba

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {dist: _version(dist) for dist in
                     ("sparseprune", "numpy", "numba", "scipy", "scikit-learn", "threadpoolctl", "llvmlite")},
        "blas": _blas_info(),
        "numba": {
            "threading_layer": threading_layer(),
            "num_threads": get_num_threads(),
            "max_threads": numba.config.NUMBA_NUM_THREADS,
        },
    }
