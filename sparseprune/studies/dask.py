"""The demo's MLP study and the kernel bench as Dask tasks (``sparseprune demo/bench --scheduler``).

MLP study (:func:`mlp_study`): the cells of ``sparseprune demo``'s MLP section
(``studies.mlp.study``) for one or more seeds:

* a task trains the dense model per seed (``train``); every cell that starts
  from it takes that task's result as input, so it is trained once;
* a task eliminates 50 % of the neurons and fine-tunes (``eliminate``), feeding
  the two cells built on it;
* one task per row (a *cell*): the dense row, gradual pruning to each sparsity,
  dead-neuron removal, the reduced model, the reduced model pruned.

Each cell builds its row exactly as the CLI does (``studies.mlp.mlp_stats``,
``studies.common.latency``, ``studies.mlp.plan_ran``): the same training calls with the same
seed, so the accuracy is the local run's. Its timings are taken on the worker
that ran it, against the dense model timed in the same cell on the same worker
(the CLI times the dense baseline once per table; across machines that would
compare different machines), under the worker's thread share
(:func:`sparseprune.dask.task_threads`). Rows carry ``seed``, ``worker``,
``machine`` (hostname, CPU model, usable cores), ``machine_label`` and
``train_s`` (seconds of the pruning / fine-tuning that made the row's model,
on the worker that did it). A tqdm bar on stderr follows the cells as they
complete. The dataset is scattered to all workers once; all tasks are pure, so
a worker that dies loses nothing: Dask reruns its tasks (and recomputes lost
models) elsewhere.

Tree and forest sections (:func:`trees_study`): ``studies.trees.study`` whole, as
one task on a worker (its sweep shares one fitted model and one baseline).

Fleet bench (:func:`bench_fleet`): ``studies.bench.linear_sweep`` (the ``bench``
command's linear sweep) once on one worker per distinct machine, one machine
after the other, using all of that machine's usable cores; the fleet table
gives the crossover density per batch size per machine.
"""
from __future__ import annotations

import argparse
import copy
import socket
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from sparseprune.dask import (
    _current_worker,
    _limit_threads,
    _usable_cores,
    task_threads,
)
from sparseprune.studies import bench, common
from sparseprune.studies import mlp as _mlp
from sparseprune.studies import trees as _trees

__all__ = ["bench_fleet", "fleet_table", "format_fleet_table", "machine_of_worker", "mlp_study", "mlp_study_local",
           "trees_study"]


# --------------------------------------------------------------------------- machines
def machine_of_worker() -> dict:
    """This process's machine: hostname, CPU model, usable cores, and the worker address (None locally)."""
    from sparseprune.studies.measure import _cpu_model

    w = _current_worker()
    m = {"hostname": socket.gethostname(), "cpu_model": _cpu_model(), "cores": _usable_cores()}
    return {"worker": None if w is None else w.address, "machine": m,
            "machine_label": f"{m['hostname']} ({m['cpu_model']}, {m['cores']} cores)"}


# --------------------------------------------------------------------------- settings
def _worker_run(cfg: dict, seed: int, threads: int):
    """A ``common.Run`` for timing on this worker (quiet; output folder unused)."""
    args = argparse.Namespace(quick=cfg["quick"], quiet=True, json=False, seed=seed, threads=threads)
    t = cfg["timing"]
    return common.Run(args, Path(tempfile.gettempdir()), threads, t["repeats"], t["warmup"], t["min_time"])


class _Cell:
    """Thread share and ConvergenceWarning silence for one task, as the CLI runs its study."""

    def __init__(self, cfg: dict):
        self.cfg = cfg

    def __enter__(self) -> int:
        from sklearn.exceptions import ConvergenceWarning

        self.threads = self.cfg.get("threads") or task_threads(self.cfg.get("host_threads"))
        self._lim = _limit_threads(self.threads)
        self._lim.__enter__()
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore", ConvergenceWarning)
        return self.threads

    def __exit__(self, *exc) -> None:
        self._warn.__exit__(*exc)
        self._lim.__exit__(*exc)


