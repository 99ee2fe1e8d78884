"""Batch inference over ``dask.array`` data, and a connection helper for Dask clusters.

``sparseprune.dask`` needs the optional extra ``sparseprune[dask]`` (``dask[array]``,
``distributed``). ``import sparseprune`` never imports it or Dask.

Prediction
----------
:func:`predict`, :func:`predict_proba` and :func:`transform` take a fitted model
and ``X``, a 2-D ``dask.array`` (or a numpy array, cut into row blocks of
``block_rows`` rows; the default, :func:`default_block_rows`, is as many rows as
fit in Dask's ``array.chunk-size`` (128 MiB unless configured), between 1 024 and
65 536: Dask costs about a millisecond per task, so blocks should take tens of
milliseconds, and the row cap bounds the hidden activations a block needs), and return a lazy ``dask.array`` with
one output block per input row block. Each block is predicted by the model's own
``predict`` / ``predict_proba`` (a ``SparseLinear``: its call), so the result
equals the local call row for row. The output's ``chunks``, ``dtype`` and
``meta`` come from the model's attributes (classes, layer dtype, output width),
never from a call on zero rows; zero-row blocks yield empty arrays without
calling the model.

Models: :class:`sparseprune.MLPClassifier` / :class:`sparseprune.MLPRegressor`,
:class:`sparseprune.SparseLinear` (``transform`` only), a
:class:`sparseprune.CompiledTree`, or a fitted scikit-learn tree or forest
(compiled here with :func:`sparseprune.compile_tree`, e.g. the output of
:func:`sparseprune.prune_tree`).

How the model travels
---------------------
The model is serialized once, on the client, to the pickle-free ``.npz`` bytes
of ``model.save`` (MLPs; read back with :func:`sparseprune.load`, which takes a
file-like), or to an ``.npz`` of its arrays (``SparseLinear``: CSR arrays, bias,
activation and frozen dense/sparse choices; ``CompiledTree``: its node and value
arrays, numbers and strings in a JSON entry). Those bytes are one task of the
output's graph, under the stable key ``sparseprune-model-<sha256>``; every block
task depends on it. The scheduler ships the bytes to each worker once per
computation (workers fetch them from each other), and each worker process
rebuilds the model once and keeps it in a small cache keyed by the hash (at
most 8 models), so its compiled plan and measured dense/sparse choices are
reused by every later block. No live numba kernel is ever pickled.

Scheduler
---------
The result is lazy; Dask picks the scheduler when it is computed: the default
``distributed`` client if one exists (e.g. from :func:`connect`), otherwise the
local threaded scheduler.

Threads on workers
------------------
Every block runs with numba's thread count (``numba.set_num_threads``, per task
thread) and the BLAS pools (threadpoolctl, process-wide, counted so concurrent
tasks share one setting) limited to
``max(1, usable_cores // busy)``, where ``busy`` is the number of task threads
that may run at once on that machine:

* on a ``distributed`` worker, the sum of ``nthreads`` over all workers on the
  same host when the default client was known at the time of the call (from the
  scheduler's worker list), else that worker's own ``nthreads``;
* under the local threaded scheduler, ``min(pool size, number of blocks)``.

So a machine running two single-threaded worker processes on 2 cores gives each
task 1 thread, and one worker with 1 thread on 8 cores gives each task 8; two
tasks never oversubscribe the cores. The settings are restored after each block.

Faults
------
The model bytes are a task of the graph, not scattered data, so if the workers
holding them die the scheduler recomputes them elsewhere; block tasks of a dead
worker are rerun by Dask on the others (up to ``distributed.scheduler.allowed-failures``
deaths per task). :func:`connect` fails fast, with one line naming the address,
when a scheduler cannot be reached.
"""
from __future__ import annotations

import collections
import contextlib
import gc
import hashlib
import io
import json
import logging
import math
import numbers
import os
import sys
import threading
from typing import Any, Iterator

import dask
import dask.array as da
import dask.system
import numpy as np
from dask.base import tokenize

from sparseprune.inference.spmm import SparseLinear

__all__ = [
    "DEFAULT_TIMEOUT",
    "connect",
    "default_block_rows",
    "predict",
    "predict_proba",
    "transform",
    "task_threads",
]

#: Seconds :func:`connect` waits for a remote scheduler.
DEFAULT_TIMEOUT = 5.0
#: Bounds on the rows of a block cut from a numpy input.
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 1024, 65536
#: Models kept rebuilt per process (worker).
CACHE_SIZE = 8

