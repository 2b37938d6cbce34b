"""Counting and timing, before vs after: MACs/FLOPs, parameters, model size and latency.

:func:`profile` measures one model, or an original and its converted form side by side, and
returns a :class:`ProfileReport` (``str(report)`` is a table, ``report.to_json()`` is JSON,
``report.plot(path)`` a PNG chart).

Counting conventions (stated in every report):

* A MAC is one multiply-accumulate; FLOPs = 2 x MACs. Counts come from
  ``torch.utils.flop_counter.FlopCounterMode`` (the SCC op registers its own formula):
  convolutions, matrix products and attention. Bias additions are not counted;
  BatchNorm, activations, pooling and other elementwise ops count 0 (as if folded into the
  neighbouring convolution). Ops outside ``aten``/``prims`` that have no formula are listed
  as warnings, never silently treated as free.
* Forward pass by default. ``train=True`` adds the backward pass of a training step that
  computes the gradient of every floating-point parameter (not of the input): each
  convolution costs its forward MACs once for the weight gradient and once more for the
  input gradient when one is needed. PyTorch's own formula for the weight gradient of a
  grouped convolution (``aten.convolution_backward``, checked on torch 2.14.1) counts
  ``groups`` times too many MACs (a depthwise conv's by ``C``); :func:`profile` replaces it.
  Backward counts are totals: per-layer rows hold forward MACs only, because PyTorch's
  module tracking attributes backward ops to the wrong module around residual branches.
* Counting runs the model for real, in eval mode (no BatchNorm statistic updates); gradients
  are taken with ``torch.autograd.grad``, so no ``.grad`` of the caller's model is touched.

Latency is the forward pass in eval mode under ``torch.inference_mode()``, measured outside
any dispatch mode: warm-up runs, then ``repeats`` timed runs of each model taken in turn
(before, after, after, before, ...) so that drift of the machine affects both alike; the
report gives the median and the interquartile range in milliseconds. CUDA runs are timed
with events after a synchronisation, CPU runs with ``time.perf_counter`` (the thread count
is reported).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tabulate import tabulate
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode, is_in_torch_dispatch_mode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from . import ops as _ops  # noqa: F401  (registers the SCC op and its FLOP formulas)

__all__ = [
    "CONVENTION", "BatchProfile", "LatencyStats", "LayerComparison", "LayerProfile", "ModelProfile",
    "ProfileReport", "profile",
]

CONVENTION = (
    "MACs = multiply-accumulates, FLOPs = 2 x MACs; bias adds not counted; BatchNorm, "
    "activations, pooling and elementwise ops count 0 (as if folded)"
)
_TRAIN_CONVENTION = "train MACs = forward + backward (weight gradients, and input gradients where needed)"

# Namespaces whose ops are understood without a FLOP formula: their compute-heavy ops
# (conv, mm, attention) have formulas, the rest are views, elementwise, norms or pooling.
_KNOWN_NAMESPACES = frozenset({"aten", "prims", "prim"})


# -- counting ------------------------------------------------------------------------------


def _conv_flops(x_shape: Sequence[int], w_shape: Sequence[int], out_shape: Sequence[int], transposed: bool) -> int:
    """FLOPs (2 per MAC) of a convolution's forward, in ``FlopCounterMode``'s shape convention.

    Regular conv: ``2 * N * prod(out spatial) * Cout * (Cin/groups) * prod(kernel)``;
    transposed conv: the same over the *input* spatial size. ``w_shape[1]`` already holds
    the per-group channel count, so grouping needs no further factor.
    """
    spatial = (x_shape if transposed else out_shape)[2:]
    return 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)


def _conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, _groups, output_mask, *, out_shape=None, **kwargs,
) -> int:
    """FLOPs of ``aten.convolution_backward``: the forward's FLOPs per gradient computed.

    Each forward multiply ``w[o, c, k] * x[n, c, p]`` yields exactly one multiply in the input
    gradient and one in the weight gradient, for any ``groups``. Replaces PyTorch's formula,
    which builds the weight gradient as a conv whose channel product ignores ``groups``.
    """
    forward = _conv_flops(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


_CUSTOM_FORMULAS = {torch.ops.aten.convolution_backward: _conv_backward_flops}


class _OpRecorder(TorchDispatchMode):
    """Records the ops that ``FlopCounterMode`` executes after its own decompositions.

    Entered *outside* the counter, so it sees what the counter ran (and could or could not
    count), not the inner kernels of a custom op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[Any, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = getattr(func, "_overloadpacket", func)
        self.calls[packet] = self.calls.get(packet, 0) + 1
        return func(*args, **(kwargs or {}))


@dataclass
class _Count:
    """Result of one counting run: FLOPs per module FQN (ops run by that module directly)."""

    total_flops: int
    self_flops: dict[str, int]
    unknown_ops: dict[str, int]


def _op_name(packet: Any) -> str:
    """``namespace::name`` of an op packet (``str()`` of anything else)."""
    return getattr(packet, "_qualified_op_name", None) or str(packet)


def _self_counts(counts: dict[str, dict[Any, int]], root_name: str) -> dict[str, int]:
    """FLOPs that each module ran itself (its total minus its tracked children's totals).

    ``FlopCounterMode`` keys modules as ``RootClass.child.grandchild``; the result is keyed
    by the ``named_modules`` name (``""`` for the root).
    """
    totals = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global"}
    child_sum: dict[str, int] = {}
    for name, total in totals.items():
        if "." in name:
            parent = name.rsplit(".", 1)[0]
            child_sum[parent] = child_sum.get(parent, 0) + total
    out = {}
    for name, total in totals.items():
        own = total - child_sum.get(name, 0)
        if name == root_name:
            key = ""
        elif name.startswith(root_name + "."):
            key = name[len(root_name) + 1:]
        else:
            key = name
        out[key] = out.get(key, 0) + own
    outside = sum(counts.get("Global", {}).values()) - totals.get(root_name, 0)
    if outside:
        out["(outside modules)"] = outside
    return out


def _float_outputs(out: Any) -> list[Tensor]:
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, Tensor) and t.is_floating_point() and t.requires_grad]


