"""Input checks shared by the public API. Kernels never see unchecked input."""
from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def check_float_matrix(W, name: str = "W", *, allow_nan: bool = False) -> np.ndarray:
    """Return ``W`` as a 2-D float32/float64 ndarray (never a copy unless needed, never modified).

    Raises a ``TypeError`` for non-float dtypes (saying what to cast to) and a
    ``ValueError`` for the wrong number of dimensions.
    """
    if hasattr(W, "tocsr") or hasattr(W, "toarray"):
        raise TypeError(
            f"{name} is a sparse matrix ({type(W).__name__}); pass a dense 2-D array "
            f"(for example {name}.toarray())."
        )
    arr = np.asarray(W)
    if arr.dtype.kind not in "f" or arr.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        if arr.dtype.kind in "biu":
            hint = f"cast with {name}.astype(np.float32) or {name}.astype(np.float64)"
        elif arr.dtype.kind == "c":
            hint = f"complex weights are not supported; pass np.abs({name}) or {name}.real as float32/float64"
        elif arr.dtype.kind == "f":
            hint = f"cast with {name}.astype(np.float32)"
        else:
            hint = "pass a numeric array and cast it with .astype(np.float32)"
        raise TypeError(f"{name} has dtype {arr.dtype}; only float32 and float64 are supported: {hint}.")
    if arr.ndim != 2:
        raise ValueError(
            f"{name} is {arr.ndim}-dimensional with shape {arr.shape}; pass a 2-D matrix of shape (rows, cols)."
        )
    return arr


def check_number(value, name: str, *, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Check a real scalar parameter and its range; messages follow scikit-learn's form."""
    interval = (
        ("[" if low_inclusive else "(") + ("-inf" if low is None else repr(low)) + ", "
        + ("inf" if high is None else repr(high)) + ("]" if high_inclusive else ")")
    )
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"The '{name}' parameter must be a real number in {interval}. Got {value!r} instead.")
    v = float(value)
    bad = math.isnan(v) or math.isinf(v)
    if low is not None:
        bad |= v < low if low_inclusive else v <= low
    if high is not None:
        bad |= v > high if high_inclusive else v >= high
    if bad:
        raise ValueError(f"The '{name}' parameter must be a finite number in {interval}. Got {value!r} instead.")
    return v


def check_int(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Check an integer parameter and its range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"The '{name}' parameter must be an int. Got {value!r} instead.")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"The '{name}' parameter must be an int in [{lo}, {hi}]. Got {value!r} instead.")
    return v


def index_dtype(nnz: int, *dims: int) -> type:
    """int32 indices unless nnz or a dimension needs int64 (scipy's own rule)."""
    limit = np.iinfo(np.int32).max
    return np.int64 if max((nnz, *dims), default=0) > limit else np.int32


def check_choice(value, name: str, choices) -> str:
    """``value`` if it is one of the strings ``choices``, else a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"The '{name}' parameter must be one of {opts}. Got {value!r} instead.")
    return value
