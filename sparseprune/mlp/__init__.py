"""A small numpy MLP that trains, prunes, quantizes and serves through sparseprune's kernels.

- :mod:`~sparseprune.mlp.estimators`: ``MLPClassifier`` and ``MLPRegressor`` (scikit-learn
  estimators: fit, prune, gradual_prune, eliminate_neurons, quantize, fine_tune, predict
  through the model's compiled plan, scikit-learn and ONNX interop).
- :mod:`~sparseprune.mlp.layers`: ``Layer`` (dense, CSR or quantized weight) and the
  training activations.
- :mod:`~sparseprune.mlp.optim`: Adam and SGD with masks; the shared values of quantized layers.
- :mod:`~sparseprune.mlp.io`: ``save``/``load`` as ``.npz`` without pickle.
"""
from sparseprune.mlp.estimators import MLPClassifier, MLPRegressor, from_sklearn
from sparseprune.mlp.io import load
from sparseprune.mlp.layers import Layer

__all__ = ["Layer", "MLPClassifier", "MLPRegressor", "from_sklearn", "load"]
