"""SCC layers as standard ONNX ops, for runtimes that do not know ``scc::scc_conv2d``.

No ONNX runtime knows ``scc::scc_conv2d``, so :func:`~scc_convert.export.export_onnx` writes every SCC layer out as
standard ONNX ops, in one of two forms (indices come from :class:`~scc_convert.SCCGeometry`):

* ``"grouped"``: ``Gather`` the ``cd`` windows' input channels (``[N, cd*gw, H, W]``, window
  after window) -> ``Conv`` with ``group=cd`` (window ``i``'s outputs are group ``i``; a window
  with fewer outputs than the others gets filler rows) -> ``Gather`` the outputs back into
  channel order (left out when the order already matches). FLOPs are the SCC's.
* ``"dense"``: one 1x1 ``Conv`` whose ``[Cout, Cin]`` weight is the SCC weight scattered onto
  its windows (``ScatterElements``; onnxruntime folds it into a constant when the session
  starts). FLOPs are the original dense layer's, but onnxruntime keeps its blocked-layout
  (NCHWc) kernels and its Conv+BatchNorm+activation fusions.
* ``"auto"`` (default): per layer, ``"grouped"`` when the multiply-accumulates it saves are at
  least ``100`` per value it moves, i.e. ``Cout*(Cin-gw) >= 100*(cd*gw + Cout)``, else ``"dense"``
  (after ``convert(cg=4, co=0.5)`` that is 14 of ResNet-50's 36 SCC layers, the wide ones
  of stages 3 and 4, and MobileNetV2's last two, 960->320 and 320->1280).

Why: measured with onnxruntime 1.32 (CPUExecutionProvider, 1 intra-op thread) on a shared
2-core Xeon @ 2.5 GHz (AVX-512), fp32, cg=4, co=0.5, medians of 7-25 interleaved runs. A block
``conv3x3(32->Cin) + BN + ReLU -> SCC(Cin->Cout) -> BN + ReLU -> conv3x3(Cout->32)`` with the
SCC in each form, ms per block at N=1 / N=16 (single runs; drift between runs is up to 20%):

==================  ==============  ==============  ==============  ==============
Cin->Cout, HxW      dense           grouped         phase convs     Gather+MatMul
==================  ==============  ==============  ==============  ==============
24->144, 56x56      3.13 / 56.5     5.20 / 88.7     8.10 / 91.6     5.97 / 76.8
128->128, 56x56     4.57 / 127.0    6.26 / 166.4    5.56 / 161.4    5.91 / 158.8
256->256, 28x28     4.85 / 105.9    4.98 / 108.6    4.60 / 121.3    5.02 / 111.5
512->512, 14x14     2.06 / 52.5     1.96 / 47.9     1.75 / 46.2     1.89 / 49.2
512->2048, 7x7      2.27 / 30.9     1.80 / 26.3     1.80 / 26.6     1.80 / 26.0
2048->512, 7x7      2.28 / 50.5     1.75 / 65.5     1.62 / 53.9     1.78 / 39.2
320->1280, 7x7      1.13 / 15.5     1.03 / 14.1     1.02 / 14.1     1.02 / 13.6
==================  ==============  ==============  ==============  ==============

("phase convs": one grouped conv per window phase on a channel-rotated input, outputs
concatenated; "Gather+MatMul": the windows as a batched ``MatMul``. Neither was reliably
better than ``"grouped"``, so they are not offered.) The dense 1x1 conv runs in onnxruntime's
NCHWc kernels; every channel ``Gather`` forces a reorder out of and back into that layout and
blocks the Conv+BatchNorm and Conv+activation fusions, so on narrow or large-image layers
those copies cost more than the 4x fewer MACs save. Whole models converted with
``convert(cg=4, co=0.5)`` (``bench/deploy.py``, 224x224, ms at N=1 / N=16):

=============  ================  ============  ===============  ===============
model          original          auto          dense            grouped
=============  ================  ============  ===============  ===============
MobileNetV2    11.3 / 187        10.8 / 181    11.1 / 189       16.9 / 440
ResNet-50      76.9 / 1209       72.9 / 1212   78.9 / 1232      91.3 / 1686
=============  ================  ============  ===============  ===============

so in onnxruntime on CPU an SCC model exported with ``"auto"`` runs about as fast as the
original (0-5% faster), not 1.6-3x as its MAC count would suggest. Runtimes with fast grouped
convolutions may prefer ``decomposition="grouped"``.

Both exporters are supported: the dynamo-based one (``torch.onnx.export(..., dynamo=True)``,
via :func:`onnx_translation_table`) and the TorchScript-based one (via
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..geometry import SCCGeometry

__all__ = ["Decomposition", "DECOMPOSITIONS", "MIN_OPSET", "choose_decomposition", "check_decomposition", "emit_scc",
           "emit_epilogue", "geometry_from_weight", "ScriptBuilder", "TorchScriptBuilder"]

logger = logging.getLogger("scc_convert.export")

Decomposition = Literal["auto", "grouped", "dense"]
DECOMPOSITIONS = ("auto", "grouped", "dense")

# "auto" picks the grouped form when it saves at least this many MACs per value it moves.
_AUTO_MACS_PER_MOVED_VALUE = 100

MIN_OPSET = 13  # Unsqueeze with axes as an input; ScatterElements


def check_decomposition(decomposition: str) -> None:
    if decomposition not in DECOMPOSITIONS:
        raise ValueError(f"decomposition={decomposition!r} is invalid; use one of {', '.join(DECOMPOSITIONS)}")


def choose_decomposition(geometry: SCCGeometry, decomposition: Decomposition = "auto") -> str:
    """The ONNX form of one SCC layer: ``"grouped"`` or ``"dense"`` (see the module docstring).

    Example:
        >>> choose_decomposition(SCCGeometry(512, 2048, cg=4, co=0.5))
        'grouped'
        >>> choose_decomposition(SCCGeometry(24, 144, cg=4, co=0.5))
        'dense'
    """
    check_decomposition(decomposition)
    if decomposition != "auto":
        return decomposition
    g = geometry
    saved_macs = g.out_channels * (g.in_channels - g.group_width)
    moved_values = g.cyclic_distance * g.group_width + g.out_channels
    return "grouped" if saved_macs >= _AUTO_MACS_PER_MOVED_VALUE * moved_values else "dense"


@dataclass(frozen=True)
class _GroupedLayout:
    """Index tensors of the grouped form.

    ``input_index``: input channels of window 0, then window 1, ... (``None``: the identity).
    ``weight_rows``: the weight row of every grouped-conv output (group ``i`` = window ``i``,
    ``slots`` outputs each; a slot a window does not fill repeats one of its rows and is
    dropped by ``output_index``). ``output_index``: for each output channel ``o``, its position
    in the grouped-conv output (``None``: the identity).
    """

    groups: int
    slots: int
    input_index: tuple[int, ...] | None
    weight_rows: tuple[int, ...]
    output_index: tuple[int, ...] | None


def _grouped_layout(geom: SCCGeometry, window_of: Sequence[int] | None) -> _GroupedLayout:
    plan = geom.plan(window_of, order="window")
    cd = geom.cyclic_distance
    input_index = tuple(c for w in range(cd) for c in geom.window_channels(w))
    rows: list[int | None] = [None] * (cd * plan.slots)
    for o, p in enumerate(plan.position):
        rows[p] = o
    for w in range(cd):  # fill empty slots with a row of the same window
        first = rows[w * plan.slots]
        for p in range(w * plan.slots, (w + 1) * plan.slots):
            if rows[p] is None:
                rows[p] = first
    output_index = plan.position
    if output_index == tuple(range(len(rows))):
        output_index = None
    return _GroupedLayout(
        groups=cd,
        slots=plan.slots,
        input_index=None if input_index == tuple(range(geom.in_channels)) else input_index,
        weight_rows=tuple(rows),  # type: ignore[arg-type]
        output_index=output_index,
    )


def emit_scc(b: Any, input: Any, weight: Any, bias: Any, geom: SCCGeometry, window_of, decomposition: str) -> Any:
    """Build the SCC out of standard ONNX ops with builder ``b`` (see :class:`ScriptBuilder`)."""
    kind = choose_decomposition(geom, decomposition)
    logger.debug("SCC %s -> ONNX %s form", geom, kind)
    axes_hw = b.const([2, 3])
    if kind == "dense":
        columns = b.const(geom.input_channels_of(window_of))  # [Cout, gw]
        zeros = b.zeros([geom.out_channels, geom.in_channels], like=weight)
        dense = b.op("Unsqueeze", b.op("ScatterElements", zeros, columns, weight, axis=1), axes_hw)
        return b.op("Conv", input, dense, *([] if bias is None else [bias]))
    lay = _grouped_layout(geom, window_of)
    x = input if lay.input_index is None else b.op("Gather", input, b.const(lay.input_index), axis=1)
    rows = b.const(lay.weight_rows)
    grouped = b.op("Unsqueeze", b.op("Gather", weight, rows, axis=0), axes_hw)
    conv_bias = [] if bias is None else [b.op("Gather", bias, rows, axis=0)]
    y = b.op("Conv", x, grouped, *conv_bias, group=lay.groups)
    if lay.output_index is not None:
        y = b.op("Gather", y, b.const(lay.output_index), axis=1)
    return y


def emit_epilogue(b: Any, y: Any, activation: str, residual: Any, like: Any) -> Any:
    """The fused op's epilogue (``ops/epilogue.py``) as standard ONNX ops (opset 13):
    ``act(y + residual)``; onnxruntime fuses these patterns into its kernels. Constants take
    the dtype of ``like`` (the SCC's input, whose type the builders know)."""
    if residual is not None:
        y = b.op("Add", y, residual)
    if activation == "relu":
        return b.op("Relu", y)
    if activation == "relu6":
        return b.op("Clip", y, b.scalar(0.0, like=like), b.scalar(6.0, like=like))
    if activation == "hardswish":  # x * relu6(x + 3) / 6 = x * HardSigmoid(x; 1/6, 1/2)
        return b.op("Mul", y, b.op("HardSigmoid", y, alpha=1.0 / 6.0, beta=0.5))
    if activation == "silu":
        return b.op("Mul", y, b.op("Sigmoid", y))
    if activation == "gelu":  # x/2 * (1 + erf(x / sqrt 2)), the pattern onnxruntime fuses to Gelu
        erf = b.op("Erf", b.op("Mul", y, b.scalar(math.sqrt(0.5), like=like)))
        return b.op("Mul", b.op("Mul", y, b.scalar(0.5, like=like)), b.op("Add", erf, b.scalar(1.0, like=like)))
    if activation != "none":
        raise ValueError(f"SCC ONNX export: activation {activation!r} has no ONNX form")
    return y


def geometry_from_weight(weight_shape: Sequence[Any] | None, cg: int, co: float) -> SCCGeometry:
    dims = None if weight_shape is None else list(weight_shape)
    if dims is None or len(dims) != 2 or not all(isinstance(d, int) for d in dims):
        raise ValueError(
            f"SCC ONNX export: the weight needs a static 2-D shape [out_channels, in_channels // cg], "
            f"got {dims!r}; export a model whose SCC weights are parameters or buffers"
        )
    cout, gw = dims
    return SCCGeometry(gw * int(cg), cout, int(cg), float(co))


class ScriptBuilder:
    """Builds ONNX nodes with ONNX Script inside the dynamo exporter (opset 18)."""

    def __init__(self) -> None:
        import numpy as np
        from onnxscript import ir
        from onnxscript import opset18 as op

        self._np, self._ir, self._op = np, ir, op

    def const(self, values: Sequence[Any]) -> Any:
        return self._op.Constant(value=self._ir.tensor(self._np.asarray(values, dtype=self._np.int64)))

    def op(self, name: str, *inputs: Any, **attrs: int | float) -> Any:
        return getattr(self._op, name)(*inputs, **attrs)

    def zeros(self, shape: Sequence[int], like: Any) -> Any:
        zero = self._ir.tensor(self._np.zeros(1, dtype=like.dtype.numpy()))
        return self._op.ConstantOfShape(self.const(shape), value=zero)

    def scalar(self, value: float, like: Any) -> Any:
        return self._op.Constant(value=self._ir.tensor(self._np.asarray(value, dtype=like.dtype.numpy())))


class TorchScriptBuilder:
    """Builds ONNX nodes in a TorchScript-based exporter symbolic (``g.op``)."""

    def __init__(self, g: Any) -> None:
        self._g = g

    def const(self, values: Sequence[Any]) -> Any:
        return self._g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    def op(self, name: str, *inputs: Any, **attrs: int | float) -> Any:
        typed = {f"{k}_{'f' if isinstance(v, float) else 'i'}": v for k, v in attrs.items()}
        return self._g.op(name, *inputs, **typed)

    def zeros(self, shape: Sequence[int], like: Any) -> Any:
        dtype = like.type().dtype()
        return self._g.op("ConstantOfShape", self.const(shape), value_t=torch.zeros(1, dtype=dtype))

    def scalar(self, value: float, like: Any) -> Any:
        return self._g.op("Constant", value_t=torch.tensor(value, dtype=like.type().dtype()))
