"""``ConversionReport``: every candidate layer, converted or skipped, and why."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from tabulate import tabulate

__all__ = ["LayerRecord", "ConversionReport", "CAUSES"]

# What each skip cause means, for summaries ("34 layers where ...").
CAUSES = {
    "pattern": "whose pattern is not enabled",
    "unused": "that forward does not call as modules",
    "unsupported": "whose forward differs from nn.Conv2d / nn.Linear",
    "exclude": "excluded",
    "include": "not matched by include",
    "head": "the classifier head",
    "edge": "first/last layer (skip_first/skip_last)",
    "padding": "padded 1x1 convs",
    "stride": "with unequal strides",
    "min_channels": "below min_channels",
    "indivisible": "whose input channels cg does not divide",
}


@dataclass
class LayerRecord:
    """One candidate convolution.

    ``macs_*`` are multiply-accumulates for one forward at the report's ``input_shape``
    (``None`` when no input was available); FLOPs are twice that.
    """

    name: str
    pattern: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    converted: bool
    reason: str
    verified: bool
    cause: str = ""  # the kind of reason a layer was skipped (a key of CAUSES)
    cg: int | None = None
    co: float | None = None
    cd: int | None = None
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    kept_energy: float | None = None  # fraction of squared weight magnitude kept (slice/energy/std)
    calib_error: float | None = None  # lsq: residual / variance of the original outputs
    new_type: str | None = None


@dataclass
class ConversionReport:
    """What :func:`scc_convert.convert` did.

    Attributes:
        layers: one :class:`LayerRecord` per candidate, in network order.
        cg, co, init, patterns: the settings used.
        input_shape: the example input the MACs were counted on (``None``: not counted).
        input_note: where that input came from (given, declared by the model, found by
            trying sizes), or why there is none and how to give one.
        trace: ``"fx"`` (whole model traced), ``"partial"`` or ``"modules"`` (module order).
        trace_failures: module name -> tracing error, for the parts that did not trace.
        seconds: wall time of the conversion.
        warnings: what the caller should know (filters that matched nothing, nothing
            converted); also issued as ``UserWarning``.
    """

    layers: list[LayerRecord]
    cg: int
    co: float
    init: str
    patterns: tuple[str, ...]
    input_shape: tuple[int, ...] | None
    trace: str
    input_note: str = ""
    trace_failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def converted(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.converted]

    @property
    def skipped(self) -> list[LayerRecord]:
        return [r for r in self.layers if not r.converted]

    def totals(self) -> dict[str, int | None]:
        """Params and MACs of the candidate layers, before and after (other layers excluded)."""
        out: dict[str, int | None] = {
            "params_before": sum(r.params_before for r in self.layers),
            "params_after": sum(r.params_after for r in self.layers),
        }
        if self.input_shape is None:
            out["macs_before"] = out["macs_after"] = None
        else:
            out["macs_before"] = sum(r.macs_before or 0 for r in self.layers)
            out["macs_after"] = sum(r.macs_after or 0 for r in self.layers)
        return out

    def skip_summary(self, causes: int = 3) -> str:
        """One line: how many candidates were skipped for what, with the first layer of each
        cause and its reason, e.g. ``35 candidates skipped: 34 whose input channels cg does
        not divide (first: features.1.conv.1, cg=7 does not divide in_channels=32 ...)``."""
        groups: dict[str, list[LayerRecord]] = {}
        for r in self.skipped:
            groups.setdefault(r.cause or r.reason, []).append(r)
        if not groups:
            return "no candidate layers (no 1x1 convs, KxK convs or linear layers found)"
        ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
        parts = [f"{len(rs)} {CAUSES.get(cause, 'skipped')} (first: {rs[0].name}, {_clip(rs[0].reason, 110)})"
                 for cause, rs in ranked[:causes]]
        if len(ranked) > causes:
            parts.append(f"{sum(len(rs) for _, rs in ranked[causes:])} for other reasons")
        return f"{len(self.skipped)} candidates skipped: " + "; ".join(parts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["totals"] = self.totals()
        return data

    def to_json(self, **kwargs) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        rows = []
        for r in self.layers:
            if r.pattern == "linear":
                shape = f"{r.in_channels}->{r.out_channels} fc"
            else:
                shape = f"{r.in_channels}->{r.out_channels} k{r.kernel_size[0]}" + (f" s{r.stride[0]}" if r.stride[0] > 1 else "")
            if r.converted:
                quality = (
                    f"err {r.calib_error:.3f}" if r.calib_error is not None
                    else f"{100 * r.kept_energy:.1f}%" if r.kept_energy is not None else ""
                )
                status = f"-> {r.new_type} cg={r.cg} co={r.co} cd={r.cd}" + (f" ({r.reason})" if r.reason else "")
            else:
                quality, status = "", f"skipped: {r.reason}"
            pattern = r.pattern + ("" if r.verified else "?")
            rows.append([r.name, pattern, shape, status, _pair(r.params_before, r.params_after),
                         _pair(r.macs_before, r.macs_after), quality])
        table = tabulate(rows, headers=["layer", "pattern", "shape", "result", "params", "MACs", "kept"])
        t = self.totals()
        lines = [
            f"SCC conversion: {len(self.converted)} of {len(self.layers)} candidate layers converted "
            f"(cg={self.cg}, co={self.co}, init={self.init}, patterns={','.join(self.patterns)}, {self.seconds:.2f} s)",
            table,
            f"candidate layers: params {_pair(t['params_before'], t['params_after'])}, "
            + (f"MACs {_pair(t['macs_before'], t['macs_after'])} at {self.input_note}" if self.input_shape
               else f"MACs unknown: {self.input_note}"),
            "MACs = multiply-accumulates (FLOPs = 2 x MACs), bias excluded. kept: share of squared "
            "weight magnitude kept (slice/energy) or calibration error (lsq, residual / output variance).",
        ]
        if self.trace != "fx":
            failures: dict[str, list[str]] = {}
            for where, error in self.trace_failures.items():
                failures.setdefault(error, []).append(where)
            lines.append(
                f"note: the model did not trace as a whole ({self.trace}); patterns marked '?' were "
                f"found from module order (unverified). Failures: "
                + "; ".join(f"{_names(where)}: {_clip(error, 150)}" for error, where in failures.items())
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(names: list[str]) -> str:
    """``a, b, c`` or ``a, b and 8 more``."""
    return ", ".join(names) if len(names) <= 3 else f"{names[0]}, {names[1]} and {len(names) - 2} more"


def _pair(before: int | None, after: int | None) -> str:
    if before is None:
        return "n/a"
    if before == after:
        return _short(before)
    return f"{_short(before)} -> {_short(after)}"


def _short(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
