"""The wheel ships every subpackage: pyproject's package list against the folders on disk."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_installation():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no tomllib (3.11+)")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sparseprune").rglob("__init__.py")}
    on_disk |= {"sparseprune.kernels"} if (ROOT / "kernels" / "__init__.py").is_file() else set()
    assert listed == on_disk, f"missing from pyproject: {sorted(on_disk - listed)}; stale: {sorted(listed - on_disk)}"
    assert cfg["package-dir"]["sparseprune.kernels"] == "kernels"
