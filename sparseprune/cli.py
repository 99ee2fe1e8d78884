"""The ``sparseprune`` command: ``demo`` (the pruning study) and ``bench`` (kernel sweeps).

``sparseprune demo`` trains, prunes and times the project's models on one
dataset and writes ``results.json`` plus PNG plots; ``sparseprune bench`` sweeps
the kernels against numpy/scipy baselines. Both measure the way
:mod:`sparseprune._measure` describes (warm-up excluded, repeats interleaved
for demo and grouped after a pause for bench, median with IQR, BLAS and numba
on the same thread count).

Exit codes: 0 success; 1 a section failed or the data could not be read;
2 bad usage (one line on stderr, no traceback); 130 interrupted (Ctrl-C), in
which case no results file is left half-written.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import math
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from sparseprune import _report as rp
from sparseprune._measure import compare, machine_info
from sparseprune._threading import get_num_threads, thread_limit
from sparseprune.datasets import DATASETS, Dataset, load_dataset

__all__ = ["main", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
DEFAULT_OUT = "sparseprune-results"
DEFAULT_SPARSITIES = "0,0.5,0.8,0.9,0.95,0.98"
QUICK_SPARSITIES = "0,0.5,0.9"
DEMO_SECTIONS = ("mlp", "tree", "forest")
BENCH_KERNELS = ("linear", "mask", "dispatch")


class UsageError(Exception):
    """Bad command-line usage: reported as one line on stderr, exit code 2."""


class DataError(Exception):
    """A data file exists but cannot be read (corrupt, truncated): one line on stderr, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors raised as :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------- arg parsing
def _float_list(name: str, low: float, high: float, *, low_inclusive: bool = True,
                high_inclusive: bool = False) -> Callable[[str], list[float]]:
    opening, closing = "[" if low_inclusive else "(", "]" if high_inclusive else ")"

    def parse(text: str) -> list[float]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {name} list; give comma-separated numbers like 0.5,0.9")
        values = []
        for item in items:
            try:
                v = float(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not a number; give comma-separated {name} "
                                                 f"in {opening}{low:g}, {high:g}{closing}") from None
            ok = (low <= v if low_inclusive else low < v) and (v <= high if high_inclusive else v < high)
            if not ok:
                raise argparse.ArgumentTypeError(
                    f"{item} is outside {opening}{low:g}, {high:g}{closing}; give comma-separated {name} "
                    f"as fractions like 0.5,0.9")
            values.append(v)
        return sorted(set(values))

    return parse


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers like 1,16,256")
    return sorted(set(values))


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return v


def _choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)} (comma-separated)")
        return [c for c in choices if c in items]

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``sparseprune`` (exposed for docs and tests)."""
    common = _Parser(add_help=False)
    g = common.add_argument_group("shared options")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads for BLAS and numba together (default: all cores numba sees)")
    g.add_argument("--seed", type=int, default=0, help="seed for models and random data (default 0)")
    g.add_argument("--out", default=DEFAULT_OUT, metavar="PATH",
                   help=f"folder for results and plots (default ./{DEFAULT_OUT})")
    g.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of tables")
    g.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    g.add_argument("--quick", action="store_true", help="small settings (seconds, for tests and CI)")
    g.add_argument("--repeats", type=_positive_int, default=None, metavar="N",
                   help="timed repeats per measurement (default 7, 3 with --quick)")

    parser = _Parser(prog="sparseprune", description="Prune models and measure the speed directly.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="{demo,bench}")

    demo = sub.add_parser("demo", parents=[common], help="train, prune and time MLPs and trees; write results.json and plots",
                          description="Train the MLP, prune it at a sweep of sparsities with gradual pruning and "
                                      "fine-tuning, eliminate neurons, prune a decision tree and a forest, time "
                                      "everything dense vs pruned, and write results.json and PNG plots.")
    demo.add_argument("--dataset", default="digits", choices=DATASETS,
                      help="digits (bundled with scikit-learn, default), fashion-mnist (IDX files) or synthetic")
    demo.add_argument("--data-dir", default=None, metavar="PATH",
                      help="folder with the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)")
    demo.add_argument("--sparsities", type=_float_list("sparsities", 0.0, 1.0), default=None,
                      metavar="LIST", help=f"weight sparsities to prune the MLP to (default {DEFAULT_SPARSITIES})")
    demo.add_argument("--sections", type=_choice_list(DEMO_SECTIONS), default=list(DEMO_SECTIONS),
                      metavar="LIST", help="which studies to run: mlp,tree,forest (default all)")
    demo.add_argument("--n-samples", type=_positive_int, default=None, metavar="N",
                      help="rows of the synthetic dataset (default 20000)")
    demo.add_argument("--max-train", type=_positive_int, default=None, metavar="N",
                      help="use only the first N training rows (for large datasets)")
    demo.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="run the study's cells as tasks on a Dask cluster (tcp://host:8786), or 'local' for a "
                           "LocalCluster of processes (needs the dask extra)")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", parents=[common], help="kernel sweeps: linear vs scipy vs dense BLAS, masking vs numpy+scipy",
                           description="Sweep density x batch for sparseprune.linear against scipy CSR and dense "
                                       "BLAS, and masking against the numpy+scipy baseline, on random matrices. "
                                       "Prints speedup tables and the crossover density; writes bench.json.")
    bench.add_argument("--size", type=_positive_int, default=None, metavar="N",
                       help="weight matrices are N x N (default 4096, 512 with --quick)")
    densities = _float_list("densities", 0.0, 1.0, low_inclusive=False, high_inclusive=True)
    bench.add_argument("--densities", type=densities, default=None, metavar="LIST",
                       help="weight densities for linear (default 0.01,0.05,0.1,0.2,0.3,0.5)")
    bench.add_argument("--batches", type=_int_list, default=None, metavar="LIST",
                       help="batch sizes for linear (default 1,16,64,256)")
    bench.add_argument("--mask-densities", type=densities, default=None,
                       metavar="LIST", help="kept fractions for the masking sweep (default 0.01,0.1,0.3,0.5)")
    bench.add_argument("--kernels", type=_choice_list(BENCH_KERNELS), default=list(BENCH_KERNELS),
                       metavar="LIST", help="which sweeps to run: linear,mask (default both)")
    bench.add_argument("--model", default=None, metavar="FILE.onnx",
                       help="time your own ONNX model instead of the sweeps: onnxruntime on the file, bare numpy "
                            "on its dense weights, and sparseprune serving it, at batches 1 and 256 (or "
                            "--batches), with the per-layer table (needs the onnx extra)")
    bench.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run the linear sweep on each distinct machine of a Dask cluster, one machine at a "
                            "time, and print the fleet's crossover densities ('local' for a LocalCluster)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def _version() -> str:
    from sparseprune import __version__

    return f"sparseprune {__version__}"


# ------------------------------------------------------------------ plumbing
@dataclass
class _Run:
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
        """Interleaved timings (see _measure.compare) as JSON-ready dicts."""
        res = compare(fns, repeats=self.repeats, warmup=self.warmup, min_time=self.min_time, settle=self.settle)
        return {k: t.to_dict() for k, t in res.items()}


class _Bar:
    """A tqdm bar for steps that are not a loop (no-op with --quiet or without tqdm)."""

    def __init__(self, run: _Run, desc: str, total: int) -> None:
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

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def _prepare_out(path: str) -> Path:
    """Create --out if needed and prove it is writable, before any long work starts."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {p} exists and is not a directory; pass a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise UsageError(f"--out {p} is not writable ({exc.strerror or exc}); pass a writable folder") from None
    return p


