"""The Triton kernels of the SCC op: forward, grad-input, grad-weight, and the fixed-order sum
of the grad-weight partials.

Rows are the output channels sorted by window start (``SCCGeometry.sorted_rows``): the tables
``row_out`` (row -> output channel), ``row_start`` (row -> first input channel of its window),
``tile_band`` (row tile -> first band channel, band width) and ``tile_run`` (input-channel
tile -> first row, row count) come from ``geometry.py``; nothing here derives them.

Tensors are addressed through their four strides. A layout code (constexpr) tells the
compiler what it may assume, so contiguous dimensions vectorise:
``0`` any strides; ``1`` NCHW with the pixels of an image contiguous (``sW == 1``,
``sH == W``); ``2`` channels_last with flat pixels (``sC == 1``, ``sH == W * sW``).

The forward's epilogue (``ops/epilogue.py``): bias, then an optional residual, then an
optional activation (``ACTIVATION``: the code of its name in ``ACTIVATIONS``), on the
accumulator before the one store.

Accumulation is fp32 (fp64 for fp64 inputs). ``DOT_FP32`` upcasts the dot operands to fp32:
the launcher sets it only under ``TRITON_INTERPRET=1``, whose bf16 dot is wrong (triton
issue 11584). ``PRECISION`` is ``tl.dot``'s ``input_precision`` (``"tf32"`` or ``"ieee"``).
"""

from __future__ import annotations

import triton
import triton.language as tl

LAYOUT_ANY, LAYOUT_NCHW, LAYOUT_NHWC = 0, 1, 2


