"""sparseprune: numba-accelerated sparse kernels that turn pruning into real speed."""
from __future__ import annotations

from sparseprune._threading import get_num_threads, set_num_threads, thread_limit, threading_layer
from sparseprune.spmm import Decision, SparseLinear, calibrate, explain, linear, set_calibration
from sparseprune.masking import (
    SparsityInfo,
    global_magnitude_prune,
    magnitude_prune,
    nm_prune,
    sparsity_info,
    threshold_mask,
)
from sparseprune.mlp import MLPClassifier, MLPRegressor, load
from sparseprune.tree import CompiledTree, PruningReport, compile_tree, prune_tree, pruning_curve, tree_report

__version__ = "0.1.0"

__all__ = [
    "MLPClassifier",
    "MLPRegressor",
    "CompiledTree",
    "PruningReport",
    "compile_tree",
    "prune_tree",
    "pruning_curve",
    "tree_report",
    "Decision",
    "SparseLinear",
    "calibrate",
    "explain",
    "linear",
    "set_calibration",
    "SparsityInfo",
    "global_magnitude_prune",
    "magnitude_prune",
    "nm_prune",
    "sparsity_info",
    "threshold_mask",
    "get_num_threads",
    "load",
    "set_num_threads",
    "thread_limit",
    "threading_layer",
]
