"""What a search returns: :class:`SearchResult`, its per-layer :class:`LayerChoice` rows and
the measured :class:`Point` s (searched and uniform settings)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from .costs import Budget, format_cost

__all__ = ["LayerChoice", "Point", "SearchResult"]


@dataclass
class LayerChoice:
    """One searched layer: the chosen ``cg``/``co``, its cost before and after (MACs at the
    example input, parameters, latency in ms when the budget is latency), and the
    cross-validated error of every choice in context (``"cg/co" -> error``; 0 reproduces
    the original layer's outputs on held-out calibration images, 1 is no better than their
    mean)."""

    name: str
    cg: int
    co: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    latency_before_ms: float | None
    latency_after_ms: float | None
    error: float
    errors: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Point:
    """One converted and measured model: ``kind`` ``"searched"`` or ``"uniform"``; costs of
    the whole model (MACs at the example input, parameters, latency in ms or ``None`` when
    not timed); ``top1``/``kl``: top-1 agreement (0..1) and mean KL(original || converted)
    in nats on the held-out images; ``overrides`` the per-layer settings that produced it."""

    label: str
    kind: str
    macs: int
    params: int
    latency_ms: float | None
    top1: float
    kl: float
    overrides: dict[str, dict[str, float]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SearchResult:
    """The outcome of :func:`scc_convert.search`.

    Attributes:
        budget: the resolved target (metric, limit in MACs / parameters / ms, share).
        overrides: ``{layer: {"cg": .., "co": ..}}`` for every searched layer, ready for
            ``convert(model, overrides=result.overrides, calib_data=...)`` (pass the same
            ``patterns``/``include``/``exclude``/``min_channels``/``skip_*`` as the search
            when you changed them; :attr:`convert_kwargs` holds them all).
        layers: one :class:`LayerChoice` per searched layer, in forward order.
        skipped: layers left out of the search and why (the converter skips them, or no
            ``cg`` of the search divides their input channels).
        original: the original model's ``macs``, ``params`` (and ``latency_ms``).
        predicted: the chosen allocation's predicted ``macs``, ``params`` (``latency_ms``)
            and ``error`` (mean in-context error of the searched layers).
        measured: the converted model's ``macs``, ``params`` (``latency_ms``), ``top1`` and
            ``kl`` on the held-out images, and ``met`` (the budget holds).
        points: every model converted and measured on the way (the searched ones and the
            uniform settings compared with them).
        corrections: what the end-to-end check changed, in order (empty: nothing).
        eval_images: how many held-out images the function was measured on.
        seconds: wall time of the whole search.
        model: the converted model of the final choice (``convert``'s output).
        report: its :class:`~scc_convert.ConversionReport`.
    """

    budget: Budget
    overrides: dict[str, dict[str, float]]
    layers: list[LayerChoice]
    skipped: dict[str, str]
    original: dict[str, float | None]
    predicted: dict[str, float | None]
    measured: dict[str, Any]
    points: list[Point]
    corrections: list[str]
    eval_images: int
    seconds: float
    convert_kwargs: dict[str, Any] = field(repr=False, default_factory=dict)
    model: Any = field(repr=False, default=None)
    report: Any = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": {"metric": self.budget.metric, "limit": self.budget.limit, "share": self.budget.share},
            "overrides": self.overrides,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": dict(self.skipped),
            "original": dict(self.original),
            "predicted": dict(self.predicted),
            "measured": dict(self.measured),
            "points": [p.to_dict() for p in self.points],
            "corrections": list(self.corrections),
            "eval_images": self.eval_images,
            "seconds": self.seconds,
            "convention": "MACs = multiply-accumulates at the example input (FLOPs = 2 x MACs), bias excluded; "
                          "latency in ms (median); top1 = top-1 agreement with the original; kl in nats",
        }

    def to_json(self, **kwargs) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def overrides_json(self) -> str:
        """The overrides alone, as ``scc-convert MODEL --overrides FILE`` reads them."""
        return json.dumps(self.overrides, indent=2) + "\n"

    def __str__(self) -> str:
        metric = self.budget.metric
        rows = [[r.name, f"{r.cg}/{r.co:g}", _pair(r.macs_before, r.macs_after), _pair(r.params_before, r.params_after),
                 f"{r.error:.3f}"] for r in self.layers]
        lines = [
            f"SCC search: {len(self.layers)} layers, budget {self.budget.describe()}, {self.seconds:.1f} s",
            tabulate(rows, headers=["layer", "cg/co", "MACs", "params", "error"]),
        ]
        if self.skipped:
            lines.append("not searched: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items()))
        m = self.measured
        lines.append(
            f"{metric}: original {format_cost(metric, self.original.get(_key(metric)))}, predicted "
            f"{format_cost(metric, self.predicted.get(_key(metric)))}, measured {format_cost(metric, m.get(_key(metric)))} "
            f"({'within' if m.get('met') else 'OVER'} the budget)"
        )
        lines.append(f"function on {self.eval_images} held-out images: top-1 agreement {m['top1']:.3f}, KL {m['kl']:.3f}")
        lines.extend(f"correction: {c}" for c in self.corrections)
        lines.append(points_table(self.points))
        lines.append("error: cross-validated residual / output variance of each layer's least-squares fit, in context. "
                     "MACs = multiply-accumulates (FLOPs = 2 x MACs).")
        return "\n".join(lines)


def _key(metric: str) -> str:
    return "latency_ms" if metric == "latency" else metric


def points_table(points: list[Point]) -> str:
    rows = [[p.label, p.kind, format_cost("macs", p.macs), format_cost("params", p.params),
             format_cost("latency", p.latency_ms), f"{p.top1:.3f}", f"{p.kl:.3f}"] for p in points]
    return tabulate(rows, headers=["model", "kind", "MACs", "params", "latency", "top-1 agr.", "KL"])


def _pair(before: float, after: float) -> str:
    return format_cost("macs", before) if before == after else f"{format_cost('macs', before)} -> {format_cost('macs', after)}"