def _count(model: nn.Module, x: Tensor, train: bool) -> _Count:
    """Count one forward (and, with ``train``, one backward) of ``model`` on ``x``."""
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FORMULAS)
    params = [p for p in model.parameters() if p.is_floating_point()]
    saved_flags = [p.requires_grad for p in params]
    try:
        if train:
            for p in params:
                p.requires_grad_(True)
        with recorder, counter, torch.set_grad_enabled(train):
            out = model(x)
            if train:
                outputs = _float_outputs(out)
                if outputs and params:
                    loss = sum(t.sum() for t in outputs)
                    torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p, flag in zip(params, saved_flags):
            p.requires_grad_(flag)
    unknown = {
        _op_name(packet): n
        for packet, n in recorder.calls.items()
        if packet not in counter.flop_registry
        and _op_name(packet).split("::", 1)[0] not in _KNOWN_NAMESPACES
    }
    return _Count(
        total_flops=counter.get_total_flops(),
        self_flops=_self_counts(counter.get_flop_counts(), type(model).__name__),
        unknown_ops=unknown,
    )


# -- timing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Forward latency in milliseconds: median and quartiles of ``runs`` timed runs."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int

    @property
    def iqr_ms(self) -> float:
        """Interquartile range ``q3 - q1`` in milliseconds."""
        return self.q3_ms - self.q1_ms

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if len(samples_ms) == 1:
            (s,) = samples_ms
            return cls(s, s, s, 1)
        q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
        return cls(statistics.median(samples_ms), q1, q3, len(samples_ms))

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "q1_ms": self.q1_ms, "q3_ms": self.q3_ms,
                "iqr_ms": self.iqr_ms, "runs": self.runs}


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """One timed call in ms: CUDA events after a synchronisation, else ``perf_counter``."""
    if device.type == "cuda":
        def timed(fn: Callable[[], object]) -> float:
            stream = torch.cuda.current_stream(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)
        return timed

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return timed


def _time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, LatencyStats]:
    """Time each function ``repeats`` times, round-robin with the order reversed every round."""
    if is_in_torch_dispatch_mode():
        raise RuntimeError(
            "profile: latency must be measured outside any TorchDispatchMode (e.g. "
            "FlopCounterMode); call profile() outside it or pass latency=False"
        )
    timed = _timer(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            samples[name].append(timed(fns[name]))
    return {name: LatencyStats.of(s) for name, s in samples.items()}


def _peak_activation_bytes(model: nn.Module, x: Tensor) -> int:
    """Peak CUDA memory allocated during one inference forward, above what was live before."""
    device = x.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        out = model(x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)


# -- results -------------------------------------------------------------------------------


@dataclass
class LayerProfile:
    """One module of one model: its own parameters and the forward MACs of the ops it runs
    itself (backward counts are totals only: PyTorch's module tracking is not reliable
    enough in the backward pass to attribute them to layers)."""

    name: str
    type: str
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "params": self.params, "macs": self.macs,
                "flops": 2 * self.macs}


