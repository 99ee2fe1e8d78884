"""What every study needs: the run's settings and output (``Run``), progress bars, and the
baseline-then-model latency timing the tables are built from."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from sparseprune.studies.measure import compare

#: Version of the results.json layout that demo and bench write.
SCHEMA_VERSION = 1


class UsageError(Exception):
    """Bad command-line usage: reported as one line on stderr, exit code 2."""


class DataError(Exception):
    """A data file exists but cannot be read (corrupt, truncated): one line on stderr, exit code 1."""


@dataclass
class Run:
    """What every section needs: options, output, timing settings, progress and messages."""

    args: argparse.Namespace
    out: Path
    threads: int | None
    repeats: int
    warmup: int
    min_time: float
    settle: float = 0.0

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    def say(self, msg: str) -> None:
        """A status line on stderr (silent with --quiet)."""
        if not self.args.quiet:
            print(f"sparseprune: {msg}", file=sys.stderr, flush=True)

    def show(self, text: str) -> None:
        """Human output on stdout (suppressed with --json, which keeps stdout pure JSON)."""
        if not self.args.json:
            print(text, flush=True)

    def progress(self, iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
        """tqdm on stderr for long steps, unless --quiet or tqdm is missing."""
        if self.args.quiet:
            return iterable
        try:
            from tqdm import tqdm
        except ImportError:
            return iterable
        # disable=None: no bar when stderr is not a terminal (CI logs stay clean).
        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True,
                    disable=None)

    def time(self, fns: dict[str, Callable[[], object]]) -> dict:
        """Interleaved timings (see studies.measure.compare) as JSON-ready dicts."""
        res = compare(fns, repeats=self.repeats, warmup=self.warmup, min_time=self.min_time, settle=self.settle)
        return {k: t.to_dict() for k, t in res.items()}


class Bar:
    """A tqdm bar for steps that are not a loop (no-op with --quiet or without tqdm)."""

    def __init__(self, run: Run, desc: str, total: int) -> None:
        self._bar = None
        if not run.args.quiet:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True,
                             disable=None)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def timing_settings(quick: bool, repeats: int | None, min_time: float) -> dict:
    """Timed repeats, untimed warm-up calls and seconds per repeat for a run."""
    return {"repeats": repeats or (3 if quick else 7), "warmup": 1 if quick else 2,
            "min_time": min_time / 5 if quick else min_time}


def batch_rows(X: np.ndarray, b: int) -> np.ndarray:
    """The first b test rows (tiled when the test split is smaller), C-contiguous."""
    reps = -(-b // X.shape[0])
    return np.ascontiguousarray(np.tile(X, (reps, 1))[:b] if reps > 1 else X[:b])


def settle_plan(model, X: np.ndarray, budget_s: float) -> bool:
    """Call ``model.predict(X)`` until its plan has settled for X's batch size (at most ``budget_s``).

    A serving process's first calls measure the candidate paths (some only once
    the calls have paid for them, a close call again 0.25 s later); timed
    during those, a model shows a mix of paths. Returns whether it settled.
    """
    plan = model.plan_
    deadline = time.perf_counter() + budget_s
    while not plan.settled(X.shape[0]):
        if time.perf_counter() > deadline:
            return False
        model.predict(X)
    return True


def time_fns(run: Run, fns: dict, settle: float | None) -> dict:
    """Timings (as dicts) of ``fns``: interleaved, or with ``settle`` each as a group after a pause."""
    if settle is None:
        return run.time(fns)
    res = compare(fns, repeats=run.repeats, warmup=run.warmup, min_time=run.min_time, settle=settle)
    return {k: v.to_dict() for k, v in res.items()}


def baseline(run: Run, X: np.ndarray, dense: Callable, batches: Sequence[int],
              dense_variants: dict[str, Callable] | None = None, settle: float | None = None) -> dict:
    """The baseline's timings per batch size, measured once for a whole table (see :func:`latency`)."""
    out = {}
    for b in batches:
        Xb = batch_rows(X, b)
        fns = {"dense": lambda: dense(Xb)}
        for name, fn in (dense_variants or {}).items():
            fns[name] = lambda fn=fn: fn(Xb)
        out[str(b)] = time_fns(run, fns, settle)
    return out


def latency(run: Run, X: np.ndarray, baseline: dict, pruned: Callable, batches: Sequence[int],
             extra: dict[str, Callable] | None = None, settle: float | None = None,
             dense: Callable | None = None, paired: Sequence[int] = ()) -> dict:
    """Time the pruned model per batch size against ``baseline`` (from :func:`baseline`).

    speedup = baseline median / pruned median. The baseline is timed once per
    table, in the same run: re-timing the same dense model for every row cost
    a third of the demo's time and only added noise. Baseline variants (e.g. a
    forest with ``n_jobs=1``) compete: the fastest becomes ``"dense"``, so the
    speedup is always against the best baseline measured (``"dense_variant"``
    says which). At the batch sizes in ``paired`` the ``dense`` callable is
    timed again with the pruned one, interleaved, instead: for calls of a few
    microseconds a machine whose speed moves in spells longer than one
    group's timing (seen: 7.0 and 10.3 µs for the same call in ~20 ms spells)
    would otherwise decide the ratio. Only where neither side runs
    multi-threaded BLAS, whose spinning workers would slow the other.
    """
    out = {}
    for b in batches:
        Xb = batch_rows(X, b)
        fns = {"pruned": lambda: pruned(Xb)}
        for name, fn in (extra or {}).items():
            fns[name] = lambda fn=fn: fn(Xb)
        if b in paired and dense is not None:
            fns["dense"] = lambda: dense(Xb)
            t = {**baseline[str(b)], **time_fns(run, fns, None)}
        else:
            t = {**baseline[str(b)], **time_fns(run, fns, settle)}
        variants = [k for k in baseline[str(b)] if k != "dense"]
        best = min(["dense", *variants], key=lambda k: t[k]["median_s"])
        t["dense_variant"] = best
        if best != "dense":
            t["dense_default"], t["dense"] = t["dense"], t.pop(best)
        t["speedup"] = t["dense"]["median_s"] / t["pruned"]["median_s"]
        out[str(b)] = t
    return out