_FORMAT_LINEAR = "sparseprune.sparse_linear"
_FORMAT_TREE = "sparseprune.compiled_tree"


# --------------------------------------------------------------------------- serialization
def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _read_npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _linear_bytes(layer) -> bytes:
    meta = {"format": _FORMAT_LINEAR, "version": 1, "activation": layer.activation,
            "has_bias": bool(layer._has_bias), "frozen": layer._frozen_choices()}
    return _npz_bytes({"meta": np.array(json.dumps(meta)), "data": layer._data, "indices": layer._indices,
                       "indptr": layer._indptr, "shape": np.array(layer.shape, np.int64), "bias": layer.bias})


def _linear_from(data: bytes):
    from scipy import sparse

    a = _read_npz(data)
    meta = json.loads(str(a["meta"]))
    if meta.get("format") != _FORMAT_LINEAR or meta.get("version") != 1:
        raise ValueError("not a serialized SparseLinear")
    W = sparse.csr_array((a["data"], a["indices"], a["indptr"]), shape=tuple(int(v) for v in a["shape"]))
    layer = SparseLinear(W, a["bias"] if meta["has_bias"] else None, meta["activation"])
    if meta["frozen"]:
        layer._load_frozen(meta["frozen"])
    return layer


def _tree_bytes(tree) -> bytes:
    """A CompiledTree's attributes as an .npz: arrays as entries, scalars and strings in JSON.

    CompiledTree has no save form of its own; its state is plain arrays and
    numbers (the numba kernels are module functions), so every attribute is
    written generically. Arrays that are views of another attribute (the float
    views of the packed node records) are recorded as views; object label
    arrays (string classes) are stored as unicode and restored as object.
    """
    arrays, scalars, views, objects = {}, {}, {}, []
    state = vars(tree)
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            base = next((k for k, v in state.items() if k != name and isinstance(v, np.ndarray)
                         and value.base is v and v.nbytes == value.nbytes), None)
            if base is not None:
                views[name] = [base, value.dtype.str]
            elif value.dtype == object:
                if not all(isinstance(v, str) for v in value.ravel()):
                    raise TypeError(f"CompiledTree.{name} holds non-string objects; only numeric or string "
                                    "labels can be sent without pickle.")
                arrays[name] = value.astype(str)
                objects.append(name)
            else:
                arrays[name] = value
        elif value is None or isinstance(value, (bool, str)):
            scalars[name] = value
        elif isinstance(value, numbers.Integral):
            scalars[name] = int(value)
        elif isinstance(value, numbers.Real):
            scalars[name] = float(value)
        else:
            raise TypeError(f"CompiledTree.{name} is a {type(value).__name__}; it cannot be sent without pickle.")
    meta = {"format": _FORMAT_TREE, "version": 1, "scalars": scalars, "views": views, "objects": objects}
    return _npz_bytes({"meta": np.array(json.dumps(meta)), **{"a_" + k: v for k, v in arrays.items()}})


def _tree_from(data: bytes):
    from sparseprune.trees.compile import CompiledTree

    a = _read_npz(data)
    meta = json.loads(str(a.pop("meta")))
    if meta.get("format") != _FORMAT_TREE or meta.get("version") != 1:
        raise ValueError("not a serialized CompiledTree")
    tree = CompiledTree.__new__(CompiledTree)
    state = {k[2:]: v for k, v in a.items()}
    for name in meta["objects"]:
        state[name] = state[name].astype(object)
    state.update(meta["scalars"])
    for name, (base, dtype) in meta["views"].items():
        state[name] = state[base].view(np.dtype(dtype))
    tree.__dict__.update(state)
    return tree


def _prepare(model) -> tuple[str, Any]:
    """(kind, model to send): a scikit-learn tree or forest is compiled here first."""
    name = type(model).__name__
    module = type(model).__module__
    # isinstance against the classes, looked up only if their modules are loaded (a model of
    # theirs cannot exist otherwise): checking needs no scikit-learn import of its own.
    mlp = sys.modules.get("sparseprune.mlp.estimators")
    if mlp is not None and isinstance(model, mlp._BaseMLP):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(model)
        return "mlp", model
    if isinstance(model, SparseLinear):
        return "linear", model
    compiled = sys.modules.get("sparseprune.trees.compile")
    if compiled is not None and isinstance(model, compiled.CompiledTree):
        return "tree", model
    if module.startswith("sklearn.tree") or module.startswith("sklearn.ensemble"):
        from sparseprune.trees import compile_tree

        return "tree", compile_tree(model)
    raise TypeError(f"model is a {name}; pass a fitted sparseprune MLPClassifier or MLPRegressor, a "
                    "SparseLinear (to transform), a CompiledTree, or a fitted scikit-learn tree or forest.")