# --------------------------------------------------------------------------- MLP tasks
def _train(ds, cfg: dict, seed: int):
    from sparseprune.mlp import MLPClassifier

    rc = cfg["recipe"]
    with _Cell(cfg):
        t0 = time.perf_counter()
        model = MLPClassifier(hidden_layer_sizes=tuple(rc["hidden"]), random_state=seed,
                              max_iter=rc["max_iter"]).fit(ds.X_train, ds.y_train)
        return {"model": model, "train_s": time.perf_counter() - t0, **machine_of_worker()}


def _prune(ds, cfg: dict, dense: dict, sparsity: float):
    """The dense model gradually pruned to ``sparsity`` (one task: its row and the quantized rows share it)."""
    rc = cfg["recipe"]
    with _Cell(cfg):
        t0 = time.perf_counter()
        model = copy.deepcopy(dense["model"]).gradual_prune(ds.X_train, ds.y_train, sparsity=sparsity,
                                                            epochs=rc["epochs"], scope="global",
                                                            learning_rate=rc["learning_rate"])
        return {"model": model, "sparsity": sparsity, "train_s": time.perf_counter() - t0, **machine_of_worker()}


def _eliminate(ds, cfg: dict, dense: dict):
    rc = cfg["recipe"]
    with _Cell(cfg):
        t0 = time.perf_counter()
        elim = copy.deepcopy(dense["model"]).eliminate_neurons(ds.X_train, criterion=rc["eliminate_criterion"],
                                                               fraction=rc["eliminate_fraction"])
        elim.fine_tune(ds.X_train, ds.y_train, epochs=rc["fine_tune_epochs"])
        return {"model": elim, "train_s": time.perf_counter() - t0, **machine_of_worker()}


def _cell(ds, cfg: dict, seed: int, what: str, param, dense: dict, source: dict | None = None) -> dict:
    """One row of the MLP table, built and timed on this worker (see the module docstring)."""
    rc = cfg["recipe"]
    X, y = ds.X_train, ds.y_train
    with _Cell(cfg) as threads:
        t0 = time.perf_counter()
        base_model = dense["model"]
        train_s, train_where = None, None
        if what == "dense":
            model, label, kind, target = base_model, "dense", "dense", 0.0
            train_s, train_where = dense["train_s"], dense["machine_label"]
        elif what == "prune":
            model = source["model"]
            label, kind, target = f"{100 * param:g}% pruned", "weight_pruning", param
            train_s, train_where = source["train_s"], source["machine_label"]
        elif what == "quantized":
            s = source["sparsity"]
            model = copy.deepcopy(source["model"]).quantize(bits=param, scheme="kmeans",
                                                            index_bits=rc["quantize_index_bits"])
            model.fine_tune(X, y, epochs=rc["fine_tune_epochs"])
            label, kind, target = f"{100 * s:g}% + kmeans{param}", "quantized", s
        elif what == "dead":
            model = copy.deepcopy(base_model).eliminate_neurons(X)
            label, kind, target = "dense - dead neurons", "neuron_elimination", None
        elif what == "eliminated":
            model = source["model"]
            label, kind, target = f"dense -{100 * rc['eliminate_fraction']:g}% neurons", "neuron_elimination", None
            train_s, train_where = source["train_s"], source["machine_label"]
        elif what == "both":
            model = copy.deepcopy(source["model"]).gradual_prune(X, y, sparsity=param, epochs=rc["epochs"],
                                                                 scope="global", learning_rate=rc["learning_rate"])
            label = f"-{100 * rc['eliminate_fraction']:g}% neurons, {100 * param:g}% pruned"
            kind, target = "neuron_elimination", param
        else:  # pragma: no cover - the task list below names only the cases above
            raise ValueError(f"unknown cell {what!r}")
        if train_s is None:
            train_s = time.perf_counter() - t0
            if source is not None:  # the reduced model's elimination and fine-tuning, then this pruning
                train_s += source["train_s"]
        run = _worker_run(cfg, seed, threads)
        settle = 0.02 if cfg["quick"] else 0.12
        base = common.baseline(run, ds.X_test, base_model.predict, cfg["batches"], settle=settle) if cfg["timed"] else None
        r = _mlp.mlp_row(run, ds, base_model, model, label, kind, target, base, settle)
        here = machine_of_worker()
        r.update(seed=seed, threads=threads, train_s=train_s, train_machine=train_where or here["machine_label"],
                 cell_s=time.perf_counter() - t0, **here)
        return r


