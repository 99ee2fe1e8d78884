"""Plain-numpy references the kernel tests compare against, written for clarity (float64 throughout)."""
from __future__ import annotations

import numpy as np


def ref_linear(X, Wd, bias=None, activation=None):
    """act(X @ W.T + b) in float64 with numpy only."""
    Z = X.astype(np.float64) @ Wd.astype(np.float64).T
    if bias is not None:
        Z = Z + np.asarray(bias, np.float64)
    if activation == "relu":
        Z = np.maximum(Z, 0)
    elif activation == "tanh":
        Z = np.tanh(Z)
    elif activation == "logistic":
        Z = 1 / (1 + np.exp(-Z))
    return Z