def _serialize(model) -> tuple[str, bytes]:
    """(kind, pickle-free bytes) for a supported model; kind names the rebuild function."""
    kind, obj = _prepare(model)
    if kind == "mlp":
        buf = io.BytesIO()
        obj.save(buf)
        return kind, buf.getvalue()
    return kind, (_linear_bytes(obj) if kind == "linear" else _tree_bytes(obj))


def _deserialize(kind: str, data: bytes):
    if kind == "mlp":
        from sparseprune.mlp import load

        return load(io.BytesIO(data))
    if kind == "linear":
        return _linear_from(data)
    if kind == "tree":
        return _tree_from(data)
    raise ValueError(f"unknown model kind {kind!r}")


_cache: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
_cache_lock = threading.Lock()
_rebuilds: collections.Counter = collections.Counter()


def _model_of(payload: tuple[str, str, bytes]):
    """The model for ``payload`` = (kind, sha256 hex, bytes), rebuilt once per process and cached."""
    kind, digest, data = payload
    with _cache_lock:
        model = _cache.get(digest)
        if model is not None:
            _cache.move_to_end(digest)
            return model
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError("the model bytes do not match their hash (corrupted in transfer)")
        model = _deserialize(kind, data)
        _rebuilds[digest] += 1
        _cache[digest] = model
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return model


def _cache_info() -> dict:
    """How many times this process rebuilt each model (by hash), and what is cached: for tests."""
    with _cache_lock:
        return {"rebuilds": dict(_rebuilds), "cached": list(_cache)}


# --------------------------------------------------------------------------- threads
def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _current_worker():
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:
        return None


