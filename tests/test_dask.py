"""sparseprune.dask and the Dask study runner on a real LocalCluster of 2 worker processes (no mocks)."""
from __future__ import annotations

import copy
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")

import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.tree import DecisionTreeRegressor  # noqa: E402

import sparseprune  # noqa: E402
from sparseprune import dask as spd  # noqa: E402


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster():
    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        client = Client(cl)
        try:
            yield cl, client
        finally:
            client.close()
    finally:
        cl.close()


@pytest.fixture(scope="module")
def client(cluster):
    return cluster[1]


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


@pytest.fixture(scope="module")
def mlps(digits):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense = sparseprune.MLPClassifier(hidden_layer_sizes=(48, 24), max_iter=15, random_state=0).fit(X, y)
        from sklearn.neural_network import MLPClassifier as SkMLP

        sk = SkMLP(hidden_layer_sizes=(32,), max_iter=15, random_state=0).fit(X, y)
    pruned = copy.deepcopy(dense).prune(0.9)
    eliminated = copy.deepcopy(dense).eliminate_neurons(X, criterion="l2", fraction=0.5)
    f64 = sparseprune.MLPClassifier.from_sklearn(sk).prune(0.8)  # float64 layers
    return {"dense": dense, "pruned": pruned, "eliminated": eliminated, "float64": f64}


def _worker_pids(client) -> dict:
    return client.run(os.getpid)


def _kill_when_processing(client, prefix: str, timeout: float = 30.0) -> str:
    """SIGKILL a worker process as soon as it is running a task whose key starts with ``prefix``."""
    pids = _worker_pids(client)
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        for addr, keys in client.processing().items():
            names = [k[0] if isinstance(k, tuple) else k for k in keys]
            if any(str(k).startswith(prefix) for k in names) and addr in pids:
                os.kill(pids[addr], signal.SIGKILL)
                return addr
        time.sleep(0.005)
    raise AssertionError(f"no task {prefix}* started within {timeout} s")


def _wait_for_workers(client, n: int = 2, timeout: float = 30.0) -> None:
    client.wait_for_workers(n, timeout=timeout)


# ----------------------------------------------------------------------------- import
def test_import_sparseprune_does_not_import_dask():
    code = "import sys, sparseprune; sys.exit('dask' in sys.modules or 'distributed' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------- MLPs
