"""``ProfileReport``: the two models side by side, as tables, JSON and a PNG chart."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from .results import LayerComparison, ModelProfile
from .timing import LatencyStats

CONVENTION = (
    "MACs = multiply-accumulates, FLOPs = 2 x MACs; bias adds not counted; BatchNorm, "
    "activations, pooling and elementwise ops count 0 (as if folded)"
)
_INPUT_SOURCES = {"declared": " (declared by the model)", "tried": " (the first size the model ran on)"}
_TRAIN_CONVENTION = "train MACs = forward + backward (weight gradients, and input gradients where needed)"


def _saving(before: float | None, after: float | None) -> dict[str, float | None]:
    """``ratio = before / after`` (x fewer / x faster) and ``saving_pct = 100 * (1 - after/before)``."""
    if before is None or after is None:
        return {"ratio": None, "saving_pct": None}
    return {
        "ratio": before / after if after else None,
        "saving_pct": 100.0 * (before - after) / before if before else None,
    }


def _si(n: float | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:g}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{int(n)} B"


def _ratio(s: dict[str, float | None]) -> str:
    return "-" if s["ratio"] is None else f"{s['ratio']:.2f}x"


def _pct(s: dict[str, float | None]) -> str:
    return "-" if s["saving_pct"] is None else f"{s['saving_pct']:.1f}%"


def _share(part: int, total: int) -> str:
    return f"{100.0 * part / total:.1f}%" if total else "-"


def _latency(stats: LatencyStats | None) -> str:
    if stats is None:
        return "-"
    return f"{stats.median_ms:.3f} ms [IQR {stats.iqr_ms:.3f}]"


@dataclass
class ProfileReport:
    """The result of :func:`profile`: one model, or two side by side (``after`` is ``None``
    for a single model).

    ``str(report)`` renders tables (header, totals with savings, per-layer rows);
    :meth:`to_dict` / :meth:`to_json` give the same numbers for machines (exact integer MACs
    and FLOPs, bytes, milliseconds); :meth:`plot` writes a PNG.
    """

    before: ModelProfile
    after: ModelProfile | None
    environment: dict[str, Any]
    settings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[ModelProfile]:
        return [m for m in (self.before, self.after) if m is not None]

    # -- joined rows ---------------------------------------------------------------------

    @property
    def layers(self) -> list[LayerComparison]:
        """Per-layer rows joined by module name (first batch size)."""
        before = {layer.name: layer for layer in self.before.layers}
        after = {layer.name: layer for layer in self.after.layers} if self.after else {}
        order = list(before) + [n for n in after if n not in before]
        names = set(order)

        def key_of(name: str) -> str:
            if not name or name.startswith("("):
                return name
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in names:
                    return prefix
            return name

        groups: dict[str, list[str]] = {}
        for name in order:
            groups.setdefault(key_of(name), []).append(name)
        rows = []
        for key, members in groups.items():
            b = [before[n] for n in members if n in before]
            a = [after[n] for n in members if n in after]
            rows.append(LayerComparison(
                name=key,
                type_before=" + ".join(x.type for x in b) or None,
                type_after=(" + ".join(x.type for x in a) or None) if self.after else None,
                params_before=sum(x.params for x in b),
                params_after=sum(x.params for x in a),
                macs_before=sum(x.macs for x in b),
                macs_after=sum(x.macs for x in a),
            ))
        return rows

    def savings(self) -> dict[str, Any]:
        """Ratios (before/after) and percentage savings of every total; ``{}`` for one model."""
        if self.after is None:
            return {}
        b, a = self.before, self.after
        out: dict[str, Any] = {
            "params": _saving(b.params, a.params),
            "size_bytes": _saving(b.total_size_bytes, a.total_size_bytes),
            "batches": {},
        }
        for bb in b.batches:
            ab = a.batch(bb.batch_size)
            out["batches"][str(bb.batch_size)] = {
                "macs": _saving(bb.macs, ab.macs),
                "train_macs": _saving(bb.train_macs, ab.train_macs),
                "latency_median": _saving(
                    bb.latency.median_ms if bb.latency else None,
                    ab.latency.median_ms if ab.latency else None,
                ),
            }
        return out

    # -- output --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: counts are exact ints (MACs; FLOPs = 2 x MACs), sizes in
        bytes, latencies in milliseconds."""
        return {
            "convention": {"macs": CONVENTION, "train": _TRAIN_CONVENTION if self.settings.get("train") else None},
            "environment": dict(self.environment),
            "settings": dict(self.settings),
            "models": {m.label: m.to_dict() for m in self.models},
            "layers": [row.to_dict() for row in self.layers],
            "savings": self.savings(),
            "warnings": list(self.warnings),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as strict JSON (no NaN/Infinity)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def _header(self) -> str:
        env, st = self.environment, self.settings
        where = f"{env['device']} ({env['device_name']})"
        if env["threads"] is not None:
            where += f", {env['threads']} threads"
        lines = [
            f"scc_convert profile | device: {where} | dtype: {env['dtype']} | "
            f"batch: {', '.join(str(b) for b in st['batch_sizes'])} | input: {tuple(st['input_shape'])}"
            f"{_INPUT_SOURCES.get(st.get('input_source'), '')} | "
            f"torch {env['torch']}",
            f"Convention: {CONVENTION}; forward pass" + ("; " + _TRAIN_CONVENTION if st["train"] else ""),
        ]
        if st["latency"]:
            lines.append(
                f"Latency: forward, eval, torch.inference_mode(), {st['warmup']} warm-up + {st['repeats']} "
                "timed runs" + (", before/after interleaved" if self.after else "") + "; median [IQR] in ms"
            )
        return "\n".join(lines)

    def _totals_table(self) -> str:
        b, a = self.before, self.after
        rows: list[list[str]] = []

        def add(
            metric: str, vb, va, fmt: Callable[[Any], str], saving: dict | None = None, compare: bool = True
        ) -> None:
            if a is None:
                rows.append([metric, fmt(vb)])
            else:
                s = saving if saving is not None else _saving(vb, va)
                rows.append([metric, fmt(vb), fmt(va)] + ([_ratio(s), _pct(s)] if compare else ["", ""]))

        add("params (unique)", b.params, a.params if a else None, _si)
        dtypes = list(b.size_bytes) + [d for d in (a.size_bytes if a else {}) if d not in b.size_bytes]
        for d in dtypes:  # savings on the total only: a small buffer dtype gives silly ratios
            add(f"size {d}", b.size_bytes.get(d, 0), a.size_bytes.get(d, 0) if a else None, _bytes,
                compare=len(dtypes) == 1)
        if len(dtypes) > 1:
            add("size total", b.total_size_bytes, a.total_size_bytes if a else None, _bytes)
        for bb in b.batches:
            ab = a.batch(bb.batch_size) if a else None
            tag = f" @ batch {bb.batch_size}"
            add("MACs" + tag, bb.macs, ab.macs if ab else None, _si)
            add("FLOPs (2xMACs)" + tag, bb.flops, ab.flops if ab else None, _si)
            if bb.train_macs is not None:
                add("train MACs (fwd+bwd)" + tag, bb.train_macs, ab.train_macs if ab else None, _si)
            if bb.latency is not None:
                add("latency" + tag, bb.latency, ab.latency if ab else None, _latency,
                    _saving(bb.latency.median_ms, ab.latency.median_ms if ab and ab.latency else None) if ab else None)
            if bb.peak_activation_bytes is not None:
                add("peak activation memory" + tag, bb.peak_activation_bytes,
                    ab.peak_activation_bytes if ab else None, _bytes)
        headers = ["total", b.label]
        if a is not None:
            headers += [a.label, "ratio (before/after)", "saving"]
        return tabulate(rows, headers=headers, colalign=("left",) + ("right",) * (len(headers) - 1),
                        disable_numparse=True)

    def _layers_table(self) -> str:
        tb, ta = self.before.macs, self.after.macs if self.after else 0
        rows = []
        for r in self.layers:
            if self.after is None:
                row = [r.name or "(top level)", r.type_before or "-", _si(r.params_before), _si(r.macs_before),
                       _share(r.macs_before, tb)]
            else:
                tbefore, tafter = r.type_before or "-", r.type_after or "-"
                row = [
                    r.name or "(top level)",
                    tbefore if tbefore == tafter else f"{tbefore} -> {tafter}",
                    f"{_si(r.params_before)} -> {_si(r.params_after)}",
                    f"{_si(r.macs_before)} -> {_si(r.macs_after)}",
                    f"{_share(r.macs_before, tb)} -> {_share(r.macs_after, ta)}",
                ]
            rows.append(row)
        if self.after is None:
            headers = ["layer", "type", "params", "MACs", "share of MACs"]
        else:
            headers = ["layer", "type (before -> after)", "params", "MACs", "share of MACs"]
        title = (f"Per layer (forward, batch {self.before.batches[0].batch_size}; "
                 "modules with parameters or MACs):")
        return title + "\n" + tabulate(rows, headers=headers, disable_numparse=True)

    def summary(self) -> str:
        """The header and the totals table (``str(report)`` adds the per-layer rows)."""
        parts = [self._header(), "", self._totals_table()]
        if self.warnings:
            parts += [""] + [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.summary() + "\n\n" + self._layers_table()

    def plot(self, path: str | os.PathLike) -> None:
        """Write a PNG bar chart: per-layer MACs and per-batch latency, before vs after.

        Needs matplotlib (``pip install scc-convert[plot]``).
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError(
                "ProfileReport.plot needs matplotlib: pip install scc-convert[plot] (or pip install matplotlib)"
            ) from err
        rows = [r for r in self.layers if r.macs_before or r.macs_after]
        labels = [m.label for m in self.models]
        width = 0.8 / len(labels)
        fig = Figure(figsize=(max(8.0, 0.3 * len(rows) + 3), 8), layout="constrained")
        ax_macs, ax_lat = fig.subplots(2, 1, gridspec_kw={"height_ratios": (3, 2)})
        xs = range(len(rows))
        for i, label in enumerate(labels):
            values = [(r.macs_before if i == 0 else r.macs_after) / 1e6 for r in rows]
            ax_macs.bar([x + i * width for x in xs], values, width, label=label)
        ax_macs.set_xticks([x + width * (len(labels) - 1) / 2 for x in xs])
        ax_macs.set_xticklabels([r.name or "(top level)" for r in rows], rotation=90, fontsize=7)
        ax_macs.set_ylabel("MACs (millions)")
        ax_macs.set_title(f"Per-layer MACs, batch {self.before.batches[0].batch_size} (FLOPs = 2 x MACs)")
        ax_macs.legend()
        batches = [b.batch_size for b in self.before.batches]
        if self.settings.get("latency"):
            for i, model in enumerate(self.models):
                med = [b.latency.median_ms for b in model.batches]
                err = [[b.latency.median_ms - b.latency.q1_ms for b in model.batches],
                       [b.latency.q3_ms - b.latency.median_ms for b in model.batches]]
                ax_lat.bar([x + i * width for x in range(len(batches))], med, width, yerr=err,
                           capsize=3, label=model.label)
            ax_lat.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(batches))])
            ax_lat.set_xticklabels([f"batch {b}" for b in batches])
            ax_lat.set_ylabel("latency (ms, median, IQR bars)")
            ax_lat.set_title(f"Forward latency on {self.environment['device_name']} ({self.environment['dtype']})")
            ax_lat.legend()
        else:
            ax_lat.axis("off")
            ax_lat.text(0.5, 0.5, "latency not measured (latency=False)", ha="center", va="center")
        fig.savefig(os.fspath(path), format="png", dpi=100)