def task_threads(host_threads: dict | None = None, n_blocks: int | None = None) -> int:
    """Threads one task may use here: ``max(1, usable_cores // busy)`` (see the module docstring).

    Parameters
    ----------
    host_threads : dict, optional
        Task threads per host (IP) over the whole cluster, as the scheduler
        lists them; used on a ``distributed`` worker when its host is listed.
    n_blocks : int, optional
        Blocks in the computation; caps ``busy`` under the local threaded scheduler.

    Returns
    -------
    int
    """
    import numba

    worker = _current_worker()
    if worker is not None:
        from distributed.comm import get_address_host

        state = getattr(worker, "state", None)
        own = int(getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1) or 1)
        busy = (host_threads or {}).get(get_address_host(worker.address), own)
    else:
        pool = dask.config.get("num_workers", None) or dask.system.CPU_COUNT
        busy = min(int(pool), n_blocks) if n_blocks else int(pool)
    return max(1, min(_usable_cores() // max(1, int(busy)), numba.config.NUMBA_NUM_THREADS))


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list = []


@contextlib.contextmanager
def _limit_threads(n: int) -> Iterator[None]:
    """numba (this thread) and BLAS (process, counted across concurrent tasks) on ``n`` threads."""
    import numba

    from sparseprune.inference.threads import _blas_controllers

    global _blas_users
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved[:] = [(lib, lib.get_num_threads()) for lib in _blas_controllers()]
            for lib, _ in _blas_saved:
                lib.set_num_threads(n)
        _blas_users += 1
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, v in _blas_saved:
                    lib.set_num_threads(v)
                _blas_saved.clear()


def _host_threads(client=None) -> dict | None:
    """Task threads per host of ``client``'s (default: the default client's) cluster, or None without one."""
    if client is None:
        try:
            from distributed import default_client
        except ImportError:
            return None
        try:
            client = default_client()
        except ValueError:
            return None
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # older distributed: no n_workers argument
        workers = client.scheduler_info()["workers"]
    except Exception:  # a closed client: decide on the worker instead
        return None
    out: dict = {}
    for w in workers.values():
        out[w["host"]] = out.get(w["host"], 0) + int(w.get("nthreads", 1))
    return out


# --------------------------------------------------------------------------- blocks
def _run_block(block: np.ndarray, payload: tuple, method: str, tail: tuple, out_dtype: np.dtype,
               host_threads: dict | None, n_blocks: int) -> np.ndarray:
    dtype = out_dtype
    if isinstance(block, list):  # blockwise(concatenate=False): the row block's pieces along the feature axis
        block = block[0] if len(block) == 1 else np.concatenate(block, axis=1)
    if block.shape[0] == 0:
        return np.empty((0, *tail), dtype)
    model = _model_of(payload)
    with _limit_threads(task_threads(host_threads, n_blocks)):
        out = model(block) if method == "transform" else getattr(model, method)(block)
    if out.dtype != dtype or out.shape[1:] != tail:
        raise RuntimeError(f"{method} returned {out.dtype} {out.shape[1:]}, not the announced {dtype} {tail}; "
                           "please report this as a sparseprune bug.")
    return out


def _output_spec(model, kind: str, method: str) -> tuple[tuple, np.dtype, int]:
    """(shape after the row axis, dtype, input width) of ``method``, from the model's attributes only."""
    name = type(model).__name__
    if kind == "linear":
        if method != "transform":
            raise TypeError(f"model is a SparseLinear; use sparseprune.dask.transform(layer, X), not {method}.")
        return (model.shape[0],), np.dtype(model.dtype), model.shape[1]
    if method == "transform":
        raise TypeError(f"layer is a {name}; transform takes a SparseLinear (use predict / predict_proba).")
    if kind == "mlp":
        n_in = int(model.n_features_in_)
        if name == "MLPClassifier":
            if method == "predict":
                return (), np.asarray(model.classes_).dtype, n_in
            return (len(model.classes_),), np.dtype(model.layers_[0].bias.dtype), n_in
        if method == "predict_proba":
            raise TypeError("model is an MLPRegressor; it has no predict_proba.")
        y_ndim = int(getattr(model, "_y_ndim", 1))
        return ((), np.dtype(np.float64), n_in) if y_ndim == 1 else \
            ((int(model.n_outputs_),), np.dtype(np.float64), n_in)
    # compiled tree or forest
    n_in = int(model.n_features_in_)
    if model.is_classifier_:
        if method == "predict":
            return (), np.asarray(model.classes_).dtype, n_in
        return (len(model.classes_),), np.dtype(np.float64), n_in
    if method == "predict_proba":
        raise TypeError(f"model is a compiled {model.estimator_type_}; predict_proba is only available "
                        "for classifiers.")
    return (), np.dtype(np.float64), n_in


def default_block_rows(n_features: int, itemsize: int = 8) -> int:
    """Rows per block cut from a numpy input: Dask's ``array.chunk-size`` (128 MiB), 1 024 to 65 536 rows.

    Parameters
    ----------
    n_features : int
    itemsize : int, default=8
        Bytes per value (4 for float32).

    Returns
    -------
    int
    """
    from dask.utils import parse_bytes

    target = parse_bytes(dask.config.get("array.chunk-size", "128MiB"))
    rows = target // max(1, int(n_features) * int(itemsize))
    return int(min(MAX_BLOCK_ROWS, max(MIN_BLOCK_ROWS, rows)))


def _check_block_rows(block_rows) -> int | None:
    if block_rows is None:
        return None
    if isinstance(block_rows, bool) or not isinstance(block_rows, numbers.Integral):
        raise TypeError(f"The 'block_rows' parameter must be a positive int or None. Got {block_rows!r} instead.")
    if block_rows < 1:
        raise ValueError(f"The 'block_rows' parameter must be a positive int or None. Got {block_rows!r} instead.")
    return int(block_rows)


def _as_dask(X, n_in: int, block_rows: int | None) -> da.Array:
    if isinstance(X, da.Array):
        if block_rows is not None:
            X = X.rechunk({0: block_rows})
    elif isinstance(X, np.ndarray):
        if X.ndim == 2:
            rows = block_rows or default_block_rows(X.shape[1], X.dtype.itemsize)
            X = da.from_array(X, chunks=(rows, -1))
    else:
        raise TypeError(f"X is a {type(X).__name__}; pass a 2-D dask.array or numpy array.")
    if X.ndim != 2:
        raise ValueError(f"X has {X.ndim} dimension(s); pass a 2-D array of shape (n_samples, {n_in}).")
    if not math.isnan(X.shape[1]) and X.shape[1] != n_in:
        raise ValueError(f"X has {X.shape[1]} features, but the model expects {n_in}.")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X has dtype {X.dtype}; pass numeric features (float32 or float64).")
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})
    return X


