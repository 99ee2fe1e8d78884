"""Timing shared by the serving benchmarks: each callable timed as a block of calls.

A block is a warm-up (two calls, then calls for ``warmup_s`` seconds) and
``rounds`` timed calls, one ``perf_counter`` pair per call so the p90 is real;
two passes in opposite order, so no competitor always runs right after the
same neighbour (BLAS's spinning workers, caches, turbo).
"""
from __future__ import annotations

import time

import numpy as np


def block_stats(fns: dict, X, rounds: int, warmup_s: float) -> dict:
    """Per callable: (median, p90) seconds of ``2 * rounds`` timed calls ``fn(X)`` after a warm-up."""
    times = {k: [] for k in fns}
    for order in (list(fns), list(fns)[::-1]):
        for k in order:
            f = fns[k]
            f(X)
            f(X)
            end = time.perf_counter() + warmup_s
            while time.perf_counter() < end:
                f(X)
            for _ in range(rounds):
                t0 = time.perf_counter()
                f(X)
                times[k].append(time.perf_counter() - t0)
    return {k: (float(np.median(v)), float(np.percentile(v, 90))) for k, v in times.items()}
