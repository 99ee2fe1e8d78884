"""The MLP study of ``sparseprune demo``: train a dense MLP, prune it gradually to each sparsity,
quantize the sparsest, eliminate neurons, and time every model against the dense one."""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Sequence

import numpy as np

from sparseprune.datasets import Dataset
from sparseprune.studies.common import Bar, Run, baseline, batch_rows, latency, settle_plan


def mlp_stats(model, weights_total: int, biases_total: int, batches: Sequence[int]) -> dict:
    """Weight counts and storage of a fitted MLP's layers (CSR or dense), weights only for bytes."""
    from sparseprune.pruning.masking import sparsity_info

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


# The MLP recipe follows the MLP module's own digits study (sparseprune/study.py):
# each sparsity is reached from the dense model by gradual pruning (Zhu & Gupta
# schedule with masked fine-tuning), then neurons are eliminated.
RECIPE = {"hidden": (300, 100), "max_iter": 200, "epochs": 80, "learning_rate": 3e-3,
               "eliminate_fraction": 0.5, "eliminate_criterion": "l2", "fine_tune_epochs": 10,
               "combined_sparsity": 0.9,
               # Deep Compression on the sparsest pruned model at or below 95 %: k-means codes of
               # these widths, 5-bit relative column indices, centroids fine-tuned.
               "quantize_bits": (8, 5, 4), "quantize_index_bits": 5, "quantize_sparsity": 0.95}


QUICK_RECIPE = {**RECIPE, "hidden": (64, 32), "max_iter": 10, "epochs": 3, "fine_tune_epochs": 2}


def plan_paths(model, batch: int) -> tuple[bool, list[str]]:
    """What the model's plan runs at ``batch``: (all layers in one fused call?, per layer
    "dense" or "sparse")."""
    from sparseprune.inference.dispatch import bucket_of
    from sparseprune.inference.threads import _num_threads_now

    plan = model.plan_
    key = (bucket_of(batch), _num_threads_now())
    ch = plan.choices.get(key)
    if ch is not None and ch.next() == "fused":
        return True, list(plan.layer_kinds)
    if ch is not None and ch.next() == "fused-dense":
        return True, ["dense"] * len(plan.layer_kinds)
    paths = ["dense" if not hasattr(op, "_choices") or key not in op._choices else op._choices[key].next()
             for op in plan._ops]
    # A quantized layer runs its codes ("quantized") or the float kernel on a dequantized copy ("sparse").
    return False, [("sparse" if p == "float" else "quantized") if hasattr(op, "Q") else p
                   for op, p in zip(plan._ops, paths)]


def plan_ran(model, batch: int) -> str:
    """Short on-screen form: "1 call: S S D" (fused) or "S S D" (layer by layer)."""
    fused, paths = plan_paths(model, batch)
    return ("1 call: " if fused else "") + " ".join({"sparse": "S", "quantized": "Q"}.get(p, "D") for p in paths)


def _quantized_rows(run: Run, pruned: dict, rc: dict, X, y, row: Callable) -> list[dict]:
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


def recipe(quick: bool, n_train: int) -> dict:
    """The MLP study's recipe for a training set of ``n_train`` rows."""
    rc = dict(QUICK_RECIPE if quick else RECIPE)
    if not quick and n_train > 5000:
        # The digits recipe would take tens of minutes on 60k rows; fewer, larger passes instead.
        rc.update(max_iter=20, epochs=10, fine_tune_epochs=3)
    return rc


def mlp_row(run: Run, ds: Dataset, dense, model, label: str, kind: str, target: float | None,
             base: dict | None, settle: float) -> dict:
    """One row of the MLP table: sizes, accuracy, and (with a baseline) latency and what the plan ran."""
    shapes = [tuple(layer.weight.shape) for layer in dense.layers_]
    batches = BATCHES
    r = {"label": label, "kind": kind, "target_sparsity": target}
    r.update(mlp_stats(model, sum(o * i for o, i in shapes), sum(o for o, _ in shapes), batches))
    r["accuracy"] = float(np.mean(model.predict(ds.X_test) == ds.y_test))
    if base is not None:
        # Timed once the plan has finished measuring at each batch size, as a serving process
        # runs after its first calls (and as the dense baseline, which has nothing to measure).
        r["settled"] = {str(b): settle_plan(model, batch_rows(ds.X_test, b), 0.3 if run.quick else 1.5)
                        for b in batches}
        # Batch 1 runs one compiled call (no BLAS) for the dense model and every pruned one: there
        # the dense model is timed again with each model, interleaved (see common.latency).
        r["latency"] = latency(run, ds.X_test, base, model.predict, batches, settle=settle, dense=dense.predict,
                               paired=(1,))
        # What the model's plan ran at each batch size (measured on the calls above).
        r["ran"] = {str(b): plan_ran(model, b) for b in batches}
        for lay, paths in zip(r["layers"], zip(*(plan_paths(model, b)[1] for b in batches))):
            lay["path"] = dict(zip(map(str, batches), paths))
    return r


BATCHES = [1, 256]


def study(run: Run, ds: Dataset, sparsities: Sequence[float]) -> dict:
    from sparseprune.mlp import MLPClassifier

    rc = recipe(run.quick, ds.X_train.shape[0])
    hidden, epochs, lr = rc["hidden"], rc["epochs"], rc["learning_rate"]
    batches = BATCHES
    X, y, Xt = ds.X_train, ds.y_train, ds.X_test

    run.say(f"mlp: training {ds.n_features}-{'-'.join(map(str, hidden))}-{ds.n_classes} on {ds.name}")
    dense = MLPClassifier(hidden_layer_sizes=hidden, random_state=run.args.seed,
                             max_iter=rc["max_iter"]).fit(X, y)
    # Each model timed as a group after a pause: interleaved with the dense model, every
    # pruned call would run while the dense model's BLAS worker threads still spin on the
    # cores (about 0.1 s after each BLAS call), which times the neighbour, not the model.
    settle = 0.02 if run.quick else 0.12
    base = baseline(run, Xt, dense.predict, batches, settle=settle)

    def row(label: str, kind: str, model, target: float | None) -> dict:
        return mlp_row(run, ds, dense, model, label, kind, target, base, settle)

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
        bar = stack.enter_context(Bar(run, "mlp: neuron elimination", 3))
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
        "latency_meaning": "dense = the trained dense MLP's predict; pruned = this model's predict, timed once "
                           "its plan has settled (it measures the candidate paths on its first calls); batch 1: "
                           "the two timed together, interleaved; larger batches: the dense model timed once per "
                           "table, each timed as a group after a pause",
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in rc.items()},
        "rows": rows,
    }
