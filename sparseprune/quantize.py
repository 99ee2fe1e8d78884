"""Quantized sparse weights (Deep Compression style): codes, shared values, compact indices, kernels.

:func:`quantize` turns a CSR weight matrix (a pruned layer, or a dense one)
into a :class:`QuantizedCSR`: the same sparsity structure, each stored value
replaced by a small integer code.

``scheme="linear"``
    Symmetric per-output-row quantization: ``w ~= q * scale[row]`` with int8
    codes ``q`` in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` and
    ``scale[row] = max|w_row| / (2**(bits-1) - 1)`` in the weights' dtype.
    The error of each weight is at most ``scale[row] / 2``.
``scheme="kmeans"``
    Weight sharing (Han, Mao & Dally, *Deep Compression*, 2016): one codebook
    of ``2**bits`` values per layer, found by 1-D k-means (Lloyd) on the
    stored values with the centroids initialised linearly between their
    minimum and maximum, as the paper recommends; ``w ~= codebook[q]`` with
    uint8 codes. A centroid whose cluster empties keeps its value (so the
    result is deterministic and every code stays valid).

:func:`qlinear` computes ``act(X @ W.T + bias)`` straight from the codes
(:mod:`sparseprune.kernels.quant`), never expanding the weights to floats.
:func:`centroid_gradients` sums a gradient over the weights sharing each
centroid, for fine-tuning a k-means codebook (:meth:`QuantizedCSR.with_codebook`).

Storage (:meth:`QuantizedCSR.to_arrays`, :meth:`QuantizedCSR.nbytes_stored`)
    What is stored, and counted byte for byte, is a dict of plain numpy arrays
    (no pickle; fit for ``numpy.savez``):

    - ``header``: int64[9], ``[version, n_out, n_in, bits, scheme (0 linear,
      1 kmeans), index_bits (0: none), nnz, n_stored, float bits (32/64)]``;
    - ``codes``: one per stored entry; int8 for ``linear``; uint8 for
      ``kmeans``, bit-packed ``bits`` bits each (two 4-bit codes per byte,
      low nibble first; 5-bit codes 8 per 5 bytes);
    - ``row_counts``: stored entries per row, in the smallest unsigned integer
      type that holds the largest count (the row pointers are their cumulative
      sum);
    - ``indices`` (without ``index_bits``): column indices in the smallest
      unsigned integer type that holds ``n_in - 1`` (uint8 up to 256 inputs,
      uint16 up to 65536, then uint32);
      or ``gaps`` (with ``index_bits`` in 4, 5, 8): relative column gaps
      bit-packed ``index_bits`` bits each (see :func:`encode_gaps`);
    - ``scales`` (linear, one per row) or ``codebook`` (kmeans, ``2**bits``),
      in the weights' dtype.

    In memory a :class:`QuantizedCSR` keeps the decoded form the kernels read:
    column indices as int32/int64 and one code per byte (k-means codes
    unpacked once at load); ``nbytes_stored`` counts the packed form.

Relative indices (``index_bits``)
    Within each row, a nonzero's column is stored as the number of zero
    columns skipped since the previous nonzero (or the row start), in
    ``index_bits`` bits. The all-ones field value ``M = 2**index_bits - 1`` is
    reserved for filler entries: a filler skips ``M`` columns and places no
    weight, so a gap of ``g`` zero columns takes ``g // M`` fillers and a field
    ``g % M``: any gap encodes exactly. As in Deep Compression a filler is a
    stored entry with a code too (counted in the bytes): the code whose value
    is closest to 0 (code 0, exactly 0, for ``linear``). Fillers are recognised
    by their index field and dropped when loading, so they never reach the
    kernels or :meth:`QuantizedCSR.dequantize`: they contribute nothing.
"""
from __future__ import annotations

import numbers
import threading
import time
from typing import Mapping

import numpy as np
import scipy.sparse as sp

from sparseprune._validation import check_float_matrix, check_int
from sparseprune.inference.dispatch import FRESH_BYTE_S, Choice, bucket_of
from sparseprune.inference.spmm import (
    BLOCK_ROWS_PER_CHUNK,
    PAD_TO,
    PARTS_PER_THREAD,
    ROWS_MAX_BATCH,
    ROWS_MAX_WORK,
    ROWS_PER_CHUNK,
    SparseLinear,
    _activate_inplace,
    _check_activation,
    _check_bias,
    _check_input,
    _csr_arrays,
    _forward_plan,
    _goes_parallel,
    _panel_width,
    _propagate_nonfinite,
    _scratch_array,
    _Tiled,
)
from sparseprune.inference.threads import _num_threads_now, run_parallel
from sparseprune.kernels import quant as _kq
from sparseprune.kernels import spmm as _k

__all__ = [
    "QuantizedCSR",
    "SCHEMES",
    "centroid_gradients",
    "decode_gaps",
    "encode_gaps",
    "pack_bits",
    "packed_nbytes",
    "qlinear",
    "quantize",
    "unpack_bits",
]

#: Quantization schemes of :func:`quantize`.
SCHEMES = ("linear", "kmeans")
#: Allowed ``index_bits`` of :func:`quantize` (None: plain column indices).
INDEX_BITS = (4, 5, 8)
#: Format version written in ``header[0]`` by :meth:`QuantizedCSR.to_arrays`.
FORMAT_VERSION = 1
#: Lloyd iterations at most for the k-means codebook (1-D Lloyd from a linear
#: initialisation usually settles in a few dozen).
KMEANS_MAX_ITER = 300
_HEADER_LEN = 9


# --------------------------------------------------------------------------- bit packing

def packed_nbytes(count: int, bits: int) -> int:
    """Bytes taken by ``count`` values of ``bits`` bits each, packed back to back: ``ceil(count * bits / 8)``."""
    count = check_int(count, "count", low=0)
    bits = check_int(bits, "bits", low=1, high=8)
    return (count * bits + 7) // 8