def _tasks(seeds: Sequence[int], sparsities: Sequence[float], cfg: dict) -> list[tuple]:
    """(key, function, args, is_cell) in dependency order; args name earlier keys as ``("@", key)``."""
    rc = cfg["recipe"]
    out = []
    for seed in seeds:
        tr, el = f"train-{seed}", f"eliminate-{seed}"
        out.append((tr, _train, (seed,), False))
        out.append((f"cell-{seed}-dense", _cell, (seed, "dense", None, ("@", tr)), True))
        steps = [float(s) for s in sparsities if s > 0]
        for s in steps:
            pr = f"prune-{seed}-{s:g}"
            out.append((pr, _prune, (("@", tr), s), False))
            out.append((f"cell-{seed}-prune-{s:g}", _cell, (seed, "prune", s, ("@", tr), ("@", pr)), True))
        # Pruning + quantization of the sparsest pruned model at or below the recipe's sparsity
        # (as the CLI's _quantized_rows), fed by that pruning task: nothing is pruned twice.
        base = [s for s in steps if s <= rc["quantize_sparsity"]]
        if base:
            pr = f"prune-{seed}-{max(base):g}"
            for bits in rc["quantize_bits"]:
                out.append((f"cell-{seed}-quantized-{bits}", _cell, (seed, "quantized", int(bits), ("@", tr),
                                                                     ("@", pr)), True))
        out.append((f"cell-{seed}-dead", _cell, (seed, "dead", None, ("@", tr)), True))
        out.append((el, _eliminate, (("@", tr),), False))
        out.append((f"cell-{seed}-eliminated", _cell, (seed, "eliminated", None, ("@", tr), ("@", el)), True))
        out.append((f"cell-{seed}-both", _cell, (seed, "both", rc["combined_sparsity"], ("@", tr), ("@", el)),
                    True))
    return out


def _progress(iterable: Iterable, total: int, show: bool | None, desc: str) -> Iterable:
    if show is False:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    # disable=None: no bar when stderr is not a terminal; show=True forces it.
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=None if show is None else False)


def _config(ds, sparsities, quick, repeats, timed, threads, host_threads) -> dict:
    return {"quick": bool(quick), "recipe": _mlp.recipe(quick, ds.X_train.shape[0]),
            "batches": list(_mlp.BATCHES), "timing": common.timing_settings(quick, repeats, 0.01), "timed": bool(timed), "threads": threads,
            "host_threads": host_threads, "sparsities": [float(s) for s in sparsities],
            "cli_schema": common.SCHEMA_VERSION}


def _section(ds, cfg: dict, rows: list[dict], seeds: Sequence[int], where: str) -> dict:
    rc = cfg["recipe"]
    hidden = rc["hidden"]
    return {
        "title": f"MLP on {ds.name}",
        "dataset": ds.name,
        "architecture": "-".join(map(str, [ds.n_features, *hidden, ds.n_classes])),
        "batches": cfg["batches"],
        "latency_meaning": "dense = the trained dense MLP's predict, timed in each row's own task on the same "
                           "worker; pruned = this model's predict; each timed as a group after a pause",
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in rc.items()},
        "seeds": list(seeds),
        "ran_on": where,
        "rows": rows,
    }


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = [seeds]
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise TypeError(f"The 'seeds' parameter must be an int or a sequence of ints. Got {seeds!r} instead.") \
            from None
    if not seeds:
        raise ValueError("The 'seeds' parameter is empty; give at least one seed.")
    return seeds


