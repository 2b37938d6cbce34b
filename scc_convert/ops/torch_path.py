"""The PyTorch implementation of the SCC op (CPU, and any device without our CUDA kernels).

SCC as batched matrix multiplies, no loop over channels (layouts: ``SCCGeometry.plan``).

Forward with few, narrow windows (``cg * Cin * M`` below a bound per layout, ``M`` outputs
per window; ``_MASKED_DENSE_MAX_WINDOW_MACS``): one GEMM with the weight scattered onto a zero ``[Cout, Cin]`` matrix. It does
``cg`` times the MACs, but per-window products that small run so far below the GEMM's speed
that the one large product wins, and its result is already in output order. Otherwise one
product per window, as follows.

Forward of one NCHW image: the image is already channel-major, so the windows are one
overlapping strided view of it (or of a copy with the wrapped channels appended) and one
``bmm`` does all of them, then one permuting copy into the output.

Forward of several images with at most ``_WINDOW_LOOP_MAX_BATCHES`` windows: one product per window that reads
the input in place — a ``bmm`` over the samples for NCHW, an ``mm`` on the ``[N*H*W, Cin]``
pixel matrix for channels_last (a wrapping window is two products) — then one permuting
copy into the output. With more windows:

1. copy the input once into channel-major order ``[L, N*H*W]`` with the cyclic wrap
   appended, so every window is a contiguous row block;
2. view the overlapping windows as ``[B, gw, N*H*W]`` with ``as_strided`` (no copy);
3. one ``bmm`` with the weight laid out as ``[B, M, gw]`` (bias fused through ``baddbmm``);
4. one permuting copy into the output, in the input's memory format.

Backward (NCHW fp32/fp64, windows made of whole ``gcd(Cin, s)``-channel blocks, every slot
filled — the usual case): ``grad_output`` is copied once into batch order; per image, one
``bmm`` whose rows gather the ``q`` windows that overlap each input block writes the input
gradient in place, and one ``bmm`` against the overlapping window view accumulates the weight
gradient (:func:`_backward_per_image`). Otherwise it uses the channel-major view:
``grad_weight = bmm(grad_y, view^T)``, and the transposed product is added back onto the
overlapping input channels with ``index_add_``. Both run in a fixed order, so the result is
deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from ..geometry import ExecPlan, SCCGeometry, cyclic_columns
from .common import empty_output as _empty_like_layout
from .common import geometry_for, output_memory_format

__all__ = [
    "scc_forward",
    "scc_backward",
    "geometry_for",
    "output_memory_format",
    "uses_masked_dense",
    "forced_forward",
]

# With at most this many windows the forward runs one product per window straight from the
# input (bench/cpu_scc.py: saves the channel-major copy); with more, the per-call cost wins.
_WINDOW_LOOP_MAX_BATCHES = 32

# Forward through one GEMM with the SCC weight scattered onto a dense [Cout, Cin] matrix when
# a window's outputs are few and narrow. With M outputs per window that GEMM spends Cin * M
# multiply-adds per pixel on each window, cg times the SCC's gw * M; the rule bounds
# cg * Cin * M, the work of one window's product scaled by that overhead. Measured on the
# 2-core Xeon (AVX-512, MKL) as ratios masked/windows, per-round paired over 40 rounds, on a
# shared machine whose load moves them (ranges are over separate runs). NCHW: 0.38-0.98 at
# 2304 (96->96 cg=2: the bench's third shape), 0.66-0.85 at 2304-3072 (144->32, 192->32 at
# 28x28), 0.66-0.77 at 1728 (24->144, 144->24 at 56x56); 0.72-1.00 at 8192 (128->128 cg=4),
# 1.8 at 8192 (128->128 cg=8), 1.15-1.7 at 12288 (64<->384). channels_last, whose per-window
# products read strided column blocks: 0.3-0.9 up to 12288, 1.2-2.4 from 32768 up (256->256,
# 512->512 cg=8, 960->160). bench/cpu_scc.py times both.
_MASKED_DENSE_MAX_WINDOW_MACS = {"nchw": 4096, "channels_last": 16384}


@lru_cache(maxsize=512)
def _plan(geom: SCCGeometry, window_of: tuple[int, ...] | None, order: str) -> ExecPlan:
    return geom.plan(window_of, order=order)


def plan_for(geom: SCCGeometry, window_of: Sequence[int] | None, order: str = "auto") -> ExecPlan:
    """The (cached) execution plan; validates ``window_of``."""
    return _plan(geom, None if window_of is None else tuple(window_of), order)


class _PlanIndex(NamedTuple):
    position: Tensor  # [Cout] row of each output in the flattened [B*M] result
    batch: Tensor  # [Cout] batch of each output
    slot: Tensor  # [Cout] slot of each output
    in_channel: Tensor  # [B*gw] input channel read by column k of batch b


@lru_cache(maxsize=512)
def _plan_index(plan: ExecPlan, cin: int, device: torch.device) -> _PlanIndex:
    def long(values) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    cols = cyclic_columns(plan.starts, plan.group_width, cin, device)
    return _PlanIndex(long(plan.position), long(plan.batch_of), long(plan.slot_of), cols.reshape(-1))


class _BlockIndex(NamedTuple):
    source: Tensor  # [B*M] output channel of each row of the batched result
    window: Tensor  # [B, q] batch whose block feeds input block j, in ``_backward_per_image``
    block: Tensor  # [B, q] which of that batch's q weight blocks it is


@lru_cache(maxsize=512)
def _block_index(plan: ExecPlan, device: torch.device) -> _BlockIndex:
    b, q = plan.batches, plan.group_width // plan.step
    source = [0] * (b * plan.slots)
    for o, row in enumerate(plan.position):
        source[row] = o
    j, i = torch.arange(b)[:, None], torch.arange(q)[None, :]
    return _BlockIndex(
        torch.tensor(source, dtype=torch.long, device=device),
        ((j - q + 1 + i) % b).to(device),
        (q - 1 - i).expand(b, q).to(device),
    )


def _channel_major(x: Tensor, length: int) -> Tensor:
    """``[length, N, H*W]`` contiguous copy of ``x`` whose row ``c`` is channel ``c % Cin``."""
    n, cin = x.shape[:2]
    x3 = x.flatten(2)
    xe = x.new_empty((length, n, x3.shape[2]))
    head = min(length, cin)
    xe[:head].copy_(x3[:, :head].transpose(0, 1))
    if length > cin:
        xe[cin:].copy_(xe[: length - cin])
    return xe


def _windows(x: Tensor, plan: ExecPlan) -> Tensor:
    """Overlapping view ``[B, gw, N*H*W]`` of the channel-major extended input."""
    xe = _channel_major(x, plan.ext_channels)
    cols = xe.shape[1] * xe.shape[2]
    return xe.as_strided((plan.batches, plan.group_width, cols), (plan.step * cols, cols, 1))


def _to_batches(t: Tensor, plan: ExecPlan, idx: _PlanIndex) -> Tensor:
    """Rows of ``t`` (one per output channel, any trailing shape) into ``[B, M, ...]``."""
    b, m = plan.batches, plan.slots
    if plan.regular:
        return t.reshape(m, b, *t.shape[1:]).transpose(0, 1)
    out = t.new_zeros((b * m, *t.shape[1:]))
    out.index_copy_(0, idx.position, t)
    return out.view(b, m, *t.shape[1:])


def _from_batches(t: Tensor, plan: ExecPlan, idx: _PlanIndex) -> Tensor:
    """Inverse of :func:`_to_batches`: ``[B, M, ...]`` to one row per output channel."""
    if plan.regular:
        return t.transpose(0, 1).reshape(plan.batches * plan.slots, *t.shape[2:])
    return t[idx.batch, idx.slot]


def scc_forward(
    input: Tensor, weight: Tensor, bias: Tensor | None, cg: int, co: float, window_of: Sequence[int] | None
) -> Tensor:
    """SCC forward on an ``[N, Cin, H, W]`` input; returns ``[N, Cout, H, W]`` (same layout)."""
    geom = geometry_for(input, weight, cg, co)
    n, cin, h, w = input.shape
    layout = output_memory_format(input)
    if uses_masked_dense(geom, layout) and input.numel() > 0:
        return _forward_masked_dense(input, weight, bias, geom, window_of)
    if n == 1 and input.is_contiguous() and input.numel() > 0:
        return _forward_single_image(input, weight, bias, geom, plan_for(geom, window_of))
    out = _empty_like_layout(input, (n, geom.out_channels, h, w))
    channels_last = layout == torch.channels_last
    loop = geom.cyclic_distance <= _WINDOW_LOOP_MAX_BATCHES
    plan = plan_for(geom, window_of, "window" if loop else "auto")
    if out.numel() == 0:
        return out
    idx = _plan_index(plan, cin, input.device)
    wb = _to_batches(weight, plan, idx)
    bb = None if bias is None else _to_batches(bias[:, None], plan, idx)
    if loop and channels_last:
        _write_rows(_forward_pixel_loop(input, wb, bb, plan), out, plan, idx)
        return out
    if loop:
        y = _forward_sample_loop(input.flatten(2), wb, bb, plan)
    else:
        v = _windows(input, plan)
        y = torch.bmm(wb, v) if bb is None else torch.baddbmm(bb, wb, v)
        y = y.view(plan.batches, plan.slots, n, h * w)
    _write_output(y, out, plan, idx)
    return out


@contextmanager
def forced_forward(kind: str) -> Iterator[None]:
    """Run the forward as ``"windows"`` (one product per window) or ``"masked_dense"`` (one
    GEMM on the masked dense weight) whatever the window size. For benchmarks and tests; it
    sets a module-wide switch, so it is not thread-safe."""
    global _MASKED_DENSE_MAX_WINDOW_MACS
    limits = {"windows": -1, "masked_dense": 1 << 62}
    if kind not in limits:
        raise ValueError(f"kind must be 'windows' or 'masked_dense', got {kind!r}")
    saved = _MASKED_DENSE_MAX_WINDOW_MACS
    _MASKED_DENSE_MAX_WINDOW_MACS = dict.fromkeys(saved, limits[kind])
    try:
        yield
    finally:
        _MASKED_DENSE_MAX_WINDOW_MACS = saved


def uses_masked_dense(geom: SCCGeometry, memory_format: torch.memory_format = torch.contiguous_format) -> bool:
    """Whether the forward runs as one GEMM on the masked dense weight (``cg * Cin * M`` at most
    ``_MASKED_DENSE_MAX_WINDOW_MACS`` for the layout) rather than one product per window."""
    layout = "channels_last" if memory_format == torch.channels_last else "nchw"
    slots = -(-geom.out_channels // geom.cyclic_distance)
    return geom.cg * geom.in_channels * slots <= _MASKED_DENSE_MAX_WINDOW_MACS[layout]


@lru_cache(maxsize=512)
def _weight_columns(geom: SCCGeometry, window_of: tuple[int, ...] | None, device: torch.device) -> Tensor:
    """``[Cout, gw]``: the input channel each weight entry multiplies."""
    return torch.tensor(geom.input_channels_of(window_of), dtype=torch.long, device=device)


def _forward_masked_dense(
    input: Tensor, weight: Tensor, bias: Tensor | None, geom: SCCGeometry, window_of: Sequence[int] | None
) -> Tensor:
    """The forward as one GEMM with the weight scattered onto its windows' columns of a zero
    ``[Cout, Cin]`` matrix: ``cg`` times the MACs, but one large product instead of many small
    ones, and the result lands in output order (no permuting copy)."""
    n, cin, h, w = input.shape
    cols = _weight_columns(geom, None if window_of is None else tuple(window_of), input.device)
    dense = weight.new_zeros((geom.out_channels, cin)).scatter_(1, cols, weight)
    out = _empty_like_layout(input, (n, geom.out_channels, h, w))
    if output_memory_format(input) == torch.channels_last:  # [pixels, Cin] @ [Cin, Cout]
        rows = n * h * w
        x2 = input.permute(0, 2, 3, 1).reshape(rows, cin)
        out2 = out.permute(0, 2, 3, 1).view(rows, geom.out_channels)
        if bias is None:
            torch.mm(x2, dense.t(), out=out2)
        else:
            torch.addmm(bias, x2, dense.t(), out=out2)
    else:  # per image [Cout, Cin] @ [Cin, H*W]
        x3, out3 = input.reshape(n, cin, h * w), out.view(n, geom.out_channels, h * w)
        if bias is None:
            torch.bmm(dense.expand(n, -1, -1), x3, out=out3)
        else:
            torch.baddbmm(bias[:, None], dense.expand(n, -1, -1), x3, out=out3)
    return out


def _forward_single_image(
    input: Tensor, weight: Tensor, bias: Tensor | None, geom: SCCGeometry, plan: ExecPlan
) -> Tensor:
    """Forward of one contiguous NCHW image, in as few tensor ops as possible (batch-1
    inference is dominated by per-op cost).

    The image ``[Cin, H*W]`` is already channel-major: the windows are one overlapping
    strided view of it, or of a copy with the wrapped channels appended when a window wraps;
    one ``bmm``; one copy puts the rows in output order.
    """
    _, cin, h, w = input.shape
    p = h * w
    x2 = input.view(cin, p)
    if plan.ext_channels > cin:
        x2 = torch.cat((x2, x2[: plan.ext_channels - cin]))
    b, m, gw = plan.batches, plan.slots, plan.group_width
    view = x2.as_strided((b, gw, p), (plan.step * p, p, 1))
    out = input.new_empty((1, geom.out_channels, h, w))  # written in place: the op returns no view
    if plan.regular:  # output o = slot * B + batch: a transposing copy
        wb = weight.view(m, b, gw).transpose(0, 1)
        y = torch.bmm(wb, view) if bias is None else torch.baddbmm(bias.view(m, b, 1).transpose(0, 1), wb, view)
        out.view(m, b, p).copy_(y.transpose(0, 1))
        return out
    idx = _plan_index(plan, cin, input.device)
    wb = _to_batches(weight, plan, idx)
    y = torch.bmm(wb, view) if bias is None else torch.baddbmm(_to_batches(bias[:, None], plan, idx), wb, view)
    torch.index_select(y.view(b * m, p), 0, idx.position, out=out.view(geom.out_channels, p))
    return out


def _forward_sample_loop(x3: Tensor, wb: Tensor, bb: Tensor | None, plan: ExecPlan) -> Tensor:
    """``[B, M, N, P]`` (a permuted view): per batch, one bmm over the samples of ``x3 = [N, Cin, P]``.

    Reads the input in place (NCHW); a window that wraps is two products accumulated.
    """
    x3 = x3 if x3.stride(2) == 1 else x3.contiguous()
    n, cin, p = x3.shape
    gw = plan.group_width
    y = x3.new_empty((plan.batches, n, plan.slots, p))
    biases = [None] * plan.batches if bb is None else [t.expand(n, -1, p) for t in bb.unbind(0)]
    for start, w_b, b_b, y_b in zip(plan.starts, wb.unbind(0), biases, y.unbind(0)):
        head = min(gw, cin - start)
        w_head = w_b.narrow(1, 0, head).expand(n, -1, -1)
        x_head = x3.narrow(1, start, head)
        if b_b is None:
            torch.bmm(w_head, x_head, out=y_b)
        else:
            torch.baddbmm(b_b, w_head, x_head, out=y_b)
        if head < gw:
            y_b.baddbmm_(w_b.narrow(1, head, gw - head).expand(n, -1, -1), x3.narrow(1, 0, gw - head))
    return y.transpose(1, 2)


def _forward_pixel_loop(input: Tensor, wb: Tensor, bb: Tensor | None, plan: ExecPlan) -> Tensor:
    """``[B, N*H*W, M]``: per batch, one mm on the channels_last pixel matrix ``[N*H*W, Cin]``.

    A window is a column block of the pixel matrix, read in place; one that wraps is two
    products accumulated.
    """
    n, cin, h, w = input.shape
    rows, gw = n * h * w, plan.group_width
    x2 = input.permute(0, 2, 3, 1).reshape(rows, cin)  # a view for channels_last input
    y = x2.new_empty((plan.batches, rows, plan.slots))
    biases = [None] * plan.batches if bb is None else [t.t() for t in bb.unbind(0)]
    for start, w_b, b_b, y_b in zip(plan.starts, wb.unbind(0), biases, y.unbind(0)):
        head = min(gw, cin - start)
        w_head = w_b.narrow(1, 0, head).t()
        x_head = x2.narrow(1, start, head)
        if b_b is None:
            torch.mm(x_head, w_head, out=y_b)
        else:
            torch.addmm(b_b, x_head, w_head, out=y_b)
        if head < gw:
            y_b.addmm_(x2.narrow(1, 0, gw - head), w_b.narrow(1, head, gw - head).t())
    return y


def _write_rows(y: Tensor, out: Tensor, plan: ExecPlan, idx: _PlanIndex) -> None:
    """Copy the ``[B, N*H*W, M]`` result into the channels_last ``out``."""
    rows = y.shape[1]
    out2 = out.permute(0, 2, 3, 1).reshape(rows, out.shape[1])  # a view: channels_last output
    if plan.regular:
        out2.view(rows, plan.slots, plan.batches).copy_(y.permute(1, 2, 0))
    else:
        out2.copy_(y.permute(1, 0, 2)[:, idx.batch, idx.slot])


def _write_output(y: Tensor, out: Tensor, plan: ExecPlan, idx: _PlanIndex) -> None:
    """Copy the ``[B, M, N, P]`` result into ``out`` (NCHW or NHWC)."""
    n, _, h, w = out.shape
    out3 = out.flatten(2)  # [N, Cout, H*W], a view for both memory formats
    if plan.regular:
        out3.view(n, plan.slots, plan.batches, h * w).copy_(y.permute(2, 1, 0, 3))
    else:
        out3.transpose(0, 1).copy_(y[idx.batch, idx.slot])


def scc_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    cg: int,
    co: float,
    window_of: Sequence[int] | None,
    input_grad: bool,
    weight_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`scc_forward` w.r.t. input and weight.

    A gradient that is not asked for comes back as an empty tensor.
    """
    geom = geometry_for(input, weight, cg, co)
    n, cin, h, w = input.shape
    p = h * w
    none = input.new_empty(0)
    if grad_output.numel() == 0:
        grad_input = _empty_like_layout(input, tuple(input.shape)).zero_() if input_grad else none
        return grad_input, (torch.zeros_like(weight) if weight_grad else none)
    blocks = plan_for(geom, window_of, "chunk")
    if (
        output_memory_format(input) == torch.contiguous_format
        and input.dtype in (torch.float32, torch.float64)
        and blocks.group_width % blocks.step == 0
        and blocks.batches * blocks.slots == geom.out_channels
    ):
        return _backward_per_image(grad_output, input, weight, blocks, input_grad, weight_grad)
    plan = plan_for(geom, window_of)
    grad_input, grad_weight = none, none
    idx = _plan_index(plan, cin, input.device)
    gy = _to_batches(grad_output.flatten(2).transpose(0, 1), plan, idx)  # [B, M, N, P]
    gy = gy.reshape(plan.batches, plan.slots, n * p)
    if weight_grad:
        grad_weight = _from_batches(torch.bmm(gy, _windows(input, plan).transpose(1, 2)), plan, idx)
    if input_grad:
        wb = _to_batches(weight, plan, idx)
        gv = torch.bmm(wb.transpose(1, 2), gy)  # [B, gw, N*P]
        gx = input.new_zeros((cin, n * p)).index_add_(0, idx.in_channel, gv.view(-1, n * p))
        grad_input = _empty_like_layout(input, (n, cin, h, w))
        grad_input.flatten(2).copy_(gx.view(cin, n, p).transpose(0, 1))
    return grad_input, grad_weight