def _map(model, X, method: str, block_rows) -> da.Array:
    block_rows = _check_block_rows(block_rows)
    kind, model = _prepare(model)
    tail, dtype, n_in = _output_spec(model, kind, method)
    data = _serialize(model)[1]
    if kind == "linear" and isinstance(X, (np.ndarray, da.Array)) and X.dtype != model.dtype:
        raise TypeError(f"X has dtype {X.dtype} but the layer has dtype {model.dtype}; cast X with "
                        f"X.astype(np.{model.dtype.name}).")
    X = _as_dask(X, n_in, block_rows)
    digest = hashlib.sha256(data).hexdigest()
    payload = dask.delayed((kind, digest, data), name=f"sparseprune-model-{digest}", pure=True)
    n_blocks = len(X.chunks[0])
    name = f"sparseprune-{method}-" + tokenize(X, digest, method)
    meta = np.empty((0, *tail), dtype)
    # ``dtype`` and ``meta`` are map_blocks' own keywords; the block function gets the dtype as ``out_dtype``.
    common = dict(method=method, tail=tail, out_dtype=dtype, host_threads=_host_threads(), n_blocks=n_blocks,
                  dtype=dtype, meta=meta, name=name)
    if tail:
        return da.map_blocks(_run_block, X, payload, chunks=(X.chunks[0], tail), **common)
    # Labels drop the feature axis. map_blocks(drop_axis=1) would hand each block
    # through np.concatenate over that (single-chunk) axis: a copy of the whole
    # input block per task, a large share of the task's time (benchmarks/README.md,
    # "Design record"). blockwise with concatenate=False passes the block itself.
    del common["dtype"], common["meta"], common["name"]
    return da.blockwise(_run_block, "i", X, "ij", payload, None, concatenate=False, dtype=dtype, meta=meta,
                        name=name, **common)


def predict(model, X, *, block_rows: int | None = None) -> da.Array:
    """The model's ``predict`` over the row blocks of ``X``, as a lazy dask array.

    Parameters
    ----------
    model : MLPClassifier, MLPRegressor, CompiledTree, or fitted scikit-learn tree/forest
        A scikit-learn tree or forest is compiled first (:func:`sparseprune.compile_tree`).
    X : dask.array.Array or numpy.ndarray of shape (n_samples, n_features)
        A numpy array is cut into blocks of ``block_rows`` rows.
    block_rows : int, optional
        Rows per block: for a numpy ``X`` the default is :func:`default_block_rows`;
        for a dask ``X`` its row chunks are kept unless this is given (then it is rechunked).

    Returns
    -------
    dask.array.Array
        Shape (n_samples,) (or (n_samples, n_outputs) for a multi-output
        regressor), one chunk per row block of ``X``; ``dtype``/``meta`` as the
        local ``model.predict`` returns (class labels' dtype, float64 for regressors).

    Raises
    ------
    TypeError
        Unsupported model, a ``SparseLinear`` (use :func:`transform`), or a non-numeric ``X``.
    ValueError
        ``X`` not 2-D or of the wrong width, or a bad ``block_rows``.
    """
    return _map(model, X, "predict", block_rows)


def predict_proba(model, X, *, block_rows: int | None = None) -> da.Array:
    """The model's ``predict_proba`` over the row blocks of ``X``, as a lazy dask array.

    Parameters
    ----------
    model : MLPClassifier, classifier CompiledTree, or fitted scikit-learn tree/forest classifier
    X : dask.array.Array or numpy.ndarray of shape (n_samples, n_features)
    block_rows : int, optional
        See :func:`predict`.

    Returns
    -------
    dask.array.Array
        Shape (n_samples, n_classes); the MLP's layer dtype, float64 for trees.

    Raises
    ------
    TypeError
        A regressor, a ``SparseLinear``, an unsupported model, or a non-numeric ``X``.
    ValueError
        ``X`` not 2-D or of the wrong width, or a bad ``block_rows``.
    """
    return _map(model, X, "predict_proba", block_rows)


def transform(layer, X, *, block_rows: int | None = None) -> da.Array:
    """``layer(X)`` = ``act(X @ W.T + bias)`` of a :class:`sparseprune.SparseLinear` over row blocks.

    Parameters
    ----------
    layer : SparseLinear
    X : dask.array.Array or numpy.ndarray of shape (n_samples, layer.shape[1])
        Of the layer's dtype (as the local call requires).
    block_rows : int, optional
        See :func:`predict`.

    Returns
    -------
    dask.array.Array
        Shape (n_samples, layer.shape[0]), the layer's dtype.

    Raises
    ------
    TypeError
        ``layer`` is not a SparseLinear, or ``X`` has another dtype than the layer.
    ValueError
        ``X`` not 2-D or of the wrong width, or a bad ``block_rows``.
    """
    if type(layer).__name__ != "SparseLinear":
        raise TypeError(f"layer is a {type(layer).__name__}; transform takes a sparseprune.SparseLinear "
                        "(use predict / predict_proba for models).")
    return _map(layer, X, "transform", block_rows)


