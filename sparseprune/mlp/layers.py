"""The MLP's layers: a fully connected ``Layer`` (dense, CSR or quantized weights), the
activations used in training, and the layer-by-layer forward pass."""
from __future__ import annotations

import numpy as np
from scipy import sparse

from sparseprune._validation import index_dtype
from sparseprune.inference.spmm import SparseLinear, _activate_inplace, linear
from sparseprune.kernels.spmm import ACTIVATIONS
from sparseprune.pruning.masking import global_magnitude_prune, magnitude_prune


# ---------------------------------------------------------------------------
# Inference. predict / predict_proba run the model's plan (sparseprune/inference/plan.py,
# ``_BaseMLP.plan_``); ``_layer_forward`` is the layer-by-layer pass that
# eliminate_neurons uses to read hidden activations.
# ---------------------------------------------------------------------------
def _layer_forward(layer: "Layer", X, activation, among_sparse: bool = False):
    """``act(X @ W.T + b)`` for one layer through the dispatcher; returns ``(output, ran_sparse)``.

    A CSR layer is prepared once as a ``SparseLinear`` (validation and row
    partitioning done once, cached on the layer); a dense layer goes to
    ``linear``, which runs BLAS for dense arrays.
    """
    if layer.is_sparse:
        op = layer._prepared(activation)
        Y = op(X, among_sparse=among_sparse)
        return Y, op.last_path == "sparse"
    return linear(X, layer.weight, bias=layer.bias, activation=activation), False


def _n_rows(X) -> int:
    shape = np.shape(X)
    return int(shape[0]) if len(shape) == 2 else 0


def _prune_global(weights, sparsity):
    return global_magnitude_prune(weights, sparsity)


def _prune_layer(W, sparsity):
    return magnitude_prune(W, sparsity, scope="tensor")


# ---------------------------------------------------------------------------
# Layers and activations
# ---------------------------------------------------------------------------
class Layer:
    """One fully connected layer: ``act(x @ weight.T + bias)``.

    Attributes
    ----------
    weight : ndarray or scipy.sparse.csr_array of shape (out, in)
    bias : ndarray of shape (out,)

    Notes
    -----
    A CSR layer caches its prepared ``sparseprune.SparseLinear`` (which holds a
    copy of the weights). Assigning ``weight`` or ``bias`` clears that cache;
    modifying the arrays in place does not, so assign new arrays instead.
    """

    __slots__ = ("_weight", "_bias", "_cache", "_quant")

    def __init__(self, weight, bias, quant=None) -> None:
        self._weight = weight if quant is None else quant.dequantize()
        self._bias = bias
        self._cache = {}
        self._quant = quant

    @property
    def weight(self):
        return self._weight

    @weight.setter
    def weight(self, value) -> None:
        self._weight = value
        self._quant = None  # new float weights: no longer the quantized ones
        self._cache = {}

    @property
    def quant(self):
        """The layer's :class:`~sparseprune.quantize.QuantizedCSR` after ``model.quantize`` (else None).

        ``weight`` is then its dequantized CSR (what training, reports and
        exports read); prediction runs the quantized kernels.
        """
        return self._quant

    @property
    def bias(self):
        return self._bias

    @bias.setter
    def bias(self, value) -> None:
        self._bias = value
        self._cache = {}

    def _prepared(self, activation):
        op = self._cache.get(activation)
        if op is None:
            if self._quant is not None:
                from sparseprune.quantize import QuantizedLinear

                op = QuantizedLinear(self._quant, self._bias, activation)
            else:
                op = SparseLinear(self._weight, self._bias, activation)
            self._cache[activation] = op
        return op

    # The cache holds locks and per-thread partitions: never pickle or deep-copy it.
    def __getstate__(self):
        return {"weight": self._weight, "bias": self._bias, "quant": self._quant}

    def __setstate__(self, state) -> None:
        self._weight = state["weight"]
        self._bias = state["bias"]
        self._quant = state.get("quant")
        self._cache = {}

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in)."""
        return tuple(self._weight.shape)

    @property
    def is_sparse(self) -> bool:
        """True when the weight is stored as CSR."""
        return sparse.issparse(self._weight)

    @property
    def nnz(self) -> int:
        """Stored nonzero weights (nonzero entries for a dense weight)."""
        return int(self._weight.nnz) if self.is_sparse else int(np.count_nonzero(self._weight))

    def dense_weight(self) -> np.ndarray:
        """The weight as a dense C-contiguous array (a copy for CSR)."""
        return self._weight.toarray() if self.is_sparse else np.ascontiguousarray(self._weight)

    def __repr__(self) -> str:
        kind = "csr" if self.is_sparse else "dense"
        if self._quant is not None:
            kind = f"quantized {self._quant.scheme} {self._quant.bits}-bit"
        return f"Layer(shape={self.shape}, {kind}, nnz={self.nnz})"


def _softmax(Z):
    Z = Z - Z.max(axis=1, keepdims=True)
    np.exp(Z, out=Z)
    Z /= Z.sum(axis=1, keepdims=True)
    return Z


def _table_activation(code: int):
    def act(Z):
        _activate_inplace(Z, code)
        return Z

    return act


#: Training's activations, in place: the inference table (``kernels.spmm.ACTIVATIONS``
#: codes) applied by the dense inference path's numpy code, so training and serving
#: compute the same function (a stable logistic included), plus the softmax output.
_ACT = {name: _table_activation(code) for name, code in ACTIVATIONS.items()}
_ACT["softmax"] = _softmax


def _act_derivative(name, A, delta):
    """Multiply ``delta`` in place by the derivative of activation ``name`` given its output ``A``."""
    if name == "relu":
        delta[A <= 0] = 0
    elif name == "tanh":
        delta *= 1 - A * A
    elif name == "logistic":
        delta *= A * (1 - A)
    return delta



def _half_bias(b: np.ndarray) -> np.ndarray:
    """A quantized layer's bias, rounded to float16 precision (saved as float16: half the bytes).

    Kept in the layer's dtype; values beyond float16's range keep full precision.
    """
    b = np.asarray(b)
    h = b.astype(np.float16).astype(b.dtype)
    return np.where(np.isfinite(h), h, b).astype(b.dtype)


def _stored_bias(layer) -> np.ndarray:
    """The bias as :meth:`_BaseMLP.save` writes it: float16 for a quantized layer when that is exact."""
    b = np.asarray(layer.bias)
    if layer.quant is not None:
        h = b.astype(np.float16)
        if np.array_equal(h.astype(b.dtype), b):
            return h
    return b



def _masked_csr(W, mask):
    """CSR of ``W`` with exactly the mask's structure (a weight trained to 0 stays stored).

    Row-major ``nonzero`` order gives sorted column indices; index dtype follows
    scipy's rule (int32 unless the size needs int64), as the masking functions do.
    """
    keep = mask != 0
    rows, cols = np.nonzero(keep)
    idx = index_dtype(rows.size, *W.shape)
    indptr = np.zeros(W.shape[0] + 1, dtype=idx)
    np.cumsum(np.count_nonzero(keep, axis=1), out=indptr[1:])
    return sparse.csr_array((W[rows, cols], cols.astype(idx), indptr), shape=W.shape)


