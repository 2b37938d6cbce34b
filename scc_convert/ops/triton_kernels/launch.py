"""Launchers of the Triton SCC kernels, with the contract of the ops in ``ops/library.py``.

Every launch is first planned (:class:`Launch`: kernel, grid, arguments, compile-time
parameters), then run. ``python -m scc_convert.ops.triton_check`` compiles the same plans for
sm_80/sm_90 without a GPU, so what it checks is what the launcher runs.

CUDA tensors run compiled kernels; CPU tensors run under Triton's interpreter, which needs
``TRITON_INTERPRET=1`` in the environment before ``triton`` is first imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import torch
import triton
from torch import Tensor

from ...geometry import SCCGeometry, SortedRows
from .. import epilogue
from ..common import empty_output, geometry_for, output_memory_format
from . import configs
from .kernels import (
    LAYOUT_ANY,
    LAYOUT_NCHW,
    LAYOUT_NHWC,
    scc_forward_kernel,
    scc_grad_input_kernel,
    scc_grad_weight_kernel,
    scc_sum_splits_kernel,
)

__all__ = ["scc_forward", "scc_backward", "Launch", "plan_forward", "plan_grad_input",
           "plan_grad_weight", "plan_sum_splits", "interpreting"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# grad-weight: aim for this many programs per streaming multiprocessor
_PROGRAMS_PER_SM = 4


class Launch(NamedTuple):
    """One kernel launch: ``kernel[grid](*args, **meta)``."""

    kernel: Any
    grid: tuple[int, int, int]
    args: tuple
    meta: dict

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)


def interpreting() -> bool:
    """Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1`` when
    this package's kernels were first imported)."""
    return type(scc_forward_kernel).__name__ == "InterpretedFunction"


# -- tables (built in geometry.py, cached per geometry and device) --------------------------


@lru_cache(maxsize=256)
def _rows(geom: SCCGeometry, window_of: tuple[int, ...] | None) -> SortedRows:
    return geom.sorted_rows(window_of)


@lru_cache(maxsize=512)
def _row_tables(rows: SortedRows, device: torch.device) -> tuple[Tensor, Tensor]:
    def table(values):
        return torch.tensor(values, dtype=torch.int32, device=device)

    return table(rows.out_channel), table(rows.window_start)


@lru_cache(maxsize=1024)
def _tile_table(rows: SortedRows, kind: str, tile: int, device: torch.device) -> Tensor:
    pairs = rows.row_tiles(tile) if kind == "rows" else rows.channel_tiles(tile)
    return torch.tensor(pairs, dtype=torch.int32, device=device).reshape(-1)


def _sorted_rows(geom: SCCGeometry, window_of: Sequence[int] | None) -> SortedRows:
    return _rows(geom, None if window_of is None else tuple(int(w) for w in window_of))


# -- tensors --------------------------------------------------------------------------------


def _addressing(t: Tensor) -> tuple[int, tuple[int, int, int, int]]:
    """Layout code of a 4-D tensor for the kernels, and the strides to pass with it.

    ``LAYOUT_NCHW``: pixel ``p = h*W + w`` of a channel sits at offset ``p``;
    ``LAYOUT_NHWC``: channel ``c`` of a pixel at offset ``c`` and pixel ``p`` at ``p * s_w``;
    ``LAYOUT_ANY``: neither (strided views): full stride arithmetic.
    """
    _, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    if (w == 1 or sw == 1) and (h == 1 or sh == w):
        return LAYOUT_NCHW, (sn, sc, sh, sw)
    pixel = sw if w > 1 else sh
    if (c == 1 or sc == 1) and (h == 1 or w == 1 or sh == w * sw):
        return LAYOUT_NHWC, (sn, sc, pixel * w, pixel)
    return LAYOUT_ANY, (sn, sc, sh, sw)


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: TF32 for fp32 only when torch allows it for matmuls."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _fma(dtype: torch.dtype) -> bool:
    """Whether products of this dtype run on FMA units rather than tensor cores."""
    return dtype == torch.float64 or (dtype == torch.float32 and _precision(dtype) == "ieee")


def _chosen(override: configs.Config | None, dtype: torch.dtype, pick, *args) -> configs.Config:
    """The configuration to launch: ``override`` or the rule's pick, adjusted for the dtype."""
    fma = _fma(dtype)
    return configs.for_dtype(override or pick(*args, fma=fma), fma)


def _common_meta(dtype: torch.dtype, config: configs.Config) -> dict:
    return {
        "ACC_FP64": dtype == torch.float64,
        "DOT_FP32": interpreting() and dtype == torch.bfloat16,
        "PRECISION": _precision(dtype),
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }


def _check(input: Tensor, *others: Tensor | None) -> None:
    dev = input.device
    if dev.type != "cuda" and not (dev.type == "cpu" and interpreting()):
        raise RuntimeError(
            f"SCC Triton kernels: tensors are on {dev}; they run on CUDA tensors, or on CPU "
            f"tensors when TRITON_INTERPRET=1 was set before triton was imported"
        )
    if input.dtype not in _DTYPES:
        raise TypeError(f"SCC Triton kernels: dtype {input.dtype} is not supported (use {_DTYPES})")
    for t in others:
        if t is not None and (t.dtype != input.dtype or t.device != dev):
            raise TypeError(
                f"SCC: every tensor must match the input's dtype and device ({input.dtype}, {dev}); "
                f"got {t.dtype} on {t.device}"
            )


def _device_guard(t: Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@lru_cache(maxsize=16)
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# -- plans ----------------------------------------------------------------------------------


def plan_forward(
    out: Tensor, input: Tensor, weight: Tensor, bias: Tensor | None, geom: SCCGeometry,
    window_of: Sequence[int] | None, config: configs.Config | None = None,
    activation: str = "none", residual: Tensor | None = None,
) -> Launch:
    """Plan ``out = act(scc(input) + bias + residual)``; ``out`` is ``[N, Cout, H, W]`` in a
    dense layout, ``residual`` (optional) any layout of that shape. ``config`` overrides the
    rule's choice (the compile check uses it)."""
    n, cin, h, w = input.shape
    rows = _sorted_rows(geom, window_of)
    config = _chosen(config, input.dtype, configs.pick_forward, rows, h * w)
    row_out, row_start = _row_tables(rows, input.device)
    x_code, x_strides = _addressing(input)
    y_code, y_strides = _addressing(out)
    r_code, r_strides = (y_code, y_strides) if residual is None else _addressing(residual)
    grid = (triton.cdiv(geom.out_channels, config.rows), triton.cdiv(h * w, config.cols), n)
    args = (
        input, weight, weight if bias is None else bias, out if residual is None else residual, out,
        row_out, row_start, _tile_table(rows, "rows", config.rows, input.device),
        cin, geom.out_channels, h, w, geom.group_width, *x_strides, *r_strides, *y_strides,
    )
    meta = dict(
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        ACTIVATION=epilogue.activation_code(activation), X_LAYOUT=x_code, R_LAYOUT=r_code, Y_LAYOUT=y_code,
        BM=config.rows, BN=config.cols, BK=config.k, START_ALIGN=rows.start_alignment,
        **_common_meta(input.dtype, config),
    )
    return Launch(scc_forward_kernel, grid, args, meta)


def plan_grad_input(
    out: Tensor, grad_output: Tensor, weight: Tensor, geom: SCCGeometry, window_of: Sequence[int] | None,
    config: configs.Config | None = None,
) -> Launch:
    """Plan ``out = d scc / d input`` (``out`` shaped like the input, dense layout)."""
    n, cin, h, w = out.shape
    rows = _sorted_rows(geom, window_of)
    config = _chosen(config, out.dtype, configs.pick_grad_input, rows)
    row_out, row_start = _row_tables(rows, out.device)
    g_code, g_strides = _addressing(grad_output)
    x_code, x_strides = _addressing(out)
    grid = (triton.cdiv(cin, config.rows), triton.cdiv(h * w, config.cols), n)
    args = (
        grad_output, weight, out, row_out, row_start,
        _tile_table(rows, "channels", config.rows, out.device),
        cin, geom.out_channels, h, w, geom.group_width, *g_strides, *x_strides,
    )
    meta = dict(
        G_LAYOUT=g_code, X_LAYOUT=x_code, BC=config.rows, BN=config.cols, BK=config.k,
        **_common_meta(out.dtype, config),
    )
    return Launch(scc_grad_input_kernel, grid, args, meta)


def _pixel_blocks(config: configs.Config, input: Tensor) -> int:
    n, _, h, w = input.shape
    return n * triton.cdiv(h * w, config.k)


def grad_weight_splits(geom: SCCGeometry, window_of, input: Tensor) -> int:
    """Splits of the grad-weight reduction over (image, pixel block) pairs: enough programs
    to fill the device; a function of the shapes and the device only."""
    rows = _sorted_rows(geom, window_of)
    config = _chosen(None, input.dtype, configs.pick_grad_weight, rows)
    blocks = _pixel_blocks(config, input)
    bands = rows.row_tiles(config.rows)
    programs = len(bands) * triton.cdiv(max(width for _, width in bands), config.cols)
    want = triton.cdiv(_PROGRAMS_PER_SM * _multiprocessors(input.device), programs)
    return triton.cdiv(blocks, triton.cdiv(blocks, max(1, min(want, blocks))))


def plan_grad_weight(
    partial: Tensor, grad_output: Tensor, input: Tensor, geom: SCCGeometry,
    window_of: Sequence[int] | None, config: configs.Config | None = None,
) -> Launch:
    """Plan the per-split partial sums ``partial[s] = sum over split s of gy x^T``
    (``partial``: ``[splits, Cout, gw]`` contiguous, fp32 — fp64 for fp64 inputs; every
    entry is written once, splits past the last pixel block write zeros)."""
    n, cin, h, w = input.shape
    rows = _sorted_rows(geom, window_of)
    config = _chosen(config, input.dtype, configs.pick_grad_weight, rows)
    row_out, row_start = _row_tables(rows, input.device)
    g_code, g_strides = _addressing(grad_output)
    x_code, x_strides = _addressing(input)
    bands = rows.row_tiles(config.rows)
    pixel_blocks = _pixel_blocks(config, input)
    blocks_per_split = triton.cdiv(pixel_blocks, partial.shape[0])
    grid = (len(bands), triton.cdiv(max(width for _, width in bands), config.cols), partial.shape[0])
    args = (
        grad_output, input, partial, row_out, row_start,
        _tile_table(rows, "rows", config.rows, input.device),
        cin, geom.out_channels, h, w, geom.group_width, pixel_blocks, blocks_per_split,
        *g_strides, *x_strides,
    )
    meta = dict(
        G_LAYOUT=g_code, X_LAYOUT=x_code, BM=config.rows, BK=config.cols, BP=config.k,
        **_common_meta(input.dtype, config),
    )
    return Launch(scc_grad_weight_kernel, grid, args, meta)


def plan_sum_splits(out: Tensor, partial: Tensor) -> Launch:
    """Plan ``out = partial.sum(0)`` in split order (``out`` contiguous)."""
    numel = out.numel()
    grid = (triton.cdiv(numel, configs.SUM_BLOCK), 1, 1)
    return Launch(scc_sum_splits_kernel, grid, (partial, out, numel, partial.shape[0]),
                  dict(BLOCK=configs.SUM_BLOCK, num_warps=configs.SUM_WARPS))


# -- the op's contract ----------------------------------------------------------------------


def forward_into(out, input, weight, bias, geom, window_of, activation: str = "none",
                 residual: Tensor | None = None) -> Tensor:
    """Write ``act(scc(input) + bias + residual)`` into the preallocated ``out``; returns ``out``."""
    if out.numel():
        with _device_guard(input):
            plan_forward(out, input, weight.contiguous(), None if bias is None else bias.contiguous(),
                         geom, window_of, activation=activation, residual=residual).run()
    return out


def grad_input_into(out, grad_output, weight, geom, window_of) -> Tensor:
    if out.numel():
        with _device_guard(out):
            plan_grad_input(out, grad_output, weight.contiguous(), geom, window_of).run()
    return out


def grad_weight_into(out, grad_output, input, geom, window_of, partial: Tensor | None = None) -> Tensor:
    """Write the weight gradient into ``out`` (``[Cout, gw]`` contiguous). ``partial``, if
    given, is the ``[splits, Cout, gw]`` buffer to use (its first dimension sets the splits)."""
    if input.numel() == 0:
        return out.zero_()
    if partial is None:
        acc = torch.float64 if input.dtype == torch.float64 else torch.float32
        splits = grad_weight_splits(geom, window_of, input)
        partial = torch.empty((splits, *out.shape), dtype=acc, device=input.device)
    with _device_guard(input):
        plan_grad_weight(partial, grad_output, input, geom, window_of).run()
        plan_sum_splits(out, partial).run()
    return out


def _dense_grad_output(grad_output: Tensor, input: Tensor) -> Tensor:
    """``grad_output`` as is when its layout is one the kernels vectorise, else a copy in the
    input's layout (expanded or sliced gradients)."""
    if _addressing(grad_output)[0] != LAYOUT_ANY:
        return grad_output
    return grad_output.contiguous(memory_format=output_memory_format(input))


def scc_forward(
    input: Tensor, weight: Tensor, bias: Tensor | None, cg: int, co: float, window_of: Sequence[int] | None,
    activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """SCC forward on an ``[N, Cin, H, W]`` input (NCHW, channels_last or any strided view);
    returns ``[N, Cout, H, W]`` in the layout of ``common.empty_output``, with the fused op's
    epilogue (``ops/epilogue.py``) when ``activation`` or ``residual`` is given."""
    geom = geometry_for(input, weight, cg, co)
    _check(input, weight, bias, residual)
    n, _, h, w = input.shape
    out = empty_output(input, (n, geom.out_channels, h, w))
    epilogue.check(tuple(out.shape), input.dtype, input.device, activation, residual)
    return forward_into(out, input, weight, bias, geom, window_of, activation, residual)


def scc_backward(
    grad_output: Tensor, input: Tensor, weight: Tensor, cg: int, co: float,
    window_of: Sequence[int] | None, input_grad: bool, weight_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`scc_forward` w.r.t. input and weight; one not asked for is empty.
    The weight gradient is deterministic: per-split partial sums, added in split order."""
    geom = geometry_for(input, weight, cg, co)
    _check(input, weight, grad_output)
    gy = _dense_grad_output(grad_output, input)
    none = input.new_empty(0)
    grad_input = grad_weight = none
    if input_grad:
        grad_input = grad_input_into(empty_output(input, tuple(input.shape)), gy, weight, geom, window_of)
    if weight_grad:
        grad_weight = grad_weight_into(torch.empty_like(weight, memory_format=torch.contiguous_format),
                                       gy, input, geom, window_of)
    return grad_input, grad_weight
