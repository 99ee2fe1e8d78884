"""Saving and loading fitted MLPs as ``.npz`` files, without pickle."""
from __future__ import annotations

import json
import zipfile

import numpy as np
from scipy import sparse

from sparseprune._validation import check_choice, check_int
from sparseprune.inference.spmm import _csr_arrays
from sparseprune.mlp.estimators import _SK_PARAMS, MLPClassifier, MLPRegressor
from sparseprune.mlp.layers import Layer


# ---------------------------------------------------------------------------
# Loading (never unpickles)
# ---------------------------------------------------------------------------
def _bad(path, why):
    return ValueError(f"{path!s} is not a valid sparseprune MLP file: {why}")


def load(path):
    """Load a model written by ``MLPClassifier.save`` / ``MLPRegressor.save``.

    Reads with ``np.load(..., allow_pickle=False)`` only and checks every array
    (names, dtypes, shapes, CSR structure, finiteness) before building the
    model, so a corrupted, truncated or hand-crafted file raises ``ValueError``
    and can never execute code.

    Parameters
    ----------
    path : str or path-like or file-like

    Returns
    -------
    MLPClassifier or MLPRegressor
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        # numpy's own message for a non-archive suggests loading with allow_pickle=True: never
        # pass that on (unpickling an untrusted file runs code).
        why = "not an .npz archive" if "pickle" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise _bad(path, f"cannot read it as a pickle-free .npz archive ({why}). Pass a file written "
                         "by model.save().") from None
    if "meta" not in arrays:
        raise _bad(path, "no 'meta' entry.")
    meta_arr = arrays["meta"]
    if meta_arr.dtype.kind != "U" or meta_arr.shape != ():
        raise _bad(path, "'meta' must be a 0-d unicode string.")
    try:
        meta = json.loads(str(meta_arr))
    except ValueError as exc:
        raise _bad(path, f"'meta' is not valid JSON ({exc}).") from None
    if not isinstance(meta, dict) or meta.get("format") != "sparseprune.mlp" or meta.get("version") != 1:
        raise _bad(path, "unknown format or version.")
    classes = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}
    cls = classes.get(meta.get("estimator"))
    if cls is None:
        raise _bad(path, f"unknown estimator {meta.get('estimator')!r}.")
    params = meta.get("params")
    if not isinstance(params, dict) or set(params) - set(_SK_PARAMS):
        raise _bad(path, "'params' must be a dict of known hyperparameters.")
    if isinstance(params.get("hidden_layer_sizes"), list):
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    try:
        model = cls(**params)
        model._validate_params()
        n_layers = check_int(meta.get("n_layers"), "n_layers", low=1, high=1000)
        n_features = check_int(meta.get("n_features_in"), "n_features_in", low=1)
        y_ndim = check_int(meta.get("y_ndim", 1), "y_ndim", low=1, high=2)
        out_act = check_choice(meta.get("out_activation"), "out_activation", ("softmax", "logistic", "identity"))
    except (TypeError, ValueError) as exc:
        raise _bad(path, str(exc)) from None
    expected = {"meta"} | ({"classes"} if cls is MLPClassifier else set())
    layers = []
    prev = n_features
    for i in range(n_layers):
        b = arrays.get(f"b{i}")
        quant = None
        if f"q{i}_header" in arrays:
            from sparseprune.quantize import QuantizedCSR

            names = [k for k in arrays if k.startswith(f"q{i}_")]
            try:
                quant = QuantizedCSR.from_arrays(arrays, prefix=f"q{i}_")
            except (ValueError, TypeError) as exc:
                raise _bad(path, f"layer {i} CSR weights: {exc}") from None
            W = quant.dequantize()
        elif f"w{i}" in arrays:
            names = [f"w{i}"]
            W = arrays[f"w{i}"]
            if W.dtype not in (np.float32, np.float64) or W.ndim != 2:
                raise _bad(path, f"w{i} must be a 2-D float32/float64 array.")
            W = np.ascontiguousarray(W)
        else:
            names = [f"w{i}_data", f"w{i}_indices", f"w{i}_indptr", f"w{i}_shape"]
            if any(k not in arrays for k in names):
                raise _bad(path, f"layer {i} has no weight arrays.")
            d, ind, ptr, shp = (arrays[k] for k in names)
            if d.dtype not in (np.float32, np.float64) or d.ndim != 1:
                raise _bad(path, f"w{i}_data must be a 1-D float array.")
            if ind.dtype.kind != "i" or ptr.dtype.kind != "i" or ind.ndim != 1 or ptr.ndim != 1:
                raise _bad(path, f"w{i}_indices/indptr must be 1-D integer arrays.")
            if shp.dtype.kind != "i" or shp.shape != (2,) or (shp < 0).any():
                raise _bad(path, f"w{i}_shape must be two non-negative ints.")
            rows, cols = int(shp[0]), int(shp[1])
            # The CSR checks of sparseprune.linear (structure, index bounds, order), once.
            try:
                W = sparse.csr_array((d, ind, ptr), shape=(rows, cols))
                data, indices, indptr = _csr_arrays(W, copy=False)
            except (TypeError, ValueError) as exc:
                raise _bad(path, f"layer {i} CSR weights: {exc}") from None
            if data.size != int(ptr[-1]):
                raise _bad(path, f"layer {i} CSR has duplicate entries.")
            W = sparse.csr_array((data, indices, indptr), shape=(rows, cols))
        expected.update(names + [f"b{i}"])
        if quant is not None and b is not None and b.dtype == np.float16:
            b = b.astype(W.dtype)  # a quantized layer's bias is saved as float16 (see _stored_bias)
        if b is None or b.dtype != W.dtype or b.shape != (W.shape[0],):
            raise _bad(path, f"b{i} must be a float array of shape ({W.shape[0]},) with the weight's dtype.")
        if W.shape[1] != prev or W.shape[0] < 1:
            raise _bad(path, f"layer {i} has shape {W.shape}; expected {prev} inputs.")
        data = W.data if sparse.issparse(W) else W
        if not (np.isfinite(data).all() and np.isfinite(b).all()):
            raise _bad(path, f"layer {i} contains NaN or inf.")
        if layers and W.dtype != layers[0].weight.dtype:
            raise _bad(path, "all layers must share one dtype.")
        layers.append(Layer(W, np.ascontiguousarray(b)) if quant is None
                      else Layer(None, np.ascontiguousarray(b), quant=quant))
        prev = W.shape[0]
    if set(arrays) != expected:
        raise _bad(path, f"unexpected or missing entries {sorted(set(arrays) ^ expected)}.")
    model.layers_ = layers
    model.n_features_in_ = n_features
    model.n_layers_ = n_layers + 1
    model.n_outputs_ = prev
    model.out_activation_ = out_act
    model.n_iter_ = int(meta.get("n_iter", 0)) if isinstance(meta.get("n_iter", 0), int) else 0
    if cls is MLPClassifier:
        c = arrays["classes"]
        if c.ndim != 1 or c.dtype.kind not in "iufUb" or c.size < 2 or np.unique(c).size != c.size:
            raise _bad(path, "'classes' must be a 1-D array of distinct numeric or string labels.")
        want_out = 1 if c.size == 2 else c.size
        if prev != want_out or out_act != ("logistic" if c.size == 2 else "softmax"):
            raise _bad(path, "output layer does not match the classes.")
        model.classes_ = c
    else:
        if out_act != "identity" or (y_ndim == 1 and prev != 1):
            raise _bad(path, "a regressor needs an identity output (one unit for 1-D y).")
        model._y_ndim = y_ndim
    if "plan" in meta:
        model._get_plan().load_dict(_check_plan_meta(path, meta["plan"], layers))
    return model


def _check_plan_meta(path, plan, layers) -> dict:
    """The frozen plan choices of a saved model, checked entry by entry (see ``ModelPlan.to_dict``)."""
    def keys_ok(d, paths):
        if not isinstance(d, dict):
            return False
        for key, value in d.items():
            parts = key.split(":") if isinstance(key, str) else []
            if (len(parts) != 2 or not all(p.isdigit() and 0 < int(p) < 1 << 31 for p in parts)
                    or value not in paths):
                return False
        return True

    model_paths = ("fused", "fused-dense", "layers")
    if not isinstance(plan, dict) or set(plan) != {"model", "layers"} or not keys_ok(plan["model"], model_paths):
        raise _bad(path, "'plan' must map 'bucket:threads' keys to 'fused', 'fused-dense' or 'layers'.")
    per_layer = plan["layers"]

    def layer_ok(i, d):
        if not (isinstance(i, str) and i.isdigit() and int(i) < len(layers) and layers[int(i)].is_sparse):
            return False
        # a CSR layer chooses dense or sparse; a quantized one its codes or its float copy
        return keys_ok(d, ("quantized", "float") if layers[int(i)].quant is not None else ("dense", "sparse"))

    if not isinstance(per_layer, dict) or not all(layer_ok(i, d) for i, d in per_layer.items()):
        raise _bad(path, "'plan' layer entries must name CSR layers and map 'bucket:threads' to 'dense' or "
                         "'sparse' ('quantized' or 'float' for a quantized layer).")
    return plan

