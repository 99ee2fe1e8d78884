"""Shared test setup: the plain-numpy references in tests/naive.py are importable as ``naive``."""
from __future__ import annotations

import sys
from pathlib import Path

# pytest runs with --import-mode=importlib, which does not put tests/ on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
