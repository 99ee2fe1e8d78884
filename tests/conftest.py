"""Shared test setup: every test means the same on every machine.

- The plain-numpy references in ``tests/naive.py`` are importable as ``naive``
  (pytest runs with ``--import-mode=importlib``, which does not put tests/ on sys.path).
- Hypothesis keeps its files (example database, constants cache) in a temporary
  folder, not in a ``.hypothesis/`` folder of the directory pytest was run from:
  running the tests writes nothing into the checkout.
- sparseprune's cache folder (``SPARSEPRUNE_CACHE_DIR``: a ``calibrate()`` table)
  is a temporary folder: nothing is read from or written to the user's home.
- The dispatcher does not measure (``SPARSEPRUNE_DISPATCH=model``): each layer
  takes the built-in cost model's path, so which path a test covers does not
  depend on this machine's timings. Tests about the measuring dispatcher are
  marked ``dispatcher`` and measure.
- Tests of parallel kernels (races, per-thread buffers, work split between
  threads) are marked ``parallel``: they need two numba threads. With one they
  are skipped with the reason shown (``-rs``); under CI (``CI`` set) on a
  one-core machine, unless ``NUMBA_NUM_THREADS=1`` asks for a serial run, they
  fail: CI must run them on two threads (.ci/run sets NUMBA_NUM_THREADS=2).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

_hypothesis_home = tempfile.mkdtemp(prefix="sparseprune-hypothesis-")
atexit.register(shutil.rmtree, _hypothesis_home, ignore_errors=True)
try:
    from hypothesis.configuration import set_hypothesis_home_dir
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass
else:
    set_hypothesis_home_dir(_hypothesis_home)

_cache_home = tempfile.mkdtemp(prefix="sparseprune-cache-")
atexit.register(shutil.rmtree, _cache_home, ignore_errors=True)
os.environ["SPARSEPRUNE_CACHE_DIR"] = _cache_home
os.environ["SPARSEPRUNE_DISPATCH"] = "model"
os.environ.pop("SPARSEPRUNE_METHOD", None)  # a user's forced path would change what every test covers


def pytest_configure(config):
    config.addinivalue_line("markers", "dispatcher: a test of the measuring dispatcher (it measures)")
    config.addinivalue_line("markers", "parallel: a test of parallel kernels; needs two numba threads")


@pytest.fixture(autouse=True)
def _policy_for_marked_tests(request, monkeypatch):
    if request.node.get_closest_marker("dispatcher") is not None:
        monkeypatch.setenv("SPARSEPRUNE_DISPATCH", "measure")
    if request.node.get_closest_marker("parallel") is not None:
        import numba

        if numba.config.NUMBA_NUM_THREADS < 2:
            asked = os.environ.get("NUMBA_NUM_THREADS")
            why = (f"needs 2 numba threads, has {numba.config.NUMBA_NUM_THREADS} "
                   f"({'NUMBA_NUM_THREADS=' + asked if asked else 'the machine has one core'}): "
                   "the parallel kernels would run serially")
            if os.environ.get("CI") and not asked:
                pytest.fail(why + "; CI must give the tests two threads")
            pytest.skip(why)
    yield