def mlp_study(client, dataset, sparsities: Sequence[float], *, quick: bool = False,
              seeds: int | Sequence[int] = 0, repeats: int | None = None, timed: bool = True,
              progress: bool | None = None) -> dict:
    """Run the demo's MLP study on a Dask cluster: one task per cell, the dense model trained once per seed.

    Parameters
    ----------
    client : distributed.Client
    dataset : sparseprune.datasets.Dataset
        As ``sparseprune.datasets.load_dataset`` returns it; scattered to all workers once.
    sparsities : sequence of float
        Target weight sparsities, as ``demo --sparsities`` (0 is skipped: it is the dense row).
    quick : bool, default=False
        The CLI's ``--quick`` recipe and timing settings.
    seeds : int or sequence of int, default=0
        One dense model, and one full set of cells, per seed.
    repeats : int, optional
        Timed repeats per measurement (the CLI's ``--repeats``).
    timed : bool, default=True
        Measure latencies (``False``: accuracy and sizes only, for fast checks).
    progress : bool, optional
        A tqdm bar over cells on stderr; ``None`` shows it only on a terminal.

    Returns
    -------
    dict
        The CLI's MLP section (``title``, ``architecture``, ``batches``,
        ``recipe``, ``rows`` ...), rows in the CLI's order, seed by seed; each
        row also carries ``seed``, ``worker``, ``machine``, ``machine_label``,
        ``threads``, ``train_s``, ``train_machine`` and ``cell_s``.
    """
    from distributed import as_completed

    from sparseprune.dask import _host_threads

    seeds = _check_seeds(seeds)
    cfg = _config(dataset, sparsities, quick, repeats, timed, None, None)
    # Thread shares from the whole cluster's layout (workers per host).
    from distributed import Client

    if not isinstance(client, Client):
        raise TypeError(f"The 'client' parameter must be a distributed.Client. Got {type(client).__name__} instead.")
    cfg["host_threads"] = _host_threads(client)
    run_id = uuid.uuid4().hex[:8]
    ds_future = client.scatter(dataset, broadcast=True, hash=False)
    futures: dict[str, Any] = {}
    cells = []
    for key, fn, args, is_cell in _tasks(seeds, sparsities, cfg):
        real = [futures[a[1]] if isinstance(a, tuple) and a[:1] == ("@",) else a for a in args]
        # pure=False with a fresh key per run: each run times afresh on the workers.
        futures[key] = client.submit(fn, ds_future, cfg, *real, key=f"sparseprune-mlp-{key}-{run_id}",
                                     pure=False)
        if is_cell:
            cells.append(key)
    order = {futures[k].key: i for i, k in enumerate(cells)}
    rows: list = [None] * len(cells)
    try:
        for fut in _progress(as_completed([futures[k] for k in cells]), len(cells), progress, "mlp: cells"):
            rows[order[fut.key]] = fut.result()
    finally:
        for f in futures.values():
            f.release()
        ds_future.release()
    return _section(dataset, cfg, rows, seeds, "dask")


def mlp_study_local(dataset, sparsities: Sequence[float], *, quick: bool = False,
                    seeds: int | Sequence[int] = 0, repeats: int | None = None, timed: bool = True,
                    threads: int | None = None, progress: bool | None = None) -> dict:
    """The same cells as :func:`mlp_study`, run one after the other in this process.

    Parameters are those of :func:`mlp_study`, plus ``threads`` (BLAS and numba
    threads; default: all usable cores). Returns the same section.
    """
    seeds = _check_seeds(seeds)
    cfg = _config(dataset, sparsities, quick, repeats, timed, threads or task_threads(n_blocks=1), None)
    results: dict[str, Any] = {}
    tasks = _tasks(seeds, sparsities, cfg)
    rows = []
    n_cells = sum(t[3] for t in tasks)
    bar = _progress(range(n_cells), n_cells, progress, "mlp: cells")
    it = iter(bar)
    for key, fn, args, is_cell in tasks:
        real = [results[a[1]] if isinstance(a, tuple) and a[:1] == ("@",) else a for a in args]
        results[key] = fn(dataset, cfg, *real)
        if is_cell:
            rows.append(results[key])
            next(it, None)
    if hasattr(bar, "close"):
        bar.close()
    return _section(dataset, cfg, rows, seeds, "local")


