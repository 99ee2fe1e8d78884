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


def _clip_axis(ax, values: Sequence[float], axis: str = "y") -> float | None:
    """Fit the axis to the bulk of the values: from 0 to 1.25x their 80th percentile when one
    outlier would stretch it more than 2x (the outliers are then drawn at the edge, marked).

    Returns the upper limit when clipping, else None.
    """
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return None
    bulk = vals[min(len(vals) - 1, int(0.8 * len(vals)))]
    top = 1.25 * bulk
    if vals[-1] <= 2 * top:
        (ax.set_ylim if axis == "y" else ax.set_xlim)(0, 1.08 * vals[-1])
        return None
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, top)
    return top


def plot_latency_vs_sparsity(mlp: dict, path: Path) -> str:
    """Median predict latency (IQR error bars) of each pruned model and of the dense model, per batch size.

    Linear axes from 0; a value more than 2x above the bulk of the others is drawn at the top
    edge as a triangle labelled with its value, so one slow timing cannot squash the rest.
    """
    batches = sorted({b for r in mlp["rows"] for b in r.get("latency", {})}, key=int)
    fig, axes = _figure(max(1, len(batches)))
    for ax, b in zip(axes, batches):
        rows = _rows_with(mlp["rows"], b)
        sweep = sorted((r for r in rows if r["kind"] in ("dense", "weight_pruning")), key=lambda r: r["sparsity"])
        elim = [r for r in rows if r["kind"] == "neuron_elimination"]
        groups = ((sweep, "pruned", "o-", "tab:blue", "pruned model"),
                  (sweep, "dense", "x--", "tab:orange",
                   "dense model (timed with each model)" if b == "1" else "dense model (timed once per batch)"),
                  (elim, "pruned", "s", "tab:green", "+ neuron elimination"))
        all_med = [r["latency"][b][key]["median_s"] * 1e6 for g, key, *_ in groups for r in g]
        top = _clip_axis(ax, all_med)
        for group, key, style, color, label in groups:
            if not group:
                continue
            xs = [100 * r["sparsity"] for r in group]
            med = [r["latency"][b][key]["median_s"] * 1e6 for r in group]
            lo = [m - r["latency"][b][key]["q1_s"] * 1e6 for m, r in zip(med, group)]
            hi = [r["latency"][b][key]["q3_s"] * 1e6 - m for m, r in zip(med, group)]
            shown = [min(m, top) if top else m for m in med]
            ax.errorbar(xs, shown, yerr=[lo, hi], fmt=style, color=color, capsize=3, label=label)
            for x, m in zip(xs, med):
                if top and m > top:
                    ax.plot([x], [top], "^", color=color, ms=9, clip_on=False)
                    ax.annotate(f"{m:,.0f} µs (off scale)", (x, top), textcoords="offset points", xytext=(6, -12),
                                fontsize=7, color=color)
        ax.set_xlabel("weight sparsity (%)")
        ax.set_ylabel("predict latency per batch (µs, median, IQR bars)")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
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


_MARKERS = "osD^vP*Xh<>p"


def plot_pareto(mlp: dict, path: Path) -> str:
    """Accuracy against latency for every MLP variant, per batch size, with the Pareto front.

    Each model has its own marker and colour, named in one legend below the panels (text
    labels next to the points overlapped wherever two models had similar latency).
    """
    batches = sorted({b for r in mlp["rows"] for b in r.get("latency", {})}, key=int)
    fig, axes = _figure(max(1, len(batches)))
    fig.set_figheight(5.2)
    labels = [r["label"] for r in mlp["rows"]]
    handles = {}
    for ax, b in zip(axes, batches):
        rows = _rows_with(mlp["rows"], b)
        pts = [(r["latency"][b]["pruned"]["median_s"] * 1e6, 100 * r["accuracy"]) for r in rows]
        top = _clip_axis(ax, [p[0] for p in pts], axis="x")
        front = pareto_front(pts)
        if len(front) > 1:
            ax.step([min(pts[i][0], top or math.inf) for i in front], [pts[i][1] for i in front], where="post",
                    color="tab:red", alpha=0.5, lw=1.5, zorder=1)
        for i, (r, (x, y)) in enumerate(zip(rows, pts)):
            k = labels.index(r["label"])
            shown = min(x, top) if top else x
            h = ax.scatter([shown], [y], marker=_MARKERS[k % len(_MARKERS)], s=55, zorder=3,
                           color=f"C{k % 10}", edgecolors="black" if i in front else "none", linewidths=1.2)
            handles.setdefault(r["label"], h)
            if top and x > top:
                ax.annotate(f"{x:,.0f} µs →", (shown, y), textcoords="offset points", xytext=(-40, 6), fontsize=7)
        ax.set_xlabel("predict latency per batch (µs, median)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"accuracy vs latency, batch {b} (outlined: Pareto front)")
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=3, fontsize=8,
               frameon=False)
    return _save(fig, path)


def plot_accuracy_vs_bytes(mlp: dict, path: Path) -> str:
    """MLP test accuracy against the bytes its weights and biases take stored (log scale).

    Pruned models store CSR (float32 values, int32 indices); pruned + quantized
    ones store bit-packed k-means codes and relative column gaps
    (``stored_bytes``, as ``save`` writes them).
    """
    fig, (ax,) = _figure()
    rows = [r for r in mlp["rows"] if r.get("stored_bytes")]
    # (label, kinds, marker, colour, joined by a line, drawn on top)
    groups = [("pruned (CSR, float32)", ("weight_pruning",), "o", "C0", True, 2),
              ("neuron elimination (± pruning)", ("neuron_elimination",), "s", "C1", False, 2),
              ("pruned + k-means quantized", ("quantized",), "^", "C2", True, 2),
              ("dense", ("dense",), "D", "black", False, 3)]
    for name, kinds, marker, color, joined, z in groups:
        pts = sorted(((r["stored_bytes"] / 1024, 100 * r["accuracy"], r) for r in rows if r["kind"] in kinds),
                     key=lambda t: t[0])
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, ls="-" if joined else "",
                label=name, zorder=z, markersize=7 if kinds == ("dense",) else 6)
        if kinds == ("quantized",):
            mid = sorted(p[1] for p in pts)[len(pts) // 2]
            for i, (x, y, r) in enumerate(pts):
                # Neighbouring points sit close on a log axis: a label goes above its point when the
                # point is in the upper half of the group, below otherwise; ties alternate.
                above = y > mid or (y == mid and i % 2 == 0)
                ax.annotate(f"{r['label'].split('+')[-1].strip()}: {r['compression']:.0f}x", (x, y),
                            textcoords="offset points", xytext=(-10, 9 if above else -15), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("stored weights + biases (KiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MLP {mlp.get('architecture', '')}: accuracy vs stored size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
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
