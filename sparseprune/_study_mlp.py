"""The MLP part of the demo study: digits, gradual pruning sweep, neuron elimination.

Called by the CLI; returns plain rows (dicts) so the caller can print, plot or
save them. Everything is seeded, and the whole study takes well under a minute
on 2 cores.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sparseprune.mlp import MLPClassifier

__all__ = ["digits_split", "mlp_row", "digits_study"]


def digits_split(random_state: int = 0):
    """scikit-learn's digits scaled by 1/16, 70/30 stratified split: (X_train, X_test, y_train, y_test)."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.3, stratify=y, random_state=random_state)


def mlp_row(model: MLPClassifier, X_test, y_test, method: str, target_sparsity: float | None = None,
            seconds: float | None = None) -> dict[str, Any]:
    """One study row: storage, compute and test accuracy of ``model`` (from its sparsity_report)."""
    rep = model.sparsity_report()
    tot = rep[-1]
    total_params = sum(r["shape"][0] * r["shape"][1] + r["bias_params"] for r in rep[:-1])
    kept = tot["nnz"] + tot["bias_params"]
    return {
        "method": method,
        "target_sparsity": target_sparsity,
        "sparsity": 1.0 - tot["density"],
        "hidden": [layer.shape[0] for layer in model.layers_[:-1]],
        "params_kept": kept,
        "params_total": total_params,
        "nnz": tot["nnz"],
        "bytes_dense": tot["dense_bytes"],
        "bytes_csr": tot["csr_bytes"],
        "flops": tot["flops_sparse"],
        "flops_dense": tot["flops_dense"],
        "accuracy": float(np.mean(model.predict(X_test) == y_test)),
        "seconds": seconds,
    }


def digits_study(sparsities: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 0.98),
                 eliminate_fraction: float = 0.5, combined_sparsity: float | None = 0.9,
                 hidden_layer_sizes=(300, 100), epochs: int = 80,
                 learning_rate: float = 3e-3, random_state: int = 0) -> list[dict[str, Any]]:
    """Train a dense MLP on digits, sweep gradual pruning, then eliminate neurons.

    Rows, in order: the dense model; for each target sparsity, gradual pruning
    (Zhu & Gupta schedule, masked fine-tuning, ``epochs`` epochs) from the dense
    model; exact removal of constant/dead neurons from the dense model;
    elimination of ``eliminate_fraction`` of each hidden layer (L2 of outgoing
    weights) plus 10 fine-tuning epochs; and that reduced model pruned
    gradually to ``combined_sparsity`` (skipped if None). See :func:`mlp_row` for the keys.
    """
    Xtr, Xte, ytr, yte = digits_split(random_state)
    t0 = time.perf_counter()
    dense = MLPClassifier(hidden_layer_sizes=hidden_layer_sizes, random_state=random_state).fit(Xtr, ytr)
    rows = [mlp_row(dense, Xte, yte, "dense", 0.0, time.perf_counter() - t0)]
    for s in sparsities:
        t0 = time.perf_counter()
        m = copy.deepcopy(dense).gradual_prune(Xtr, ytr, s, epochs=epochs, learning_rate=learning_rate)
        rows.append(mlp_row(m, Xte, yte, "gradual_prune", s, time.perf_counter() - t0))
    t0 = time.perf_counter()
    exact = copy.deepcopy(dense).eliminate_neurons(Xtr)
    rows.append(mlp_row(exact, Xte, yte, "eliminate_dead", None, time.perf_counter() - t0))
    t0 = time.perf_counter()
    elim = copy.deepcopy(dense).eliminate_neurons(Xtr, criterion="l2", fraction=eliminate_fraction)
    elim.fine_tune(Xtr, ytr, epochs=10)
    rows.append(mlp_row(elim, Xte, yte, f"eliminate_{eliminate_fraction:.0%}+fine_tune", None,
                        time.perf_counter() - t0))
    if combined_sparsity is not None:
        t0 = time.perf_counter()
        s = combined_sparsity
        both = copy.deepcopy(elim).gradual_prune(Xtr, ytr, s, epochs=epochs, learning_rate=learning_rate)
        rows.append(mlp_row(both, Xte, yte, "eliminate+gradual_prune", s, time.perf_counter() - t0))
    return rows