@dataclass
class BatchProfile:
    """Counts and timings of one model at one batch size (MACs; FLOPs = 2 x MACs)."""

    batch_size: int
    macs: int
    train_macs: int | None = None
    latency: LatencyStats | None = None
    peak_activation_bytes: int | None = None

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "macs": self.macs,
            "flops": self.flops,
            "train_macs": self.train_macs,
            "train_flops": None if self.train_macs is None else 2 * self.train_macs,
            "latency": None if self.latency is None else self.latency.to_dict(),
            "peak_activation_bytes": self.peak_activation_bytes,
        }


@dataclass
class ModelProfile:
    """Everything measured for one model.

    ``params`` counts unique parameter tensors (a tied weight once); ``size_bytes`` maps a
    dtype name to the bytes of unique parameters and buffers of that dtype. ``layers`` and
    the properties below describe the first batch size.
    """

    label: str
    model_type: str
    params: int
    size_bytes: dict[str, int]
    batches: list[BatchProfile]
    layers: list[LayerProfile]
    unknown_ops: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        """Forward MACs at the first batch size."""
        return self.batches[0].macs

    @property
    def flops(self) -> int:
        """Forward FLOPs (2 x MACs) at the first batch size."""
        return self.batches[0].flops

    @property
    def train_macs(self) -> int | None:
        """Forward + backward MACs at the first batch size (``train=True`` only)."""
        return self.batches[0].train_macs

    @property
    def total_size_bytes(self) -> int:
        return sum(self.size_bytes.values())

    def batch(self, batch_size: int) -> BatchProfile:
        for b in self.batches:
            if b.batch_size == batch_size:
                return b
        raise KeyError(f"batch size {batch_size} was not profiled; profiled: {[b.batch_size for b in self.batches]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "type": self.model_type,
            "params": self.params,
            "size_bytes": dict(self.size_bytes),
            "total_size_bytes": self.total_size_bytes,
            "batches": [b.to_dict() for b in self.batches],
            "layers": [layer.to_dict() for layer in self.layers],
            "unknown_ops": dict(self.unknown_ops),
        }


@dataclass
class LayerComparison:
    """A per-layer row joined by module name across the two models.

    When a module was replaced by a container (or the reverse), the rows of its
    submodules are merged under the outer name and the types are joined with ``+``.
    """

    name: str
    type_before: str | None
    type_after: str | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type_before": self.type_before,
            "type_after": self.type_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
        }


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
            f"batch: {', '.join(str(b) for b in st['batch_sizes'])} | input: {tuple(st['input_shape'])} | "
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


# -- the entry point -----------------------------------------------------------------------


def _check_positive_ints(name: str, value: Any, example: str) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ValueError(
            f"profile: {name}={value!r} is invalid: expected a non-empty sequence of positive ints, e.g. {example}"
        )
    return items


def _model_device(model: nn.Module) -> torch.device | None:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None