def _check_threads(n: int | None) -> int | None:
    """--threads checked as ``sparseprune.thread_limit`` checks it, as a usage error."""
    from sparseprune._threading import _check_threads as check

    if n is None:
        return None
    try:
        return check(n)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--threads {n}: {exc}") from None


def _timing_settings(quick: bool, repeats: int | None, min_time: float) -> dict:
    """Timed repeats, untimed warm-up calls and seconds per repeat for a run."""
    return {"repeats": repeats or (3 if quick else 7), "warmup": 1 if quick else 2,
            "min_time": min_time / 5 if quick else min_time}


def _make_run(args: argparse.Namespace, min_time: float) -> _Run:
    out = _prepare_out(args.out)
    threads = _check_threads(args.threads)
    t = _timing_settings(args.quick, args.repeats, min_time)
    return _Run(args, out, threads, t["repeats"], t["warmup"], t["min_time"])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _header(command: str, run: _Run, argv: Sequence[str]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "argv": list(argv),
        "created_utc": _now(),
        "settings": {
            "threads": run.threads,
            "threads_effective": get_num_threads() if run.threads is None else run.threads,
            "seed": run.args.seed,
            "quick": run.quick,
        },
        "methodology": {
            "statistic": "median of repeats; spread as q1/q3 (IQR) and min/max",
            "repeats": run.repeats,
            "warmup_calls_excluded": run.warmup,
            "min_seconds_per_repeat": run.min_time,
            "interleaved": ("competitors timed round-robin in one process, order alternating per repeat"
                            if not run.settle else
                            f"each competitor timed as a group of repeats after a {run.settle:g} s pause, two "
                            "passes in opposite order (BLAS's spinning workers would slow the next competitor)"),
            "threads": "BLAS (threadpoolctl) and numba limited to the same count (sparseprune.thread_limit)",
            "accuracy": "held-out test split",
        },
    }


def _section(name: str, fn: Callable[[], dict], run: _Run) -> dict:
    """Run one study; a missing dependency or a failure is recorded, never faked."""
    try:
        sec = fn()
    except (KeyboardInterrupt, UsageError):
        raise
    except Exception as exc:  # a bug in one study must not lose the others' results
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        run.say(f"{name}: FAILED: {detail}")
        return {"status": "error", "reason": detail, "rows": [], "what": name}
    sec.setdefault("status", "ok")
    sec.setdefault("reason", None)
    return sec


# ---------------------------------------------------------------- MLP study
_MLP_COLUMNS = [
    ("model", lambda r: r["label"], str),
    ("sparsity", lambda r: r["sparsity"], rp.fmt_pct),
    ("params kept", lambda r: r["params_kept"], rp.fmt_int),
    ("nnz", lambda r: r["nnz"], rp.fmt_int),
    ("dense KiB", lambda r: r["dense_bytes"], rp.fmt_kib),
    ("CSR KiB", lambda r: r["csr_bytes"], rp.fmt_kib),
    ("stored KiB", lambda r: r.get("stored_bytes"), rp.fmt_kib),
    ("vs f32", lambda r: r.get("compression"), lambda v: f"{v:.1f}x"),
    ("FLOPs/sample", lambda r: r["flops_per_sample"], rp.fmt_int),
    ("accuracy", lambda r: r["accuracy"], lambda v: f"{100 * v:.2f}%"),
]


def _latency_columns(batches: Sequence[int], dense_name: str, pruned_name: str) -> list:
    cols = []
    for b in batches:
        k = str(b)
        cols += [
            (f"b{b} {dense_name}", lambda r, k=k: _lat(r, k, "dense"), rp.fmt_time),
            (f"b{b} {pruned_name}", lambda r, k=k: _lat(r, k, "pruned"), rp.fmt_time),
            (f"b{b} speedup", lambda r, k=k: r.get("latency", {}).get(k, {}).get("speedup"), rp.fmt_x),
        ]
    return cols


def _lat(row: dict, batch: str, key: str) -> float | None:
    t = row.get("latency", {}).get(batch, {}).get(key)
    return None if t is None else t["median_s"]