# --------------------------------------------------------------------------- connecting
@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Hold back distributed's own error logging while connecting (we raise one clear line instead)."""
    loggers = [logging.getLogger(n) for n in ("distributed", "distributed.client", "distributed.comm.core",
                                              "distributed.core")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def connect(address: str, *, timeout: float = DEFAULT_TIMEOUT, n_workers: int | None = None,
            threads_per_worker: int = 1):
    """A ``distributed.Client`` for ``address``, or for a new local cluster of processes with ``"local"``.

    The client becomes Dask's default, so :func:`predict` results compute on it.

    Parameters
    ----------
    address : str
        A scheduler address (``"tcp://host:8786"``, ``"host:8786"``), or
        ``"local"``: a ``LocalCluster`` of worker processes started here and
        shut down when the client is closed (``client.close()``).
    timeout : float, default=5.0
        Seconds to wait for a remote scheduler before giving up.
    n_workers : int, optional
        Worker processes for ``"local"`` (default: usable cores // threads_per_worker).
    threads_per_worker : int, default=1
        Task threads per worker process for ``"local"``.

    Returns
    -------
    distributed.Client

    Raises
    ------
    TypeError
        ``address`` not a string, or bad ``timeout`` / worker counts.
    ValueError
        ``address`` is not a scheduler address.
    ConnectionError
        The scheduler cannot be reached within ``timeout`` (one line naming the address).
    """
    if not isinstance(address, str):
        raise TypeError(f"The 'address' parameter must be a str (a scheduler address or 'local'). "
                        f"Got {address!r} instead.")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise ValueError(f"The 'timeout' parameter must be a positive number of seconds. Got {timeout!r} instead.")
    for pname, v, low in (("n_workers", n_workers, 1), ("threads_per_worker", threads_per_worker, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low):
            raise ValueError(f"The '{pname}' parameter must be a positive int. Got {v!r} instead.")
    from distributed import Client

    address = address.strip()
    if address == "local":
        if n_workers is None:
            n_workers = max(1, _usable_cores() // threads_per_worker)
        # Dask's nanny starts workers with OMP/MKL/OPENBLAS_NUM_THREADS=1 (so BLAS can never use
        # more than one thread, whatever a task asks) and MALLOC_TRIM_THRESHOLD_=65536 (which
        # turns off glibc's adaptive mmap threshold: every large temporary is a fresh mmap, its
        # pages faulted in on each call; figures in benchmarks/README.md, "Design record").
        # Threads are shared out per task here (task_threads), so this cluster's workers start
        # without either setting.
        cores = str(_usable_cores())
        env = {"OMP_NUM_THREADS": cores, "OPENBLAS_NUM_THREADS": cores, "MKL_NUM_THREADS": cores}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
            return Client(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                          dashboard_address=None, set_as_default=True, env=env)
    if not address:
        raise ValueError("The 'address' parameter is empty; pass a scheduler address like tcp://host:8786 "
                         "or 'local'.")
    try:
        from distributed.comm import parse_address

        parse_address(address if "://" in address else f"tcp://{address}")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{address!r} is not a Dask scheduler address ({exc}); pass one like "
                         "tcp://host:8786 or 'local'.") from None
    try:
        try:
            with _quiet_distributed():
                return Client(address, timeout=float(timeout), set_as_default=True)
        finally:
            # The half-built Client of a failed connection is left to the garbage collector.
            # Collected later, inside the next Client's start-up, its __del__ stops the shared
            # event loop runner that start-up is holding: a hang seen in the tests. Collect it now.
            gc.collect()
    except (OSError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({reason}); "
                              "check the address and that the scheduler is running.") from None
    except ValueError as exc:
        raise ValueError(f"{address!r} is not a Dask scheduler address ({str(exc).splitlines()[0]}); pass one "
                         "like tcp://host:8786 or 'local'.") from None
    except Exception as exc:  # e.g. distributed's client event loop failing to start on a loaded machine
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConnectionError(f"cannot connect to the Dask scheduler at {address}: the client failed "
                              f"({reason}); check the address and retry.") from None
