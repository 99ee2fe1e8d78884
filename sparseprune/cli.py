"""The ``sparseprune`` command: ``demo`` (the pruning study) and ``bench`` (kernel sweeps).

``sparseprune demo`` trains, prunes and times the project's models on one
dataset and writes ``results.json`` plus PNG plots; ``sparseprune bench`` sweeps
the kernels against numpy/scipy baselines. Both measure the way
:mod:`sparseprune.studies.measure` describes (warm-up excluded, repeats interleaved
for demo and grouped after a pause for bench, median with IQR, BLAS and numba
on the same thread count).

Exit codes: 0 success; 1 a section failed or the data could not be read;
2 bad usage (one line on stderr, no traceback); 130 interrupted (Ctrl-C), in
which case no results file is left half-written.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Sequence

from sparseprune.datasets import DATASETS, Dataset, load_dataset
from sparseprune.inference.threads import get_num_threads, thread_limit
from sparseprune.studies import bench as bench_study
from sparseprune.studies import common
from sparseprune.studies import mlp as mlp_study
from sparseprune.studies import report as rp
from sparseprune.studies import trees as tree_study
from sparseprune.studies.common import DataError, UsageError
from sparseprune.studies.measure import machine_info

__all__ = ["main"]

DEFAULT_OUT = "sparseprune-results"
DEFAULT_SPARSITIES = "0,0.5,0.8,0.9,0.95,0.98"
QUICK_SPARSITIES = "0,0.5,0.9"
DEMO_SECTIONS = ("mlp", "tree", "forest")
BENCH_KERNELS = ("linear", "mask", "dispatch")


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
                       metavar="LIST", help="which sweeps to run: linear,mask,dispatch (default all three)")
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


def _threads_arg(n: int | None) -> int | None:
    """--threads checked as ``sparseprune.thread_limit`` checks it, as a usage error."""
    from sparseprune.inference.threads import _check_threads as check

    if n is None:
        return None
    try:
        return check(n)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--threads {n}: {exc}") from None


def _make_run(args: argparse.Namespace, min_time: float) -> common.Run:
    out = _prepare_out(args.out)
    threads = _threads_arg(args.threads)
    t = common.timing_settings(args.quick, args.repeats, min_time)
    return common.Run(args, out, threads, t["repeats"], t["warmup"], t["min_time"])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _header(command: str, run: common.Run, argv: Sequence[str]) -> dict:
    return {
        "schema_version": common.SCHEMA_VERSION,
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


def _section(name: str, fn: Callable[[], dict], run: common.Run) -> dict:
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


def _print_section(run: common.Run, sec: dict, columns: list) -> None:
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
        "mlp": (lambda: mlp_study.study(run, ds, sparsities), _MLP_COLUMNS),
        "tree": (lambda: tree_study.study(run, ds, "tree"), _TREE_COLUMNS),
        "forest": (lambda: tree_study.study(run, ds, "forest"), _TREE_COLUMNS),
    }
    from sklearn.exceptions import ConvergenceWarning

    sections = {}
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_dask_client(run, args.scheduler))
        if client is not None:
            from sparseprune.studies import dask as st

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
def _dask_client(run: common.Run, address: str | None):
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


def _demo_plots(run: common.Run, sections: dict) -> tuple[list[str], list[str]]:
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


def _print_bench(run: common.Run, results: dict) -> None:
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


def _print_model(run: common.Run, sec: dict) -> None:
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
    # Time each implementation as a group after a pause (see studies.measure.compare):
    # BLAS's spinning workers would otherwise slow whatever runs next.
    run.settle = 0.02 if args.quick else 0.15
    doc = _header("bench", run, argv)
    results = {}
    if args.scheduler is not None:
        if args.model is not None:
            raise UsageError("--model and --scheduler do not combine: time a model on one machine")
        from sparseprune.studies import dask as st

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
            results["model"] = _section("model", lambda: bench_study.onnx_model(run, args.model, read, batches), run)
    else:
        n, densities, batches = bench_study.defaults(args.quick, args.size, args.densities, args.batches)
        mask_densities = args.mask_densities or ([0.1, 0.5] if args.quick else [0.01, 0.1, 0.3, 0.5])
        doc["settings"].update({"size": n, "densities": densities, "batches": batches,
                                "mask_densities": mask_densities, "kernels": args.kernels})
        with thread_limit(run.threads):
            if "linear" in args.kernels:
                results["linear"] = _section("linear", lambda: bench_study.linear_sweep(run, n, densities, batches), run)
            if "mask" in args.kernels:
                results["mask"] = _section("mask", lambda: bench_study.mask_sweep(run, n, mask_densities), run)
            if "dispatch" in args.kernels:
                n_points = 6 if args.quick else 40
                results["dispatch"] = _section(
                    "dispatch", lambda: bench_study.dispatch_sweep(run, n_points, 512 if args.quick else 8192), run)
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
