"""Deploying models that contain SCC layers: ONNX (standard ops only), torch.export, TorchScript.

ONNX
----
No ONNX runtime knows ``scc::scc_conv2d``, so :func:`export_onnx` writes every SCC layer out as
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
:func:`register_onnx_symbolic`); :func:`export_onnx` drives either.

torch.export and TorchScript
----------------------------
``torch.ops.scc.scc_conv2d`` is registered when ``scc_convert`` is imported, so
``torch.export.export`` captures it as one node, ``torch.export.save``/``load`` round-trip it
(import ``scc_convert`` before loading), and ``torch.jit.trace`` records it as a
``scc::scc_conv2d`` call that ``torch.jit.save``/``load`` keep. :func:`export_program` adds a
dynamic batch dimension, eval mode, an atomic write and a check of the saved program.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .geometry import SCCGeometry
from .inputs import as_inputs, find_example_inputs
from .optimize import optimize_for_inference

__all__ = [
    "ExportCheckError",
    "choose_decomposition",
    "export_onnx",
    "export_program",
    "onnx_translation_table",
    "register_onnx_symbolic",
]

logger = logging.getLogger(__name__)

Decomposition = Literal["auto", "grouped", "dense"]
_DECOMPOSITIONS = ("auto", "grouped", "dense")

# "auto" picks the grouped form when it saves at least this many MACs per value it moves.
_AUTO_MACS_PER_MOVED_VALUE = 100

_SYMBOLIC_NAME = "scc::scc_conv2d"
_MIN_OPSET = 13  # Unsqueeze with axes as an input; ScatterElements
_DEFAULT_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 1e-2}  # otherwise 1e-4


class ExportCheckError(RuntimeError):
    """The exported model's outputs differ from the PyTorch model's (the file is not written)."""


# -- the decomposition (one implementation, two graph builders) ---------------------------


def _check_decomposition(decomposition: str) -> None:
    if decomposition not in _DECOMPOSITIONS:
        raise ValueError(f"decomposition={decomposition!r} is invalid; use one of {', '.join(_DECOMPOSITIONS)}")


def choose_decomposition(geometry: SCCGeometry, decomposition: Decomposition = "auto") -> str:
    """The ONNX form of one SCC layer: ``"grouped"`` or ``"dense"`` (see the module docstring).

    Example:
        >>> choose_decomposition(SCCGeometry(512, 2048, cg=4, co=0.5))
        'grouped'
        >>> choose_decomposition(SCCGeometry(24, 144, cg=4, co=0.5))
        'dense'
    """
    _check_decomposition(decomposition)
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


def _emit_scc(b: Any, input: Any, weight: Any, bias: Any, geom: SCCGeometry, window_of, decomposition: str) -> Any:
    """Build the SCC out of standard ONNX ops with builder ``b`` (see :class:`_ScriptBuilder`)."""
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


def _emit_epilogue(b: Any, y: Any, activation: str, residual: Any) -> Any:
    """The fused op's epilogue (``ops/epilogue.py``) as standard ONNX ops (opset 13):
    ``act(y + residual)``; onnxruntime fuses these patterns into its kernels."""
    if residual is not None:
        y = b.op("Add", y, residual)
    if activation == "relu":
        return b.op("Relu", y)
    if activation == "relu6":
        return b.op("Clip", y, b.scalar(0.0, like=y), b.scalar(6.0, like=y))
    if activation == "hardswish":  # x * relu6(x + 3) / 6 = x * HardSigmoid(x; 1/6, 1/2)
        return b.op("Mul", y, b.op("HardSigmoid", y, alpha=1.0 / 6.0, beta=0.5))
    if activation == "silu":
        return b.op("Mul", y, b.op("Sigmoid", y))
    if activation == "gelu":  # x/2 * (1 + erf(x / sqrt 2)), the pattern onnxruntime fuses to Gelu
        erf = b.op("Erf", b.op("Mul", y, b.scalar(math.sqrt(0.5), like=y)))
        return b.op("Mul", b.op("Mul", y, b.scalar(0.5, like=y)), b.op("Add", erf, b.scalar(1.0, like=y)))
    if activation != "none":
        raise ValueError(f"SCC ONNX export: activation {activation!r} has no ONNX form")
    return y


def _geometry_from_weight(weight_shape: Sequence[Any] | None, cg: int, co: float) -> SCCGeometry:
    dims = None if weight_shape is None else list(weight_shape)
    if dims is None or len(dims) != 2 or not all(isinstance(d, int) for d in dims):
        raise ValueError(
            f"SCC ONNX export: the weight needs a static 2-D shape [out_channels, in_channels // cg], "
            f"got {dims!r}; export a model whose SCC weights are parameters or buffers"
        )
    cout, gw = dims
    return SCCGeometry(gw * int(cg), cout, int(cg), float(co))


class _ScriptBuilder:
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


class _TorchScriptBuilder:
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


# -- exporter hooks -----------------------------------------------------------------------


def onnx_translation_table(decomposition: Decomposition = "auto") -> dict[Callable, Callable]:
    """``custom_translation_table`` entry for ``torch.onnx.export(..., dynamo=True)``.

    Example:
        >>> import torch, scc_convert
        >>> from scc_convert.export import onnx_translation_table
        >>> layer = scc_convert.SCCConv2d(16, 16, cg=4, co=0.5).eval()
        >>> program = torch.onnx.export(layer, (torch.randn(1, 16, 4, 4),), dynamo=True,
        ...     custom_translation_table=onnx_translation_table(), verbose=False)
    """
    _check_decomposition(decomposition)
    builder = _ScriptBuilder()

    def scc_conv2d(input, weight, bias=None, cg=1, co=0.0, window_of=None):
        shape = weight.shape
        dims = None if shape is None else [d if isinstance(d, int) else None for d in shape]
        geom = _geometry_from_weight(dims, cg, co)
        return _emit_scc(builder, input, weight, bias, geom, window_of, decomposition)

    def scc_conv2d_fused(input, weight, bias=None, cg=1, co=0.0, window_of=None, activation="none", residual=None):
        return _emit_epilogue(builder, scc_conv2d(input, weight, bias, cg, co, window_of), activation, residual)

    return {torch.ops.scc.scc_conv2d.default: scc_conv2d, torch.ops.scc.scc_conv2d_fused.default: scc_conv2d_fused}


def register_onnx_symbolic(decomposition: Decomposition = "auto") -> None:
    """Teach ``torch.onnx.export(..., dynamo=False)`` (TorchScript-based) the SCC op.

    Registers a symbolic for ``scc::scc_conv2d``, opset >= 13, process-wide (torch keeps one
    registry); a second call replaces the first. :func:`export_onnx` registers it with
    ``"auto"`` on its first TorchScript-based export if it is not registered yet, and uses its
    own ``decomposition`` argument for its exports either way.

    Example:
        >>> import torch, scc_convert
        >>> from scc_convert.export import register_onnx_symbolic
        >>> register_onnx_symbolic()
        >>> torch.onnx.export(scc_convert.SCCConv2d(16, 16, cg=4, co=0.5), (torch.randn(1, 16, 4, 4),),
        ...     "/tmp/scc_doc_ts.onnx", dynamo=False)
    """
    global _registered_decomposition
    _check_decomposition(decomposition)
    from torch.onnx import symbolic_helper as sh

    def scc_conv2d(g, input, weight, bias, cg, co, window_of):
        geom = _geometry_from_weight(sh._get_tensor_sizes(weight), sh._maybe_get_const(cg, "i"), sh._maybe_get_const(co, "f"))
        wo = None if sh._is_none(window_of) else [int(w) for w in sh._maybe_get_const(window_of, "is")]
        b = None if sh._is_none(bias) else bias
        form = _decomposition_override.get() or decomposition
        return _emit_scc(_TorchScriptBuilder(g), input, weight, b, geom, wo, form)

    def scc_conv2d_fused(g, input, weight, bias, cg, co, window_of, activation, residual):
        y = scc_conv2d(g, input, weight, bias, cg, co, window_of)
        r = None if sh._is_none(residual) else residual
        return _emit_epilogue(_TorchScriptBuilder(g), y, sh._maybe_get_const(activation, "s"), r)

    torch.onnx.register_custom_op_symbolic(_SYMBOLIC_NAME, scc_conv2d, _MIN_OPSET)
    torch.onnx.register_custom_op_symbolic(_SYMBOLIC_NAME + "_fused", scc_conv2d_fused, _MIN_OPSET)
    _registered_decomposition = decomposition


# What register_onnx_symbolic registered (torch's registry is process-wide), and the form an
# export_onnx call asks of it.
_registered_decomposition: str | None = None
_decomposition_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scc_onnx_decomposition", default=None
)


# -- shared helpers -----------------------------------------------------------------------


def _as_inputs(model: nn.Module, example_input: Tensor | Sequence[Tensor] | Sequence[int] | None) -> tuple[Tensor, ...]:
    """The example inputs: given, made from a shape, or (``None``) found as
    :func:`scc_convert.inputs.find_example_inputs` does."""
    if example_input is None:
        with _eval_mode(model):
            found = find_example_inputs(model)
        if found.inputs is None:
            raise ValueError(f"export: no example_input given, and {found.describe()}")
        return found.inputs
    param = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    try:
        inputs = as_inputs(example_input, *((param.device, param.dtype) if param is not None else ()))
    except TypeError:
        inputs = ()
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(
            "example_input must be a Tensor, a tuple of Tensors (the model's positional inputs) or a shape "
            f"such as (1, 3, 224, 224), got {type(example_input).__name__}"
        )
    return inputs


def _batch_size(inputs: tuple[Tensor, ...]) -> int:
    sizes = {t.shape[0] if t.dim() else None for t in inputs}
    if len(sizes) != 1 or None in sizes:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise ValueError(
            f"dynamic_batch=True needs every input to carry the batch on dim 0 with one batch size; "
            f"got shapes {shapes} (pass dynamic_batch=False to export fixed shapes)"
        )
    return sizes.pop()


def _resized(inputs: tuple[Tensor, ...], batch: int) -> tuple[Tensor, ...]:
    """The inputs with batch ``batch``, built by repeating the example samples."""
    out = []
    for t in inputs:
        reps = math.ceil(batch / t.shape[0])
        out.append(t.repeat(reps, *([1] * (t.dim() - 1)))[:batch].contiguous(memory_format=_memory_format(t)))
    return tuple(out)


def _memory_format(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with every module in eval mode; restore each module's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A path in a fresh sibling directory; on success its files move next to ``path``.

    The final file appears in one rename (sidecar files such as external weights first), and
    nothing is left behind on failure.
    """
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = tmpdir / path.name
        yield staged
        if not staged.is_file():
            raise RuntimeError(f"the exporter did not write {str(staged)!r}")
        files = sorted(tmpdir.iterdir(), key=lambda f: f == staged)  # sidecar files first
        for f in files:
            with open(f, "rb+") as handle:  # on disk before it takes the final name
                os.fsync(handle.fileno())
        for f in files:
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _compare(
    what: str,
    got: Sequence[Any],
    expected: Sequence[Tensor],
    atol: float | None,
    rtol: float | None,
    batch: int,
    hint: str,
) -> None:
    """Raise :class:`ExportCheckError` unless ``|got - expected| <= atol + rtol * |expected|``.

    NaN matches NaN and an infinity matches the same infinity; anything else non-finite fails.
    """
    if len(got) != len(expected):
        raise ExportCheckError(f"{what} returned {len(got)} outputs, the PyTorch model {len(expected)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        g = torch.as_tensor(g)
        tol = _DEFAULT_TOLERANCE.get(e.dtype, 1e-4)
        a, r = (tol if atol is None else atol), (tol if rtol is None else rtol)
        if tuple(g.shape) != tuple(e.shape):
            raise ExportCheckError(
                f"{what} output {i} has shape {tuple(g.shape)}, the PyTorch model's {tuple(e.shape)} (batch {batch})"
            )
        e64, g64 = e.detach().cpu().double(), g.detach().cpu().double()
        err = (g64 - e64).abs()
        close = (e64.isfinite() & (err <= a + r * e64.abs())) | (g64 == e64) | (g64.isnan() & e64.isnan())
        bad = ~close
        err = torch.where(close, torch.zeros_like(err), err.nan_to_num(nan=math.inf))
        if bad.any():
            worst = int(torch.argmax(err))
            index = tuple(int(k) for k in torch.unravel_index(torch.tensor(worst), e.shape))
            raise ExportCheckError(
                f"{what} output {i} differs from PyTorch at batch {batch}: {int(bad.sum())} of {e.numel()} "
                f"values exceed atol={a:g} + rtol={r:g}*|expected|; worst at {index}: got "
                f"{float(g64.flatten()[worst]):.6g}, expected {float(e64.flatten()[worst]):.6g} "
                f"(largest failing |diff| {float(err.max()):.3g}). The file was not written; {hint}"
            )


def _reference(model: nn.Module, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    with torch.no_grad():
        return [t for t in pytree.tree_leaves(model(*inputs)) if isinstance(t, Tensor)]


def _check_batches(inputs: tuple[Tensor, ...], dynamic_batch: bool) -> list[tuple[Tensor, ...]]:
    """The example inputs, plus (dynamic batch) the same samples at another batch size."""
    if not dynamic_batch:
        return [inputs]
    n = _batch_size(inputs)
    return [inputs, _resized(inputs, n + 1)]


# -- ONNX ---------------------------------------------------------------------------------


def export_onnx(
    model: nn.Module,
    example_input: Tensor | Sequence[Tensor] | Sequence[int] | None,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamo: bool | None = True,
    check: bool = True,
    decomposition: Decomposition = "auto",
    optimize: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> Path:
    """Export ``model`` to an ONNX file that uses standard ONNX ops only.

    SCC layers become ``Gather`` + grouped ``Conv`` + ``Gather`` or one masked dense ``Conv``
    (``decomposition``; ``"auto"`` picks per layer what ran fastest in onnxruntime, see the
    module docstring). The model is exported in eval mode (BatchNorm uses its running
    statistics) and each module's train/eval flag is restored afterwards.

    Args:
        model: any ``nn.Module``, with or without ``SCCConv2d`` layers.
        example_input: a tensor (NCHW or channels_last; ONNX has no memory format), a tuple
            of the model's positional input tensors, a shape such as ``(1, 3, 224, 224)``
            (random input), or ``None`` to use the size the model declares or runs on
            (:func:`scc_convert.inputs.find_example_inputs`).
        path: the ``.onnx`` file; written atomically (a temporary file, then a rename) and
            only after the check passed. Models over 2 GB keep their weights in ``<path>.data``.
        opset: ONNX opset (>= 13); ``None``: the exporter's default.
        dynamic_batch: make dim 0 of every input and output dynamic (named ``batch``).
        dynamo: ``True``: the torch.export-based exporter; ``False``: the TorchScript-based one;
            ``None``: the former, falling back to the latter if it fails (logged).
        check: run ``onnx.checker`` and compare onnxruntime's (CPU) outputs with PyTorch's on
            ``example_input`` and, with ``dynamic_batch``, on the same samples at batch N+1.
        decomposition: ``"auto"``, ``"grouped"`` or ``"dense"``.
        optimize: export :func:`~scc_convert.optimize_for_inference` of the model (BatchNorm
            folded into SCC layers, the following add and activation after each SCC's ops);
            the check compares with the model as given.
        atol, rtol: check tolerances, ``|ort - torch| <= atol + rtol * |torch|``; default
            ``1e-4`` for fp32/fp64 and ``1e-2`` for fp16/bf16.

    Returns:
        ``Path(path)``.

    Raises:
        ExportCheckError: the outputs differ (nothing is written).
        ValueError / TypeError: bad arguments (the message names the value and the rule).

    Example:
        >>> import torch, scc_convert
        >>> from scc_convert.export import export_onnx
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), scc_convert.SCCConv2d(16, 32, cg=4, co=0.5))
        >>> export_onnx(model, torch.randn(2, 3, 16, 16), "/tmp/scc_doc.onnx")
        PosixPath('/tmp/scc_doc.onnx')
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(model, example_input)
    _check_decomposition(decomposition)
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < _MIN_OPSET):
        raise ValueError(f"opset={opset!r} is not supported: the SCC decomposition needs opset >= {_MIN_OPSET}")
    if dynamo not in (True, False, None):
        raise ValueError(f"dynamo must be True, False or None, got {dynamo!r}")
    trace_inputs = inputs
    if dynamic_batch and _batch_size(inputs) < 2:
        # A batch of 1 would be specialised into the graph; trace with 2, the file stays dynamic.
        trace_inputs = _resized(inputs, 2)
    with _eval_mode(model):
        expected = [(batch, _reference(model, batch)) for batch in _check_batches(inputs, dynamic_batch)] if check else []
        n_outputs = len(_reference(model, trace_inputs)) if not expected else len(expected[0][1])
        model = optimize_for_inference(model) if optimize else model
        with _staged(path) as staged:
            if dynamo is False:
                _export_torchscript(model, trace_inputs, staged, opset, dynamic_batch, decomposition, n_outputs)
            else:
                try:
                    _export_dynamo(model, trace_inputs, staged, opset, dynamic_batch, decomposition, n_outputs)
                except Exception as err:
                    if dynamo is True:
                        raise
                    logger.warning(
                        "torch.export-based ONNX export failed (%s: %s); retrying with the TorchScript-based exporter",
                        type(err).__name__, err,
                    )
                    _export_torchscript(model, trace_inputs, staged, opset, dynamic_batch, decomposition, n_outputs)
            if opset is not None:
                _check_opset(staged, opset)
            if check:
                _check_onnx(staged, expected, atol, rtol)
    return path


def _check_opset(path: Path, opset: int) -> None:
    """The exporters may keep a higher opset when they cannot convert down; say so."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise RuntimeError(
            f"the exporter wrote ONNX opset {got}, not the requested opset={opset} (its version "
            f"converter could not convert the graph); request opset {got} or try dynamo=False"
        )


def _io_names(n_inputs: int, n_outputs: int) -> tuple[list[str], list[str]]:
    ins = ["input"] if n_inputs == 1 else [f"input_{i}" for i in range(n_inputs)]
    outs = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    return ins, outs


def _export_dynamo(model, inputs, dest: Path, opset, dynamic_batch, decomposition, n_outputs) -> None:
    input_names, output_names = _io_names(len(inputs), n_outputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    program = torch.onnx.export(
        model,
        inputs,
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        custom_translation_table=onnx_translation_table(decomposition),
        input_names=input_names,
        output_names=output_names,
        verbose=False,
    )
    program.save(dest)


def _export_torchscript(model, inputs, dest: Path, opset, dynamic_batch, decomposition, n_outputs) -> None:
    import warnings

    input_names, output_names = _io_names(len(inputs), n_outputs)
    dynamic_axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    if _registered_decomposition is None:
        register_onnx_symbolic()
    token = _decomposition_override.set(decomposition)
    try:
        with warnings.catch_warnings():
            # dynamo=False was asked for: its deprecation notices are not news to the caller
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated.*")
            torch.onnx.export(
                model,
                inputs,
                str(dest),
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
    finally:
        _decomposition_override.reset(token)


def _check_onnx(path: Path, expected: list[tuple[tuple[Tensor, ...], list[Tensor]]], atol, rtol) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for inputs, reference in expected:
        if len(names) != len(inputs):
            raise ExportCheckError(f"the ONNX model takes {len(names)} inputs, the example has {len(inputs)}")
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(names, inputs)}
        got = session.run(None, feed)
        _compare("onnxruntime", got, reference, atol, rtol, inputs[0].shape[0] if inputs[0].dim() else 0,
                 "export with check=False to inspect it, or try decomposition='dense' / 'grouped'")


# -- torch.export -------------------------------------------------------------------------


def export_program(
    model: nn.Module,
    example_input: Tensor | Sequence[Tensor] | Sequence[int] | None,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    check: bool = True,
    optimize: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> Path:
    """``torch.export`` the model in eval mode and save the ``.pt2`` file atomically.

    SCC layers stay one ``torch.ops.scc.scc_conv2d`` (or, optimised,
    ``torch.ops.scc.scc_conv2d_fused``) node each; load the file with ``torch.export.load``
    after ``import scc_convert`` (which registers the ops).

    Args:
        model: any ``nn.Module``.
        example_input: a tensor, a tuple of the model's positional input tensors, a shape,
            or ``None`` (as in :func:`export_onnx`).
        path: the ``.pt2`` file.
        dynamic_batch: export dim 0 of every input as one dynamic dimension ``batch``.
        check: load the saved file back and compare its outputs with the model's on
            ``example_input`` (and at batch N+1 with ``dynamic_batch``); tolerances as in
            :func:`export_onnx`.
        optimize: export :func:`~scc_convert.optimize_for_inference` of the model.

    Returns:
        ``Path(path)``.

    Example:
        >>> import torch, scc_convert
        >>> from scc_convert.export import export_program
        >>> model = scc_convert.SCCConv2d(16, 32, cg=4, co=0.5)
        >>> export_program(model, torch.randn(2, 16, 8, 8), "/tmp/scc_doc.pt2")
        PosixPath('/tmp/scc_doc.pt2')
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(model, example_input)
    trace_inputs = _resized(inputs, 2) if dynamic_batch and _batch_size(inputs) < 2 else inputs
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    with _eval_mode(model):
        expected = [(b, _reference(model, b)) for b in _check_batches(inputs, dynamic_batch)] if check else []
        target = optimize_for_inference(model) if optimize else model
        program = torch.export.export(target, trace_inputs, dynamic_shapes=dynamic_shapes)
    with _staged(path) as staged:
        torch.export.save(program, staged)
        if check:
            loaded = torch.export.load(staged).module()
            for batch_inputs, reference in expected:
                with torch.no_grad():
                    got = [t for t in pytree.tree_leaves(loaded(*batch_inputs)) if isinstance(t, Tensor)]
                _compare("the saved program", got, reference, atol, rtol, batch_inputs[0].shape[0],
                         "export with check=False to inspect it")
    return path
