"""Shared test setup.

- The plain-numpy references in ``tests/naive.py`` are importable as ``naive``
  (pytest runs with ``--import-mode=importlib``, which does not put tests/ on sys.path).
- Hypothesis keeps its files (example database, constants cache) in a temporary
  folder, not in a ``.hypothesis/`` folder of the directory pytest was run from:
  running the tests writes nothing into the checkout.
"""
from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

_hypothesis_home = tempfile.mkdtemp(prefix="sparseprune-hypothesis-")
atexit.register(shutil.rmtree, _hypothesis_home, ignore_errors=True)
try:
    from hypothesis.configuration import set_hypothesis_home_dir
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass
else:
    set_hypothesis_home_dir(_hypothesis_home)
