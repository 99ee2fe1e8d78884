"""Run every benchmark suite once in smoke mode so they never rot (timing disabled: no speed checks here).

A suite that honours ``SPARSEPRUNE_BENCH_QUICK=1`` (tiny sizes) runs in full with
``--benchmark-disable``. A suite that does not is only imported and collected
(full sizes would take minutes) and the test is skipped with a reason naming it,
so the gap stays visible.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
QUICK_VAR = "SPARSEPRUNE_BENCH_QUICK"
SUITES = sorted(BENCH.glob("bench_*.py"))


def _pytest_command() -> list[str]:
    # The venv's pytest script, as the README says; `python -m pytest` would put the
    # repo root on sys.path and make the top-level `kernels` folder importable.
    script = Path(sys.executable).with_name("pytest")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-P", "-m", "pytest"]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{QUICK_VAR: "1", "SPARSEPRUNE_BENCH_THREADS": "1"})
    # -n 0: one process per suite here (the project's addopts run the test suite on two).
    return subprocess.run([*_pytest_command(), *args, "-q", "-n", "0", "--basetemp", str(tmp_path / "bt")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("suite", SUITES, ids=[p.name for p in SUITES])
def test_benchmark_suite_smoke(suite, tmp_path):
    quick_aware = QUICK_VAR in suite.read_text()
    args = [str(suite), "--benchmark-disable"] if quick_aware else [str(suite), "--collect-only"]
    proc = _run(args, tmp_path)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    if not quick_aware:
        assert " collected" in proc.stdout or "tests collected" in proc.stdout, tail
        pytest.skip(f"{suite.name} was only collected: it does not honour {QUICK_VAR}=1 (tiny sizes)")
    assert " passed" in proc.stdout, tail


def test_benchmarks_are_collected_and_default_run_skips_them(tmp_path):
    tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no tomllib (3.11+)")

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert cfg["testpaths"] == ["tests"]
    assert not any(p.startswith("bench") for p in cfg.get("python_files", []))
    if SUITES:  # benchmarks/conftest.py makes `pytest benchmarks` find bench_*.py
        proc = _run([str(BENCH), "--collect-only"], tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        for suite in SUITES:
            assert suite.name in proc.stdout