def pack_bits(values, bits: int) -> np.ndarray:
    """Pack unsigned values of ``bits`` bits each into bytes, least significant bit first.

    Value ``i`` occupies bits ``i * bits`` to ``(i + 1) * bits - 1`` of the
    little-endian bit stream; for ``bits=4`` that is two values per byte,
    the first in the low nibble. The last byte is zero-padded.

    Parameters
    ----------
    values : array-like of unsigned ints, 1-D
        Each in ``[0, 2**bits)``.
    bits : int in [1, 8]

    Returns
    -------
    ndarray of uint8, shape ``(packed_nbytes(len(values), bits),)``
    """
    bits = check_int(bits, "bits", low=1, high=8)
    v = np.asarray(values)
    if v.ndim != 1 or (v.size and v.dtype.kind not in "iu"):
        raise TypeError(f"values must be a 1-D integer array; got dtype {v.dtype}, shape {v.shape}.")
    if v.size and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise ValueError(f"values must lie in [0, {(1 << bits) - 1}] to be packed in {bits} bits; "
                         f"got min {int(v.min())}, max {int(v.max())}.")
    v = v.astype(np.uint8)
    if bits == 8:
        return v.copy()
    if bits == 4:
        if v.size % 2:
            v = np.concatenate([v, np.zeros(1, np.uint8)])
        return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)
    # General widths (5 for index gaps): one bit per byte, then numpy's packbits.
    bitmat = (v[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(bitmat.reshape(-1), bitorder="little")


def unpack_bits(packed, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_bits`: ``count`` values of ``bits`` bits from ``packed`` (uint8).

    Raises ``ValueError`` if ``packed`` does not hold exactly
    ``packed_nbytes(count, bits)`` bytes.
    """
    bits = check_int(bits, "bits", low=1, high=8)
    count = check_int(count, "count", low=0)
    p = np.asarray(packed)
    if p.dtype != np.uint8 or p.ndim != 1:
        raise TypeError(f"packed must be a 1-D uint8 array; got dtype {p.dtype}, shape {p.shape}.")
    need = packed_nbytes(count, bits)
    if p.size != need:
        raise ValueError(f"packed holds {p.size} bytes; {count} values of {bits} bits take {need}.")
    if bits == 8:
        return p.copy()
    if bits == 4:
        out = np.empty(2 * p.size, np.uint8)
        out[0::2] = p & 0x0F
        out[1::2] = p >> 4
        return out[:count]
    stream = np.unpackbits(p, bitorder="little")[: count * bits].reshape(count, bits)
    return (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=1).astype(np.uint8)


# --------------------------------------------------------------------------- relative indices

def _check_index_bits(index_bits) -> int:
    if isinstance(index_bits, (bool, np.bool_)) or not isinstance(index_bits, numbers.Integral):
        raise TypeError(f"The 'index_bits' parameter must be an int in [1, 8]. Got {index_bits!r} instead.")
    if not 1 <= int(index_bits) <= 8:
        raise ValueError(f"The 'index_bits' parameter must be an int in [1, 8]. Got {index_bits!r} instead.")
    return int(index_bits)


def _int_rows(values, indptr, values_name: str, indptr_name: str) -> tuple[np.ndarray, np.ndarray]:
    """``values`` split into rows by ``indptr`` (CSR-style), both checked and as int64."""
    v = np.asarray(values)
    ptr = np.asarray(indptr)
    if v.ndim != 1 or ptr.ndim != 1 or (v.size and v.dtype.kind not in "iu") or ptr.dtype.kind not in "iu":
        raise TypeError(f"{values_name} and {indptr_name} must be 1-D integer arrays.")
    v = v.astype(np.int64)
    ptr = ptr.astype(np.int64)
    if ptr.size == 0 or ptr[0] != 0 or ptr[-1] != v.size or np.any(np.diff(ptr) < 0):
        raise ValueError(f"{indptr_name} must start at 0, never decrease and end at len({values_name}).")
    return v, ptr


def encode_gaps(indices, indptr, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices as relative gaps of ``index_bits`` bits, with filler entries where a gap overflows.

    Within each row, an entry's field is the number of zero columns skipped
    since the previous nonzero (the first nonzero: since column 0). The field
    value ``M = 2**index_bits - 1`` marks a filler, which skips ``M`` columns
    and stands for no weight; a gap of ``g`` zeros becomes ``g // M`` fillers
    and then the field ``g % M``. Any gap encodes, exactly.

    Parameters
    ----------
    indices : array-like of int, 1-D
        Column indices, strictly increasing within each row (canonical CSR).
    indptr : array-like of int, 1-D
        Row pointers (``indptr[0] == 0``, non-decreasing, ``indptr[-1] == len(indices)``).
    index_bits : int in [1, 8]

    Returns
    -------
    gaps : ndarray of uint8
        One field per stored entry (nonzeros and fillers), each ``< 2**index_bits``.
    stored_indptr : ndarray of int64
        Row pointers into ``gaps``.

    Examples
    --------
    >>> import numpy as np
    >>> gaps, ptr = encode_gaps(np.array([0, 2, 40]), np.array([0, 3]), 4)
    >>> gaps.tolist(), ptr.tolist()
    ([0, 1, 15, 15, 7], [0, 5])
    """
    b = _check_index_bits(index_bits)
    ind, ptr = _int_rows(indices, indptr, "indices", "indptr")
    M = (1 << b) - 1
    n = ind.size
    # Previous column in the same row (-1 at a row start).
    prev = np.empty(n, np.int64)
    prev[1:] = ind[:-1]
    starts = ptr[:-1][np.diff(ptr) > 0]
    prev[starts] = -1
    skipped = ind - prev - 1
    if n and skipped.min() < 0:
        raise ValueError("indices must be non-negative and strictly increasing within each row "
                         "(canonical CSR: call sum_duplicates() and sort_indices() first).")
    n_fill = skipped // M
    before = np.zeros(n + 1, np.int64)
    np.cumsum(n_fill, out=before[1:])
    # A nonzero's stored position: itself plus every filler up to and including its own.
    pos = np.arange(n, dtype=np.int64) + before[1:]
    gaps = np.full(n + int(before[-1]), M, np.uint8)
    gaps[pos] = (skipped % M).astype(np.uint8)
    return gaps, ptr + before[ptr]


def decode_gaps(gaps, stored_indptr, index_bits: int, n_cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`encode_gaps`: ``(indices, indptr)`` of the nonzeros, fillers dropped.

    Parameters
    ----------
    gaps : array-like of uint8, 1-D
        Fields as returned by :func:`encode_gaps` (unpacked).
    stored_indptr : array-like of int, 1-D
        Row pointers into ``gaps``.
    index_bits : int in [1, 8]
    n_cols : int, optional
        If given, a decoded column ``>= n_cols`` raises ``ValueError`` (a corrupt stream).

    Returns
    -------
    indices : ndarray of int64
    indptr : ndarray of int64
    """
    b = _check_index_bits(index_bits)
    g, ptr = _int_rows(gaps, stored_indptr, "gaps", "stored_indptr")
    M = (1 << b) - 1
    if g.size and (g.min() < 0 or g.max() > M):
        raise ValueError(f"gap fields must lie in [0, {M}] for index_bits={b}.")
    real = g < M
    # Columns advanced by each entry: a nonzero its skipped zeros plus itself, a filler M.
    advance = np.where(real, g + 1, M)
    total = np.zeros(g.size + 1, np.int64)
    np.cumsum(advance, out=total[1:])
    rows = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    cols = total[1:] - total[ptr[rows]] - 1
    indices = cols[real]
    counts = np.bincount(rows[real], minlength=ptr.size - 1) if indices.size else np.zeros(ptr.size - 1, np.int64)
    indptr = np.zeros(ptr.size, np.int64)
    np.cumsum(counts, out=indptr[1:])
    if n_cols is not None and indices.size and indices.max() >= n_cols:
        raise ValueError(f"the gaps decode to column {int(indices.max())}, outside [0, {n_cols}): "
                         "the stream is corrupt.")
    return indices, indptr


# --------------------------------------------------------------------------- k-means

def _kmeans_1d(values: np.ndarray, k: int, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D Lloyd k-means with linear initialisation: ``(centroids (k,) float64 sorted, codes (n,) int64)``.

    In 1-D the clusters of sorted centroids are intervals between the
    midpoints of neighbouring centroids, so one sort of the values and prefix
    sums make each iteration ``O(k log n)``. An empty cluster keeps its
    centroid. Stops when the clusters no longer change: the centroids are then
    the means of their clusters and every value is in its nearest centroid's.
    """
    v = np.sort(values.astype(np.float64))
    n = v.size
    c = np.linspace(v[0], v[-1], k)
    csum = np.zeros(n + 1)
    np.cumsum(v, out=csum[1:])
    bounds_prev = None
    for _ in range(max_iter):
        mids = (c[:-1] + c[1:]) / 2
        # Cluster j holds mids[j-1] <= v < mids[j].
        bounds = np.concatenate([[0], np.searchsorted(v, mids, side="left"), [n]])
        if bounds_prev is not None and np.array_equal(bounds, bounds_prev):
            break
        counts = np.diff(bounds)
        sums = csum[bounds[1:]] - csum[bounds[:-1]]
        # A cluster's mean from prefix sums, clamped into the cluster's range
        # (rounding of the differences could leave it a hair outside).
        mean = sums / np.maximum(counts, 1)
        lo = v[np.minimum(bounds[:-1], n - 1)]
        hi = v[np.maximum(bounds[1:] - 1, 0)]
        mean = np.minimum(np.maximum(mean, lo), hi)
        c = np.sort(np.where(counts > 0, mean, c))
        bounds_prev = bounds
    mids = (c[:-1] + c[1:]) / 2
    codes = np.searchsorted(mids, values.astype(np.float64), side="right")
    return c, codes


# --------------------------------------------------------------------------- the container

def _min_uint(max_value: int):
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return dt
    raise ValueError(f"{max_value} does not fit in 64 bits.")  # pragma: no cover


class QuantizedCSR:
    """A CSR matrix whose stored values are integer codes: linear (int8 x per-row scale) or k-means (codebook).

    Made by :func:`quantize` or :meth:`from_arrays`; read by :func:`qlinear`.
    Treat the arrays as read-only: the kernels' prepared layouts are built from
    them once and kept.

    Attributes
    ----------
    shape : tuple of int
        ``(n_out, n_in)``.
    scheme : {"linear", "kmeans"}
    bits : int
        Bits per code (2..8).
    index_bits : int or None
        Bits per relative column gap in storage (4, 5 or 8), or None for plain indices.
    dtype : numpy.dtype
        float32 or float64: the dtype of the scales/codebook, of
        :meth:`dequantize` and of the inputs :func:`qlinear` takes.
    indptr : ndarray of int32 or int64, shape (n_out + 1,)
    indices : ndarray of int32 or int64, shape (nnz,)
        Column indices, sorted within each row (decoded: no fillers).
    codes : ndarray, shape (nnz,)
        int8 for ``linear`` (in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``), uint8
        for ``kmeans`` (in ``[0, 2**bits)``); one code per byte in memory.
    scales : ndarray of dtype, shape (n_out,), or None
        ``linear`` only: ``w = codes * scales[row]``.
    codebook : ndarray of dtype, shape (2**bits,), or None
        ``kmeans`` only, sorted ascending: ``w = codebook[codes]``.
    """

    def __init__(self, shape, scheme: str, bits: int, indptr: np.ndarray, indices: np.ndarray, codes: np.ndarray,
                 *, scales: np.ndarray | None = None, codebook: np.ndarray | None = None,
                 index_bits: int | None = None) -> None:
        # Internal constructor: callers are quantize() and from_arrays(), which validate.
        self.shape = (int(shape[0]), int(shape[1]))
        self.scheme = scheme
        self.bits = int(bits)
        self.index_bits = None if index_bits is None else int(index_bits)
        self.indptr = indptr
        self.indices = indices
        self.codes = codes
        self.scales = scales
        self.codebook = codebook
        self.dtype = (scales if scheme == "linear" else codebook).dtype
        # Re-entrant: a layout's builder asks for the layouts it is made of.
        self._lock = threading.RLock()
        self._prep: dict = {}

    # The lock and the prepared kernel layouts are per process: a copy or an
    # unpickled matrix rebuilds them on first use.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_prep")}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._prep = {}

    # ---------------------------------------------------------------- basics
    @property
    def nnz(self) -> int:
        """Stored nonzeros (fillers excluded)."""
        return int(self.indptr[-1])

    @property
    def density(self) -> float:
        n = self.shape[0] * self.shape[1]
        return self.nnz / n if n else 0.0

    @property
    def qmax(self) -> int:
        """Largest code magnitude (linear) or largest code (kmeans)."""
        return (1 << (self.bits - 1)) - 1 if self.scheme == "linear" else (1 << self.bits) - 1

    def __repr__(self) -> str:
        idx = "plain indices" if self.index_bits is None else f"{self.index_bits}-bit gaps"
        return (f"QuantizedCSR(shape={self.shape}, scheme={self.scheme!r}, bits={self.bits}, {idx}, "
                f"dtype={self.dtype}, nnz={self.nnz}, stored={self.nbytes_stored()} bytes)")

    def values(self) -> np.ndarray:
        """The dequantized stored values, one per nonzero (the ``data`` of :meth:`dequantize`)."""
        if self.scheme == "linear":
            rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
            return self.codes.astype(self.dtype) * self.scales[rows]
        return self.codebook[self.codes]

    def dequantize(self) -> sp.csr_array:
        """The weights as a ``csr_array`` (same ``indptr``/``indices``, values from the codes, dtype :attr:`dtype`)."""
        return sp.csr_array((self.values(), self.indices.copy(), self.indptr.copy()), shape=self.shape)

    def with_codebook(self, codebook) -> "QuantizedCSR":
        """A k-means matrix with the same codes and a new codebook (e.g. after a fine-tuning step).

        Parameters
        ----------
        codebook : array-like of shape (2**bits,)
            Finite values, cast to :attr:`dtype`. Not required to be sorted.

        Returns
        -------
        QuantizedCSR
            Shares ``indptr``, ``indices`` and ``codes`` with ``self``.
        """
        if self.scheme != "kmeans":
            raise ValueError(f"with_codebook needs a scheme='kmeans' matrix; this one is {self.scheme!r}.")
        cb = np.asarray(codebook)
        if cb.dtype.kind not in "fiu":
            raise TypeError(f"codebook has dtype {cb.dtype}; pass real numbers.")
        if cb.shape != (1 << self.bits,):
            raise ValueError(f"codebook has shape {cb.shape}; it must be ({1 << self.bits},) for bits={self.bits}.")
        if not np.isfinite(cb).all():
            raise ValueError("codebook holds NaN or inf; every centroid must be finite.")
        return QuantizedCSR(self.shape, "kmeans", self.bits, self.indptr, self.indices, self.codes,
                            codebook=np.array(cb, dtype=self.dtype), index_bits=self.index_bits)

    def with_scales(self, scales) -> "QuantizedCSR":
        """A linear matrix with the same codes and new per-row scales (e.g. after a fine-tuning step).

        Parameters
        ----------
        scales : array-like of shape (n_out,)
            Finite values, cast to :attr:`dtype`.

        Returns
        -------
        QuantizedCSR
            Shares ``indptr``, ``indices`` and ``codes`` with ``self``.
        """
        if self.scheme != "linear":
            raise ValueError(f"with_scales needs a scheme='linear' matrix; this one is {self.scheme!r}.")
        sc = np.asarray(scales)
        if sc.dtype.kind not in "fiu":
            raise TypeError(f"scales has dtype {sc.dtype}; pass real numbers.")
        if sc.shape != (self.shape[0],):
            raise ValueError(f"scales has shape {sc.shape}; it must be ({self.shape[0]},), one per row.")
        if not np.isfinite(sc).all():
            raise ValueError("scales holds NaN or inf; every scale must be finite.")
        return QuantizedCSR(self.shape, "linear", self.bits, self.indptr, self.indices, self.codes,
                            scales=np.array(sc, dtype=self.dtype), index_bits=self.index_bits)

    # ---------------------------------------------------------------- storage
    def _filler_code(self) -> int:
        if self.scheme == "linear":
            return 0
        return int(np.argmin(np.abs(self.codebook)))

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The stored form as plain numpy arrays (see the module docstring), keys prefixed with ``prefix``.

        Fit for ``numpy.savez`` (no object arrays); :meth:`from_arrays` reads it
        back. ``sum(a.nbytes for a in result.values()) == self.nbytes_stored()``.
        """
        n_out, n_in = self.shape
        nnz = self.nnz
        if self.index_bits is None:
            stored_ptr = self.indptr.astype(np.int64)
            codes = self.codes
            idx = {"indices": self.indices.astype(_min_uint(max(n_in - 1, 0)))}
        else:
            gaps, stored_ptr = encode_gaps(self.indices, self.indptr, self.index_bits)
            codes = np.full(gaps.size, self._filler_code(), self.codes.dtype)
            codes[gaps < (1 << self.index_bits) - 1] = self.codes
            idx = {"gaps": pack_bits(gaps, self.index_bits)}
        n_stored = int(stored_ptr[-1])
        if self.scheme == "kmeans" and self.bits < 8:
            codes = pack_bits(codes, self.bits)
        counts = np.diff(stored_ptr)
        counts = counts.astype(_min_uint(int(counts.max()) if counts.size else 0))
        header = np.array([FORMAT_VERSION, n_out, n_in, self.bits, SCHEMES.index(self.scheme),
                           self.index_bits or 0, nnz, n_stored, self.dtype.itemsize * 8], np.int64)
        out = {"header": header, "codes": np.ascontiguousarray(codes), "row_counts": counts, **idx}
        if self.scheme == "linear":
            out["scales"] = self.scales.copy()
        else:
            out["codebook"] = self.codebook.copy()
        return {prefix + k: v for k, v in out.items()}

    def storage_breakdown(self) -> dict[str, int]:
        """Bytes of each stored array (``header``, ``codes``, ``row_counts``, ``indices`` or ``gaps``, ...)."""
        b = self._prep.get("breakdown")
        if b is None:
            b = self._prep["breakdown"] = {k: int(v.nbytes) for k, v in self.to_arrays().items()}
        return dict(b)

    def nbytes_stored(self, *, header: bool = True) -> int:
        """The real byte count of the stored form: codes (packed), indices or gaps (packed), row counts,
        scales or codebook, and (``header=True``) the 72-byte header.

        Equal to the total ``nbytes`` of :meth:`to_arrays`. Fillers of the gap
        encoding are counted (their gap field and their code).
        """
        b = self.storage_breakdown()
        return sum(v for k, v in b.items() if header or k != "header")

    @property
    def n_stored(self) -> int:
        """Stored entries: nonzeros plus the fillers of the gap encoding (``index_bits``)."""
        if self.index_bits is None:
            return self.nnz
        return int(self.to_arrays()["header"][7])

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> "QuantizedCSR":
        """Rebuild a matrix from :meth:`to_arrays`'s output (e.g. an ``np.load`` of a ``.npz``), validated.

        Parameters
        ----------
        arrays : mapping str -> ndarray
            Must hold ``prefix + key`` for every stored array.
        prefix : str, default ""

        Raises
        ------
        ValueError
            Naming the array at fault: missing keys, a bad header, wrong
            dtypes, shapes or lengths, out-of-range codes or columns,
            non-finite scales or codebook, a corrupt gap stream.
        """
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str; got {type(prefix).__name__}.")

        def get(key):
            name = prefix + key
            try:
                a = arrays[name]
            except KeyError:
                raise ValueError(f"quantized matrix: the array {name!r} is missing; the data was not written "
                                 "by QuantizedCSR.to_arrays (or with another prefix).") from None
            a = np.asarray(a)
            if a.dtype.kind not in "iuf" or a.ndim != 1:
                raise ValueError(f"quantized matrix: {name!r} must be a 1-D numeric array; got dtype {a.dtype}, "
                                 f"shape {a.shape}.")
            return a

        def bad(key, what):
            return ValueError(f"quantized matrix: {prefix + key!r} {what}; the data is corrupt or not written by "
                              "QuantizedCSR.to_arrays.")

        h = get("header")
        if h.dtype != np.int64 or h.size != _HEADER_LEN:
            raise bad("header", f"must be int64[{_HEADER_LEN}], got {h.dtype}[{h.size}]")
        version, n_out, n_in, bits, scheme_id, ibits, nnz, n_stored, fbits = (int(v) for v in h)
        if version != FORMAT_VERSION:
            raise bad("header", f"has format version {version}; this sparseprune reads version {FORMAT_VERSION}")
        if min(n_out, n_in, nnz, n_stored) < 0 or nnz > n_stored or nnz > n_out * n_in:
            raise bad("header", f"has impossible sizes (shape ({n_out}, {n_in}), nnz {nnz}, stored {n_stored})")
        if scheme_id not in (0, 1) or not 2 <= bits <= 8 or ibits not in (0, *INDEX_BITS) or fbits not in (32, 64):
            raise bad("header", f"has scheme {scheme_id}, bits {bits}, index_bits {ibits}, float bits {fbits}")
        if ibits == 0 and n_stored != nnz:
            raise bad("header", "counts fillers but has no gap encoding")
        scheme = SCHEMES[scheme_id]
        dtype = np.dtype(np.float32 if fbits == 32 else np.float64)

        counts = get("row_counts")
        if counts.dtype.kind != "u" or counts.size != n_out:
            raise bad("row_counts", f"must be unsigned with {n_out} entries; got {counts.dtype}[{counts.size}]")
        stored_ptr = np.zeros(n_out + 1, np.int64)
        np.cumsum(counts.astype(np.int64), out=stored_ptr[1:])
        if stored_ptr[-1] != n_stored:
            raise bad("row_counts", f"sum to {int(stored_ptr[-1])}, not the {n_stored} stored entries")

        codes = get("codes")
        if scheme == "linear":
            if codes.dtype != np.int8 or codes.size != n_stored:
                raise bad("codes", f"must be int8[{n_stored}]; got {codes.dtype}[{codes.size}]")
        else:
            want = packed_nbytes(n_stored, bits)
            if codes.dtype != np.uint8 or codes.size != want:
                raise bad("codes", f"must be uint8[{want}]; got {codes.dtype}[{codes.size}]")
            codes = unpack_bits(codes, bits, n_stored) if bits < 8 else codes
        limit = (1 << (bits - 1)) - 1 if scheme == "linear" else (1 << bits) - 1
        lo = -limit if scheme == "linear" else 0
        if codes.size and (int(codes.min()) < lo or int(codes.max()) > limit):
            raise bad("codes", f"hold values outside [{lo}, {limit}] for {scheme} with bits={bits}")

        if ibits == 0:
            ind = get("indices")
            if ind.dtype.kind != "u" or ind.size != nnz:
                raise bad("indices", f"must be unsigned with {nnz} entries; got {ind.dtype}[{ind.size}]")
            indptr = stored_ptr
            real = None
        else:
            packed = get("gaps")
            need = packed_nbytes(n_stored, ibits)
            if packed.dtype != np.uint8 or packed.size != need:
                raise bad("gaps", f"must be uint8[{need}] ({n_stored} fields of {ibits} bits); "
                                  f"got {packed.dtype}[{packed.size}]")
            gaps = unpack_bits(packed, ibits, n_stored)
            ind, indptr = decode_gaps(gaps, stored_ptr, ibits)
            if ind.size != nnz:
                raise bad("gaps", f"decode to {ind.size} nonzeros, not {nnz}")
            real = gaps < (1 << ibits) - 1
        idx_dt = np.int32 if max(n_in, nnz) <= np.iinfo(np.int32).max else np.int64
        indices = ind.astype(idx_dt)
        indptr = indptr.astype(idx_dt)
        status = _k.csr_status(indptr, indices, n_in)
        if status == 3 or (nnz and int(ind.max()) >= n_in):
            raise bad("indices" if ibits == 0 else "gaps", f"give column indices outside [0, {n_in})")
        if status != 0:
            raise bad("indices", "are not strictly increasing within each row")
        codes = codes[real] if real is not None else codes
        codes = np.array(codes, dtype=np.int8 if scheme == "linear" else np.uint8)

        if scheme == "linear":
            scales = get("scales")
            if scales.dtype != dtype or scales.size != n_out:
                raise bad("scales", f"must be {dtype}[{n_out}]; got {scales.dtype}[{scales.size}]")
            if not np.isfinite(scales).all() or (scales.size and scales.min() < 0):
                raise bad("scales", "hold NaN, inf or negative values")
            return cls((n_out, n_in), scheme, bits, indptr, indices, codes, scales=np.array(scales),
                       index_bits=ibits or None)
        codebook = get("codebook")
        if codebook.dtype != dtype or codebook.size != 1 << bits:
            raise bad("codebook", f"must be {dtype}[{1 << bits}]; got {codebook.dtype}[{codebook.size}]")
        if not np.isfinite(codebook).all():
            raise bad("codebook", "holds NaN or inf")
        return cls((n_out, n_in), scheme, bits, indptr, indices, codes, codebook=np.array(codebook),
                   index_bits=ibits or None)

    # ---------------------------------------------------------------- kernel layouts (made once, kept)
    def _prepared(self, key, make):
        v = self._prep.get(key)
        if v is None:
            with self._lock:
                v = self._prep.get(key)
                if v is None:
                    v = self._prep[key] = make()
        return v

    def _spmv_args(self):
        """(codes, cols, indptr, table, rowscale, lookup) for the batch-1 and small-batch kernels."""
        def make():
            n_out, n_in = self.shape
            cols = self.indices.astype(np.uint16) if n_in <= _k.PANEL_MAX else self.indices
            indptr = self.indptr.astype(np.int64)
            if self.scheme == "linear":
                return self.codes, cols, indptr, np.zeros(1, self.dtype), self.scales, False
            return self.codes, cols, indptr, self.codebook, np.ones(n_out, self.dtype), True
        return self._prepared("spmv", make)

    def _perm_ok(self) -> bool:
        """Whether the batch-1 kernel can hold the codebook in registers (k-means, <= 5 bits, float32, AVX-512)."""
        return (self.scheme == "kmeans" and self.bits <= 5 and self.dtype == np.float32 and _kq.HAVE_PERM32)

    def _table32(self) -> np.ndarray:
        t = np.zeros(32, np.float32)
        t[: self.codebook.size] = self.codebook
        return t

    def _row_starts(self, n_parts: int) -> np.ndarray:
        return self._prepared(("rows", n_parts), lambda: _k.balanced_row_starts(self.indptr, n_parts))

    def _spmm_codes(self):
        """(tile codes uint8, table, rowscale, padding multiple) of the SpMM layout (see kernels.quant)."""
        def make():
            n_out = self.shape[0]
            if self.scheme == "linear":
                table = np.arange(-128, 128).astype(self.dtype)
                table[0] = 0
                return (self.codes.astype(np.int16) + 128).astype(np.uint8), table, self.scales, PAD_TO
            ones = np.ones(n_out, self.dtype)
            if self.bits < 8:
                table = np.concatenate([np.zeros(1, self.dtype), self.codebook])
                return (self.codes + 1).astype(np.uint8), table, ones, PAD_TO
            return self.codes, self.codebook, ones, 1
        return self._prepared("spmm", make)

    def _tiled(self, width: int, by_blocks: bool) -> _Tiled:
        key = (_panel_width(self.shape[1], self.density, width), BLOCK_ROWS_PER_CHUNK if by_blocks else ROWS_PER_CHUNK)

        def make():
            panel, R = key
            tcodes, _, _, multiple = self._spmm_codes()
            n_panels = max(1, -(-self.shape[1] // panel))
            tdata, tcols, seg = _k.tile_csr(tcodes, self.indices, self.indptr, R, panel, n_panels, multiple)
            return _Tiled(tdata, tcols, seg, self.shape[0], n_panels, R, panel)
        return self._prepared(("tiled", key), make)

    def _steps(self, n_batch: int, n_threads: int, parallel: bool) -> tuple:
        def make():
            steps = []
            for b0, b1, width, n_it, by_rows in _forward_plan(n_batch, n_threads, parallel):
                t = self._tiled(width, not by_rows)
                if by_rows:
                    parts = t.parts(n_it)
                    n_it, n_blk = parts.size - 1, -(-(b1 - b0) // width)
                else:
                    parts, n_blk = t.chunk_ptr_ends, 1
                steps.append((b0, b1, width, n_it, n_blk, by_rows, t, parts,
                              _kq.qspmm_forward(width, parallel), parallel))
            return tuple(steps)
        if len(self._prep) > 256:  # one entry per batch size seen: keep it bounded
            with self._lock:
                self._prep = {k: v for k, v in self._prep.items() if not (isinstance(k, tuple) and k[0] == "steps")}
        return self._prepared(("steps", n_batch, n_threads, parallel), make)

    def _forward(self, X: np.ndarray, bias: np.ndarray, act: int, parallel: bool | None = None) -> np.ndarray:
        """``act(X @ W.T + bias)`` on the quantized kernels; X and bias already checked.

        ``parallel`` forces the serial (False) or parallel (True) kernels; None
        decides by the amount of work, as the float32 path does.
        """
        n_batch = X.shape[0]
        n_out = self.shape[0]
        if n_batch == 0 or n_out == 0:
            return np.zeros((n_batch, n_out), self.dtype)
        n_threads = _num_threads_now()
        nnz = self.nnz
        codes, cols, indptr, table, rowscale, lookup = self._spmv_args()
        if n_batch == 1:
            X = np.ascontiguousarray(X)
            par = _goes_parallel(nnz, 1, n_threads) if parallel is None else parallel
            rs = self._row_starts(PARTS_PER_THREAD * n_threads if par else 1)
            if self._perm_ok():
                # Codebook in two registers: one permute per 16 codes, not a second gather.
                fn = _kq.qspmv_perm_forward(par)
                args = (codes, cols, indptr, self._prepared("table32", self._table32), X, bias, act, rs)
                Y, bad = run_parallel(fn, *args) if par else fn(*args)
                if bad:
                    self._propagate(X, np.zeros(1, np.int64), bias, act, Y)
                return Y
            fn = _kq.qspmv_forward(par)
            args = (codes, cols, indptr, table, rowscale, lookup, X, bias, act, rs)
            Y, bad = run_parallel(fn, *args) if par else fn(*args)
            if bad:
                self._propagate(X, np.zeros(1, np.int64), bias, act, Y)
            return Y
        if n_batch <= ROWS_MAX_BATCH or nnz * n_batch <= ROWS_MAX_WORK:
            X = np.ascontiguousarray(X)
            Y = np.empty((n_batch, n_out), self.dtype)
            par = _goes_parallel(nnz * n_batch, 1, n_threads) if parallel is None else parallel
            rs = self._row_starts(PARTS_PER_THREAD * n_threads if par else 1)
            fn = _kq.qspmv_rows(par)
            args = (codes, cols, indptr, table, rowscale, lookup, X, bias, act, rs, Y)
            bad = run_parallel(fn, *args) if par else fn(*args)
            if bad:
                self._propagate(X, np.flatnonzero(~np.isfinite(X).all(axis=1)), bias, act, Y)
            return Y
        par = _goes_parallel(nnz, n_batch, n_threads) if parallel is None else parallel
        Y, flags, n_bad = self._spmm(X, self._steps(n_batch, n_threads, par), bias, act)
        if n_bad:
            self._propagate(X, np.flatnonzero(flags), bias, act, Y)
        return Y

    def _spmm(self, X, steps, bias, act):
        """``(Y, flags, n_bad)`` through the packed SpMM kernels (as ``sparseprune.inference.spmm._spmm_forward``)."""
        n_batch, n_in = X.shape
        n_out = self.shape[0]
        Y = np.empty((n_batch, n_out), self.dtype)
        flags = np.empty(n_batch, np.int8)
        _, table, rowscale, _ = self._spmm_codes()
        n_bad = 0
        for i, (b0, b1, width, n_it, n_blk, by_rows, t, parts, fn, parallel) in enumerate(steps):
            x = X[b0:b1]
            xps = _scratch_array(2 * i, (n_it, n_blk, n_in, width), self.dtype)
            accs = _scratch_array(2 * i + 1, (n_it, min(t.rows_per_chunk, n_out), width), self.dtype)
            # The argument types that can vary between calls: x's layout and the caller's bias.
            f, fb = x.flags, bias.flags
            key = (x.dtype.num, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned, fb.writeable, fb.aligned)
            args = (key, x, xps, accs, by_rows, t.data, t.cols, t.seg, t.n_panels, t.rows_per_chunk, t.panel,
                    table, rowscale, bias, act, parts, Y[b0:b1], flags[b0:b1])
            n_bad += run_parallel(fn.keyed, *args) if parallel else fn.keyed(*args)
        return Y, flags, n_bad

    def _propagate(self, X, rows, bias, act, Y) -> None:
        """NaN/inf in ``X[rows]``: those output rows as the dense product of the dequantized weights gives them."""
        data = self._prepared("values", self.values)
        _propagate_nonfinite(X, rows, data, self.indices, self.indptr, bias, act, Y)


# --------------------------------------------------------------------------- public functions

def _check_scheme(scheme) -> str:
    if not isinstance(scheme, str):
        raise TypeError(f"The 'scheme' parameter must be a str, one of {list(SCHEMES)}. Got {scheme!r} instead.")
    if scheme not in SCHEMES:
        raise ValueError(f"The 'scheme' parameter must be one of {list(SCHEMES)}. Got {scheme!r} instead.")
    return scheme


def quantize(S, bits: int = 8, scheme: str = "linear", index_bits: int | None = None, *,
             max_iter: int = KMEANS_MAX_ITER) -> QuantizedCSR:
    """Quantize a (pruned) weight matrix: integer codes for its stored values, same sparsity structure.

    Parameters
    ----------
    S : csr_array, csr_matrix or ndarray of shape (out, in)
        float32 or float64 weights; never modified. A dense array is converted
        to CSR first, so its zeros stay zeros (not quantized) and every other
        entry is quantized (an unpruned layer: all of them). CSR with unsorted
        or duplicate indices is canonicalised on a copy (duplicates summed);
        explicitly stored zeros are kept as entries.
    bits : int in [2, 8], default 8
        Bits per code.
    scheme : {"linear", "kmeans"}, default "linear"
        ``"linear"``: symmetric int8 codes in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``
        times a scale per output row (``max|w_row| / (2**(bits-1) - 1)``).
        ``"kmeans"``: a shared codebook of ``2**bits`` values (1-D k-means on the
        stored values, centroids initialised evenly between their min and max,
        as in Deep Compression) and uint8 codes.
    index_bits : {None, 4, 5, 8}, default None
        Store column indices as relative gaps of this many bits, with filler
        entries where a gap overflows (see the module docstring). Only the
        stored form (:meth:`QuantizedCSR.to_arrays`,
        :meth:`QuantizedCSR.nbytes_stored`) changes; the kernels read decoded
        indices.
    max_iter : int, default 300
        Most Lloyd iterations for ``"kmeans"``.

    Returns
    -------
    QuantizedCSR
        Same dtype as ``S``. A matrix with no stored values gives a valid
        empty container (zero scales, or a zero codebook).

    Raises
    ------
    TypeError
        ``S`` of another type or dtype, non-int ``bits``/``index_bits``, non-str ``scheme``.
    ValueError
        ``bits`` outside [2, 8], unknown ``scheme``, ``index_bits`` not in
        {4, 5, 8}, NaN or inf among ``S``'s values, a malformed CSR matrix.

    Examples
    --------
    >>> import numpy as np, sparseprune
    >>> from sparseprune.quantize import quantize, qlinear
    >>> W = sparseprune.magnitude_prune(np.random.rand(64, 32).astype(np.float32), 0.9)
    >>> Q = quantize(W, bits=5, scheme="kmeans", index_bits=5)
    >>> qlinear(np.random.rand(4, 32).astype(np.float32), Q).shape
    (4, 64)
    """
    bits = check_int(bits, "bits", low=2, high=8)
    scheme = _check_scheme(scheme)
    if index_bits is not None:
        if isinstance(index_bits, (bool, np.bool_)) or not isinstance(index_bits, numbers.Integral):
            raise TypeError(f"The 'index_bits' parameter must be None or one of {list(INDEX_BITS)}. "
                            f"Got {index_bits!r} instead.")
        if int(index_bits) not in INDEX_BITS:
            raise ValueError(f"The 'index_bits' parameter must be None or one of {list(INDEX_BITS)}. "
                             f"Got {index_bits!r} instead.")
        index_bits = int(index_bits)
    max_iter = check_int(max_iter, "max_iter", low=1)
    if isinstance(S, QuantizedCSR):
        raise TypeError("S is already a QuantizedCSR; pass S.dequantize() to quantize it again.")
    if sp.issparse(S):
        if not isinstance(S, (sp.csr_array, sp.csr_matrix)):
            raise TypeError(f"S is a sparse {S.format.upper()} {type(S).__name__}; quantize needs CSR rows. "
                            "Convert with S.tocsr().")
        if S.ndim != 2:
            raise ValueError(f"S is {S.ndim}-dimensional; pass a 2-D weight matrix of shape (out, in).")
        data, indices, indptr = _csr_arrays(S, copy=False)
        shape = S.shape
    else:
        if not isinstance(S, (np.ndarray, list, tuple)):
            raise TypeError(f"S must be a scipy CSR matrix or a 2-D numpy array; got {type(S).__name__}.")
        Wd = check_float_matrix(S, "S")
        if not np.isfinite(Wd).all():
            raise ValueError("S holds NaN or inf; quantization needs finite weights (replace or prune them first).")
        C = sp.csr_array(Wd)
        data, indices, indptr = C.data, C.indices, C.indptr
        shape = Wd.shape
    if not np.isfinite(data).all():
        raise ValueError("S holds NaN or inf among its stored values; quantization needs finite weights "
                         "(replace or prune them first).")
    n_out = shape[0]
    dtype = data.dtype
    # Own copies: the container never shares memory with the caller's matrix.
    indices = np.array(indices)
    indptr = np.array(indptr)
    if scheme == "linear":
        qmax = (1 << (bits - 1)) - 1
        counts = np.diff(indptr)
        absmax = np.zeros(n_out, np.float64)
        nonempty = counts > 0
        if data.size:
            absmax[nonempty] = np.maximum.reduceat(np.abs(data.astype(np.float64)), indptr[:-1][nonempty])
        scales = (absmax / qmax).astype(dtype)
        # Codes from the stored (rounded) scale, so dequantization is consistent with them.
        rows = np.repeat(np.arange(n_out), counts)
        s = scales[rows].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(s > 0, np.rint(data / np.where(s > 0, s, 1.0)), 0.0)
        codes = np.clip(q, -qmax, qmax).astype(np.int8)
        return QuantizedCSR(shape, scheme, bits, indptr, indices, codes, scales=scales, index_bits=index_bits)
    k = 1 << bits
    if data.size == 0:
        codebook = np.zeros(k, dtype)
        codes = np.zeros(0, np.uint8)
    else:
        centroids, codes = _kmeans_1d(data, k, max_iter)
        codebook = centroids.astype(dtype)
        codes = codes.astype(np.uint8)
    return QuantizedCSR(shape, scheme, bits, indptr, indices, codes, codebook=codebook, index_bits=index_bits)


def qlinear(X, Q: QuantizedCSR, bias=None, activation=None) -> np.ndarray:
    """Compute ``act(X @ W.T + bias)`` from quantized weights ``Q``, reading the codes directly.

    The numba kernels of :mod:`sparseprune.kernels.quant`: batch 1 a per-row
    SpMV, small batches the SpMV per input row, larger batches the packed SpMM
    (as :func:`sparseprune.linear`'s sparse path), serial or on all numba
    threads by the amount of work. Accumulation in ``X``'s dtype.

    Parameters
    ----------
    X : ndarray of shape (batch, in)
        float32 or float64, C- or F-ordered, the dtype of ``Q``. Never modified.
        NaN/inf propagate as in the dense product of the dequantized weights.
    Q : QuantizedCSR
    bias : array-like of shape (out,), optional
        Cast to ``Q.dtype``.
    activation : {None, "identity", "relu", "tanh", "logistic"}, optional

    Returns
    -------
    ndarray of shape (batch, out), C-contiguous, dtype ``Q.dtype``.

    Raises
    ------
    TypeError
        ``Q`` not a :class:`QuantizedCSR`; ``X`` sparse, non-float or of another dtype than ``Q``.
    ValueError
        ``X`` not 2-D or with the wrong number of features; ``bias`` of the wrong shape;
        unknown ``activation``.
    """
    if not isinstance(Q, QuantizedCSR):
        raise TypeError(f"Q must be a QuantizedCSR (from sparseprune.quantize.quantize); got {type(Q).__name__}. "
                        "For float weights use sparseprune.linear.")
    act = _check_activation(activation)
    n_out, n_in = Q.shape
    # No bias: one zero vector kept with Q (not a fresh allocation per call).
    b = (Q._prepared("zero_bias", lambda: np.zeros(n_out, Q.dtype)) if bias is None
         else _check_bias(bias, n_out, Q.dtype))
    if not (type(X) is np.ndarray and X.ndim == 2 and X.dtype == Q.dtype and X.shape[1] == n_in
            and (X.flags.c_contiguous or X.flags.f_contiguous)):
        # The common case above needs none of the checks (as SparseLinear.__call__).
        X = _check_input(X, n_in, Q.dtype)
    return Q._forward(X, b, act)


def centroid_gradients(Q: QuantizedCSR, grad) -> np.ndarray:
    """Per-centroid sum of the gradients of the weights sharing it (Deep Compression's codebook update).

    ``out[c] = sum of grad over the nonzeros whose code is c``; a fine-tuning
    step is then ``Q.with_codebook(Q.codebook - lr * out)``.

    Parameters
    ----------
    Q : QuantizedCSR
        A ``scheme="kmeans"`` matrix.
    grad : ndarray of shape (nnz,) or (out, in), or a scipy sparse matrix of shape (out, in)
        The loss gradient with respect to the weights: one value per stored
        nonzero in ``Q``'s order (``Q.dequantize().data``'s order), or the full
        gradient matrix (only the entries at ``Q``'s nonzeros are used; a sparse
        one counts missing entries as 0).

    Returns
    -------
    ndarray of shape (2**bits,), dtype ``Q.dtype`` (summed in float64).
    """
    if not isinstance(Q, QuantizedCSR):
        raise TypeError(f"Q must be a QuantizedCSR; got {type(Q).__name__}.")
    if Q.scheme != "kmeans":
        raise ValueError(f"centroid_gradients needs a scheme='kmeans' matrix (a shared codebook); Q is {Q.scheme!r}.")
    n_out, n_in = Q.shape
    rows = None
    if sp.issparse(grad):
        if grad.shape != Q.shape:
            raise ValueError(f"grad has shape {grad.shape}; it must match Q's shape {Q.shape}.")
        G = sp.csr_array(grad, dtype=np.float64)
        G.sum_duplicates()
        G.sort_indices()
        g_rows = np.repeat(np.arange(n_out, dtype=np.int64), np.diff(G.indptr))
        g_keys = g_rows * n_in + G.indices
        rows = np.repeat(np.arange(n_out, dtype=np.int64), np.diff(Q.indptr))
        q_keys = rows * n_in + Q.indices
        pos = np.searchsorted(g_keys, q_keys)
        pos_c = np.minimum(pos, max(g_keys.size - 1, 0))
        hit = (pos < g_keys.size) & (g_keys[pos_c] == q_keys) if g_keys.size else np.zeros(q_keys.size, bool)
        g = np.where(hit, G.data[pos_c] if g_keys.size else 0.0, 0.0)
    else:
        a = np.asarray(grad)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"grad has dtype {a.dtype}; pass real-valued gradients.")
        if a.ndim == 1:
            if a.size != Q.nnz:
                raise ValueError(f"grad is 1-D with {a.size} values; it needs one per nonzero of Q ({Q.nnz}), "
                                 "or pass the full (out, in) gradient matrix.")
            g = a.astype(np.float64)
        elif a.ndim == 2:
            if a.shape != Q.shape:
                raise ValueError(f"grad has shape {a.shape}; it must match Q's shape {Q.shape}.")
            rows = np.repeat(np.arange(n_out), np.diff(Q.indptr))
            g = a[rows, Q.indices].astype(np.float64)
        else:
            raise ValueError(f"grad is {a.ndim}-dimensional; pass one value per nonzero (1-D) or an (out, in) matrix.")
    if not np.isfinite(g).all():
        raise ValueError("grad holds NaN or inf at Q's nonzeros; the codebook update needs finite gradients.")
    return np.bincount(Q.codes, weights=g, minlength=1 << Q.bits).astype(Q.dtype)


#: A quantized layer whose float32 CSR (values, 16/32-bit columns, row pointers) would take at
#: most this many bytes may also run the float sparse kernel on a dequantized copy, if measured
#: faster. Below the last-level cache the float kernel's per-nonzero value load is cheap and the
#: k-means codebook gather is not; above it the codes' smaller stream wins (measurements:
#: benchmarks/README.md, "Design record").
FLOAT_COPY_MAX_BYTES = 64 << 20


class QuantizedLinear:
    """A prepared quantized layer ``act(X @ W.T + bias)``: what a quantized MLP layer's plan runs.

    Its codes are the weights as stored, and :func:`qlinear` runs them.
    Where a float copy is small (at most :data:`FLOAT_COPY_MAX_BYTES`), the
    first calls of each batch bucket and thread count also time the float
    sparse kernel on the dequantized weights (as :class:`sparseprune.SparseLinear`
    times dense against sparse) and keep the faster: ``"quantized"`` or
    ``"float"``. ``method="quantized"`` / ``"float"`` / ``"dense"`` force a
    path (``"dense"``: the dequantized weights on BLAS;
    ``SPARSEPRUNE_METHOD=dense`` does the same).
    """

    def __init__(self, Q: QuantizedCSR, bias, activation=None) -> None:
        if not isinstance(Q, QuantizedCSR):
            raise TypeError(f"Q must be a QuantizedCSR; got {type(Q).__name__}.")
        self.Q = Q
        self.shape = Q.shape
        self.dtype = Q.dtype
        self.activation = activation
        self._act = _check_activation(activation)
        self.bias = np.array(_check_bias(bias, Q.shape[0], Q.dtype), copy=True)
        self._dense_w = None
        self._float = None
        col_bytes = 2 if Q.shape[1] <= _k.PANEL_MAX else 4
        self._float_ok = Q.nnz * (Q.dtype.itemsize + col_bytes) + 8 * (Q.shape[0] + 1) <= FLOAT_COPY_MAX_BYTES
        self._choices: dict = {}
        self._lock = threading.Lock()
        self.last_path: str | None = None

    @property
    def nnz(self) -> int:
        return self.Q.nnz

    @property
    def density(self) -> float:
        return self.Q.density

    def _float_layer(self):
        if self._float is None:
            with self._lock:
                if self._float is None:
                    self._float = SparseLinear(self.Q.dequantize(), self.bias, self.activation)
        return self._float

    def _float_setup_s(self) -> float:
        """The estimated cost of making the float copy (0 once made): its data, two index
        arrays and a 16-bit copy of the column indices, in fresh memory."""
        if self._float is not None:
            return 0.0
        return FRESH_BYTE_S * self.Q.nnz * (self.dtype.itemsize + 4 + 4 + 2)

    def _choice_for(self, bucket: int, n_threads: int):
        key = (bucket, n_threads)
        ch = self._choices.get(key)
        if ch is None:
            with self._lock:
                ch = self._choices.get(key)
                if ch is None:
                    if self._float_ok:
                        # The float copy is measured once the calls have paid for making it
                        # (dispatch.EXPLORE_BUDGET): the codes run from the first call.
                        ch = Choice(("quantized", "float"), "both measured (a float copy of this layer is "
                                    "small enough to keep; made once the calls have paid for it).",
                                    deferred={"float": self._float_setup_s})
                    else:
                        ch = Choice(("quantized",), "the float copy would exceed FLOAT_COPY_MAX_BYTES: the "
                                    "codes are the cheaper stream.")
                    self._choices[key] = ch
        return ch

    def __call__(self, X, method: str = "auto", *, among_sparse: bool = False) -> np.ndarray:
        if method == "sparse":
            method = "quantized"
        if method in ("quantized", "float", "dense"):
            return self._run(method, X)
        if method != "auto":
            raise ValueError(f"method must be 'auto', 'quantized', 'float' or 'dense'. Got {method!r}.")
        batch = np.shape(X)[0] if np.ndim(X) == 2 else 0
        if not batch or not self.shape[0]:
            return self._run("quantized", X)
        ch = self._choice_for(bucket_of(batch), _num_threads_now())
        path = ch.next()
        if not ch.watch():  # frozen, the only candidate, or a settled call not timed (one in ch.every is)
            return self._run(path, X)
        t0 = time.perf_counter()
        Y = self._run(path, X)
        ch.record(path, time.perf_counter() - t0, batch)
        return Y

    def _run(self, path: str, X) -> np.ndarray:
        self.last_path = path
        if path == "float":
            return self._float_layer()(X, "sparse")
        if path == "dense":
            if self._dense_w is None:
                self._dense_w = self.Q.dequantize().toarray()
            Y = np.asarray(X) @ self._dense_w.T
            Y += self.bias
            if self._act:
                _activate_inplace(Y, self._act)
            return Y
        return qlinear(X, self.Q, self.bias, self.activation)

    # The plan's interface (as SparseLinear's).
    def _runs_parallel(self, batch: int, n_threads: int) -> bool:
        return _goes_parallel(self.Q.nnz, batch, n_threads)

    def freeze(self) -> "QuantizedLinear":
        for ch in list(self._choices.values()):
            ch.freeze()
        return self

    def _frozen_choices(self) -> dict:
        return {f"{b}:{t}": ch.chosen for (b, t), ch in self._choices.items() if ch.frozen and ch.chosen}

    def _load_frozen(self, d: dict) -> None:
        for key, path in d.items():
            if path not in ("quantized", "float"):
                continue
            b, t = (int(v) for v in key.split(":"))
            self._choices[(b, t)] = Choice((path,), "frozen with the saved model.", chosen=path, frozen=True)

    def explain(self, X, method: str = "auto"):
        """What a call at batch ``X`` (an int or an array) runs, and why (a :class:`sparseprune.Decision`)."""
        from sparseprune.inference.spmm import Decision, _batch_of

        batch = X if isinstance(X, (int, np.integer)) else _batch_of(X)
        n = _num_threads_now()
        ch = self._choice_for(bucket_of(max(int(batch), 1)), n)
        path = ch.chosen or ch.next()
        return Decision(path=path, kernel=("qspmv" if batch == 1 else "qspmm") if path == "quantized" else "spmm",
                        batch=int(batch), shape=self.shape, nnz=self.nnz, density=self.density, n_threads=n,
                        predicted_dense_s=float("nan"), predicted_sparse_s=float("nan"), calibration="not used",
                        reason=f"{self.Q.scheme} {self.Q.bits}-bit codes: {ch.describe()}")

    def __repr__(self) -> str:
        return f"QuantizedLinear({self.Q!r}, activation={self.activation!r})"