# --------------------------------------------------------------------------- tree / forest sections
def _trees_task(ds, cfg: dict, family: str, seed: int) -> dict:
    with _Cell(cfg) as threads:
        run = _worker_run(cfg, seed, threads)
        t0 = time.perf_counter()
        sec = _trees.study(run, ds, family)
        sec.update(threads=threads, section_s=time.perf_counter() - t0, **machine_of_worker())
        return sec


def trees_study(client, dataset, family: str, *, quick: bool = False, seed: int = 0,
                repeats: int | None = None) -> dict:
    """The demo's ``tree`` or ``forest`` section (``studies.trees.study``) as one task on a worker.

    The section's pruning sweep shares one fitted model and its timings share
    one baseline, so it runs whole on one worker (its timings then all come
    from one machine); sections for different families run concurrently when
    submitted from several threads, or call it per family.

    Parameters
    ----------
    client : distributed.Client
    dataset : sparseprune.datasets.Dataset
    family : {"tree", "forest"}
    quick : bool, default=False
    seed : int, default=0
    repeats : int, optional

    Returns
    -------
    dict
        The CLI's section, plus ``worker``, ``machine``, ``machine_label``,
        ``threads`` (also the forest's ``n_jobs``) and ``section_s``.
    """
    from distributed import Client

    if not isinstance(client, Client):
        raise TypeError(f"The 'client' parameter must be a distributed.Client. Got {type(client).__name__} instead.")
    if family not in ("tree", "forest"):
        raise ValueError(f"The 'family' parameter must be 'tree' or 'forest'. Got {family!r} instead.")
    from sparseprune.dask import _host_threads

    cfg = _config(dataset, [], quick, repeats, True, None, _host_threads(client))
    cfg["timing"]["min_time"] = common.timing_settings(quick, repeats, 0.01)["min_time"]
    fut = client.submit(_trees_task, dataset, cfg, family, int(seed), pure=False,
                        key=f"sparseprune-{family}-{uuid.uuid4().hex[:8]}")
    try:
        return fut.result()
    finally:
        fut.release()


# --------------------------------------------------------------------------- fleet bench
def _bench_defaults(quick: bool, size, densities, batches) -> dict:
    """The ``bench`` command's defaults for the linear sweep (``bench.defaults``)."""
    n, d, b = bench.defaults(quick, size, densities, batches)
    return {"size": n, "densities": d, "batches": b}


def _bench_task(cfg: dict) -> dict:
    """``bench.linear`` on this worker with all of its machine's usable cores."""
    from sparseprune.studies.measure import machine_info

    threads = cfg["threads"] or None
    with _limit_threads(threads or _usable_cores_capped()):
        n = threads or _usable_cores_capped()
        args = argparse.Namespace(quick=cfg["quick"], quiet=True, json=False, seed=cfg["seed"], threads=n)
        t = cfg["timing"]
        run = common.Run(args, Path(tempfile.gettempdir()), n, t["repeats"], t["warmup"], t["min_time"],
                       settle=0.02 if cfg["quick"] else 0.15)
        t0 = time.perf_counter()
        res = bench.linear_sweep(run, cfg["size"], cfg["densities"], cfg["batches"])
        wall = time.perf_counter() - t0
    return {**machine_of_worker(), "threads": n, "wall_time_s": wall, "linear": res, "machine_info": machine_info()}


def _usable_cores_capped() -> int:
    import numba

    return max(1, min(_usable_cores(), numba.config.NUMBA_NUM_THREADS))


