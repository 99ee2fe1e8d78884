"""The sweeps of ``sparseprune bench``: the sparse linear layer against dense BLAS and scipy, the
dispatcher on random layer shapes, masking, and an ONNX model against onnxruntime."""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from sparseprune.inference import SparseLinear, get_num_threads, linear
from sparseprune.inference.dispatch import bucket_of
from sparseprune.pruning import threshold_mask
from sparseprune.studies.common import Bar, Run, time_fns
from sparseprune.studies.mlp import plan_paths, plan_ran


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


def _settle(layer: SparseLinear, X: np.ndarray, budget_s: float = 2.0) -> None:
    """Give the dispatcher the calls it measures on, as a serving layer's first calls would,
    until it has settled (a close call is measured once more, ``dispatch.CONFIRM_AFTER_S`` later)."""
    choice = layer._choice_for(bucket_of(X.shape[0]), get_num_threads())
    deadline = time.perf_counter() + budget_s
    while not choice.settled and time.perf_counter() < deadline:
        layer(X)


def linear_sweep(run: Run, n: int, densities: Sequence[float], batches: Sequence[int]) -> dict:
    # SparseLinear holds the weights prepared once, as an MLP layer does, so the sparse
    # kernel (method="sparse") and the dispatcher (method="auto") are timed separately;
    # the crossover density is the kernel's.
    rng = np.random.default_rng(run.args.seed)
    rows = []
    for d in run.progress(densities, "bench: linear densities"):
        W_csr = _random_csr(rng, n, d)
        layer = SparseLinear(W_csr)
        # The baseline multiplies the layer's own dense copy, the very array the
        # dispatcher's dense path uses: two separately allocated 64 MiB copies
        # can differ by several percent in BLAS speed (page placement).
        W_dense = layer._dense()
        for b in batches:
            X = rng.standard_normal((b, n)).astype(np.float32)
            # scipy's product as the issue and bench_spmm.py define it, W_csr @ X.T: scipy
            # copies the transposed view to C order itself (part of its cost, as our
            # packing is part of ours).
            _settle(layer, X)
            fns = {"dense": lambda: X @ W_dense.T, "scipy": lambda: W_csr @ X.T,
                   "ours": lambda: layer(X, method="sparse"), "auto": lambda: layer(X),
                   "linear": lambda: linear(X, W_csr)}
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
            "(the dispatcher, after its first calls settled); linear = sparseprune.linear(X, W_csr) (one-off call)")
    return {"title": f"sparse linear layer, {n}x{n} float32 weights", "shape": [n, n], "dtype": "float32",
            "ours": ours, "baselines": {"scipy": "W_csr @ X.T (scipy, one thread)",
                                        "dense": "X @ W_dense.T (numpy BLAS)"},
            "rows": rows, "crossover_density": crossover}


def dispatch_sweep(run: Run, n_points: int, max_dim: int) -> dict:
    """The measuring dispatcher on random layer shapes: auto against dense BLAS and the sparse kernel.

    Seeded random points: out and in log-uniform in [32, max_dim], density
    log-uniform in [0.5%, 60%], batch log-uniform in [1, 512] (batches whose
    dense product would exceed 4 GFLOP are shrunk, to keep the sweep short).
    The dispatcher is first given the calls it needs to settle, as a serving
    layer would on its first calls; then dense, sparse and auto are each
    timed as a group after a pause.
    """
    rng = np.random.default_rng(run.args.seed + 17)
    rows = []
    for _ in run.progress(range(n_points), "bench: dispatcher sweep"):
        n_out, n_in = (int(round(math.exp(rng.uniform(math.log(32), math.log(max_dim))))) for _ in range(2))
        density = float(math.exp(rng.uniform(math.log(0.005), math.log(0.6))))
        batch = int(round(math.exp(rng.uniform(0, math.log(512)))))
        batch = max(1, min(batch, int(2e9 // (n_out * n_in))))
        W_csr = _random_csr(rng, n_out, density, n_in=n_in)
        layer = SparseLinear(W_csr)
        W_dense = layer._dense()
        X = rng.standard_normal((batch, n_in)).astype(np.float32)
        _settle(layer, X)
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


def mask_sweep(run: Run, n: int, densities: Sequence[float]) -> dict:
    import scipy.sparse as sps

    rng = np.random.default_rng(run.args.seed)
    W = rng.standard_normal((n, n)).astype(np.float32)
    absW = np.abs(W).ravel()
    rows = []
    for d in run.progress(densities, "bench: masking"):
        t_cut = float(np.quantile(absW, 1.0 - d)) if d < 1 else 0.0
        t = run.time({
            "ours": lambda: threshold_mask(W, t_cut),
            "baseline": lambda: sps.csr_array(np.where(np.abs(W) < t_cut, 0, W)),
        })
        rows.append({"density": d, "threshold": t_cut, "timings": t,
                     "speedup": t["baseline"]["median_s"] / t["ours"]["median_s"]})
    return {"title": f"threshold_mask, {n}x{n} float32", "shape": [n, n], "dtype": "float32",
            "ours": "sparseprune.threshold_mask(W, t)",
            "baselines": {"baseline": "scipy.sparse.csr_array(np.where(np.abs(W) < t, 0, W))"}, "rows": rows}


def onnx_model(run: Run, path: str, read: tuple, batches: Sequence[int]) -> dict:
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
    with Bar(run, "model", len(batches)) as bar:
        for b in batches:
            Xb = np.ascontiguousarray(X[:b])
            check = {k: np.asarray(f(Xb), dtype=np.float64) for k, f in fns.items()}
            ref = check["sparseprune"]
            t = time_fns(run, {k: (lambda f=f: f(Xb)) for k, f in fns.items()}, run.settle)
            row = {"batch": b, "timings": t, "ran": plan_ran(model, b),
                   "max_abs_diff": {k: _max_diff(v, ref) for k, v in check.items() if k != "sparseprune"}}
            for k in fns:
                if k != "sparseprune":
                    row[f"speedup_vs_{k.split()[0]}"] = t[k]["median_s"] / t["sparseprune"]["median_s"]
            rows.append(row)
            bar.update()
    report = model.sparsity_report(batch_size=max(batches))
    fused1, paths1 = plan_paths(model, min(batches))
    fusedn, pathsn = plan_paths(model, max(batches))
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


# The graph's head on the last layer's outputs, as sparseprune serves it (see onnx_model).
_HEAD_NUMPY = {"none": lambda H: H, "softmax": _softmax_numpy, "log_softmax": lambda H: np.log(_softmax_numpy(H)),
               "logistic2": lambda H: np.hstack([1 - (p := 1 / (1 + np.exp(-H))), p])}


def defaults(quick: bool, size: int | None, densities, batches) -> tuple[int, list, list]:
    """The linear sweep's size, densities and batches (``--size``, ``--densities``, ``--batches`` or defaults)."""
    return (size or (512 if quick else 4096),
            list(densities or ([0.05, 0.3] if quick else [0.01, 0.05, 0.1, 0.2, 0.3, 0.5])),
            list(batches or ([1, 64] if quick else [1, 16, 64, 256])))
