"""The ``sparseprune`` command end to end on small settings: exit codes, results.json, plots, bad usage."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sparseprune import cli
from sparseprune.studies import bench as bench_study
from sparseprune.studies.report import atomic_write, format_table, pareto_front, write_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *fragments: str, expected_code: int = 2) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sparseprune: error: ")
    for f in fragments:
        assert f in lines[0], lines[0]


# --------------------------------------------------------------- JSON schema
# A JSON-schema-like description of results.json, kept here independently of the CLI code.
TIMING = {"median_s": float, "q1_s": float, "q3_s": float, "min_s": float, "max_s": float,
          "repeats": int, "number": int, "warmup": int}
HEADER = {"schema_version": int, "command": str, "argv": list, "created_utc": str, "settings": dict,
          "methodology": dict, "sections": dict, "machine": dict, "wall_time_s": float}
MACHINE = {"cpu_model": str, "logical_cores": int, "versions": dict, "blas": list, "numba": dict}
SECTION = {"status": str, "rows": list}
MLP_ROW = {"label": str, "kind": str, "sparsity": float, "params_total": int, "params_kept": int, "nnz": int,
           "dense_bytes": int, "csr_bytes": int, "flops_per_sample": int, "accuracy": float, "latency": dict}
TREE_ROW = {"label": str, "kind": str, "sparsity": float, "nodes": int, "leaves": int, "depth": int,
            "bytes": int, "flops_per_sample": float, "accuracy": float, "latency": dict}


def check_keys(obj: dict, spec: dict, where: str) -> None:
    assert isinstance(obj, dict), where
    for key, typ in spec.items():
        assert key in obj, f"{where}: missing {key!r}"
        ok = isinstance(obj[key], typ) or (typ is float and isinstance(obj[key], int))
        assert ok and not isinstance(obj[key], bool), f"{where}.{key}: {obj[key]!r} is not {typ.__name__}"


def check_latency(lat: dict, where: str) -> None:
    assert set(lat) == {"1", "256"}, where
    for b, cell in lat.items():
        check_keys(cell["dense"], TIMING, f"{where}[{b}].dense")
        check_keys(cell["pruned"], TIMING, f"{where}[{b}].pruned")
        t = cell["pruned"]
        assert 0 < t["min_s"] <= t["q1_s"] <= t["median_s"] <= t["q3_s"] <= t["max_s"]
        assert cell["speedup"] == pytest.approx(cell["dense"]["median_s"] / t["median_s"])


def check_demo_doc(doc: dict) -> None:
    check_keys(doc, HEADER, "results")
    assert doc["schema_version"] == 1 and doc["command"] == "demo"
    check_keys(doc["machine"], MACHINE, "machine")
    for dist in ("numpy", "numba", "scipy", "scikit-learn"):
        assert doc["machine"]["versions"][dist]
    assert doc["dataset"]["name"] == "digits"
    for name, sec in doc["sections"].items():
        check_keys(sec, SECTION, name)
        assert sec["status"] == "ok", sec.get("reason")
        spec = MLP_ROW if name == "mlp" else TREE_ROW
        for i, row in enumerate(sec["rows"]):
            check_keys(row, spec, f"{name}.rows[{i}]")
            assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["sparsity"] < 1.0
            check_latency(row["latency"], f"{name}.rows[{i}].latency")


# ------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code, stdout, stderr = run_cli("demo", "--quick", "--quiet", "--threads", "1", "--out", str(out))
    return code, stdout, stderr, out


def test_demo_quick_exit_code_tables_and_schema(demo_run):
    code, stdout, stderr, out = demo_run
    assert code == 0, stderr
    assert "Traceback" not in stderr
    doc = json.loads((out / "results.json").read_text())
    check_demo_doc(doc)
    assert set(doc["sections"]) == {"mlp", "tree", "forest"}
    assert doc["settings"]["threads"] == 1 and doc["settings"]["quick"] is True
    # Every section (all "ok": check_demo_doc) is printed as a table with each of its rows.
    for name, sec in doc["sections"].items():
        assert f"== {sec['title']}" in stdout
        for row in sec["rows"]:
            assert row["label"] in stdout
    # Trees are always available (scikit-learn): the unpruned row's numbers match sklearn directly.
    from sklearn.tree import DecisionTreeClassifier

    from sparseprune.datasets import load_digits

    ds = load_digits()
    ref = DecisionTreeClassifier(random_state=0).fit(ds.X_train, ds.y_train)
    row0 = doc["sections"]["tree"]["rows"][0]
    assert row0["nodes"] == ref.tree_.node_count and row0["leaves"] == ref.get_n_leaves()
    assert row0["accuracy"] == pytest.approx(ref.score(ds.X_test, ds.y_test))


def test_demo_plots_are_valid_png(demo_run):
    code, _, _, out = demo_run
    doc = json.loads((out / "results.json").read_text())
    assert doc["plots"], doc["notes"]
    assert "tree_accuracy_vs_nodes.png" in doc["plots"]
    assert {"mlp_accuracy_vs_sparsity.png", "mlp_latency_vs_sparsity.png", "mlp_pareto.png",
            "mlp_accuracy_vs_bytes.png"} <= set(doc["plots"])
    import matplotlib.image

    for name in doc["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        img = matplotlib.image.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # No temporary files left behind.
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_demo_json_on_stdout(tmp_path):
    code, stdout, stderr = run_cli("demo", "--quick", "--quiet", "--json", "--sections", "tree",
                                   "--out", str(tmp_path))
    assert code == 0, stderr
    doc = json.loads(stdout)  # stdout is pure JSON
    assert list(doc["sections"]) == ["tree"]
    assert doc == json.loads((tmp_path / "results.json").read_text())


def test_bench_quick_json(tmp_path):
    code, stdout, stderr = run_cli("bench", "--quick", "--quiet", "--json", "--size", "96",
                                   "--densities", "0.05,0.5", "--batches", "1,8", "--mask-densities", "0.1,0.5",
                                   "--repeats", "2", "--out", str(tmp_path))
    assert code == 0, stderr
    doc = json.loads(stdout)
    check_keys(doc, HEADER, "bench")
    assert doc["command"] == "bench"
    mask = doc["sections"]["mask"]
    assert mask["status"] == "ok"
    assert [r["density"] for r in mask["rows"]] == [0.1, 0.5]
    for r in mask["rows"]:
        assert r["speedup"] == pytest.approx(r["timings"]["baseline"]["median_s"] / r["timings"]["ours"]["median_s"])
    lin = doc["sections"]["linear"]
    assert lin["status"] == "ok"
    assert {(r["density"], r["batch"]) for r in lin["rows"]} == {(0.05, 1), (0.05, 8), (0.5, 1), (0.5, 8)}
    assert set(lin["crossover_density"]) == {"1", "8"}
    assert (tmp_path / "bench.json").is_file()


def test_bench_tables(tmp_path):
    code, stdout, stderr = run_cli("bench", "--quick", "--quiet", "--kernels", "mask", "--size", "64",
                                   "--repeats", "1", "--out", str(tmp_path))
    assert code == 0, stderr
    assert "numpy+scipy" in stdout and "speedup" in stdout


# ------------------------------------------------------------ bad usage
def test_no_command_and_help():
    code, _, err = run_cli()
    assert_one_line_error(code, err, "choose a command")
    code, out, _ = run_cli("--help")
    assert code == 0 and "demo" in out and "bench" in out
    code, out, _ = run_cli("demo", "--help")
    assert code == 0 and "--sparsities" in out


@pytest.mark.parametrize("argv, fragments", [
    (["demo", "--dataset", "mnist"], ["--dataset", "invalid choice", "mnist"]),
    (["demo", "--sparsities", "0.5,1.2"], ["--sparsities", "1.2"]),
    (["demo", "--sparsities", "0.5,abc"], ["--sparsities", "'abc'"]),
    (["demo", "--sparsities", "-0.1"], ["--sparsities"]),
    (["bench", "--densities", "0,0.5"], ["--densities", "0"]),
    (["bench", "--batches", "0,4"], ["--batches"]),
    (["demo", "--threads", "0"], ["--threads"]),
    (["demo", "--threads", "100000"], ["--threads 100000"]),
    (["demo", "--sections", "mlp,cnn"], ["--sections", "choose from mlp, tree, forest"]),
    (["demo", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["frobnicate"], ["invalid choice"]),
    (["demo", "--data-dir", "/tmp"], ["--data-dir only applies to --dataset fashion-mnist"]),
])
def test_bad_usage_one_line(tmp_path, argv, fragments):
    code, out, err = run_cli(*argv, "--out", str(tmp_path / "o")) if argv[0] in ("demo", "bench") else run_cli(*argv)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "o" / "results.json").exists()


def test_missing_data_dir_and_files(tmp_path):
    code, _, err = run_cli("demo", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "nowhere", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli("demo", "--dataset", "fashion-mnist", "--data-dir", str(empty), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "train-images-idx3-ubyte", "not found")


def test_corrupt_data_file_is_one_line(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (d / name).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")  # 9 labels announced, 3 present
    code, _, err = run_cli("demo", "--dataset", "fashion-mnist", "--data-dir", str(d), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "truncated", "train-images-idx3-ubyte", expected_code=1)


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("demo", "--quick", "--out", str(blocker))
    assert_one_line_error(code, err, "--out", "not a directory")
    code, _, err = run_cli("bench", "--quick", "--out", str(blocker / "sub"))
    assert_one_line_error(code, err, "--out", "not writable")


def test_ctrl_c_leaves_no_half_written_results(tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}\n')

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.tree_study, "study", interrupted)
    code, _, err = run_cli("demo", "--quick", "--quiet", "--sections", "tree", "--out", str(out))
    assert code == 130
    assert "Traceback" not in err and "interrupted" in err
    assert json.loads((out / "results.json").read_text()) == {"old": True}
    assert os.listdir(out) == ["results.json"]


def test_atomic_write_interrupted_mid_write(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"a": 1, "nan": float("nan"), "np": [np.float32(1.5), np.int64(3), np.arange(2)]})
    expected = {"a": 1, "nan": None, "np": [1.5, 3, [0, 1]]}  # strict JSON, numpy values converted
    assert json.loads(target.read_text()) == expected
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as fh:
            fh.write('{"half": ')
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == expected
    assert os.listdir(tmp_path) == ["results.json"]


def test_failing_section_is_reported_not_faked(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli.tree_study, "study", broken)
    code, out, err = run_cli("demo", "--quick", "--sections", "tree", "--out", str(tmp_path))
    assert code == 1
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["sections"]["tree"] == {"status": "error", "reason": "RuntimeError: boom", "rows": [], "what": "tree"}
    assert "FAILED: RuntimeError: boom" in err


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "sparseprune", "demo", "--sparsities", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# ------------------------------------------------------------ helpers
def test_format_table_and_pareto():
    rows = [{"a": "x", "b": 1.5}, {"a": "long name", "b": None}]
    text = format_table(rows, [("name", lambda r: r["a"], str), ("val", lambda r: r["b"], lambda v: f"{v:.1f}")])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "val"] and lines[2].split() == ["x", "1.5"] and lines[3].endswith("-")
    assert len({len(line) for line in lines[:2]}) == 1
    # Brute-force reference for the Pareto front: not dominated in (lower latency, higher accuracy).
    rng = np.random.default_rng(1)
    pts = [tuple(p) for p in rng.random((30, 2))]
    ref = {i for i, (x, y) in enumerate(pts)
           if not any((x2 <= x and y2 >= y) and (x2, y2) != (x, y) for x2, y2 in pts)}
    assert set(pareto_front(pts)) == ref


def test_crossover_density():
    assert bench_study._crossover([0.1, 0.3, 0.5], [3.0, 1.0, 0.5])["density"] == pytest.approx(0.3)
    assert bench_study._crossover([0.1, 0.2], [2.0, 0.0])["density"] == pytest.approx(0.15)
    assert bench_study._crossover([0.1, 0.2], [2.0, 1.5])["bound"] == "above"
    assert bench_study._crossover([0.1, 0.2], [0.5, 0.2])["bound"] == "below"


# ------------------------------------------------------------ methodology
class _FakeClock:
    """perf_counter and sleep of a clock that only moves when told: timings that do not depend on the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_compare_excludes_warmup_and_pins_threads(monkeypatch):
    import numba

    from sparseprune.studies import measure
    from sparseprune.studies.measure import compare, machine_info

    clock = _FakeClock()
    monkeypatch.setattr(measure, "time", clock)
    calls = {"slow_start": 0}
    seen_threads = set()

    def slow_start():
        calls["slow_start"] += 1
        seen_threads.add(numba.get_num_threads())
        clock.now += 0.05 if calls["slow_start"] <= 2 else 0.001  # the warm-up calls pay a "compile" cost

    def sleeper():
        clock.now += 0.002

    res = compare({"slow_start": slow_start, "sleeper": sleeper}, repeats=5, warmup=2, min_time=0.001, threads=1)
    # The 50 ms warm-up never shows up in the timings: every timed call took 1 ms.
    assert res["slow_start"].max == pytest.approx(0.001) and res["slow_start"].min == pytest.approx(0.001)
    assert seen_threads == {1}
    s = res["sleeper"]
    assert s.repeats == 5 and s.warmup == 2 and s.number == 1
    assert s.min == pytest.approx(0.002) and s.max == pytest.approx(0.002)
    d = s.to_dict()
    assert set(d) == {"median_s", "q1_s", "q3_s", "min_s", "max_s", "repeats", "number", "warmup"}
    # min_time loops fast calls: 0.3 ms calls need 4 per repeat of at least 1 ms.
    quick = compare({"q": lambda: setattr(clock, "now", clock.now + 0.0003)}, repeats=3, warmup=0, min_time=0.001)
    assert quick["q"].number == 4 and quick["q"].median == pytest.approx(0.0003)
    # Grouped mode: every repeat filled, each callable's group starts after the pause.
    events = []

    def a():
        clock.now += 0.001
        events.append(("a", clock.now))

    def b():
        clock.now += 0.001
        events.append(("b", clock.now))

    g = compare({"a": a, "b": b}, repeats=5, warmup=1, min_time=0.0, settle=0.03)
    assert all(t.repeats == 5 and np.isfinite(t.median) and t.min >= 0 for t in g.values())
    # Two passes in opposite order (a, b, then b, a), after the warm-up and calibration calls:
    # four groups, each first call after the pause (untimed), then its repeats.
    paused = [i for i in range(1, len(events)) if events[i][1] - events[i - 1][1] >= 0.03]
    assert [events[i][0] for i in paused] == ["a", "b", "b", "a"]
    assert [len(events[i:j]) for i, j in zip(paused, paused[1:] + [len(events)])] == [4, 4, 3, 3]
    with pytest.raises(ValueError, match="settle"):
        compare({"a": a}, settle=-1.0)
    info = machine_info()
    assert info["logical_cores"] >= 1 and info["versions"]["numpy"] == np.__version__
    assert info["numba"]["max_threads"] == numba.config.NUMBA_NUM_THREADS
    json.dumps(info)  # JSON-ready
