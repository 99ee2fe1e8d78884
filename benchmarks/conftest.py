"""Shared setup for the pytest-benchmark suites in ``benchmarks/``.

Run every suite (a few minutes on 2 cores)::

    pytest benchmarks --benchmark-only

Smoke mode, as CI runs it (tiny sizes, each benchmark body called once)::

    SPARSEPRUNE_BENCH_QUICK=1 pytest benchmarks --benchmark-disable

What this file provides:

- Collection of ``benchmarks/bench_*.py`` without touching the project's
  ``python_files`` setting (the default ``pytest`` run, ``testpaths = tests``,
  never collects benchmarks).
- Thread pinning: every benchmark runs under ``sparseprune.thread_limit(n)``,
  so BLAS (threadpoolctl) and numba use the same count; ``n`` comes from
  ``SPARSEPRUNE_BENCH_THREADS`` (default: all threads numba started with).
- ``SPARSEPRUNE_BENCH_QUICK=1``: suites read :data:`QUICK` through the
  ``bench_quick`` fixture, or ``os.environ`` at import time to pick their
  parametrisation, and use tiny sizes so the smoke run stays fast.
- The ``bench_threads`` fixture (the pinned count) and sparseprune's machine
  info (CPU, versions, BLAS, numba threading layer) in pytest-benchmark's
  ``--benchmark-json`` output.
"""
from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

import pytest

from sparseprune.inference.threads import thread_limit

# Suites import shared helpers (_timing) as scripts do: from this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

QUICK = os.environ.get("SPARSEPRUNE_BENCH_QUICK", "") not in ("", "0")


def _threads() -> int:
    import numba

    raw = os.environ.get("SPARSEPRUNE_BENCH_THREADS")
    return int(raw) if raw else numba.config.NUMBA_NUM_THREADS


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py as test modules, unless python_files already matches them."""
    name = file_path.name
    if file_path.suffix != ".py" or not name.startswith("bench_"):
        return None
    if any(fnmatch.fnmatch(name, pat) for pat in parent.config.getini("python_files")):
        return None  # the python plugin collects it already (e.g. -o python_files='bench_*.py')
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: the python plugin collects it already
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "slow_bench: a benchmark that takes more than a few seconds at full size")
    # The project's addopts run the tests on two xdist workers; benchmarks must run in one
    # process (pytest-benchmark disables itself under xdist, and two processes would time
    # each other). Runs before xdist's own configure, which then starts no workers.
    if getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0
        config.option.dist = "no"


def pytest_benchmark_update_machine_info(config, machine_info):
    from sparseprune.studies.measure import machine_info as sp_machine_info

    machine_info["sparseprune"] = sp_machine_info()
    machine_info["sparseprune"]["bench_threads"] = _threads()
    machine_info["sparseprune"]["bench_quick"] = QUICK


@pytest.fixture(scope="session")
def bench_quick() -> bool:
    """True in smoke mode (``SPARSEPRUNE_BENCH_QUICK=1``): use tiny sizes."""
    return QUICK


@pytest.fixture(scope="session")
def bench_threads() -> int:
    """The thread count every benchmark runs with (BLAS and numba alike)."""
    return _threads()


@pytest.fixture(autouse=True)
def _pin_threads(bench_threads):
    with thread_limit(bench_threads):
        yield