def _batch(X: np.ndarray, b: int) -> np.ndarray:
    """The first b test rows (tiled when the test split is smaller), C-contiguous."""
    reps = -(-b // X.shape[0])
    return np.ascontiguousarray(np.tile(X, (reps, 1))[:b] if reps > 1 else X[:b])


def _time_fns(run: _Run, fns: dict, settle: float | None) -> dict:
    """Timings (as dicts) of ``fns``: interleaved, or with ``settle`` each as a group after a pause."""
    if settle is None:
        return run.time(fns)
    res = compare(fns, repeats=run.repeats, warmup=run.warmup, min_time=run.min_time, settle=settle)
    return {k: v.to_dict() for k, v in res.items()}


def _baseline(run: _Run, X: np.ndarray, dense: Callable, batches: Sequence[int],
              dense_variants: dict[str, Callable] | None = None, settle: float | None = None) -> dict:
    """The baseline's timings per batch size, measured once for a whole table (see :func:`_latency`)."""
    out = {}
    for b in batches:
        Xb = _batch(X, b)
        fns = {"dense": lambda: dense(Xb)}
        for name, fn in (dense_variants or {}).items():
            fns[name] = lambda fn=fn: fn(Xb)
        out[str(b)] = _time_fns(run, fns, settle)
    return out


def _latency(run: _Run, X: np.ndarray, baseline: dict, pruned: Callable, batches: Sequence[int],
             extra: dict[str, Callable] | None = None, settle: float | None = None) -> dict:
    """Time the pruned model per batch size against ``baseline`` (from :func:`_baseline`).

    speedup = baseline median / pruned median. The baseline is timed once per
    table, in the same run: re-timing the same dense model for every row cost
    a third of the demo's time and only added noise. Baseline variants (e.g. a
    forest with ``n_jobs=1``) compete: the fastest becomes ``"dense"``, so the
    speedup is always against the best baseline measured (``"dense_variant"``
    says which).
    """
    out = {}
    for b in batches:
        Xb = _batch(X, b)
        fns = {"pruned": lambda: pruned(Xb)}
        for name, fn in (extra or {}).items():
            fns[name] = lambda fn=fn: fn(Xb)
        t = {**baseline[str(b)], **_time_fns(run, fns, settle)}
        variants = [k for k in baseline[str(b)] if k != "dense"]
        best = min(["dense", *variants], key=lambda k: t[k]["median_s"])
        t["dense_variant"] = best
        if best != "dense":
            t["dense_default"], t["dense"] = t["dense"], t.pop(best)
        t["speedup"] = t["dense"]["median_s"] / t["pruned"]["median_s"]
        out[str(b)] = t
    return out


def _mlp_stats(model, weights_total: int, biases_total: int, batches: Sequence[int]) -> dict:
    """Weight counts and storage of a fitted MLP's layers (CSR or dense), weights only for bytes."""
    from sparseprune.masking import sparsity_info

    nnz = dense_bytes = csr_bytes = biases = 0
    layers = []
    for layer in model.layers_:
        info = sparsity_info(layer.weight)
        nnz += info.nnz
        dense_bytes += info.dense_bytes
        csr_bytes += info.csr_bytes
        biases += int(np.asarray(layer.bias).size)
        entry = {"shape": list(info.shape), "nnz": info.nnz, "density": info.density,
                 "storage": "csr" if hasattr(layer.weight, "tocsr") else "dense"}
        if layer.quant is not None:
            entry["storage"] = f"{layer.quant.scheme}{layer.quant.bits}"
        layers.append(entry)
    report = model.sparsity_report()[-1]
    return {
        "sparsity": 1.0 - nnz / weights_total,
        "params_total": weights_total + biases_total,
        "params_kept": nnz + biases,
        "nnz": nnz,
        "dense_bytes": dense_bytes,
        "csr_bytes": csr_bytes,
        "flops_per_sample": 2 * nnz,
        # every byte save() writes for weights and biases, and dense float32 over it
        "stored_bytes": report["stored_bytes"],
        "compression": report["compression"],
        "hidden_sizes": [lay["shape"][0] for lay in layers[:-1]],
        "layers": layers,
    }


# The MLP recipe follows the MLP module's own digits study (sparseprune/_study_mlp.py):
# each sparsity is reached from the dense model by gradual pruning (Zhu & Gupta
# schedule with masked fine-tuning), then neurons are eliminated.
_MLP_RECIPE = {"hidden": (300, 100), "max_iter": 200, "epochs": 80, "learning_rate": 3e-3,
               "eliminate_fraction": 0.5, "eliminate_criterion": "l2", "fine_tune_epochs": 10,
               "combined_sparsity": 0.9,
               # Deep Compression on the sparsest pruned model at or below 95 %: k-means codes of
               # these widths, 5-bit relative column indices, centroids fine-tuned.
               "quantize_bits": (8, 5, 4), "quantize_index_bits": 5, "quantize_sparsity": 0.95}
_MLP_QUICK = {**_MLP_RECIPE, "hidden": (64, 32), "max_iter": 10, "epochs": 3, "fine_tune_epochs": 2}


def _plan_paths(model, batch: int) -> tuple[bool, list[str]]:
    """What the model's plan runs at ``batch``: (all layers in one fused call?, per layer
    "dense" or "sparse")."""
    from sparseprune._dispatch import bucket_of
    from sparseprune._threading import _num_threads_now

    plan = model.plan_
    key = (bucket_of(batch), _num_threads_now())
    ch = plan.choices.get(key)
    if ch is not None and ch.next() == "fused":
        return True, list(plan.layer_kinds)
    paths = ["dense" if not hasattr(op, "_choices") or key not in op._choices else op._choices[key].next()
             for op in plan._ops]
    # A quantized layer runs its codes ("quantized") or the float kernel on a dequantized copy ("sparse").
    return False, [("sparse" if p == "float" else "quantized") if hasattr(op, "Q") else p
                   for op, p in zip(plan._ops, paths)]


def _plan_ran(model, batch: int) -> str:
    """Short on-screen form: "1 call: S S D" (fused) or "S S D" (layer by layer)."""
    fused, paths = _plan_paths(model, batch)
    return ("1 call: " if fused else "") + " ".join({"sparse": "S", "quantized": "Q"}.get(p, "D") for p in paths)


def _quantized_rows(run: _Run, pruned: dict, rc: dict, X, y, row: Callable) -> list[dict]:
    """Pruning + quantization rows: the sparsest pruned model at or below the recipe's sparsity, k-means
    codes of each width with centroid fine-tuning."""
    base = [s for s in pruned if s <= rc["quantize_sparsity"]]
    if not base:
        return []
    s = max(base)
    out = []
    for bits in run.progress(rc["quantize_bits"], "mlp: quantization", total=len(rc["quantize_bits"])):
        q = copy.deepcopy(pruned[s]).quantize(bits=bits, scheme="kmeans", index_bits=rc["quantize_index_bits"])
        q.fine_tune(X, y, epochs=rc["fine_tune_epochs"])
        out.append(row(f"{100 * s:g}% + kmeans{bits}", "quantized", q, s))
    return out


def _mlp_recipe(quick: bool, n_train: int) -> dict:
    """The MLP study's recipe for a training set of ``n_train`` rows."""
    rc = dict(_MLP_QUICK if quick else _MLP_RECIPE)
    if not quick and n_train > 5000:
        # The digits recipe would take tens of minutes on 60k rows; fewer, larger passes instead.
        rc.update(max_iter=20, epochs=10, fine_tune_epochs=3)
    return rc


def _mlp_row(run: _Run, ds: Dataset, dense, model, label: str, kind: str, target: float | None,
             base: dict | None, settle: float) -> dict:
    """One row of the MLP table: sizes, accuracy, and (with a baseline) latency and what the plan ran."""
    shapes = [tuple(layer.weight.shape) for layer in dense.layers_]
    batches = _MLP_BATCHES
    r = {"label": label, "kind": kind, "target_sparsity": target}
    r.update(_mlp_stats(model, sum(o * i for o, i in shapes), sum(o for o, _ in shapes), batches))
    r["accuracy"] = float(np.mean(model.predict(ds.X_test) == ds.y_test))
    if base is not None:
        r["latency"] = _latency(run, ds.X_test, base, model.predict, batches, settle=settle)
        # What the model's plan ran at each batch size (measured on the calls above).
        r["ran"] = {str(b): _plan_ran(model, b) for b in batches}
        for lay, paths in zip(r["layers"], zip(*(_plan_paths(model, b)[1] for b in batches))):
            lay["path"] = dict(zip(map(str, batches), paths))
    return r


_MLP_BATCHES = [1, 256]


def _study_mlp(run: _Run, ds: Dataset, sparsities: Sequence[float]) -> dict:
    import sparseprune as sp

    rc = _mlp_recipe(run.quick, ds.X_train.shape[0])
    hidden, epochs, lr = rc["hidden"], rc["epochs"], rc["learning_rate"]
    batches = _MLP_BATCHES
    X, y, Xt = ds.X_train, ds.y_train, ds.X_test

    run.say(f"mlp: training {ds.n_features}-{'-'.join(map(str, hidden))}-{ds.n_classes} on {ds.name}")
    dense = sp.MLPClassifier(hidden_layer_sizes=hidden, random_state=run.args.seed,
                             max_iter=rc["max_iter"]).fit(X, y)
    # Each model timed as a group after a pause: interleaved with the dense model, every
    # pruned call would run while the dense model's BLAS worker threads still spin on the
    # cores (about 0.1 s after each BLAS call), which times the neighbour, not the model.
    settle = 0.02 if run.quick else 0.12
    base = _baseline(run, Xt, dense.predict, batches, settle=settle)

    def row(label: str, kind: str, model, target: float | None) -> dict:
        return _mlp_row(run, ds, dense, model, label, kind, target, base, settle)

    rows = [row("dense", "dense", dense, 0.0)]
    steps = [s for s in sparsities if s > 0]
    pruned = {}
    for s in run.progress(steps, "mlp: gradual pruning", total=len(steps)):
        m = copy.deepcopy(dense).gradual_prune(X, y, sparsity=s, epochs=epochs, scope="global", learning_rate=lr)
        pruned[s] = m
        rows.append(row(f"{100 * s:g}% pruned", "weight_pruning", m, s))
    rows += _quantized_rows(run, pruned, rc, X, y, row)

    frac, s_comb = rc["eliminate_fraction"], rc["combined_sparsity"]
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(_Bar(run, "mlp: neuron elimination", 3))
        # Exact: constant (dead) neurons folded into the next bias; predictions unchanged on X.
        dead = copy.deepcopy(dense).eliminate_neurons(X)
        rows.append(row("dense - dead neurons", "neuron_elimination", dead, None))
        bar.update()
        elim = copy.deepcopy(dense).eliminate_neurons(X, criterion=rc["eliminate_criterion"], fraction=frac)
        elim.fine_tune(X, y, epochs=rc["fine_tune_epochs"])
        rows.append(row(f"dense -{100 * frac:g}% neurons", "neuron_elimination", elim, None))
        bar.update()
        both = copy.deepcopy(elim).gradual_prune(X, y, sparsity=s_comb, epochs=epochs, scope="global",
                                                 learning_rate=lr)
        rows.append(row(f"-{100 * frac:g}% neurons, {100 * s_comb:g}% pruned", "neuron_elimination", both, s_comb))
        bar.update()

    return {
        "title": f"MLP on {ds.name}",
        "dataset": ds.name,
        "architecture": "-".join(map(str, [ds.n_features, *hidden, ds.n_classes])),
        "batches": batches,
        "latency_meaning": "dense = the trained dense MLP's predict (timed once per batch size); pruned = "
                           "this model's predict (its plan measures dense and sparse per layer on its first "
                           "calls); each timed as a group after a pause",
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in rc.items()},
        "rows": rows,
    }


