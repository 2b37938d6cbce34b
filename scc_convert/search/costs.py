"""What a search is budgeted in, and what each layer's choice costs.

* MACs: multiply-accumulates of one forward at the example input (FLOPs = 2 x MACs, bias
  excluded), as :func:`scc_convert.profile` counts them. An SCC with ``cg`` does
  ``1/cg`` of its 1x1 conv's MACs.
* params: parameter count. The least-squares fit gives every SCC a bias: ``Cout*gw + Cout``.
* latency: forward milliseconds on the model's device at the example input, median of
  interleaved runs; each layer's choices are timed on the layer's own input shape, and the
  model's latency is predicted as the original's minus the per-layer savings.

A target is a share of the original model's cost when it is a number ``<= 1``, else an
absolute amount: a count of MACs or parameters (``2.5e8``, or a string ``"250M"``), or, for
latency, seconds (a number above 1) or a string with a unit (``"12ms"``, ``"0.012s"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..nn import SCCConv2d
from ..profile.timing import time_interleaved
from .sensitivity import Choice

__all__ = ["METRICS", "Budget", "parse_target", "layer_latency_ms"]

METRICS = ("macs", "params", "latency")
UNITS = {"macs": "MACs", "params": "parameters", "latency": "ms"}
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


@dataclass(frozen=True)
class Budget:
    """A resolved target: ``limit`` in the metric's unit (MACs, parameters or ms), and how
    the user gave it (``share`` of the original, or ``None`` when absolute)."""

    metric: str
    limit: float
    share: float | None

    def describe(self) -> str:
        amount = format_cost(self.metric, self.limit)
        return f"{self.metric} <= {amount}" + (f" ({100 * self.share:.1f}% of the original)" if self.share is not None else "")


def format_cost(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric == "latency":
        return f"{value:.2f} ms"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def parse_target(metric: str, target: float | int | str, original: float) -> Budget:
    """Resolve ``target_<metric>`` against the original model's cost (see the module docstring)."""
    name = f"target_{metric}"
    value: float
    if isinstance(target, str):
        text = target.strip().lower().replace("_", "")
        if metric == "latency":
            m = re.fullmatch(r"([0-9.]+(?:e-?[0-9]+)?)\s*(ms|s)", text)
            if m is None:
                raise ValueError(f"{name}={target!r}: give a share of the original (0.5) or a time with a unit ('12ms', '0.012s')")
            value = float(m.group(1)) * (1e3 if m.group(2) == "s" else 1.0)
        else:
            m = re.fullmatch(r"([0-9.]+(?:e-?[0-9]+)?)\s*([kmg]?)", text)
            if m is None:
                raise ValueError(f"{name}={target!r}: give a share of the original (0.5) or a count ('250M', 2.5e8)")
            value = float(m.group(1)) * _SCALE[m.group(2)]
        return Budget(metric, value, None) if value > 1 or metric == "latency" else Budget(metric, value * original, value)
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise TypeError(f"{name} must be a number or a string, got {type(target).__name__}")
    if not target > 0:
        raise ValueError(f"{name}={target!r} must be > 0")
    if target <= 1:
        return Budget(metric, float(target) * original, float(target))
    return Budget(metric, float(target) * (1e3 if metric == "latency" else 1.0), None)


@torch.no_grad()
def layer_latency_ms(conv: nn.Conv2d, input_shape: tuple[int, ...], choices: list[Choice], *, warmup: int = 3,
                     repeats: int = 15) -> tuple[float, list[float]]:
    """Median forward ms of ``conv`` and of an SCC for each choice, on a random input of
    ``input_shape``, interleaved (the SCCs carry a bias, as the fitted ones do)."""
    x = torch.randn(input_shape, device=conv.weight.device, dtype=conv.weight.dtype)
    layers: dict[str, nn.Module] = {"original": conv}
    for i, c in enumerate(choices):
        layers[str(i)] = SCCConv2d(conv.in_channels, conv.out_channels, c.cg, c.co, stride=conv.stride[0], bias=True,
                                   device=conv.weight.device, dtype=conv.weight.dtype).eval()
    with torch.inference_mode():
        stats = time_interleaved({k: (lambda m=m: m(x)) for k, m in layers.items()}, x.device, warmup, repeats)
    return stats["original"].median_ms, [stats[str(i)].median_ms for i in range(len(choices))]
