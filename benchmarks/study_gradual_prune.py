"""How gradual_prune's defaults were chosen: accuracy lost at 95 % sparsity on digits.

For each seed: a dense ``MLPClassifier(hidden_layer_sizes=(300, 100))`` fitted on
scikit-learn's digits (X / 16, 70/30 stratified split, ``random_state=0``), then a
copy pruned with ``gradual_prune(X, y, sparsity)`` under each configuration;
the table gives the test accuracy change in percentage points (one test row is
0.185 pp). Accuracy only: no timing, so it may run beside other work.

    python benchmarks/study_gradual_prune.py                 # defaults vs the old ones, seeds 0-9
    python benchmarks/study_gradual_prune.py --seeds 0 1 2 --sparsity 0.9

Configurations: ``default`` (the method's defaults), ``old`` (30 epochs at
``learning_rate_init``, the defaults before the study) and any ``EPOCHS:LR``
(``LR`` a number or ``xK`` for ``K * learning_rate_init``). The record of the
study that chose the defaults is in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # one core: the study is about accuracy, not speed

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import sparseprune  # noqa: E402


def _kwargs(config: str, lr_init: float) -> dict:
    if config == "default":
        return {}
    if config == "old":
        return {"epochs": 30, "learning_rate": lr_init}
    epochs, lr = config.split(":")
    lr = float(lr[1:]) * lr_init if lr.startswith("x") else float(lr)
    return {"epochs": int(epochs), "learning_rate": lr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--hidden", type=int, nargs="+", default=[300, 100])
    ap.add_argument("--config", nargs="+", default=["default", "old"])
    args = ap.parse_args()

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.3, stratify=y, random_state=0)
    deltas = {c: [] for c in args.config}
    print(f"digits, hidden {tuple(args.hidden)}, sparsity {args.sparsity:g}: accuracy change in pp "
          f"(seconds per gradual_prune call)")
    print("seed  dense %  " + "  ".join(f"{c:>16}" for c in args.config))
    for seed in args.seeds:
        dense = sparseprune.MLPClassifier(hidden_layer_sizes=tuple(args.hidden), random_state=seed).fit(Xtr, ytr)
        base = float(np.mean(dense.predict(Xte) == yte))
        cells = []
        for c in args.config:
            t0 = time.perf_counter()
            m = copy.deepcopy(dense).gradual_prune(Xtr, ytr, sparsity=args.sparsity,
                                                   **_kwargs(c, dense.learning_rate_init))
            dt = time.perf_counter() - t0
            d = 100 * (float(np.mean(m.predict(Xte) == yte)) - base)
            deltas[c].append(d)
            cells.append(f"{d:+7.2f} ({dt:5.2f} s)")
        print(f"{seed:4d}  {100 * base:7.2f}  " + "  ".join(f"{x:>16}" for x in cells), flush=True)
    for c, ds in deltas.items():
        print(f"{c}: mean {np.mean(ds):+.2f} pp, worst {min(ds):+.2f} pp, "
              f"{sum(d >= -0.5 for d in ds)} of {len(ds)} seeds within 0.5 pp")


if __name__ == "__main__":
    main()