# --------------------------------------------------------------- tree study
_TREE_COLUMNS = [
    ("model", lambda r: r["label"], str),
    ("nodes removed", lambda r: r["sparsity"], rp.fmt_pct),
    ("nodes", lambda r: r["nodes"], rp.fmt_int),
    ("leaves", lambda r: r["leaves"], rp.fmt_int),
    ("depth", lambda r: r["depth"], rp.fmt_int),
    ("KiB", lambda r: r["bytes"], rp.fmt_kib),
    ("cmp/sample", lambda r: r["flops_per_sample"], lambda v: f"{v:.1f}"),
    ("accuracy", lambda r: r["accuracy"], lambda v: f"{100 * v:.2f}%"),
]


def _trees_of(est) -> list:
    return list(getattr(est, "estimators_", [est]))


def _tree_stats(est, X_test: np.ndarray, y_test: np.ndarray, nodes0: int) -> dict:
    trees = _trees_of(est)
    nodes = sum(int(t.tree_.node_count) for t in trees)
    leaves = sum(int(t.get_n_leaves()) for t in trees)
    depth = max(int(t.get_depth()) for t in trees)
    # sklearn's own storage: the node records plus the value array.
    nbytes = sum(t.tree_.__getstate__()["nodes"].nbytes + t.tree_.value.nbytes for t in trees)
    path = est.decision_path(X_test)
    indicator = path[0] if isinstance(path, tuple) else path
    # Nodes on the decision paths minus one leaf per tree = comparisons per sample.
    comparisons = indicator.nnz / X_test.shape[0] - len(trees)
    return {
        "sparsity": 1.0 - nodes / nodes0,
        "params_kept": nodes,
        "nodes": nodes,
        "leaves": leaves,
        "depth": depth,
        "bytes": nbytes,
        "flops_per_sample": comparisons,
        "accuracy": float(np.mean(est.predict(X_test) == y_test)),
    }


def _split_gains(est) -> np.ndarray:
    """Weighted impurity decrease of every split (``_tree_prune.split_gains``), pooled over the trees."""
    from sparseprune._tree_prune import split_gains

    gains = []
    for t in _trees_of(est):
        g = split_gains(t)
        gains.append(g[t.tree_.children_left != -1])
    return np.concatenate(gains) if gains else np.zeros(0)


def _pruning_curves(est, X_test: np.ndarray, y_test: np.ndarray, n_points: int) -> dict[str, list]:
    """Accuracy vs nodes for info_gain and cost_complexity post-pruning (``sparseprune.pruning_curve``)."""
    from sparseprune.tree import pruning_curve

    pc = pruning_curve(est, X_test, y_test, n_points=n_points).to_dict()
    return {name: [{"param": p, "nodes": n, "accuracy": a}
                   for p, n, a in zip(pc[name]["param"], pc[name]["n_nodes"], pc[name]["score"])]
            for name in ("info_gain", "cost_complexity")}


def _study_trees(run: _Run, ds: Dataset, family: str) -> dict:
    import sparseprune as sp
    import sklearn.base
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    seed = run.args.seed
    X, y, Xt, yt = ds.X_train, ds.y_train, ds.X_test, ds.y_test
    n_trees = 10 if run.quick else 50
    if family == "forest":
        # n_jobs = the thread count our kernels get, so the comparison is fair.
        n_jobs = run.threads or sp.get_num_threads()
        est = RandomForestClassifier(n_estimators=n_trees, random_state=seed, n_jobs=n_jobs).fit(X, y)
        title = f"random forest ({n_trees} trees) on {ds.name}"
    else:
        n_jobs = 1
        est = DecisionTreeClassifier(random_state=seed).fit(X, y)
        title = f"decision tree on {ds.name}"
    run.say(f"{family}: fitted {title}")
    nodes0 = sum(int(t.tree_.node_count) for t in _trees_of(est))
    batches = [1, 256]
    notes = []

    def engine(model) -> Callable:
        return sp.compile_tree(model).predict

    variants = None
    if family == "forest" and n_jobs != 1:
        # joblib dispatch dominates small batches; a fair baseline is sklearn's best setting.
        est_1 = copy.deepcopy(est).set_params(n_jobs=1)
        variants = {"dense_n_jobs_1": est_1.predict}

    base = _baseline(run, Xt, est.predict, batches, variants)

    def row(label: str, kind: str, param: float | None, model) -> dict:
        r = {"label": label, "kind": kind, "param": param}
        r.update(_tree_stats(model, Xt, yt, nodes0))
        extra = {"pruned_sklearn": model.predict}
        r["latency"] = _latency(run, Xt, base, engine(model), batches, extra)
        r["pruned_engine"] = "sparseprune.compile_tree"
        return r

    # Thresholds from the fitted model's own split gains and scikit-learn's ccp path, so the
    # sweep spans light to heavy pruning on any dataset.
    gains = _split_gains(est)
    single = est if family == "tree" else DecisionTreeClassifier(random_state=seed).fit(X, y)
    alphas = single.cost_complexity_pruning_path(X, y).ccp_alphas
    table_q = (0.5, 0.9) if run.quick else (0.5, 0.8, 0.9, 0.95)
    taus = np.unique(np.quantile(gains, table_q)) if gains.size else np.zeros(0)
    table_alphas = np.unique(np.quantile(alphas, table_q)) if alphas.size else np.zeros(0)

    rows = [row("unpruned", "unpruned", None, est)]
    curves: dict[str, list] = {}
    for tau in run.progress(taus, f"{family}: info_gain"):
        p = sp.prune_tree(est, method="info_gain", threshold=float(tau))
        rows.append(row(f"info_gain τ={tau:.2g}", "info_gain", float(tau), p))
    for a in run.progress(table_alphas, f"{family}: cost_complexity"):
        p = sp.prune_tree(est, method="cost_complexity", alpha=float(a))
        rows.append(row(f"cost_complexity α={a:.2g}", "cost_complexity", float(a), p))
    curves.update(_pruning_curves(est, Xt, yt, 8 if run.quick else 25))
    if not curves.get("cost_complexity"):
        curves["cost_complexity"] = [{"param": r["param"], "nodes": r["nodes"], "accuracy": r["accuracy"]}
                                     for r in rows if r["kind"] == "cost_complexity"]
    # scikit-learn's own answer: refit with ccp_alpha along its pruning path (for the forest,
    # the path of one tree fitted on the same data, and fewer points: each is a forest refit).
    n_pick = (8 if run.quick else 25) if family == "tree" else (3 if run.quick else 8)
    pick = np.unique(np.quantile(alphas, np.linspace(0.0, 0.995, n_pick)))
    curves["ccp_path"] = []
    for a in run.progress(pick, f"{family}: sklearn ccp path"):
        m = sklearn.base.clone(est).set_params(ccp_alpha=float(a)).fit(X, y)
        nodes = (int(m.tree_.node_count) if family == "tree"
                 else int(sum(t.tree_.node_count for t in m.estimators_)))
        curves["ccp_path"].append({"param": float(a), "nodes": nodes, "accuracy": float(m.score(Xt, yt))})
    return {"title": title, "family": family, "dataset": ds.name, "batches": batches,
            "latency_meaning": "dense = scikit-learn predict of the unpruned model (timed once per batch size)"
                               + (f" (faster of n_jobs={n_jobs} and n_jobs=1)" if variants else "")
                               + "; pruned = the pruned model through sparseprune.compile_tree",
            "rows": rows, "curves": curves, "notes": notes}