def _machine_key() -> tuple:
    m = machine_of_worker()["machine"]
    return (m["hostname"], m["cpu_model"], m["cores"])


def bench_fleet(client, *, quick: bool = False, size: int | None = None, densities: Sequence[float] | None = None,
                batches: Sequence[int] | None = None, seed: int = 0, repeats: int | None = None,
                threads: int | None = None, progress: bool | None = None) -> dict:
    """The ``bench`` linear sweep on each distinct machine of the cluster, one machine at a time.

    Machines are told apart by (hostname, CPU model, usable cores), asked of
    every worker; one worker per machine runs ``bench.linear`` with all of
    that machine's usable cores (or ``threads``) while nothing else is
    submitted, then the next machine. Settings default to the ``bench``
    command's (``quick`` as ``--quick``).

    Parameters
    ----------
    client : distributed.Client
    quick : bool, default=False
    size : int, optional
        Weight matrices are size x size (default 4096, 512 with ``quick``).
    densities, batches : sequence, optional
        The linear sweep's densities and batch sizes (the CLI's defaults).
    seed : int, default=0
    repeats : int, optional
        Timed repeats per point.
    threads : int, optional
        Threads per machine (default: its usable cores).
    progress : bool, optional
        A tqdm bar over machines on stderr.

    Returns
    -------
    dict
        ``machines``: one entry per machine (``machine_label``, ``worker``,
        ``linear`` = the CLI's linear section, ``machine_info``); ``table``:
        rows ``{"machine", "batch", "crossover_density", "crossover"}``, see
        :func:`fleet_table`.
    """
    from distributed import Client

    if not isinstance(client, Client):
        raise TypeError(f"The 'client' parameter must be a distributed.Client. Got {type(client).__name__} instead.")
    cfg = {"quick": bool(quick), "seed": int(seed), "threads": threads,
           "timing": common.timing_settings(quick, repeats, 0.02), **_bench_defaults(quick, size, densities, batches)}
    keys = client.run(_machine_key)  # {worker address: machine key}
    machines: dict[tuple, str] = {}
    for addr in sorted(keys):
        machines.setdefault(tuple(keys[addr]), addr)
    results = []
    for key, addr in _progress(list(machines.items()), len(machines), progress, "bench: machines"):
        # One machine at a time: the next sweep is submitted only when this one is done.
        fut = client.submit(_bench_task, cfg, workers=[addr], allow_other_workers=True, pure=False,
                            key=f"sparseprune-bench-{uuid.uuid4().hex[:8]}")
        try:
            results.append(fut.result())
        finally:
            fut.release()
    return {"settings": {k: cfg[k] for k in ("quick", "seed", "size", "densities", "batches", "timing")},
            "machines": results, "table": fleet_table(results)}


def fleet_table(machines: Sequence[dict]) -> list[dict]:
    """Rows (machine label, batch, crossover density and its text) from :func:`bench_fleet`'s machines."""
    rows = []
    for m in machines:
        for b, c in m["linear"]["crossover_density"].items():
            rows.append({"machine": m["machine_label"], "worker": m["worker"], "batch": int(b),
                         "crossover_density": c["density"], "crossover": c["text"]})
    return rows


def format_fleet_table(fleet: dict) -> str:
    """The fleet table as text (one line per machine, one column per batch size)."""
    from sparseprune.studies import report as rp

    batches = sorted({r["batch"] for r in fleet["table"]})
    by_machine: dict[str, dict] = {}
    for r in fleet["table"]:
        by_machine.setdefault(r["machine"], {"machine": r["machine"]})[r["batch"]] = r["crossover"]
    cols: list[tuple[str, Callable, Callable]] = [("machine", lambda r: r["machine"], str)]
    cols += [(f"batch {b}", lambda r, b=b: r.get(b, ""), str) for b in batches]
    return rp.format_table(list(by_machine.values()), cols,
                           title="== crossover density (sparse kernel faster than dense BLAS below it)")
