"""A model pruned elsewhere, as ONNX with its zeros in dense initializers: onnxruntime vs sparseprune.

The graph is written the way ``torch.onnx.export`` writes an
``nn.Sequential(Linear, ReLU, ..., Linear, Softmax)``: a ``Gemm`` (``transB=1``)
per layer whose dense weight initializer holds the zeros a magnitude pruning
left (95 % per layer here). onnxruntime runs the file as it is;
``sparseprune.from_onnx`` reads the same file and serves it through the
model's compiled plan. Both on the same thread count (onnxruntime's
``intra_op_num_threads``; numba's and BLAS's through
``sparseprune.thread_limit``), each timed as a block of calls after a warm-up,
two passes of opposite order; median and p90 per call.

Run: ``python benchmarks/bench_onnx.py`` (table), or
``pytest benchmarks/bench_onnx.py -o python_files='bench_*.py' -s``.
``SPARSEPRUNE_BENCH_QUICK=1`` shrinks it to a smoke run.
"""
from __future__ import annotations

import os

import numba
import numpy as np
import pytest

import sparseprune

import _timing  # benchmarks/_timing.py (the script's folder; benchmarks/conftest.py for pytest)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK") == "1"
SHAPES = [(784, (300, 100), 10), (1024, (4096, 4096), 10)] if not QUICK else [(32, (16,), 4)]
BATCHES = (1, 256)
SPARSITY = 0.95
ROUNDS = 5 if QUICK else 200
WARMUP_S = 0.0 if QUICK else 0.3


def pruned_graph(n_in, hidden, n_out, sparsity=SPARSITY, seed=0):
    """torch-style ONNX bytes of a random MLP magnitude-pruned per layer (zeros kept in dense initializers)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [n_in, *hidden, n_out]
    nodes, inits, x = [], [], "input"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        W[np.abs(W) < np.quantile(np.abs(W), sparsity)] = 0
        inits += [numpy_helper.from_array(W, f"{i}.weight"),
                  numpy_helper.from_array((0.01 * rng.standard_normal(b)).astype(np.float32), f"{i}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"{i}.weight", f"{i}.bias"], [f"g{i}"], transB=1))
        x = f"g{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Softmax", [x], ["output"], axis=1))
    graph = helper.make_graph(nodes, "pruned_mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  ["batch", n_in])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n_out])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def session(data: bytes, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def block_stats(fns, X, rounds=ROUNDS):
    """Per callable: (median, p90) seconds per call (see ``_timing.block_stats``)."""
    return _timing.block_stats(fns, X, rounds, WARMUP_S)


def onnx_rows(shapes=SHAPES, batches=BATCHES, threads=None):
    threads = threads or numba.config.NUMBA_NUM_THREADS
    rows = []
    with sparseprune.thread_limit(threads):
        for n_in, hidden, n_out in shapes:
            data = pruned_graph(n_in, hidden, n_out)
            sess = session(data, threads)
            model = sparseprune.from_onnx(data)
            rng = np.random.default_rng(1)
            for b in batches:
                X = rng.standard_normal((b, n_in)).astype(np.float32)
                want = sess.run(None, {"input": X})[0]
                np.testing.assert_allclose(model.predict_proba(X), want, rtol=1e-4, atol=1e-5)
                fns = {"onnxruntime": lambda X: sess.run(None, {"input": X}), "sparseprune": model.predict_proba}
                name = f"{n_in}-{'-'.join(map(str, hidden))}-{n_out}"
                rows.append((name, b, block_stats(fns, X)))
    return rows, threads


def print_rows(rows, threads):
    print(f"\n95%-pruned MLPs as ONNX (zeros in dense initializers), {threads} threads, median / p90 per call")
    print(f"{'model':22s} {'batch':>5s} | {'onnxruntime':>20s} | {'sparseprune':>20s} | speedup (median)")
    for name, b, st in rows:
        cells = " | ".join(f"{st[k][0] * 1e6:8.1f} p90 {st[k][1] * 1e6:7.1f}" for k in ("onnxruntime", "sparseprune"))
        print(f"{name:22s} {b:5d} | {cells} | {st['onnxruntime'][0] / st['sparseprune'][0]:6.2f}x")


def test_onnx_serving(capsys):
    rows, threads = onnx_rows()
    assert len(rows) == len(SHAPES) * len(BATCHES)
    with capsys.disabled():
        print_rows(rows, threads)


if __name__ == "__main__":
    print_rows(*onnx_rows())