# ---------------------------------------------------------------- demo
def _load(args: argparse.Namespace) -> Dataset:
    if args.data_dir is not None and args.dataset != "fashion-mnist":
        raise UsageError(f"--data-dir only applies to --dataset fashion-mnist, not {args.dataset}")
    if args.n_samples is not None and args.dataset != "synthetic":
        raise UsageError(f"--n-samples only applies to --dataset synthetic, not {args.dataset}")
    n_samples = args.n_samples or (3000 if args.quick else None)
    max_train = args.max_train or (5000 if args.quick and args.dataset == "fashion-mnist" else None)
    try:
        return load_dataset(args.dataset, data_dir=args.data_dir, n_samples=n_samples, max_train=max_train)
    except FileNotFoundError as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None
    except ValueError as exc:
        raise DataError(str(exc).replace("\n", " ")) from None


def _print_section(run: _Run, sec: dict, columns: list) -> None:
    if sec["status"] != "ok":
        run.show(f"\n{sec.get('what', sec.get('title', ''))}: {sec['status'].upper()}: {sec['reason']}")
        return
    cols = columns + _latency_columns(sec["batches"], "dense", "pruned")
    if any("ran" in r for r in sec["rows"]):
        cols += [(f"b{b} ran", lambda r, k=str(b): r.get("ran", {}).get(k, ""), str) for b in sec["batches"]]
    run.show("\n" + rp.format_table(sec["rows"], cols, title=f"== {sec['title']}"))
    run.show(f"   latency: {sec['latency_meaning']}; median of {run.repeats} repeats (IQR in results.json)")
    if any("ran" in r for r in sec["rows"]):
        run.show("   ran: what each model's plan ran per layer, S = sparse kernel, Q = quantized kernel, D = dense; \"1 call\" = all "
                 "layers in one compiled call (model.plan_.explain() says why)")
    for note in sec.get("notes", []):
        run.show(f"   note: {note}")


def _cmd_demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    t_start = time.perf_counter()
    run = _make_run(args, min_time=0.01)
    default = QUICK_SPARSITIES if args.quick else DEFAULT_SPARSITIES
    sparsities = args.sparsities or _float_list("sparsities", 0.0, 1.0)(default)
    ds = _load(args)
    run.say(f"dataset {ds.name}: {ds.X_train.shape[0]} train / {ds.X_test.shape[0]} test rows, "
            f"{ds.n_features} features; results go to {run.out}")
    doc = _header("demo", run, argv)
    doc["settings"].update({"dataset": ds.name, "sparsities": sparsities, "sections": args.sections})
    doc["dataset"] = ds.describe()
    studies = {
        "mlp": (lambda: _study_mlp(run, ds, sparsities), _MLP_COLUMNS),
        "tree": (lambda: _study_trees(run, ds, "tree"), _TREE_COLUMNS),
        "forest": (lambda: _study_trees(run, ds, "forest"), _TREE_COLUMNS),
    }
    from sklearn.exceptions import ConvergenceWarning

    sections = {}
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_dask_client(run, args.scheduler))
        if client is not None:
            from sparseprune import _dask_study as st

            doc["settings"]["scheduler"] = args.scheduler
            studies = {
                "mlp": (lambda: st.mlp_study(client, ds, sparsities, quick=run.quick, seeds=run.args.seed,
                                             repeats=run.repeats, progress=False if args.quiet else None),
                        _MLP_COLUMNS),
                **{fam: (lambda fam=fam: st.trees_study(client, ds, fam, quick=run.quick, seed=run.args.seed,
                                                        repeats=run.repeats), _TREE_COLUMNS)
                   for fam in ("tree", "forest")},
            }
        stack.enter_context(thread_limit(run.threads))
        stack.enter_context(warnings.catch_warnings())
        # Short training budgets are deliberate here; the accuracy column tells the story.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name in args.sections:
            fn, columns = studies[name]
            sections[name] = _section(name, fn, run)
            _print_section(run, sections[name], columns)
    doc["sections"] = sections
    doc["plots"], doc["notes"] = _demo_plots(run, sections)
    doc["machine"] = machine_info()
    doc["wall_time_s"] = time.perf_counter() - t_start
    rp.write_json(run.out / "results.json", doc)
    for note in doc["notes"]:
        run.show(f"note: {note}")
    run.show(f"\nwrote {run.out / 'results.json'} and {len(doc['plots'])} plots in {doc['wall_time_s']:.1f} s")
    if args.json:
        print(rp.to_json(doc))
    return 0 if all(s["status"] != "error" for s in sections.values()) else 1