def _backward_per_image(
    grad_output: Tensor, input: Tensor, weight: Tensor, plan: ExecPlan, input_grad: bool, weight_grad: bool
) -> tuple[Tensor, Tensor]:
    """Backward for NCHW fp32/fp64 with a chunk-ordered plan (``starts[b] = b * step``) whose
    windows are whole blocks of ``g = step`` channels (``gw = q * g``) and fill every slot.

    Input block ``j`` is read by the ``q`` batches ``j-q+1 .. j`` (cyclic), each with one
    ``g``-column block of its weight. With ``grad_output`` copied once into batch order, those
    batches' rows are adjacent, so per image one ``bmm`` with ``K = q*M`` writes the input
    gradient straight into place (no overlapping adds); the weight gradient accumulates one
    ``bmm`` per image against the overlapping window view of the input. Per image, so the
    temporaries stay the size of the tensors themselves; the sample order fixes the result.
    """
    n, cin, h, w = input.shape
    p = h * w
    b, m, gw, g = plan.batches, plan.slots, plan.group_width, plan.step
    q = gw // g
    bi = _block_index(plan, input.device)
    # grad_output rows in batch order, the last q-1 batches repeated in front:
    # ext[:, i] is batch (i - q + 1) mod B.
    ext = grad_output.new_empty((n, b + q - 1, m, p))
    gyb = ext[:, q - 1 :]
    if plan.regular:
        gyb.copy_(grad_output.reshape(n, m, b, p).transpose(1, 2))
    else:
        gyb.copy_(grad_output.reshape(n, b * m, p).index_select(1, bi.source).view(n, b, m, p))
    none = input.new_empty(0)
    grad_input, grad_weight = none, none
    wb = weight.index_select(0, bi.source).view(b, m, gw)
    if input_grad:
        if q > 1:
            ext[:, : q - 1].copy_(ext[:, b:])
        # row block i of wcat[j] is block (q-1-i) of batch (j-q+1+i)'s weight, transposed
        wcat = wb.view(b, m, q, g)[bi.window, :, bi.block].permute(0, 3, 1, 2).reshape(b, g, q * m)
        grad_input = input.new_empty((n, cin, h, w))
        gx = grad_input.view(n, b, g, p)
        for image in range(n):
            e = ext[image]
            rows = e.as_strided((b, q * m, p), (m * p, p, 1), e.storage_offset())
            torch.bmm(wcat, rows, out=gx[image])
    if weight_grad:
        length = cin + gw - g  # channels the overlapping window view reads
        xe = input.new_empty((n, length, p))
        xe[:, :cin].view(n, cin, h, w).copy_(input)
        if length > cin:
            xe[:, cin:].copy_(xe[:, : length - cin])
        acc = weight.new_zeros((b, m, gw))
        for image in range(n):
            e = xe[image]
            windows = e.as_strided((b, gw, p), (g * p, p, 1), e.storage_offset())
            acc.baddbmm_(gyb[image], windows.transpose(1, 2))
        grad_weight = acc.view(b * m, gw).index_select(0, _plan_index(plan, cin, input.device).position)
    return grad_input, grad_weight