@pytest.mark.parametrize("which", ["dense", "pruned", "eliminated", "float64"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_predict_equals_local(client, digits, mlps, which, dtype):
    X = digits[0].astype(dtype)
    model = mlps[which]
    # columns cut in two: predict rechunks them into one block per row range
    Xd = da.from_array(X, chunks=(250, 40))
    Y = spd.predict(model, Xd)
    P = spd.predict_proba(model, Xd)
    local_y, local_p = model.predict(X), model.predict_proba(X)
    assert Y.dtype == local_y.dtype and Y._meta.dtype == local_y.dtype and Y._meta.shape == (0,)
    assert P.dtype == local_p.dtype and P._meta.dtype == local_p.dtype and P._meta.ndim == 2
    assert type(P._meta) is np.ndarray and P._meta.size == 0
    assert Y.chunks == (Xd.chunks[0],) and P.chunks == (Xd.chunks[0], (10,))
    y, p = client.compute([Y, P], sync=True)
    np.testing.assert_array_equal(y, local_y)
    assert p.dtype == local_p.dtype
    tol = 1e-5 if local_p.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p, local_p, rtol=tol, atol=tol)


def test_numpy_input_blocks_and_one_rebuild_per_worker(client, digits, mlps):
    X = digits[0].astype(np.float32)
    model = mlps["pruned"]
    Y = spd.predict(model, X, block_rows=100)
    assert Y.chunks == ((100,) * 17 + (97,),)
    np.testing.assert_array_equal(Y.compute(), model.predict(X))
    digest = hashlib.sha256(spd._serialize(model)[1]).hexdigest()
    rebuilds = [info["rebuilds"].get(digest, 0) for info in client.run(spd._cache_info).values()]
    assert max(rebuilds) == 1 and sum(rebuilds) >= 1, rebuilds  # 18 blocks, at most one rebuild per worker
    # the default cut: Dask's array.chunk-size (128 MiB) per block, 1024 to 65536 rows
    assert spd.predict(model, X).chunks == ((X.shape[0],),)
    assert spd.default_block_rows(784, 4) == 128 * 2**20 // (784 * 4)
    assert spd.default_block_rows(10**6) == 1024 and spd.default_block_rows(8) == 65536


def test_regressor_and_zero_row_blocks(client, digits):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = sparseprune.MLPRegressor(hidden_layer_sizes=(16,), max_iter=10, random_state=0).fit(X, y)
        reg2 = sparseprune.MLPRegressor(hidden_layer_sizes=(16,), max_iter=10, random_state=0).fit(
            X, np.c_[y, -y])
    Xd = da.from_array(X, chunks=((0, 1000, 0, 797), (64,)))  # empty blocks are never sent to predict
    Y, Y2 = spd.predict(reg, Xd), spd.predict(reg2, Xd)
    assert Y.dtype == np.float64 and Y.chunks == ((0, 1000, 0, 797),) and Y2.chunks[1] == (2,)
    y1, y2 = client.compute([Y, Y2], sync=True)
    # Blocks of 1000 and 797 rows against one call on all 1797: the rows may go through
    # other kernels (or BLAS blockings), so equal to the model's float32 rounding, not bitwise.
    np.testing.assert_allclose(y1, reg.predict(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y2, reg2.predict(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="no predict_proba"):
        spd.predict_proba(reg, Xd)


# ----------------------------------------------------------------------------- SparseLinear
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_linear_transform_equals_local(client, dtype):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((120, 80)) * (rng.random((120, 80)) < 0.1)
    layer = sparseprune.SparseLinear(W.astype(dtype), bias=rng.standard_normal(120), activation="relu")
    X = rng.standard_normal((3000, 80)).astype(dtype)
    Y = spd.transform(layer, da.from_array(X, chunks=(700, 80)))
    assert Y.dtype == dtype and Y.chunks == ((700,) * 4 + (200,), (120,)) and Y._meta.ndim == 2
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(Y.compute(), layer(X), rtol=tol, atol=tol)
    with pytest.raises(TypeError, match="dtype"):
        spd.transform(layer, X.astype(np.float32 if dtype == np.float64 else np.float64))
    with pytest.raises(TypeError, match="transform"):
        spd.predict(layer, X)


# ----------------------------------------------------------------------------- trees
def test_pruned_forest_and_tree_equal_local(client, digits):
    X, y = digits
    labels = np.array([f"digit-{i}" for i in range(10)], dtype=object)[y]  # string labels: object dtype
    forest = RandomForestClassifier(n_estimators=12, random_state=0).fit(X, labels)
    pruned = sparseprune.prune_tree(forest, method="cost_complexity", alpha=0.002)
    compiled = sparseprune.compile_tree(pruned)
    for dtype in (np.float32, np.float64):
        Xd = da.from_array(X.astype(dtype), chunks=(400, 64))
        Y, P = spd.predict(compiled, Xd), spd.predict_proba(compiled, Xd)
        Ys = spd.predict(pruned, Xd)  # the scikit-learn estimator, compiled by predict
        assert Y.dtype == object and P.dtype == np.float64 and P.chunks[1] == (10,)
        y_, p_, ys_ = client.compute([Y, P, Ys], sync=True)
        np.testing.assert_array_equal(y_, compiled.predict(X.astype(dtype)))
        np.testing.assert_array_equal(y_, pruned.predict(X.astype(dtype)))
        np.testing.assert_array_equal(ys_, y_)
        np.testing.assert_array_equal(p_, compiled.predict_proba(X.astype(dtype)))
    tree = sparseprune.prune_tree(DecisionTreeRegressor(random_state=0).fit(X, y.astype(float)),
                                  method="cost_complexity", alpha=0.01)
    Y = spd.predict(tree, X.astype(np.float32), block_rows=500)
    assert Y.dtype == np.float64
    np.testing.assert_array_equal(Y.compute(), tree.predict(X.astype(np.float32)))


# ----------------------------------------------------------------------------- argument errors
def test_bad_arguments(digits, mlps):
    X = digits[0]
    m = mlps["dense"]
    with pytest.raises(ValueError, match="64"):
        spd.predict(m, X[:, :10])
    with pytest.raises(ValueError, match="2-D"):
        spd.predict(m, da.from_array(X[0]))
    with pytest.raises(ValueError, match="block_rows"):
        spd.predict(m, X, block_rows=0)
    with pytest.raises(TypeError, match="X is a list"):
        spd.predict(m, X.tolist())
    with pytest.raises(TypeError, match="model is a str"):
        spd.predict("model", X)
    with pytest.raises(TypeError, match="SparseLinear"):
        spd.transform(m, X)
    with pytest.raises(TypeError, match="dtype"):
        spd.predict(m, da.from_array(X.astype(complex)))


# ----------------------------------------------------------------------------- faults
@pytest.mark.filterwarnings("ignore:Sending large graph")
def test_worker_killed_mid_prediction(cluster, digits):
    cl, client = cluster
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = sparseprune.MLPClassifier(hidden_layer_sizes=(1024, 1024), max_iter=1, random_state=0).fit(X, y)
    Xbig = np.tile(X.astype(np.float32), (12, 1))  # 21 564 rows, 44 blocks of about 60 ms each
    expected = slow.predict(Xbig)
    before = set(client.scheduler_info()["workers"])
    fut = client.compute(spd.predict(slow, Xbig, block_rows=500))
    killed = _kill_when_processing(client, "sparseprune-predict")
    assert not fut.done()
    np.testing.assert_array_equal(fut.result(timeout=120), expected)
    after = set(client.scheduler_info()["workers"])
    assert killed in before and killed not in after
    _wait_for_workers(client)


# ----------------------------------------------------------------------------- study and bench
def test_study_on_cluster_equals_local_with_a_worker_killed(cluster, tmp_path):
    from sparseprune import cli
    from sparseprune.datasets import load_dataset
    from sparseprune.studies import dask as st

    cl, client = cluster
    _wait_for_workers(client)
    ds = load_dataset("digits")
    sparsities = [0.0, 0.5, 0.9]
    killed = []
    killer = threading.Thread(target=lambda: killed.append(_kill_when_processing(client, "sparseprune-mlp-cell")))
    killer.start()
    import json

    try:
        # the CLI, as a user runs it: `sparseprune demo --quick --scheduler ADDRESS`
        code = cli.main(["demo", "--quick", "--sections", "mlp", "--sparsities", "0,0.5,0.9", "--repeats", "1",
                         "--quiet", "--scheduler", cl.scheduler_address, "--out", str(tmp_path / "dist")])
    finally:
        killer.join(timeout=120)
    assert code == 0
    dist_doc = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert dist_doc["settings"]["scheduler"] == cl.scheduler_address
    dist = dist_doc["sections"]["mlp"]
    assert killed and killed[0] not in client.scheduler_info()["workers"]
    local = st.mlp_study_local(ds, sparsities, quick=True, timed=False, progress=False)
    keys = ("label", "kind", "target_sparsity", "accuracy", "nnz", "params_kept", "sparsity")
    assert [{k: r[k] for k in keys} for r in dist["rows"]] == [{k: r[k] for k in keys} for r in local["rows"]]
    # the same accuracies as `sparseprune demo --quick` run locally
    code = cli.main(["demo", "--quick", "--sections", "mlp,tree", "--sparsities", "0,0.5,0.9", "--repeats", "1",
                     "--quiet", "--out", str(tmp_path)])
    assert code == 0
    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    demo = sections["mlp"]
    assert [(r["label"], r["accuracy"]) for r in demo["rows"]] == [(r["label"], r["accuracy"]) for r in dist["rows"]]
    assert dist["architecture"] == demo["architecture"] and dist["recipe"] == demo["recipe"]
    for r in dist["rows"]:
        assert r["worker"].startswith("tcp://") and r["machine"]["cores"] >= 1
        assert r["machine_label"].startswith(socket.gethostname())
        assert set(r["latency"]) == {"1", "256"} and r["latency"]["256"]["pruned"]["median_s"] > 0
        assert r["threads"] == 1  # 2 single-threaded workers on this machine's cores: no oversubscription
    _wait_for_workers(client)
    tree = st.trees_study(client, ds, "tree", quick=True, repeats=1)
    assert [(r["label"], r["accuracy"]) for r in tree["rows"]] == \
        [(r["label"], r["accuracy"]) for r in sections["tree"]["rows"]]
    assert tree["worker"] in client.scheduler_info()["workers"]


def test_bench_fleet(client):
    from sparseprune.studies import dask as st

    fleet = st.bench_fleet(client, quick=True, size=128, densities=[0.05, 0.5], batches=[1, 16], repeats=1,
                           progress=False)
    assert len(fleet["machines"]) == 1  # both workers run on this machine: it is benched once
    m = fleet["machines"][0]
    assert m["machine"]["hostname"] == socket.gethostname()
    assert {r["batch"] for r in fleet["table"]} == {1, 16}
    assert all(r["crossover"] for r in fleet["table"])
    assert "batch 16" in st.format_fleet_table(fleet)


# ----------------------------------------------------------------------------- connect
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_unreachable_fails_fast_with_one_line():
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        spd.connect(address, timeout=1.5)
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert address in msg and "\n" not in msg
    with pytest.raises(ValueError, match="scheduler address"):
        spd.connect("udp:::nonsense")
    with pytest.raises(TypeError, match="address"):
        spd.connect(8786)
    with pytest.raises(ValueError, match="timeout"):
        spd.connect(address, timeout=0)


def test_cli_unreachable_scheduler_exits_2_with_one_line(tmp_path, capsys):
    from sparseprune import cli

    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    assert cli.main(["demo", "--quick", "--sections", "mlp", "--scheduler", address, "--out", str(tmp_path)]) == 2
    assert cli.main(["bench", "--quick", "--scheduler", address, "--out", str(tmp_path)]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("sparseprune: error:")]
    assert len(errors) == 2 and all(address in line for line in errors)


def test_cli_bench_on_the_cluster(cluster, tmp_path):
    import json

    from sparseprune import cli

    cl, client = cluster
    _wait_for_workers(client)
    assert cli.main(["bench", "--quick", "--quiet", "--size", "128", "--repeats", "1", "--scheduler",
                     cl.scheduler_address, "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert len(doc["fleet"]["machines"]) == 1 and {r["batch"] for r in doc["fleet"]["table"]} == {1, 64}