@contextlib.contextmanager
def _dask_client(run: _Run, address: str | None):
    """A distributed client for ``--scheduler`` (None without it); closed, and a 'local' cluster stopped, on exit.

    An address that cannot be reached, or a missing dask extra, is a usage
    error (one line, exit code 2), found before any work starts.
    """
    if address is None:
        yield None
        return
    try:
        from sparseprune.dask import connect
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'sparseprune[dask]'") from None
    run.say(f"connecting to the Dask scheduler at {address}" if address != "local"
            else "starting a local Dask cluster of worker processes")
    try:
        client = connect(address)
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'sparseprune[dask]'") from None
    except (ConnectionError, OSError, ValueError, TimeoutError) as exc:
        raise UsageError(f"--scheduler: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        yield client
    finally:
        client.close()


def _demo_plots(run: _Run, sections: dict) -> tuple[list[str], list[str]]:
    jobs = []
    mlp = sections.get("mlp")
    if mlp and mlp["status"] == "ok":
        jobs += [("mlp_accuracy_vs_sparsity.png", lambda p: rp.plot_accuracy_vs_sparsity(mlp, p)),
                 ("mlp_latency_vs_sparsity.png", lambda p: rp.plot_latency_vs_sparsity(mlp, p)),
                 ("mlp_pareto.png", lambda p: rp.plot_pareto(mlp, p)),
                 ("mlp_accuracy_vs_bytes.png", lambda p: rp.plot_accuracy_vs_bytes(mlp, p))]
    trees = [sections[k] for k in ("tree", "forest") if k in sections and sections[k]["status"] == "ok"
             and any(sections[k].get("curves", {}).values())]
    if trees:
        jobs.append(("tree_accuracy_vs_nodes.png", lambda p: rp.plot_tree_accuracy_vs_nodes(trees, p)))
    return rp.write_plots(jobs, run.out)


# ---------------------------------------------------------------- bench
def _random_csr(rng: np.random.Generator, n: int, density: float, dtype=np.float32, n_in: int | None = None):
    """An n x n_in (default n x n) CSR with exactly round(density * n * n_in) nonzeros at random positions."""
    import scipy.sparse as sps

    n_in = n if n_in is None else n_in
    nnz = max(1, int(round(density * n * n_in)))
    flat = rng.choice(n * n_in, size=nnz, replace=False)
    rows, cols = np.divmod(flat, n_in)
    vals = rng.standard_normal(nnz).astype(dtype)
    W = sps.csr_array((vals, (rows, cols)), shape=(n, n_in))
    W.sum_duplicates()
    return W


def _crossover(densities: Sequence[float], speedups: Sequence[float]) -> dict:
    """Density where sparse stops beating dense (speedup crosses 1), interpolated between sweep points."""
    pts = sorted(zip(densities, speedups))
    if all(s >= 1 for _, s in pts):
        return {"density": None, "bound": "above", "text": f"> {100 * pts[-1][0]:g}% (faster at every density)"}
    if all(s < 1 for _, s in pts):
        return {"density": None, "bound": "below", "text": f"< {100 * pts[0][0]:g}% (slower at every density)"}
    for (d0, s0), (d1, s1) in zip(pts, pts[1:]):
        if s0 >= 1 > s1:
            d = d0 + (s0 - 1) / (s0 - s1) * (d1 - d0)
            return {"density": d, "bound": "interpolated", "text": f"{100 * d:.1f}%"}
    last = max(d for d, s in pts if s >= 1)
    return {"density": last, "bound": "last_faster", "text": f"{100 * last:g}% (not monotone)"}


def _bench_linear(run: _Run, n: int, densities: Sequence[float], batches: Sequence[int]) -> dict:
    import sparseprune as sp

    # SparseLinear holds the weights prepared once, as an MLP layer does, so the sparse
    # kernel (method="sparse") and the dispatcher (method="auto") are timed separately;
    # the crossover density is the kernel's.
    rng = np.random.default_rng(run.args.seed)
    rows = []
    for d in run.progress(densities, "bench: linear densities"):
        W_csr = _random_csr(rng, n, d)
        layer = sp.SparseLinear(W_csr)
        # The baseline multiplies the layer's own dense copy, the very array the
        # dispatcher's dense path uses: two separately allocated 64 MiB copies
        # can differ by several percent in BLAS speed (page placement).
        W_dense = layer._dense()
        for b in batches:
            X = rng.standard_normal((b, n)).astype(np.float32)
            # scipy's product as the issue and bench_spmm.py define it, W_csr @ X.T: scipy
            # copies the transposed view to C order itself (part of its cost, as our
            # packing is part of ours).
            fns = {"dense": lambda: X @ W_dense.T, "scipy": lambda: W_csr @ X.T,
                   "ours": lambda: layer(X, method="sparse"), "auto": lambda: layer(X),
                   "linear": lambda: sp.linear(X, W_csr)}
            t = run.time(fns)
            r = {"density": d, "batch": b, "timings": t,
                 "speedup_vs_dense": t["dense"]["median_s"] / t["ours"]["median_s"],
                 "speedup_vs_scipy": t["scipy"]["median_s"] / t["ours"]["median_s"],
                 "linear_vs_scipy": t["scipy"]["median_s"] / t["linear"]["median_s"]}
            r["auto_vs_dense"] = t["dense"]["median_s"] / t["auto"]["median_s"]
            r["auto_path"] = layer.explain(b).path
            rows.append(r)

    crossover = {}
    for b in batches:
        sub = [r for r in rows if r["batch"] == b]
        crossover[str(b)] = _crossover([r["density"] for r in sub], [r["speedup_vs_dense"] for r in sub])
    ours = ("SparseLinear(W_csr)(X, method='sparse') (the sparse kernel); auto = SparseLinear(W_csr)(X) "
            "(the dispatcher); linear = sparseprune.linear(X, W_csr) (one-off call)")
    return {"title": f"sparse linear layer, {n}x{n} float32 weights", "shape": [n, n], "dtype": "float32",
            "ours": ours, "baselines": {"scipy": "W_csr @ X.T (scipy, one thread)",
                                        "dense": "X @ W_dense.T (numpy BLAS)"},
            "rows": rows, "crossover_density": crossover}


def _bench_dispatch(run: _Run, n_points: int, max_dim: int) -> dict:
    """The measuring dispatcher on random layer shapes: auto against dense BLAS and the sparse kernel.

    Seeded random points: out and in log-uniform in [32, max_dim], density
    log-uniform in [0.5%, 60%], batch log-uniform in [1, 512] (batches whose
    dense product would exceed 4 GFLOP are shrunk, to keep the sweep short).
    The dispatcher is first given the calls it needs to settle, as a serving
    layer would on its first calls; then dense, sparse and auto are each
    timed as a group after a pause.
    """
    import sparseprune as sp

    rng = np.random.default_rng(run.args.seed + 17)
    rows = []
    for _ in run.progress(range(n_points), "bench: dispatcher sweep"):
        n_out, n_in = (int(round(math.exp(rng.uniform(math.log(32), math.log(max_dim))))) for _ in range(2))
        density = float(math.exp(rng.uniform(math.log(0.005), math.log(0.6))))
        batch = int(round(math.exp(rng.uniform(0, math.log(512)))))
        batch = max(1, min(batch, int(2e9 // (n_out * n_in))))
        W_csr = _random_csr(rng, n_out, density, n_in=n_in)
        layer = sp.SparseLinear(W_csr)
        W_dense = layer._dense()
        X = rng.standard_normal((batch, n_in)).astype(np.float32)
        for _ in range(40):  # the dispatcher's own measuring, on the layer's first calls
            layer(X)
            if layer._choice_for(sp.spmm.bucket_of(batch), sp.get_num_threads()).chosen is not None:
                break
        t = run.time({"dense": lambda: X @ W_dense.T, "sparse": lambda: layer(X, method="sparse"),
                      "auto": lambda: layer(X)})
        td, ts, ta = (t[k]["median_s"] for k in ("dense", "sparse", "auto"))
        rows.append({"shape": [n_out, n_in], "density": W_csr.nnz / (n_out * n_in), "batch": batch, "timings": t,
                     "auto_vs_dense": td / ta, "auto_vs_best": min(td, ts) / ta, "path": layer.explain(X).path,
                     "faster": "dense" if td <= ts else "sparse"})
    within = sum(r["auto_vs_best"] >= 1 / 1.1 for r in rows)
    summary = {"points": len(rows), "within_10pct_of_best": within,
               "share_within_10pct": within / max(1, len(rows)),
               "min_auto_vs_dense": min((r["auto_vs_dense"] for r in rows), default=None),
               "points_below_0.9x_dense": sum(r["auto_vs_dense"] < 0.9 for r in rows)}
    return {"title": f"dispatcher on {n_points} random layers (float32)", "rows": rows, "summary": summary,
            "ours": "SparseLinear(W_csr)(X) after its first calls (the measuring dispatcher)",
            "baselines": {"dense": "X @ W_dense.T (numpy BLAS)", "sparse": "SparseLinear(W_csr)(X, method='sparse')"}}


def _bench_mask(run: _Run, n: int, densities: Sequence[float]) -> dict:
    import scipy.sparse as sps

    import sparseprune as sp

    rng = np.random.default_rng(run.args.seed)
    W = rng.standard_normal((n, n)).astype(np.float32)
    absW = np.abs(W).ravel()
    rows = []
    for d in run.progress(densities, "bench: masking"):
        t_cut = float(np.quantile(absW, 1.0 - d)) if d < 1 else 0.0
        t = run.time({
            "ours": lambda: sp.threshold_mask(W, t_cut),
            "baseline": lambda: sps.csr_array(np.where(np.abs(W) < t_cut, 0, W)),
        })
        rows.append({"density": d, "threshold": t_cut, "timings": t,
                     "speedup": t["baseline"]["median_s"] / t["ours"]["median_s"]})
    return {"title": f"threshold_mask, {n}x{n} float32", "shape": [n, n], "dtype": "float32",
            "ours": "sparseprune.threshold_mask(W, t)",
            "baselines": {"baseline": "scipy.sparse.csr_array(np.where(np.abs(W) < t, 0, W))"}, "rows": rows}


def _print_bench(run: _Run, results: dict) -> None:
    lin = results.get("linear")
    if lin is not None and lin["status"] == "ok":
        cols = [
            ("density", lambda r: r["density"], rp.fmt_pct),
            ("batch", lambda r: r["batch"], rp.fmt_int),
            ("ours", lambda r: r["timings"]["ours"]["median_s"], rp.fmt_time),
            ("scipy", lambda r: r["timings"]["scipy"]["median_s"], rp.fmt_time),
            ("dense BLAS", lambda r: r["timings"]["dense"]["median_s"], rp.fmt_time),
            ("vs dense", lambda r: r["speedup_vs_dense"], rp.fmt_x),
            ("vs scipy", lambda r: r["speedup_vs_scipy"], rp.fmt_x),
        ]
        if any("auto_vs_dense" in r for r in lin["rows"]):
            cols += [("auto vs dense", lambda r: r.get("auto_vs_dense"), rp.fmt_x),
                     ("auto path", lambda r: r.get("auto_path"), str)]
        if any("linear_vs_scipy" in r for r in lin["rows"]):
            cols += [("linear() vs scipy", lambda r: r.get("linear_vs_scipy"), rp.fmt_x)]
        run.show("\n" + rp.format_table(lin["rows"], cols, title=f"== {lin['title']}"))
        run.show(f"   ours = {lin['ours']}")
        run.show("   crossover density (ours faster than dense BLAS below it): " + ", ".join(
            f"batch {b}: {c['text']}" for b, c in lin["crossover_density"].items()))
    elif lin is not None:
        run.show(f"\nlinear sweep: {lin['status'].upper()}: {lin['reason']}")
    mask = results.get("mask")
    if mask is not None and mask["status"] == "ok":
        cols = [
            ("density kept", lambda r: r["density"], rp.fmt_pct),
            ("ours", lambda r: r["timings"]["ours"]["median_s"], rp.fmt_time),
            ("numpy+scipy", lambda r: r["timings"]["baseline"]["median_s"], rp.fmt_time),
            ("speedup", lambda r: r["speedup"], rp.fmt_x),
        ]
        run.show("\n" + rp.format_table(mask["rows"], cols, title=f"== {mask['title']}"))
    elif mask is not None:
        run.show(f"\nmasking sweep: {mask['status'].upper()}: {mask['reason']}")
    disp = results.get("dispatch")
    if disp is not None and disp["status"] == "ok":
        cols = [
            ("shape", lambda r: "x".join(map(str, r["shape"])), str),
            ("density", lambda r: r["density"], rp.fmt_pct),
            ("batch", lambda r: r["batch"], rp.fmt_int),
            ("dense BLAS", lambda r: r["timings"]["dense"]["median_s"], rp.fmt_time),
            ("sparse", lambda r: r["timings"]["sparse"]["median_s"], rp.fmt_time),
            ("auto", lambda r: r["timings"]["auto"]["median_s"], rp.fmt_time),
            ("auto vs dense", lambda r: r["auto_vs_dense"], rp.fmt_x),
            ("auto vs best", lambda r: r["auto_vs_best"], rp.fmt_x),
            ("auto ran", lambda r: r["path"], str),
        ]
        run.show("\n" + rp.format_table(disp["rows"], cols, title=f"== {disp['title']}"))
        sm = disp["summary"]
        run.show(f"   auto within 10% of the faster path on {sm['within_10pct_of_best']} of {sm['points']} points "
                 f"({sm['share_within_10pct']:.0%}); lowest auto vs dense {sm['min_auto_vs_dense']:.2f}x; "
                 f"{sm['points_below_0.9x_dense']} point(s) below 0.9x dense")
    elif disp is not None:
        run.show(f"\ndispatcher sweep: {disp['status'].upper()}: {disp['reason']}")
    run.show(f"   median of {run.repeats} repeats per cell (each implementation timed as a group after a "
             f"{run.settle:g} s pause, two passes in opposite order), warm-up excluded; spread in bench.json")


def _bench_model(run: _Run, path: str, read: tuple, batches: Sequence[int]) -> dict:
    """An ONNX model as the user exported it: onnxruntime, bare numpy and sparseprune, same threads.

    ``read`` is what ``sparseprune.onnx._read`` found in the file (read once, by :func:`_check_model_file`).
    """
    from sparseprune.onnx import _model_from

    _, info, n_features = read
    model = _model_from(*read)
    classifier = hasattr(model, "classes_")
    serve = model.predict_proba if classifier else model.predict
    if info.head == "log_softmax":
        serve = model.predict_log_proba
    Ws = [layer.dense_weight() for layer in model.layers_]
    bs = [layer.bias for layer in model.layers_]
    hidden = model.activation
    head = "logistic2" if getattr(model, "out_activation_", "") == "logistic" else info.head

    def bare(X):
        H = X
        for i, (W, b) in enumerate(zip(Ws, bs)):
            H = H @ W.T + b
            if i < len(Ws) - 1:
                H = _ACT_NUMPY[hidden](H)
        return _HEAD_NUMPY[head](H)

    fns = {"numpy dense": bare, "sparseprune": serve}
    ort_note = None
    try:
        import onnxruntime as ort
    except ImportError:
        ort_note = "onnxruntime is not installed: pip install onnxruntime to compare with it"
    else:
        so = ort.SessionOptions()
        n_thr = run.threads or get_num_threads()
        so.intra_op_num_threads, so.inter_op_num_threads = n_thr, 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        want = info.output_names.get("scores")
        dims = [d if isinstance(d, int) else -1 for d in (inp.shape or [])]

        def on_ort(X):
            Xo = X.reshape([X.shape[0], *dims[1:]]) if len(dims) > 2 else X
            return sess.run([want] if want else None, {inp.name: Xo})[0]

        fns = {"onnxruntime": on_ort, **fns}
    rng = np.random.default_rng(run.args.seed)
    dtype = model.layers_[0].bias.dtype
    X = rng.standard_normal((max(batches), n_features)).astype(dtype)
    rows = []
    with _Bar(run, "model", len(batches)) as bar:
        for b in batches:
            Xb = np.ascontiguousarray(X[:b])
            check = {k: np.asarray(f(Xb), dtype=np.float64) for k, f in fns.items()}
            ref = check["sparseprune"]
            t = _time_fns(run, {k: (lambda f=f: f(Xb)) for k, f in fns.items()}, run.settle)
            row = {"batch": b, "timings": t, "ran": _plan_ran(model, b),
                   "max_abs_diff": {k: _max_diff(v, ref) for k, v in check.items() if k != "sparseprune"}}
            for k in fns:
                if k != "sparseprune":
                    row[f"speedup_vs_{k.split()[0]}"] = t[k]["median_s"] / t["sparseprune"]["median_s"]
            rows.append(row)
            bar.update()
    report = model.sparsity_report(batch_size=max(batches))
    fused1, paths1 = _plan_paths(model, min(batches))
    fusedn, pathsn = _plan_paths(model, max(batches))
    layer_rows = [dict(r, path_small=p1, path_large=pn) for r, p1, pn in zip(report[:-1], paths1, pathsn)]
    return {"title": f"{path}: {info.producer or 'unknown producer'}, opset {info.opset}, "
                     f"{type(model).__name__} ({' -> '.join(str(n) for n in [n_features] + [r['shape'][0] for r in report[:-1]])}), "
                     f"{100 * (1 - report[-1]['density']):.1f}% zeros",
            "rows": rows, "layers": layer_rows, "onnxruntime": ort_note, "batches": list(batches),
            "head": info.head, "what": "model"}


def _max_diff(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest |got - ref|; a one-column sigmoid output is compared with the positive-class column."""
    got = got.reshape(ref.shape[0], -1)
    ref = ref.reshape(ref.shape[0], -1)
    if got.shape != ref.shape and got.shape[1] == 1:
        ref = ref[:, -1:]
    return float(np.max(np.abs(got - ref)))


_ACT_NUMPY = {"relu": lambda H: np.maximum(H, 0), "tanh": np.tanh, "logistic": lambda H: 1 / (1 + np.exp(-H)),
              "identity": lambda H: H}


def _softmax_numpy(H):
    E = np.exp(H - H.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


# The graph's head on the last layer's outputs, as sparseprune serves it (see _bench_model).
_HEAD_NUMPY = {"none": lambda H: H, "softmax": _softmax_numpy, "log_softmax": lambda H: np.log(_softmax_numpy(H)),
               "logistic2": lambda H: np.hstack([1 - (p := 1 / (1 + np.exp(-H))), p])}


def _print_model(run: _Run, sec: dict) -> None:
    if sec["status"] != "ok":
        run.show(f"\nmodel: {sec['status'].upper()}: {sec['reason']}")
        return
    small, large = sec["batches"][0], sec["batches"][-1]
    cols = [("layer", lambda r: r["layer"], str), ("shape", lambda r: "x".join(map(str, r["shape"])), str),
            ("nnz", lambda r: r["nnz"], rp.fmt_int), ("density", lambda r: r["density"], rp.fmt_pct),
            ("stored", lambda r: r["format"], str), (f"b{small} path", lambda r: r["path_small"], str),
            (f"b{large} path", lambda r: r["path_large"], str)]
    run.show("\n" + rp.format_table(sec["layers"], cols, title=f"== {sec['title']}"))
    names = list(sec["rows"][0]["timings"])
    cols = [("batch", lambda r: r["batch"], rp.fmt_int)]
    cols += [(k, lambda r, k=k: r["timings"][k]["median_s"], rp.fmt_time) for k in names]
    cols += [(f"vs {k.split()[0]}", lambda r, k=k: r.get(f"speedup_vs_{k.split()[0]}"), rp.fmt_x)
             for k in names if k != "sparseprune"]
    cols += [("ran", lambda r: r["ran"], str)]
    run.show("\n" + rp.format_table(sec["rows"], cols, title="== latency (median per call)"))
    diffs = sec["rows"][-1]["max_abs_diff"]
    run.show("   outputs agree: max |difference| from sparseprune " +
             ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    if sec["onnxruntime"]:
        run.show(f"   {sec['onnxruntime']}")
    run.show("   ran: S = a sparse layer, D = dense; '1 call' = all layers in one compiled call")


def _bench_defaults(quick: bool, size: int | None, densities, batches) -> tuple[int, list, list]:
    """The linear sweep's size, densities and batches (``--size``, ``--densities``, ``--batches`` or defaults)."""
    return (size or (512 if quick else 4096),
            list(densities or ([0.05, 0.3] if quick else [0.01, 0.05, 0.1, 0.2, 0.3, 0.5])),
            list(batches or ([1, 64] if quick else [1, 16, 64, 256])))


def _check_model_file(path: str) -> tuple:
    """The --model file read (``sparseprune.onnx._read``), or exit code 1 with one line before any timing starts."""
    try:
        from sparseprune.onnx import _read

        return _read(path)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, OSError) as exc:
        raise DataError(f"--model {path}: {exc}") from None


def _cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    t_start = time.perf_counter()
    run = _make_run(args, min_time=0.02)
    # Time each implementation as a group after a pause (see _measure.compare):
    # BLAS's spinning workers would otherwise slow whatever runs next.
    run.settle = 0.02 if args.quick else 0.15
    doc = _header("bench", run, argv)
    results = {}
    if args.scheduler is not None:
        if args.model is not None:
            raise UsageError("--model and --scheduler do not combine: time a model on one machine")
        from sparseprune import _dask_study as st

        with _dask_client(run, args.scheduler) as client:
            fleet = st.bench_fleet(client, quick=args.quick, size=args.size, densities=args.densities,
                                   batches=args.batches, seed=args.seed, repeats=args.repeats, threads=args.threads,
                                   progress=False if args.quiet else None)
        doc["settings"].update({"scheduler": args.scheduler})
        doc["fleet"] = fleet
        doc["machine"] = machine_info()
        doc["wall_time_s"] = time.perf_counter() - t_start
        rp.write_json(run.out / "bench.json", doc)
        run.show("\n" + st.format_fleet_table(fleet))
        if args.json:
            print(rp.to_json(doc))
        else:
            run.show(f"wrote {run.out / 'bench.json'} in {doc['wall_time_s']:.1f} s")
        return 0
    if args.model is not None:
        batches = args.batches or [1, 256]
        doc["settings"].update({"model": str(args.model), "batches": batches})
        with thread_limit(run.threads):
            read = _check_model_file(args.model)
            results["model"] = _section("model", lambda: _bench_model(run, args.model, read, batches), run)
    else:
        n, densities, batches = _bench_defaults(args.quick, args.size, args.densities, args.batches)
        mask_densities = args.mask_densities or ([0.1, 0.5] if args.quick else [0.01, 0.1, 0.3, 0.5])
        doc["settings"].update({"size": n, "densities": densities, "batches": batches,
                                "mask_densities": mask_densities, "kernels": args.kernels})
        with thread_limit(run.threads):
            if "linear" in args.kernels:
                results["linear"] = _section("linear", lambda: _bench_linear(run, n, densities, batches), run)
            if "mask" in args.kernels:
                results["mask"] = _section("mask", lambda: _bench_mask(run, n, mask_densities), run)
            if "dispatch" in args.kernels:
                n_points = 6 if args.quick else 40
                results["dispatch"] = _section(
                    "dispatch", lambda: _bench_dispatch(run, n_points, 512 if args.quick else 8192), run)
    doc["sections"] = results
    doc["machine"] = machine_info()
    doc["wall_time_s"] = time.perf_counter() - t_start
    rp.write_json(run.out / "bench.json", doc)
    if "model" in results:
        _print_model(run, results["model"])
    else:
        _print_bench(run, results)
    if args.json:
        print(rp.to_json(doc))
    else:
        run.show(f"wrote {run.out / 'bench.json'} in {doc['wall_time_s']:.1f} s")
    return 0 if all(s["status"] != "error" for s in results.values()) else 1


# ---------------------------------------------------------------- entry point
def _log_to_stderr() -> None:
    """Show the library's INFO messages (e.g. "compiling kernels for their first use") on stderr, once."""
    import logging

    log = logging.getLogger("sparseprune")
    if not any(getattr(h, "_sparseprune_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sparseprune: %(message)s"))
        handler._sparseprune_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sparseprune`` command; returns the exit code (never raises on bad usage).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if args.command is None:
            raise UsageError("choose a command: demo (the pruning study) or bench (kernel sweeps) "
                             "(see 'sparseprune --help')")
        if not args.quiet:
            _log_to_stderr()
        return args.func(args, argv)
    except UsageError as exc:
        print(f"sparseprune: error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"sparseprune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparseprune: interrupted; no partial results were written", file=sys.stderr)
        return 130
