"""The baseline GPU kernel for ``bench/gpu.py``: the seed design, one thread per output.

Every output element ``y[n, o, p]`` loops over its window's ``gw`` input channels with scalar
loads (no tiling, no tensor cores). NCHW-contiguous input only; forward only. Its window
starts come from ``SCCGeometry`` like every other kernel's tables.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from scc_convert.geometry import SCCGeometry

BLOCK = 256


@triton.jit
def _naive_scc_kernel(x_ptr, w_ptr, y_ptr, start_ptr, total, C_in, C_out, P, gw, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < total
    p = idx % P
    o = (idx // P) % C_out
    n = (idx // P // C_out).to(tl.int64)
    start = tl.load(start_ptr + o, mask=ok, other=0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(0, gw):
        c = start + k
        c = tl.where(c >= C_in, c - C_in, c)
        xv = tl.load(x_ptr + (n * C_in + c) * P + p, mask=ok, other=0.0)
        wv = tl.load(w_ptr + o * gw + k, mask=ok, other=0.0)
        acc += xv.to(tl.float32) * wv.to(tl.float32)
    tl.store(y_ptr + idx, acc.to(y_ptr.dtype.element_ty), mask=ok)


def naive_scc_forward(x: torch.Tensor, weight: torch.Tensor, cg: int, co: float) -> torch.Tensor:
    """``[N, Cin, H, W]`` (contiguous NCHW) -> ``[N, Cout, H, W]``, default window order."""
    n, cin, h, w = x.shape
    geom = SCCGeometry(cin, weight.shape[0], cg, co)
    starts = torch.tensor([geom.window_starts[wo] for wo in geom.default_window_of],
                          dtype=torch.int32, device=x.device)
    x = x.contiguous()
    y = torch.empty((n, geom.out_channels, h, w), dtype=x.dtype, device=x.device)
    total = y.numel()
    _naive_scc_kernel[(triton.cdiv(total, BLOCK),)](
        x, weight.contiguous(), y, starts, total, cin, geom.out_channels, h * w, geom.group_width, BLOCK=BLOCK)
    return y
