"""Sparse inference: ``act(X @ W.T + b)`` on CSR weights, and the machinery that serves it.

- :mod:`~sparseprune.inference.spmm`: the public :func:`linear` and :class:`SparseLinear`
  (validation, prepared CSR layouts, scratch buffers, dense and sparse paths).
- :mod:`~sparseprune.inference.plan`: :class:`ModelPlan`, one compiled inference plan per
  model (all layers in one numba call for small batches, layer by layer otherwise).
- :mod:`~sparseprune.inference.dispatch`: :class:`Choice`, the measuring dispatcher that
  picks between candidate paths by timing them on the caller's own calls.
- :mod:`~sparseprune.inference.costmodel`: the cost model that only rules out hopeless
  candidates and decides one-off calls (``calibrate``, ``set_calibration``).
- :mod:`~sparseprune.inference.threads`: numba and BLAS thread counts, the threading layer.
"""
from sparseprune.inference.plan import ModelPlan
from sparseprune.inference.spmm import (
           Decision,
           SparseLinear,
           calibrate,
           explain,
           linear,
           set_calibration,
)
from sparseprune.inference.threads import (
           get_num_threads,
           set_num_threads,
           thread_limit,
           threading_layer,
)

__all__ = ["Decision", "ModelPlan", "SparseLinear", "calibrate", "explain", "get_num_threads", "linear",
           "set_calibration", "set_num_threads", "thread_limit", "threading_layer"]
