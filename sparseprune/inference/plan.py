"""A fitted model's inference plan: what runs for each batch size, made once, measured, inspectable.

:class:`ModelPlan` is to a model's ``predict`` what an FFTW plan is to a
transform: made once per model (and rebuilt when the model changes), it holds
everything a forward pass needs already prepared, and per batch-size bucket
and thread count it keeps which of two ways of running the network is faster
here, measured on the real calls (:mod:`sparseprune.inference.dispatch`):

- ``"fused"``: the whole network in one compiled call
  (:func:`sparseprune.kernels.plan.forward_serial` / ``forward_parallel``):
  every layer, its bias and activation, the output softmax and the NaN/inf
  check of the input, with no Python between layers. A CSR layer of density
  up to ``FUSED_SPARSE_DENSITY`` runs as a sparse gather dot product there,
  any other layer as a dense dot product. Offered for calls of at most
  ``FUSED_MAX_WORK`` multiply-adds, where per-call Python would otherwise
  dominate.
- ``"fused-dense"``: the same call with every layer as a dense dot product.
  A gathered nonzero costs several streamed multiply-adds, and a row of a
  few nonzeros costs its loop overhead, so on a small model at moderate
  sparsity the dense call can be the faster one (a 64-300-100-10 model at
  90 %: 6.0 us dense, 7.0 us with its layers gathered). Offered next to
  ``"fused"`` unless the cost model calls it hopeless (``FUSED_DENSE_HOPELESS``),
  so the dispatcher keeps such a model dense instead of guessing.
- ``"layers"``: one call per layer: dense BLAS for dense layers, and for CSR
  layers their :class:`~sparseprune.SparseLinear`, which measures dense BLAS
  against the batched sparse kernels for itself.

The plan keeps its own copies of the weights in the fused layout; the
per-layer path uses the layers' own prepared operators. A model modified from
another thread during a call gives the old model's answer.

(Measurements: benchmarks/README.md, "Design record".)
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np

from sparseprune._validation import check_int
from sparseprune.inference.dispatch import FRESH_BYTE_S, Choice, bucket_of
from sparseprune.inference.spmm import _activate_inplace, _aligned_empty, _forced_method
from sparseprune.inference.threads import _num_threads_now, parallel_pays, run_parallel
from sparseprune.kernels import plan as _kp
from sparseprune.kernels import spmm as _ks

__all__ = ["ModelPlan"]

#: Calls of up to this many multiply-adds (rows x per-row work) and rows may
#: run the fused whole-network kernel. It reads every weight once per input
#: row, where the batched per-layer kernels read it once per 8-64 rows, so
#: beyond a few rows layer by layer is faster.
FUSED_MAX_WORK = 4_000_000
FUSED_MAX_ROWS = 8
#: In the fused kernel a CSR layer runs as a sparse gather dot product up to
#: this density, and as a dense dot product above it (a gathered nonzero
#: costs several times a streamed, vectorised dense multiply-add).
FUSED_SPARSE_DENSITY = 0.15
#: Below this many multiply-adds per call (rows x per-row work) only the
#: fused kernel is considered: a layer-by-layer pass pays several
#: microseconds of Python per layer, more than such a call takes in total.
FUSED_ONLY_WORK = 100_000
#: The cost model's prices for one input row through the fused kernel, in streamed dense
#: multiply-adds (single layers at batch 1 on Zen 5: 0.035-0.06 ns per dense multiply-add,
#: 0.35-0.7 ns per gathered nonzero, ~4 ns per output row either way, ~2 us per call):
#: a gathered nonzero...
FUSED_GATHER_COST = 10
#: ... an output row (its loop set-up, reduction and activation)...
FUSED_ROW_COST = 90
#: ... and the call itself (dispatch, allocation, the input copy).
FUSED_CALL_COST = 40_000
#: ``"fused-dense"`` is not measured where it is priced this many times the gathered call:
#: a 95 %-pruned 784-300-100-10 is priced 1.62x (measured 1.84x: 15.8 against 8.6 us), a
#: 64-300-100-10 1.24x (measured 1.0-1.2x), both at 90 % 1.0x (measured 0.7x: dense wins).
#: Its dense copy of the weights is most of what measuring it costs (a fresh 1 MiB took
#: ~1 ms of page faults on the Zen 5 VM), so it is made only where dense may win.
FUSED_DENSE_HOPELESS = 1.5

_OUT_MODES = {"softmax": _kp.OUT_SOFTMAX, "logistic": _kp.OUT_BINARY, "identity": _kp.OUT_NONE}


class _DenseOp:
    """A dense layer on BLAS: ``act(X @ W.T + b)``, no checks (the plan checked X)."""

    __slots__ = ("W", "WT", "b", "act")

    def __init__(self, W, b, act: int) -> None:
        self.W, self.b, self.act = W, b, act
        self.WT = W.T

    def __call__(self, X):
        Y = X @ self.WT
        Y += self.b
        if self.act:
            _activate_inplace(Y, self.act)
        return Y


def _finish(H, out_mode: int):
    """The output activation of the per-layer path (the fused kernel applies its own)."""
    if out_mode == _kp.OUT_SOFTMAX and H.shape[0] > 16:
        # numpy's vectorised exp beats the compiled loop's scalar one on many rows.
        Z = H - H.max(axis=1, keepdims=True)
        np.exp(Z, out=Z)
        Z /= Z.sum(axis=1, keepdims=True)
        return Z
    if out_mode == _kp.OUT_NONE:
        return H
    # A few rows (or the binary output): one compiled call, where a handful of
    # numpy calls on a small array cost more in dispatch than in work.
    H = np.ascontiguousarray(H)
    Y = np.empty((H.shape[0], 2 if out_mode == _kp.OUT_BINARY else H.shape[1]), H.dtype)
    _kp.output_rows(H, out_mode, Y)
    return Y


class _FusedLayout:
    """One network in the fused kernel's flat arrays (``kernels.plan``'s arguments after ``X``)."""

    __slots__ = ("args", "work_per_row")

    def __init__(self, args: tuple, work_per_row: int) -> None:
        self.args, self.work_per_row = args, work_per_row


class ModelPlan:
    """The inference plan of a fitted MLP (see the module docstring).

    Built by the model (``model.plan_``); not meant to be constructed by hand.

    Attributes
    ----------
    layer_kinds : list of str
        Per layer, how the fused kernel runs it: ``"dense"`` or ``"sparse"``.
    choices : dict
        ``(batch bucket, threads) -> Choice`` for the model-level path
        (``"fused"``, ``"fused-dense"`` or ``"layers"``).
    """

    def __init__(self, layers, hidden_activation: str, out_activation: str) -> None:
        self._sig = tuple(layer._cache for layer in layers)
        self.hidden_activation = hidden_activation
        self.out_activation = out_activation
        self.out_mode = _OUT_MODES[out_activation]
        last = len(layers) - 1
        acts = [_ks.ACTIVATIONS[hidden_activation] if i < last else 0 for i in range(len(layers))]
        self.dtype = np.dtype(layers[0].bias.dtype)
        self.n_in = int(layers[0].shape[1])
        self.shapes = [tuple(int(s) for s in layer.shape) for layer in layers]
        for i in range(1, len(self.shapes)):
            # The compiled kernels trust the chain of widths: a layer assigned with the wrong
            # shape must stop here, not read past an array.
            if self.shapes[i][1] != self.shapes[i - 1][0]:
                raise ValueError(
                    f"layers_[{i}] has shape {self.shapes[i]} but layers_[{i - 1}] has {self.shapes[i - 1][0]} "
                    f"outputs: each layer's weight must be (out, in) with in = the previous layer's out.")
        # Per-layer operators (the "layers" path).
        self._ops = []
        for i, layer in enumerate(layers):
            if layer.is_sparse:
                self._ops.append(layer._prepared(hidden_activation if i < last else None))
            else:
                self._ops.append(_DenseOp(np.ascontiguousarray(layer.weight, self.dtype),
                                          np.ascontiguousarray(layer.bias, self.dtype), acts[i]))
        # The fused layout: all layers in flat arrays, CSR layers up to FUSED_SPARSE_DENSITY gathered.
        kinds = [1 if layer.is_sparse and layer.nnz <= FUSED_SPARSE_DENSITY * layer.shape[0] * layer.shape[1]
                 else 0 for layer in layers]
        parts = []
        for layer, kind in zip(layers, kinds):
            if kind:
                W = layer.weight
                nnz = int(W.indptr[-1])
                parts.append((W.data[:nnz], W.indices[:nnz], W.indptr))
            else:
                parts.append(layer.dense_weight())
        self._bias = np.ascontiguousarray(np.concatenate([np.asarray(layer.bias, self.dtype) for layer in layers]),
                                          self.dtype)
        self._max_width = max([self.n_in] + [s[0] for s in self.shapes])
        self.n_out = self.shapes[-1][0]
        self._width_out = 2 if self.out_mode == _kp.OUT_BINARY else self.n_out
        self._acts = acts
        self._fused_layouts = {"fused": self._layout(parts)}
        self.work_per_row = self._fused_layouts["fused"].work_per_row
        self.layer_kinds = ["sparse" if k else "dense" for k in kinds]
        # "fused-dense" (every layer dense in the fused call): its layout is made from the one
        # above when first offered, so it is this plan's snapshot of the weights too.
        self._dense_work_per_row = sum(o * i for o, i in self.shapes)
        fixed = FUSED_CALL_COST + FUSED_ROW_COST * sum(o for o, _ in self.shapes)
        priced = fixed + sum(int(W[2][-1]) * FUSED_GATHER_COST if k else o * i
                             for k, W, (o, i) in zip(kinds, parts, self.shapes))
        self._priced, self._dense_priced = priced, fixed + self._dense_work_per_row
        self._offer_fused_dense = (any(kinds) and self._dense_work_per_row <= FUSED_MAX_WORK
                                   and fixed + self._dense_work_per_row <= FUSED_DENSE_HOPELESS * priced)
        self.choices: dict[tuple, Choice] = {}
        # Settled batch sizes' direct path: rows -> (choice, path, runner, threads, watch).
        self._hot: dict[int, tuple] = {}
        self._fused_runners: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def _layout(self, parts) -> _FusedLayout:
        """The fused kernel's arrays for layers given as dense ``(out, in)`` arrays or CSR ``(data, indices, indptr)``."""
        kinds, wd_parts, d_parts, i_parts, p_parts, wd_off, ptr_off = [], [], [], [], [], [], []
        # 16-bit column indices wherever every layer is at most 65,536 wide: a gathered nonzero
        # then reads 6 bytes instead of 8 (95 %-pruned 784-300-100-10 at batch 1: 8.0 -> 6.8 us;
        # 64-300-100-10: 3.8 -> 3.2 us, same run).
        index_dtype = np.uint16 if max(i for _, i in self.shapes) <= 1 << 16 else np.int32
        n_wd = n_nnz = n_ptr = work = 0
        for part, (out, inp) in zip(parts, self.shapes):
            kinds.append(0 if isinstance(part, np.ndarray) else 1)
            wd_off.append(n_wd)
            ptr_off.append(n_ptr)
            if kinds[-1]:
                d, ind, ptr = part
                nnz = int(ptr[-1])
                d_parts.append(np.asarray(d[:nnz], self.dtype))
                i_parts.append(np.asarray(ind[:nnz], index_dtype))
                p_parts.append(np.asarray(ptr, np.int64) + n_nnz)
                n_nnz += nnz
                n_ptr += out + 1
                work += nnz
            else:
                wd_parts.append(np.ascontiguousarray(part, self.dtype).ravel())
                n_wd += out * inp
                work += out * inp

        def cat(arrays, dtype):
            # On a cache-line boundary: numpy's large arrays start 16 bytes past one, and the
            # dense dot products of a 784-300-100-10 model ran 13.4-14.6 us aligned against
            # 15.6-17.1 us at the other three 16-byte offsets (batch 1, Zen 5, three runs).
            n = sum(a.size for a in arrays)
            out = _aligned_empty((max(1, n),), dtype)
            out[n:] = 0
            if n:
                np.concatenate(arrays, out=out[:n], casting="unsafe")
            return out

        meta = np.zeros((6, len(parts)), np.int64)
        meta[_kp.KIND], meta[_kp.N_OUT], meta[_kp.ACT] = kinds, [s[0] for s in self.shapes], self._acts
        meta[_kp.WD_OFF], meta[_kp.PTR_OFF] = wd_off, ptr_off
        meta[_kp.B_OFF] = np.cumsum([0] + [s[0] for s in self.shapes[:-1]])
        args = (meta, cat(wd_parts, self.dtype), cat(d_parts, self.dtype), cat(i_parts, index_dtype),
                cat(p_parts, np.int64), self._bias, self.out_mode, self._max_width)
        return _FusedLayout(args, work)

    def _layout_for(self, path: str) -> _FusedLayout:
        return self._fused_layouts["fused"] if path == "fused" else self._dense_layout()

    def _dense_layout(self) -> _FusedLayout:
        """The ``"fused-dense"`` layout, made (once) from the gathered one: every layer dense."""
        lay = self._fused_layouts.get("fused-dense")
        if lay is None:
            meta, wd, data, indices, indptr = self._fused_layouts["fused"].args[:5]
            dense_wd = _aligned_empty((max(1, self._dense_work_per_row),), self.dtype)
            dense_wd[:] = 0
            _kp.densify_layers(meta, wd, data, indices, indptr, self.n_in, dense_wd)
            dmeta = meta.copy()
            dmeta[_kp.KIND] = 0
            dmeta[_kp.WD_OFF] = np.cumsum([0] + [o * i for o, i in self.shapes[:-1]])
            args = (dmeta, dense_wd, data[:1], indices[:1], indptr[:1]) + self._fused_layouts["fused"].args[5:]
            lay = self._fused_layouts["fused-dense"] = _FusedLayout(args, self._dense_work_per_row)
        return lay

    def matches(self, layers) -> bool:
        """Whether this plan was made for exactly these layer objects and weights."""
        # A plain loop: on every predict call, all() over a generator cost 0.3 us for two layers.
        sig = self._sig
        if len(sig) != len(layers):
            return False
        for a, b in zip(sig, layers):
            if a is not b._cache:
                return False
        return True

    # -- running ---------------------------------------------------------------
    def _choice(self, batch: int, n_threads: int) -> Choice:
        key = (bucket_of(batch), n_threads)
        ch = self.choices.get(key)
        if ch is None:
            with self._lock:
                ch = self.choices.get(key)
                if ch is None:
                    ch = self.choices[key] = self._new_choice(key[0])
        return ch

    def _new_choice(self, bucket: int) -> Choice:
        forced = _forced_method()
        if forced is not None:
            return Choice(("layers",), f"SPARSEPRUNE_METHOD={forced} forces each layer's path.")
        work = bucket * self.work_per_row
        if bucket > FUSED_MAX_ROWS or work > FUSED_MAX_WORK:
            return Choice(("layers",), f"{bucket}+ rows, {work:,}+ multiply-adds per call: layer by layer "
                                       "(batched kernels).")
        fused = ("fused",)
        why = ""
        deferred = None
        if self._offer_fused_dense and bucket * self._dense_work_per_row <= FUSED_MAX_WORK:
            # The cheaper by the cost model's price goes first (and is the pick if measuring is off).
            dense_first = self._dense_priced < self._priced
            fused = ("fused-dense", "fused") if dense_first else ("fused", "fused-dense")
            why = " with its sparse layers gathered or every layer dense,"
            if not dense_first:
                # Expected to lose: measured once the calls have paid for its dense copy.
                deferred = {"fused-dense": self._dense_setup_s}
        if work <= FUSED_ONLY_WORK:
            return Choice(fused, f"{work:,} multiply-adds per call: one compiled call for all layers"
                                 f"{why.rstrip(',')}" + (" (both measured)." if why else "."), deferred=deferred)
        return Choice(fused + ("layers",), f"one compiled call{why} or layer by layer: measured on the first calls.",
                      deferred=deferred)

    def _dense_setup_s(self) -> float:
        """The estimated cost of making the ``"fused-dense"`` layout (0 once made)."""
        if "fused-dense" in self._fused_layouts:
            return 0.0
        return FRESH_BYTE_S * self._dense_work_per_row * self.dtype.itemsize

    def run(self, X: np.ndarray, checked: bool = False):
        """The network's output for a C-contiguous ``X`` of the plan's dtype and width.

        Returns ``None`` if ``X`` (not yet ``checked`` for finiteness) may hold
        NaN or inf: the caller then validates it and calls again with ``checked=True``.
        """
        hot = self._hot.get(X.shape[0])
        if hot is not None:
            # A settled batch size: its runner directly (the per-call decisions made once).
            ch, path, runner, n_threads, watch = hot
            if ch.chosen is path and _num_threads_now() == n_threads:
                if not watch:
                    return runner(X, checked)
                ch._tick = t = ch._tick + 1
                if t % ch.every:
                    return runner(X, checked)
                t0 = time.perf_counter()
                Y = runner(X, checked)
                ch.record(path, time.perf_counter() - t0, X.shape[0])
                return Y
        return self._run(X, checked)

    def _run(self, X: np.ndarray, checked: bool):
        n = X.shape[0]
        n_threads = _num_threads_now()
        ch = self._choice(n, n_threads)
        path = ch.next()
        run = self._runner(path, n, n_threads)
        if not ch.watch():
            Y = run(X, checked)
        else:
            t0 = time.perf_counter()
            Y = run(X, checked)
            t = time.perf_counter() - t0
            # A layer-by-layer pass counts only once its own layers have settled on
            # dense or sparse: while they measure, some of its layers run their slower path.
            if path != "layers" or self._layers_settled(n, n_threads):
                ch.record(path, t, n)
        chosen = ch.chosen
        if chosen is not None and (chosen != "layers" or self._layers_settled(n, n_threads)):
            watch = not (ch.frozen or ch._fixed or len(ch.candidates) == 1)
            with self._lock:
                if len(self._hot) > 64:
                    self._hot.clear()
                self._hot[n] = (ch, chosen, self._runner(chosen, n, n_threads), n_threads, watch)
        return Y

    def _runner(self, path: str, n: int, n_threads: int):
        """``run(X, checked)`` for ``n`` rows on ``path``: the kernel variant, or the layers'
        threading hint, decided once (a settled batch size keeps its runner in ``_hot``; the
        fused ones are kept per key, for the measuring calls)."""
        if path != "layers":
            key = (path, n, n_threads)
            run = self._fused_runners.get(key)
            if run is None:
                run = self._fused_runner(path, n, n_threads)
                with self._lock:
                    if len(self._fused_runners) > 64:
                        self._fused_runners.clear()
                    self._fused_runners[key] = run
            return run
        return self._layers_runner(n, n_threads)

    def _fused_runner(self, path: str, n: int, n_threads: int):
        """The fused call on ``path``'s layout, its serial or parallel kernel fixed for ``n`` rows."""
        layout = self._layout_for(path)
        args = layout.args
        shape, dtype = (n, self._width_out), self.dtype
        if n > 1 and parallel_pays("fused", n * layout.work_per_row, n_threads):
            parts = min(n, n_threads)

            def fused(X, checked):
                Y = np.empty(shape, dtype)
                bad = run_parallel(_kp.forward_parallel, X, *args, Y, parts)
                return None if bad and not checked else Y
        else:
            kern = _kp.forward_serial

            def fused(X, checked):
                Y = np.empty(shape, dtype)
                return None if kern(X, *args, Y, 1) and not checked else Y

        return fused

    def _layers_runner(self, n: int, n_threads: int):
        # Not kept: the threading hint follows the layers' own choices, which change while they measure.
        method = _forced_method() or "auto"
        among_sparse = n_threads > 1 and any(
            not isinstance(op, _DenseOp) and op._runs_parallel(n, n_threads) for op in self._ops)
        steps = [(isinstance(op, _DenseOp), op) for op in self._ops]
        out_mode = self.out_mode

        def layers(X, checked):
            # One summing pass instead of an isfinite mask: NaN or inf anywhere makes the sum
            # non-finite (so does an overflowing sum of huge values: the caller then validates X
            # and calls again with checked=True).
            if not checked and not math.isfinite(X.sum()):
                return None
            H = X
            for dense, op in steps:
                H = op(H) if dense else op(H, method, among_sparse=among_sparse)
            return _finish(H, out_mode)

        return layers

    def _layers_settled(self, n: int, n_threads: int) -> bool:
        b = bucket_of(n)
        return all(isinstance(op, _DenseOp) or op._choice_for(b, n_threads).chosen is not None
                   for op in self._ops)

    def _fused(self, X, n_threads: int, checked: bool = False, path: str = "fused"):
        """One fused call: ``path`` ``"fused"`` (sparse layers gathered) or ``"fused-dense"``."""
        return self._runner(path, X.shape[0], n_threads)(X, checked)

    def _layers(self, X, n_threads: int, checked: bool = False):
        """One layer-by-layer pass."""
        return self._runner("layers", X.shape[0], n_threads)(X, checked)

    # -- inspection --------------------------------------------------------------
    def settled(self, batch: int) -> bool:
        """Whether measuring is over for ``batch`` rows on the current thread count.

        True once the model-level choice for the batch's bucket is made with no
        deferred candidate or confirming round still due and, where it runs
        layer by layer, the same holds for each layer's choice. Calls then run
        the chosen path only (timed one in ``Choice.every``, for drift). A
        benchmark that wants the settled figures calls the model until this
        holds (as ``sparseprune demo`` does).

        Parameters
        ----------
        batch : int
            Number of input rows.

        Returns
        -------
        bool

        Raises
        ------
        TypeError, ValueError
            If ``batch`` is not a positive int.
        """
        n_threads = _num_threads_now()
        b = bucket_of(check_int(batch, "batch", low=1))
        ch = self.choices.get((b, n_threads))
        if ch is None or not ch.settled:
            return False
        return ch.chosen != "layers" or all(isinstance(op, _DenseOp) or op._choice_for(b, n_threads).settled
                                            for op in self._ops)

    def freeze(self) -> "ModelPlan":
        """Fix every choice measured so far (model level and per layer): no more measuring or re-checks.

        A bucket still measuring takes its best candidate so far (the cost
        model's first pick if none was timed). Frozen choices are written by
        the model's ``save`` and restored by :func:`sparseprune.load`; buckets
        first seen after freezing are measured as usual.

        Returns
        -------
        ModelPlan
            ``self``.
        """
        for ch in list(self.choices.values()):
            ch.freeze()
        for op in self._ops:
            if not isinstance(op, _DenseOp):
                op.freeze()
        return self

    def explain(self, batch: int | None = None) -> str:
        """A readable account of the plan: the layers, and per batch bucket what runs and why.

        Parameters
        ----------
        batch : int, optional
            Only the bucket this batch size falls in (default: every bucket seen so far).

        Returns
        -------
        str
            One line per layer (shape, format, how the fused call runs it), then per
            batch bucket and thread count the chosen path, its state (measuring,
            measured, frozen, the only candidate), the best measured time per row
            of each candidate and the cost model's reason; for layer-by-layer
            passes, the same for each layer.
        """
        lines = [f"ModelPlan: {len(self.shapes)} layers, {self.dtype} ({self.hidden_activation} hidden, "
                 f"{self.out_activation} output)"]
        for i, (shape, kind, op) in enumerate(zip(self.shapes, self.layer_kinds, self._ops)):
            fmt = "dense" if isinstance(op, _DenseOp) else f"csr, density {op.density:.1%}"
            if hasattr(op, "Q"):
                fmt = f"quantized {op.Q.scheme} {op.Q.bits}-bit, density {op.density:.1%}"
            lines.append(f"  layer {i}: {shape[0]} x {shape[1]} ({fmt}); \"fused\" runs it {kind}")
        keys = sorted(self.choices) if batch is None else [k for k in sorted(self.choices)
                                                            if k[0] == bucket_of(batch)]
        if not keys:
            lines.append("  no batch size seen yet: the first calls measure the candidates.")
        for bucket, threads in keys:
            ch = self.choices[(bucket, threads)]
            rows = "1 row" if bucket == 1 else f"{bucket}-{2 * bucket - 1} rows"
            lines.append(f"  batch {rows}, {threads} thread(s): {ch.describe()}")
            if ch.chosen == "layers" or (ch.chosen is None and "layers" in ch.candidates):
                for i, op in enumerate(self._ops):
                    if isinstance(op, _DenseOp):
                        lines.append(f"    layer {i}: dense (BLAS; the weight is a dense array)")
                    else:
                        lines.append(f"    layer {i}: {op._choice_for(bucket, threads).describe()}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The frozen choices, JSON-ready (saved with the model)."""
        out = {"model": {f"{b}:{t}": ch.chosen for (b, t), ch in self.choices.items()
                         if ch.frozen and ch.chosen},
               "layers": {}}
        for i, op in enumerate(self._ops):
            if not isinstance(op, _DenseOp):
                d = op._frozen_choices()
                if d:
                    out["layers"][str(i)] = d
        return out

    def load_dict(self, d: dict) -> None:
        """Restore frozen choices written by :meth:`to_dict` (already validated by the loader)."""
        for key, path in d.get("model", {}).items():
            b, t = (int(v) for v in key.split(":"))
            self.choices[(b, t)] = Choice((path,), "frozen with the saved model.", chosen=path, frozen=True)
        for i, choices in d.get("layers", {}).items():
            op = self._ops[int(i)]
            if not isinstance(op, _DenseOp):
                op._load_frozen(choices)
