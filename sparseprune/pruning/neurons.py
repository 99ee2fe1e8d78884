"""Per-neuron scores and physical neuron removal for dense and CSR layers.

A hidden neuron i of layer l is row i of ``W_l`` (out, in) and ``b_l`` and
column i of ``W_{l+1}``. Removing it shrinks both matrices; if its activation
is a constant c over the calibration data (a dead ReLU has c = 0) its effect
is folded exactly into the next bias: ``b_{l+1} += c * W_{l+1}[:, i]``.

The numba kernels live in ``sparseprune.kernels.neurons``; this module
validates, converts scipy objects to raw arrays and back.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from sparseprune._validation import check_float_matrix
from sparseprune.inference.threads import parallel_guard, parallel_pays
from sparseprune.kernels import neurons as _k

__all__ = ["activation_scores", "weight_norm_scores", "remove_neurons"]

def activation_scores(A) -> dict[str, np.ndarray]:
    """Per-neuron statistics of post-activation values over a calibration batch.

    Wraps the kernel ``sparseprune.kernels.neurons.activation_stats_{serial,parallel}``
    (one pass over ``A``).

    Parameters
    ----------
    A : ndarray of shape (n_samples, n_neurons), float32 or float64
        Activations of one layer, one row per calibration sample.

    Returns
    -------
    scores : dict of str to ndarray of shape (n_neurons,), float64
        ``"mean_abs"`` (mean |a|), ``"max_abs"`` (max |a|), ``"apoz"``
        (fraction of exact zeros, the Average Percentage of Zeros),
        ``"min"``, ``"max"``, ``"constant"`` (bool: min == max, i.e. the neuron
        outputs one value on every sample) and ``"value"`` (that value for
        constant neurons, the mean activation otherwise).
    """
    A = check_float_matrix(A, "A")
    if A.shape[0] == 0:
        raise ValueError("A has 0 rows; pass at least one calibration sample.")
    if not np.isfinite(A).all():
        raise ValueError("A contains NaN or inf; neuron scores need finite activations.")
    A = np.ascontiguousarray(A)
    out = np.empty((5, A.shape[1]), dtype=np.float64)
    if parallel_pays("activation_stats", A.size):
        with parallel_guard():
            _k.activation_stats_parallel(A, out)
    else:
        _k.activation_stats_serial(A, out)
    constant = out[3] == out[4]
    mean = A.mean(axis=0, dtype=np.float64)
    return {
        "mean_abs": out[0],
        "max_abs": out[1],
        "apoz": out[2],
        "min": out[3],
        "max": out[4],
        "constant": constant,
        "value": np.where(constant, out[3], mean),
    }


def _check_weight(W, name: str):
    if sparse.issparse(W):
        if W.ndim != 2:
            raise ValueError(f"{name} must be 2-D. Got shape {W.shape} instead.")
        W = sparse.csr_array(W)
        if W.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} has dtype {W.dtype}; only float32 and float64 are supported.")
        if not W.has_canonical_format:
            W = W.copy()
            W.sum_duplicates()
        return W
    return check_float_matrix(W, name)


def weight_norm_scores(W, ord: int = 2, direction: str = "incoming") -> np.ndarray:
    """L1 or L2 norm of each neuron's incoming (rows of ``W_l``) or outgoing (columns of ``W_{l+1}``) weights.

    Wraps ``dense_row_norms`` / ``dense_col_norms`` / ``csr_row_norms`` /
    ``csr_col_norms`` in ``sparseprune.kernels.neurons``.

    Parameters
    ----------
    W : ndarray or scipy sparse matrix of shape (out, in)
        ``W_l`` for ``direction="incoming"``, ``W_{l+1}`` for ``"outgoing"``.
    ord : {1, 2}
        Which norm.
    direction : {"incoming", "outgoing"}
        Rows (incoming) or columns (outgoing).

    Returns
    -------
    ndarray of float64, one score per neuron.
    """
    if ord not in (1, 2) or isinstance(ord, bool):
        raise ValueError(f"The 'ord' parameter must be 1 or 2. Got {ord!r} instead.")
    if direction not in ("incoming", "outgoing"):
        raise ValueError(f"The 'direction' parameter must be 'incoming' or 'outgoing'. Got {direction!r} instead.")
    W = _check_weight(W, "W")
    n = W.shape[0] if direction == "incoming" else W.shape[1]
    out = np.empty(n, dtype=np.float64)
    if sparse.issparse(W):
        if direction == "incoming":
            _k.csr_row_norms(W.data, W.indptr, ord, out)
        else:
            _k.csr_col_norms(W.data, W.indices, ord, out)
    else:
        W = np.ascontiguousarray(W)
        (_k.dense_row_norms if direction == "incoming" else _k.dense_col_norms)(W, ord, out)
    return out


def remove_neurons(W, b, W_next, b_next, keep, fold_values=None):
    """Physically remove neurons of one layer and fold their effect into the next bias.

    Drops row i of ``W`` and ``b`` and column i of ``W_next`` for every
    ``keep[i] == False``, and adds ``fold_values[i] * W_next[:, i]`` to
    ``b_next`` (exact for neurons whose activation is the constant
    ``fold_values[i]``). Inputs are never modified. CSR inputs give CSR outputs
    built by the kernels ``csr_keep_rows`` and ``csr_remove_cols`` in
    ``sparseprune.kernels.neurons``; dense inputs give dense outputs.

    Parameters
    ----------
    W : ndarray or sparse matrix of shape (n_neurons, in)
    b : ndarray of shape (n_neurons,)
    W_next : ndarray or sparse matrix of shape (out, n_neurons)
    b_next : ndarray of shape (out,)
    keep : array-like of bool, shape (n_neurons,)
    fold_values : array-like of shape (n_neurons,), optional
        Activation value folded into ``b_next`` for each removed neuron
        (ignored for kept ones). ``None`` folds nothing.

    Returns
    -------
    W, b, W_next, b_next : the reduced layer pair.
    """
    W = _check_weight(W, "W")
    W_next = _check_weight(W_next, "W_next")
    n = W.shape[0]
    b = np.asarray(b)
    b_next = np.asarray(b_next)
    if b.shape != (n,):
        raise ValueError(f"b must have shape ({n},) to match W {W.shape}. Got {b.shape} instead.")
    if W_next.shape[1] != n:
        raise ValueError(f"W_next must have {n} columns (one per neuron of W). Got shape {W_next.shape} instead.")
    if b_next.shape != (W_next.shape[0],):
        raise ValueError(f"b_next must have shape ({W_next.shape[0]},). Got {b_next.shape} instead.")
    keep = np.asarray(keep)
    if keep.dtype != bool or keep.shape != (n,):
        raise ValueError(f"keep must be a boolean array of shape ({n},). Got dtype {keep.dtype}, shape {keep.shape}.")
    values = np.zeros(n) if fold_values is None else np.asarray(fold_values, dtype=np.float64)
    if values.shape != (n,) or not np.isfinite(values).all():
        raise ValueError(f"fold_values must be a finite array of shape ({n},). Got shape {values.shape}.")
    values = np.where(keep, 0.0, values)
    kept = np.flatnonzero(keep)

    if sparse.issparse(W):
        d, i, p = _k.csr_keep_rows(W.data, W.indices, W.indptr, kept.astype(W.indptr.dtype))
        W_new = sparse.csr_array((d, i, p), shape=(kept.size, W.shape[1]))
    else:
        W_new = np.ascontiguousarray(W[kept])
    b_new = b[kept].copy()

    delta = np.zeros(W_next.shape[0], dtype=np.float64)
    if sparse.issparse(W_next):
        col_map = np.full(n, -1, dtype=W_next.indices.dtype)
        col_map[kept] = np.arange(kept.size, dtype=col_map.dtype)
        d, i, p = _k.csr_remove_cols(W_next.data, W_next.indices, W_next.indptr, col_map, values, delta)
        W_next_new = sparse.csr_array((d, i, p), shape=(W_next.shape[0], kept.size))
    else:
        removed = np.flatnonzero(~keep)
        delta += W_next[:, removed].astype(np.float64) @ values[removed]
        W_next_new = np.ascontiguousarray(W_next[:, kept])
    b_next_new = (b_next.astype(np.float64) + delta).astype(b_next.dtype)
    return W_new, b_new, W_next_new, b_next_new
