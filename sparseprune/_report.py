"""Tables, plots and crash-safe files for the ``sparseprune`` command.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch, no display needed). Every file is written to a temporary file
in the destination folder and moved into place with :func:`os.replace`, so an
interrupted run never leaves a half-written ``results.json`` or PNG behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = ["atomic_write", "format_table", "to_json", "write_json", "Column"]

Column = tuple  # (header, getter(row) -> value, formatter(value) -> str)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path``; on success, fsync and move it over ``path``.

    On any exception (including ``KeyboardInterrupt``) the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def to_json(doc: dict) -> str:
    """``doc`` as indented strict JSON (numpy values converted, NaN/inf as null)."""
    return json.dumps(_strict(doc), indent=2)


def write_json(path: str | os.PathLike, doc: dict) -> None:
    """Write ``doc`` as indented JSON, atomically (see :func:`to_json`)."""
    text = to_json(doc)
    with atomic_write(path, "w") as fh:
        fh.write(text + "\n")


def _strict(obj):
    """JSON-ready copy: numpy scalars/arrays become Python values, NaN/inf become None (strict JSON)."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()  # numpy scalar or array
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def format_table(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None) -> str:
    """Render rows as an aligned plain-text table (right-aligned numbers, left-aligned first column)."""
    cells = [[fmt(get(row)) if get(row) is not None else "-" for _, get, fmt in columns] for row in rows]
    headers = [c[0] for c in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


# ----------------------------------------------------------------- formatters
def fmt_pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def fmt_int(v: int) -> str:
    return f"{int(v):,}"


def fmt_kib(v: float) -> str:
    return f"{v / 1024:.1f}"


def fmt_time(v: float) -> str:
    """Seconds as a short human string with a unit (ns, µs, ms, s)."""
    if v < 1e-6:
        return f"{v * 1e9:.0f}ns"
    if v < 1e-3:
        return f"{v * 1e6:.1f}µs"
    if v < 1:
        return f"{v * 1e3:.2f}ms"
    return f"{v:.2f}s"


def fmt_x(v: float) -> str:
    return f"{v:.2f}x"


def fmt_float(v: float) -> str:
    return f"{v:.3g}"


# ---------------------------------------------------------------------- plots
def plots_available() -> str | None:
    """None when matplotlib can be imported, else the reason it cannot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}); install sparseprune[report] for plots"
    return None


def _figure(ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * ncols, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: Path) -> str:
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    return path.name


def _rows_with(rows: Sequence[dict], batch: str) -> list[dict]:
    return [r for r in rows if r.get("latency", {}).get(batch)]


def plot_accuracy_vs_sparsity(mlp: dict, path: Path) -> str:
    """MLP test accuracy against global weight sparsity (gradual pruning, neuron elimination marked)."""
    fig, (ax,) = _figure()
    pruned = sorted((r for r in mlp["rows"] if r["kind"] in ("dense", "weight_pruning")), key=lambda r: r["sparsity"])
    elim = [r for r in mlp["rows"] if r["kind"] == "neuron_elimination"]
    for r in mlp["rows"]:
        if r["kind"] == "dense":
            ax.axhline(100 * r["accuracy"], color="gray", ls=":", lw=1, label="dense model")
    ax.plot([100 * r["sparsity"] for r in pruned], [100 * r["accuracy"] for r in pruned], "o-",
            label="gradual magnitude pruning + fine-tuning")
    if elim:
        ax.plot([100 * r["sparsity"] for r in elim], [100 * r["accuracy"] for r in elim], "s",
                label="+ neuron elimination")
    ax.set_xlabel("weight sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MLP {mlp.get('architecture', '')} on {mlp.get('dataset', '')}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_latency_vs_sparsity(mlp: dict, path: Path) -> str:
    """Median predict latency (IQR error bars) of each pruned model and of the dense model, per batch size."""
    batches = sorted({b for r in mlp["rows"] for b in r.get("latency", {})}, key=int)
    fig, axes = _figure(max(1, len(batches)))
    for ax, b in zip(axes, batches):
        rows = _rows_with(mlp["rows"], b)
        sweep = sorted((r for r in rows if r["kind"] in ("dense", "weight_pruning")), key=lambda r: r["sparsity"])
        elim = [r for r in rows if r["kind"] == "neuron_elimination"]
        for group, key, style, label in ((sweep, "pruned", "o-", "pruned model"),
                                         (sweep, "dense", "x--", "dense model (same run)"),
                                         (elim, "pruned", "s", "+ neuron elimination")):
            if not group:
                continue
            xs = [100 * r["sparsity"] for r in group]
            med = [r["latency"][b][key]["median_s"] * 1e6 for r in group]
            lo = [m - r["latency"][b][key]["q1_s"] * 1e6 for m, r in zip(med, group)]
            hi = [r["latency"][b][key]["q3_s"] * 1e6 - m for m, r in zip(med, group)]
            ax.errorbar(xs, med, yerr=[lo, hi], fmt=style, capsize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("weight sparsity (%)")
        ax.set_ylabel("predict latency per batch (µs, median, IQR bars)")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower latency, higher accuracy), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(mlp: dict, path: Path) -> str:
    """Accuracy against latency for every MLP variant, per batch size, with the Pareto front."""
    batches = sorted({b for r in mlp["rows"] for b in r.get("latency", {})}, key=int)
    fig, axes = _figure(max(1, len(batches)))
    for ax, b in zip(axes, batches):
        rows = _rows_with(mlp["rows"], b)
        pts = [(r["latency"][b]["pruned"]["median_s"] * 1e6, 100 * r["accuracy"]) for r in rows]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], zorder=3)
        for r, (x, y) in zip(rows, pts):
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="tab:red",
                alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("predict latency per batch (µs, median)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"accuracy vs latency, batch {b}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return _save(fig, path)


def plot_tree_accuracy_vs_nodes(sections: Sequence[dict], path: Path) -> str:
    """Test accuracy against node count: info_gain pruning vs the cost-complexity (ccp) path."""
    fig, axes = _figure(len(sections))
    for ax, sec in zip(axes, sections):
        curves = sec.get("curves", {})
        for name, style, color in (("ccp_path", "x--", "tab:blue"), ("info_gain", "o-", "tab:orange"),
                                   ("cost_complexity", "s:", "tab:green")):
            pts = curves.get(name)
            if pts:
                pts = sorted(pts, key=lambda p: p["nodes"])
                ax.plot([p["nodes"] for p in pts], [100 * p["accuracy"] for p in pts], style, color=color,
                        label=_CURVE_LABELS[name])
        ax.set_xscale("log")
        ax.set_xlabel("nodes (total over trees)" if sec.get("family") == "forest" else "nodes")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(sec.get("title", sec.get("family", "")))
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    return _save(fig, path)


_CURVE_LABELS = {
    "ccp_path": "scikit-learn ccp_alpha path (refit)",
    "info_gain": "prune_tree info_gain (post-pruning)",
    "cost_complexity": "prune_tree cost_complexity",
}


def write_plots(jobs: Sequence[tuple[str, Callable[[Path], str]]], out: Path) -> tuple[list[str], list[str]]:
    """Run plot jobs ``(filename, fn(path) -> name)``; return (written names, failure notes)."""
    written, notes = [], []
    reason = plots_available()
    if reason:
        return written, [reason]
    for name, fn in jobs:
        try:
            written.append(fn(out / name))
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            notes.append(f"plot {name} failed: {exc}")
    return written, notes