def _resolve_device(device: torch.device | str | None, models: Iterable[nn.Module]) -> torch.device:
    if device is None:
        for m in models:
            found = _model_device(m)
            if found is not None:
                return found
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"profile: device={device!r} is not a device: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"profile: device={device!r} but torch.cuda.is_available() is False; use device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _prepared(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """``model`` itself if it already lives on ``device`` in ``dtype``, else a moved copy
    (the caller's model is never moved or cast)."""
    tensors = list(model.parameters()) + list(model.buffers())
    fits = all(
        t.device == device and (dtype is None or not t.is_floating_point() or t.dtype == dtype)
        for t in tensors
    )
    if fits:
        return model
    moved = copy.deepcopy(model)
    return moved.to(device=device, dtype=dtype) if dtype is not None else moved.to(device=device)


def _unique(tensors: Iterable[Tensor]) -> list[Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _size_bytes(model: nn.Module) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for t in _unique(list(model.parameters()) + list(model.buffers())):
        name = str(t.dtype).removeprefix("torch.")
        sizes[name] = sizes.get(name, 0) + t.numel() * t.element_size()
    return sizes


def _layer_rows(model: nn.Module, fwd: _Count) -> list[LayerProfile]:
    """Modules that own parameters or run counted ops themselves, in ``named_modules`` order.

    A parameter shared by several modules is attributed to the first one.
    """
    seen: set[int] = set()
    modules = dict(model.named_modules(remove_duplicate=False))
    rows = []
    listed = set()
    for name, module in model.named_modules():
        own = 0
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                own += p.numel()
        macs = fwd.self_flops.get(name, 0) // 2
        if own or macs:
            rows.append(LayerProfile(name, type(module).__name__, own, macs))
            listed.add(name)
    for name, flops in fwd.self_flops.items():
        if name not in listed and flops:
            kind = type(modules[name]).__name__ if name in modules else "-"
            rows.append(LayerProfile(name, kind, 0, flops // 2))
    return rows


def _batched_input(
    input_shape: tuple[int, ...], example_input: Tensor | None, batch: int,
    device: torch.device, dtype: torch.dtype,
) -> Tensor:
    """The input for one batch size: ``example_input``'s rows repeated cyclically (floating
    inputs cast to ``dtype``), or seeded ``randn`` of ``input_shape`` with ``N = batch``."""
    if example_input is not None:
        x = example_input.to(device=device, dtype=dtype if example_input.is_floating_point() else None)
        if x.shape[0] != batch:
            x = x[torch.arange(batch, device=device) % x.shape[0]]
        return x
    gen = torch.Generator().manual_seed(0)
    return torch.randn((batch, *input_shape[1:]), generator=gen, dtype=dtype).to(device)


def _input_dtype(model: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    """``dtype``, or with ``None`` the dtype of the model's first floating parameter."""
    if dtype is not None:
        return dtype
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return str(device)


def profile(
    before: nn.Module,
    after: nn.Module | None = None,
    *,
    input_shape: Sequence[int] = (1, 3, 224, 224),
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = torch.float32,
    batch_sizes: Sequence[int] | None = None,
    train: bool = False,
    latency: bool = True,
    warmup: int = 5,
    repeats: int = 30,
    example_input: Tensor | None = None,
) -> ProfileReport:
    """Count MACs/FLOPs, parameters and size, and time the forward pass of one model, or of
    an original (``before``) and its converted form (``after``) side by side.

    Args:
        before: the model (the original, when comparing).
        after: the converted model, or ``None`` to profile ``before`` alone.
        input_shape: NCHW shape of the random input (``N`` is the batch size unless
            ``batch_sizes`` is given).
        device: where to run; ``None`` means where ``before``'s parameters live (CPU if it
            has none). Models elsewhere are copied there; the caller's models are never moved.
        dtype: floating dtype of parameters and input (``None``: keep the models' own).
            Models in another dtype are profiled as a cast copy.
        batch_sizes: batch sizes to count and time (replacing ``input_shape[0]``).
        train: also count the backward pass of a training step (MACs of forward +
            backward; latency stays forward-only).
        latency: time the forward pass (set ``False`` to count only).
        warmup: untimed runs of each model before timing.
        repeats: timed runs of each model (the report gives their median and IQR).
        example_input: a real input tensor to use instead of a random one; its rows are
            repeated cyclically to reach each batch size.

    Returns:
        A :class:`ProfileReport`. Counts are MACs (multiply-accumulates) with FLOPs = 2 x MACs;
        bias adds, BatchNorm, activations and pooling are not counted.

    Raises:
        TypeError: a model is not an ``nn.Module``.
        ValueError: a bad ``input_shape``/``batch_sizes``/``device``/``warmup``/``repeats``,
            or a model that fails on the input (the message names the shape and the error).

    Example:
        >>> import torch
        >>> from scc_convert import SCCConv2d
        >>> before = torch.nn.Conv2d(64, 128, 1, bias=False)
        >>> after = SCCConv2d(64, 128, cg=4, co=0.5)
        >>> report = profile(before, after, input_shape=(1, 64, 8, 8), latency=False)
        >>> report.before.macs, report.after.macs
        (524288, 131072)
    """
    for label, model in (("before", before), ("after", after)):
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"profile: {label} must be a torch.nn.Module, got {type(model).__name__}")
    if example_input is not None:
        if not isinstance(example_input, Tensor) or example_input.dim() == 0:
            raise ValueError("profile: example_input must be a tensor with a batch dimension")
        input_shape = tuple(example_input.shape)
    shape = _check_positive_ints("input_shape", input_shape, "(1, 3, 224, 224)")
    batches = tuple(dict.fromkeys(
        _check_positive_ints("batch_sizes", batch_sizes, "(1, 8, 32)") if batch_sizes is not None else (shape[0],)
    ))
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"profile: {name}={value!r} is invalid: expected an int >= {low}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"profile: dtype={dtype!r} is invalid: expected a floating torch.dtype such as torch.float32")

    originals = {"before": before} if after is None else {"before": before, "after": after}
    dev = _resolve_device(device, originals.values())
    models = {label: _prepared(m, dev, dtype) for label, m in originals.items()}
    modes = {label: m.training for label, m in models.items()}
    in_dtype = _input_dtype(models["before"], dtype)
    warn: list[str] = []
    try:
        for m in models.values():
            m.eval()
        results = _measure(models, shape, example_input, batches, dev, in_dtype, train, latency, warmup, repeats)
    finally:
        for label, m in models.items():
            m.train(modes[label])

    if after is None:
        results["before"].label = "model"
    for prof in results.values():
        if prof.unknown_ops:
            ops_text = ", ".join(f"{op} ({n} calls)" for op, n in sorted(prof.unknown_ops.items()))
            warn.append(
                f"{prof.label}: ops with no FLOP formula were counted as 0 MACs: {ops_text}; register one "
                "with torch.utils.flop_counter.register_flop_formula to count them"
            )
    for w in warn:
        warnings.warn(w, RuntimeWarning, stacklevel=2)

    env = {
        "device": str(dev),
        "device_name": _device_name(dev),
        "dtype": str(in_dtype).removeprefix("torch."),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "python": platform.python_version(),
    }
    settings = {
        "input_shape": list(shape),
        "batch_sizes": list(batches),
        "train": bool(train),
        "latency": bool(latency),
        "warmup": warmup,
        "repeats": repeats,
        "example_input": example_input is not None,
    }
    return ProfileReport(results["before"], results.get("after"), env, settings, warn)


def _measure(
    models: dict[str, nn.Module], shape: tuple[int, ...], example_input: Tensor | None,
    batches: tuple[int, ...], dev: torch.device, dtype: torch.dtype,
    train: bool, latency: bool, warmup: int, repeats: int,
) -> dict[str, ModelProfile]:
    per_batch: dict[str, list[BatchProfile]] = {label: [] for label in models}
    layers: dict[str, list[LayerProfile]] = {}
    unknown: dict[str, dict[str, int]] = {label: {} for label in models}
    for batch in batches:
        x = _batched_input(shape, example_input, batch, dev, dtype)
        for label, model in models.items():
            try:
                fwd = _count(model, x, train=False)
                trn = _count(model, x, train=True) if train else None
            except Exception as err:  # noqa: BLE001 - the model's own error, re-raised with context
                raise ValueError(
                    f"profile: the {label} model ({type(model).__name__}) failed on an input of shape "
                    f"{tuple(x.shape)}: {type(err).__name__}: {err}"
                ) from err
            for op, n in {**fwd.unknown_ops, **(trn.unknown_ops if trn else {})}.items():
                unknown[label][op] = max(unknown[label].get(op, 0), n)
            if label not in layers:
                layers[label] = _layer_rows(model, fwd)
            peak = _peak_activation_bytes(model, x) if dev.type == "cuda" else None
            per_batch[label].append(BatchProfile(
                batch_size=batch,
                macs=fwd.total_flops // 2,
                train_macs=trn.total_flops // 2 if trn else None,
                peak_activation_bytes=peak,
            ))
        if latency:
            with torch.inference_mode():
                fns = {label: (lambda m=model: m(x)) for label, model in models.items()}
                stats = _time_interleaved(fns, dev, warmup, repeats)
            for label in models:
                per_batch[label][-1].latency = stats[label]
    return {
        label: ModelProfile(
            label=label,
            model_type=type(model).__name__,
            params=sum(p.numel() for p in _unique(model.parameters())),
            size_bytes=_size_bytes(model),
            batches=per_batch[label],
            layers=layers[label],
            unknown_ops=unknown[label],
        )
        for label, model in models.items()
    }
