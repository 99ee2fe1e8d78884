"""Run every benchmark suite once in smoke mode so they never rot (timing is disabled: no speed checks here)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _pytest_command() -> list[str]:
    # The venv's pytest script, as the README says; `python -m pytest` would put the
    # repo root on sys.path and make the top-level `kernels` folder importable.
    script = Path(sys.executable).with_name("pytest")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-P", "-m", "pytest"]


@pytest.mark.skipif(not list(BENCH.glob("bench_*.py")), reason="no benchmark suites yet")
def test_benchmark_suites_run_in_quick_mode(tmp_path):
    env = dict(os.environ, SPARSEPRUNE_BENCH_QUICK="1", SPARSEPRUNE_BENCH_THREADS="1")
    proc = subprocess.run(
        [*_pytest_command(), str(BENCH), "--benchmark-disable", "-q",
         "--basetemp", str(tmp_path / "bt")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "error" not in proc.stdout.splitlines()[-1], tail


def test_default_run_does_not_collect_benchmarks():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert cfg["testpaths"] == ["tests"]
    assert not any(p.startswith("bench") for p in cfg.get("python_files", []))
