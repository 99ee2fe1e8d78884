"""sparseprune: numba-accelerated sparse kernels that turn pruning into real speed."""
from __future__ import annotations

import importlib.util as _ilu
import os as _os

# kernels/ sits beside this package in the source tree and is installed as
# sparseprune.kernels (setuptools package-dir). When this package is imported
# straight from a checkout (``python -m sparseprune`` in the repo root puts the
# checkout first on sys.path), point the subpackage search at the checkout so
# sparseprune.kernels resolves there too. A top-level ``kernels`` is never made
# importable.
if _ilu.find_spec(__name__ + ".kernels") is None:
    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    if _os.path.isfile(_os.path.join(_root, "kernels", "__init__.py")):
        __path__.append(_root)

from sparseprune.inference import (
    Decision,
    SparseLinear,
    calibrate,
    explain,
    get_num_threads,
    linear,
    set_calibration,
    set_num_threads,
    thread_limit,
    threading_layer,
)
from sparseprune.pruning import (
    SparsityInfo,
    global_magnitude_prune,
    magnitude_prune,
    nm_prune,
    sparsity_info,
    threshold_mask,
)

# The estimators need scikit-learn (about a second to import): they load on
# first use, so `import sparseprune` costs little more than numpy, scipy and numba.
_LAZY = {
    "MLPClassifier": "sparseprune.mlp", "MLPRegressor": "sparseprune.mlp", "load": "sparseprune.mlp",
    "CompiledTree": "sparseprune.trees", "PruningReport": "sparseprune.trees", "compile_tree": "sparseprune.trees",
    "prune_tree": "sparseprune.trees", "pruning_curve": "sparseprune.trees", "tree_report": "sparseprune.trees",
    "from_onnx": "sparseprune.onnx", "to_onnx": "sparseprune.onnx",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparseprune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

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
    "from_onnx",
    "to_onnx",
    "set_num_threads",
    "thread_limit",
    "threading_layer",
]
