"""The Pareto chart of a sweep: cost (MACs or latency) against top-1 agreement, the uniform
settings and the searched models on one chart. Needs matplotlib (``scc-convert[plot]``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .result import Point

__all__ = ["pareto_plot"]


def pareto_plot(points: Sequence[Point], path: str | os.PathLike, *, metric: str = "macs", title: str | None = None,
                original: float | None = None) -> None:
    """Write a PNG of ``points``: x = MACs (millions) or latency (ms), y = top-1 agreement.

    Uniform settings are circles joined along their Pareto front, searched models stars;
    each point is labelled. ``original`` (the original model's cost) draws the reference at
    agreement 1.

    Example:
        >>> pareto_plot(result.points, "sweep.png")  # doctest: +SKIP
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("the sweep plot needs matplotlib: pip install scc-convert[plot] (or pip install matplotlib)") from err
    if metric not in ("macs", "latency"):
        raise ValueError(f"pareto_plot: metric={metric!r}; use 'macs' or 'latency'")

    def x_of(p: Point) -> float:
        return p.macs / 1e6 if metric == "macs" else p.latency_ms

    if metric == "latency" and any(p.latency_ms is None for p in points):
        raise ValueError("pareto_plot: metric='latency' needs every point timed (latency_ms)")
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    styles = {"uniform": ("o", "tab:blue", "uniform cg/co"), "searched": ("*", "tab:red", "searched per layer")}
    for kind, (marker, color, label) in styles.items():
        chosen = sorted((p for p in points if p.kind == kind), key=x_of)
        if not chosen:
            continue
        ax.scatter([x_of(p) for p in chosen], [p.top1 for p in chosen], marker=marker, color=color,
                   s=140 if marker == "*" else 50, label=label, zorder=3)
        if kind == "uniform":
            front, best = [], -1.0
            for p in chosen:  # cheapest first: a point is on the front when it beats every cheaper one
                if p.top1 > best:
                    front.append(p)
                    best = p.top1
            ax.plot([x_of(p) for p in front], [p.top1 for p in front], color=color, alpha=0.4, zorder=2)
        for p in chosen:
            ax.annotate(p.label.replace("uniform ", ""), (x_of(p), p.top1), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, color=color)
    if original is not None:
        ax.scatter([original / 1e6 if metric == "macs" else original], [1.0], marker="s", color="black",
                   label="original", zorder=3)
    ax.set_xlabel("MACs (millions; FLOPs = 2 x MACs)" if metric == "macs" else "latency (ms, median)")
    ax.set_ylabel("top-1 agreement with the original (held-out images)")
    ax.set_title(title or "SCC settings: cost vs function")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(os.fspath(path), format="png", dpi=100)