@triton.jit
def _pixel_offsets(p, W, s_h, s_w, LAYOUT: tl.constexpr):
    """Element offset of flat pixel index ``p = h * W + w`` within one image and channel."""
    if LAYOUT == 1:
        return p
    elif LAYOUT == 2:
        return p * s_w
    else:
        return (p // W) * s_h + (p % W) * s_w


@triton.jit
def _channel_offsets(c, s_c, LAYOUT: tl.constexpr):
    if LAYOUT == 2:
        return c
    else:
        return c * s_c


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _forward_band_step(
    acc, x_img, w_ptr, row_out, row_off, row_ok, x_pix, pix_ok,
    chan0, pos0, count, s_xc, gw,
    BK: tl.constexpr, X_LAYOUT: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """``acc += W_band @ x[band]`` over ``count`` band positions that read the contiguous
    channels ``chan0 ..``, the first of them at band position ``pos0``."""
    rk = tl.arange(0, BK)
    for k0 in range(0, count, BK):
        k_ok = k0 + rk < count
        chan = chan0 + k0 + rk
        x = tl.load(
            x_img + _channel_offsets(chan, s_xc, X_LAYOUT)[:, None] + x_pix[None, :],
            mask=k_ok[:, None] & pix_ok[None, :], other=0.0,
        )
        col = (pos0 + k0 + rk)[None, :] - row_off[:, None]  # weight column of each row
        w_ok = row_ok[:, None] & k_ok[None, :] & (col >= 0) & (col < gw)
        w = tl.load(w_ptr + row_out[:, None] * gw + col, mask=w_ok, other=0.0)
        acc = _dot(w, x, acc, DOT_FP32, PRECISION)
    return acc


@triton.jit
def _activate(acc, ACTIVATION: tl.constexpr):
    """The epilogue's activation, as torch computes it (codes: ``ACTIVATIONS`` in
    ``ops/epilogue.py``; 0 is none)."""
    if ACTIVATION == 1:  # relu
        acc = tl.where(acc < 0, 0.0, acc)
    elif ACTIVATION == 2:  # relu6
        acc = tl.where(acc < 0, 0.0, tl.where(acc > 6, 6.0, acc))
    elif ACTIVATION == 3:  # hardswish
        t = acc + 3.0
        acc = acc * tl.where(t < 0, 0.0, tl.where(t > 6, 6.0, t)) / 6.0
    elif ACTIVATION == 4:  # silu
        acc = acc / (1.0 + tl.exp(-acc))
    elif ACTIVATION == 5:  # gelu (exact, erf)
        acc = acc * 0.5 * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    return acc


@triton.jit
def scc_forward_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, row_out_ptr, row_start_ptr, tile_band_ptr,
    C_in, C_out, H, W, gw,
    s_xn, s_xc, s_xh, s_xw,
    s_rn, s_rc, s_rh, s_rw,
    s_yn, s_yc, s_yh, s_yw,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
    X_LAYOUT: tl.constexpr, R_LAYOUT: tl.constexpr, Y_LAYOUT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, START_ALIGN: tl.constexpr,
    ACC_FP64: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """Output-centric forward. Grid: (row tiles, pixel tiles, images). A program computes
    ``BM`` sorted rows x ``BN`` pixels of one image from its tile's band of input channels,
    applies the epilogue and stores them straight into output order."""
    tile = tl.program_id(0)
    pid_p = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    rows = tile * BM + tl.arange(0, BM)
    row_ok = rows < C_out
    row_out = tl.load(row_out_ptr + rows, mask=row_ok, other=0)
    row_start = tl.load(row_start_ptr + rows, mask=row_ok, other=0)
    first = tl.multiple_of(tl.load(tile_band_ptr + 2 * tile), START_ALIGN)
    band = tl.load(tile_band_ptr + 2 * tile + 1)
    row_off = row_start - first  # band position of each row's first column

    pix = pid_p * BN + tl.arange(0, BN)
    pix_ok = pix < H * W
    x_img = x_ptr + n * s_xn
    x_pix = _pixel_offsets(pix, W, s_xh, s_xw, X_LAYOUT)

    if ACC_FP64:
        acc = tl.zeros((BM, BN), dtype=tl.float64)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    # band positions [0, head) read channels first.., the wrapped rest [head, band) 0..
    head = tl.minimum(band, C_in - first)
    acc = _forward_band_step(
        acc, x_img, w_ptr, row_out, row_off, row_ok, x_pix, pix_ok,
        first, 0, head, s_xc, gw, BK, X_LAYOUT, DOT_FP32, PRECISION,
    )
    acc = _forward_band_step(
        acc, x_img, w_ptr, row_out, row_off, row_ok, x_pix, pix_ok,
        0, head, band - head, s_xc, gw, BK, X_LAYOUT, DOT_FP32, PRECISION,
    )
    out_ok = row_ok[:, None] & pix_ok[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + row_out, mask=row_ok, other=0.0)
        acc += bias.to(acc.dtype)[:, None]
    if HAS_RESIDUAL:
        r = r_ptr + n * s_rn + _channel_offsets(row_out, s_rc, R_LAYOUT)[:, None]
        r += _pixel_offsets(pix, W, s_rh, s_rw, R_LAYOUT)[None, :]
        acc += tl.load(r, mask=out_ok, other=0.0).to(acc.dtype)
    acc = _activate(acc, ACTIVATION)
    y = y_ptr + n * s_yn + _channel_offsets(row_out, s_yc, Y_LAYOUT)[:, None]
    y += _pixel_offsets(pix, W, s_yh, s_yw, Y_LAYOUT)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def scc_grad_input_kernel(
    gy_ptr, w_ptr, gx_ptr, row_out_ptr, row_start_ptr, tile_run_ptr,
    C_in, C_out, H, W, gw,
    s_gn, s_gc, s_gh, s_gw,
    s_xn, s_xc, s_xh, s_xw,
    G_LAYOUT: tl.constexpr, X_LAYOUT: tl.constexpr,
    BC: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ACC_FP64: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """Input-centric grad-input. Grid: (channel tiles, pixel tiles, images). A program owns
    ``BC`` input channels x ``BN`` pixels and sums the run of rows whose windows read them:
    each element is written once, no atomics."""
    tile = tl.program_id(0)
    pid_p = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    chans = tile * BC + tl.arange(0, BC)
    chan_ok = chans < C_in
    first = tl.load(tile_run_ptr + 2 * tile)
    count = tl.load(tile_run_ptr + 2 * tile + 1)

    pix = pid_p * BN + tl.arange(0, BN)
    pix_ok = pix < H * W
    gy_img = gy_ptr + n * s_gn
    gy_pix = _pixel_offsets(pix, W, s_gh, s_gw, G_LAYOUT)

    if ACC_FP64:
        acc = tl.zeros((BC, BN), dtype=tl.float64)
    else:
        acc = tl.zeros((BC, BN), dtype=tl.float32)
    rk = tl.arange(0, BK)
    for j0 in range(0, count, BK):
        j_ok = j0 + rk < count
        rows = (first + j0 + rk) % C_out
        row_out = tl.load(row_out_ptr + rows, mask=j_ok, other=0)
        row_start = tl.load(row_start_ptr + rows, mask=j_ok, other=0)
        g = tl.load(
            gy_img + _channel_offsets(row_out, s_gc, G_LAYOUT)[:, None] + gy_pix[None, :],
            mask=j_ok[:, None] & pix_ok[None, :], other=0.0,
        )
        col = chans[:, None] - row_start[None, :]  # weight column reading channel c
        col = tl.where(col < 0, col + C_in, col)
        w_ok = chan_ok[:, None] & j_ok[None, :] & (col < gw)
        wt = tl.load(w_ptr + row_out[None, :] * gw + col, mask=w_ok, other=0.0)
        acc = _dot(wt, g, acc, DOT_FP32, PRECISION)
    gx = gx_ptr + n * s_xn + _channel_offsets(chans, s_xc, X_LAYOUT)[:, None]
    gx += _pixel_offsets(pix, W, s_xh, s_xw, X_LAYOUT)[None, :]
    tl.store(gx, acc.to(gx_ptr.dtype.element_ty), mask=chan_ok[:, None] & pix_ok[None, :])


@triton.jit(do_not_specialize=["pixel_blocks", "blocks_per_split"])
def scc_grad_weight_kernel(
    gy_ptr, x_ptr, part_ptr, row_out_ptr, row_start_ptr, tile_band_ptr,
    C_in, C_out, H, W, gw, pixel_blocks, blocks_per_split,
    s_gn, s_gc, s_gh, s_gw,
    s_xn, s_xc, s_xh, s_xw,
    G_LAYOUT: tl.constexpr, X_LAYOUT: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr,
    ACC_FP64: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grad-weight partial sums. Grid: (row tiles, band column blocks, splits). A program sums
    ``gy[rows] @ x[band columns]^T`` over its split's (image, pixel block) pairs and writes
    each weight entry of its rows that falls in its columns once, into ``part[split]``
    (``[splits, C_out, gw]``); :func:`scc_sum_splits_kernel` adds the splits in order."""
    tile = tl.program_id(0)
    kb = tl.program_id(1)
    split = tl.program_id(2)
    first = tl.load(tile_band_ptr + 2 * tile)
    band = tl.load(tile_band_ptr + 2 * tile + 1)
    if kb * BK < band:
        rows = tile * BM + tl.arange(0, BM)
        row_ok = rows < C_out
        row_out = tl.load(row_out_ptr + rows, mask=row_ok, other=0)
        row_start = tl.load(row_start_ptr + rows, mask=row_ok, other=0)
        pos = kb * BK + tl.arange(0, BK)  # band positions of this program's columns
        pos_ok = pos < band
        chans = first + pos
        chans = tl.where(chans >= C_in, chans - C_in, chans)
        x_chan = _channel_offsets(chans, s_xc, X_LAYOUT)
        g_chan = _channel_offsets(row_out, s_gc, G_LAYOUT)
        if ACC_FP64:
            acc = tl.zeros((BM, BK), dtype=tl.float64)
        else:
            acc = tl.zeros((BM, BK), dtype=tl.float32)
        rp = tl.arange(0, BP)
        b0 = split * blocks_per_split
        b1 = tl.minimum(b0 + blocks_per_split, pixel_blocks)
        blocks_per_image = tl.cdiv(H * W, BP)
        for blk in range(b0, b1):
            n = (blk // blocks_per_image).to(tl.int64)
            pix = (blk % blocks_per_image) * BP + rp
            pix_ok = pix < H * W
            g = tl.load(
                gy_ptr + n * s_gn + g_chan[:, None] + _pixel_offsets(pix, W, s_gh, s_gw, G_LAYOUT)[None, :],
                mask=row_ok[:, None] & pix_ok[None, :], other=0.0,
            )
            x = tl.load(
                x_ptr + n * s_xn + x_chan[None, :] + _pixel_offsets(pix, W, s_xh, s_xw, X_LAYOUT)[:, None],
                mask=pix_ok[:, None] & pos_ok[None, :], other=0.0,
            )
            acc = _dot(g, x, acc, DOT_FP32, PRECISION)
        col = pos[None, :] - (row_start - first)[:, None]
        ok = row_ok[:, None] & pos_ok[None, :] & (col >= 0) & (col < gw)
        part = part_ptr + split.to(tl.int64) * C_out * gw + row_out[:, None] * gw + col
        tl.store(part, acc, mask=ok)


@triton.jit(do_not_specialize=["splits"])
def scc_sum_splits_kernel(part_ptr, out_ptr, numel, splits, BLOCK: tl.constexpr):
    """``out = part[0] + part[1] + ...`` in split order (bit-for-bit deterministic)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    ptr = part_ptr + offs
    acc = tl.load(ptr, mask=ok, other=0.0)
    for _ in range(1, splits):
        ptr += numel  # 64-bit pointer arithmetic: no int32 overflow
        acc += tl.load(ptr, mask=ok, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)
