"""The native CPU kernel (csrc/) on its own: the ways it cuts and lays out the work, each
instruction set, determinism, and how it is found, built, forced or replaced by the PyTorch
path. (tests/test_ops.py runs every op test on it as well.)"""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from reference import scc_reference
from scc_convert.functional import scc_conv2d
from scc_convert.ops import native

available = native.status()["available"]
needs_kernel = pytest.mark.skipif(not available, reason=f"native CPU kernel unavailable: {native.status()['reason']}")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check(x, weight, bias, cg, co, window_of=None, gy=None, tol=1e-10):
    """Forward and both gradients on the native kernel against the fp64 reference."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    ref = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    with native.use_backend("native"):
        y = scc_conv2d(*leaves, cg=cg, co=co, window_of=window_of)
    y_ref = scc_reference(*ref, cg=cg, co=co, window_of=window_of)
    gy = torch.randn_like(y_ref) if gy is None else gy
    with native.use_backend("native"):
        grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    grads_ref = torch.autograd.grad(y_ref, ref, gy.double())
    scale = max(1.0, y_ref.abs().max().item())
    torch.testing.assert_close(y.double(), y_ref, atol=tol * scale, rtol=0)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.double(), g_ref, atol=tol * max(1.0, g_ref.abs().max().item()), rtol=0)
    return y, grads


# (N, Cin, Cout, cg, co, H, W): how the pixels are cut into blocks
BLOCKINGS = [
    (2, 16, 16, 4, 0.5, 8, 8, ),  # per image, whole vectors
    (3, 16, 24, 4, 0.5, 6, 10),  # per image with a ragged tail (60 pixels)
    (2, 24, 20, 4, 0.5, 7, 7),  # flattened across images (49 pixels: the tail would waste lanes)
    (3, 12, 12, 3, 0.0, 3, 3),  # images smaller than a vector
    (2, 512, 64, 8, 0.5, 16, 17),  # several blocks per image, deep windows (depth blocking)
    (1, 64, 640, 4, 0.5, 5, 40),  # many outputs per window, one image split for both threads
    (2, 96, 96, 2, 0.25, 9, 9),  # window starts wrap
]


@needs_kernel
@pytest.mark.parametrize("n,cin,cout,cg,co,h,w", BLOCKINGS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "permuted"])
def test_blockings_and_layouts_match_reference(n, cin, cout, cg, co, h, w, layout):
    gen = torch.Generator().manual_seed(cin * h + w)
    x = torch.randn(n, cin, 2 * h if layout == "strided" else h, w, generator=gen, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, ::2]  # a strided view, as a stride-2 1x1 conv reads it
    elif layout == "permuted":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)  # pixels not in row-major order
    weight = torch.randn(cout, cin // cg, generator=gen, dtype=torch.float64)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    y, (gx, _, _) = _check(x, weight, bias, cg, co)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last) and gx.is_contiguous(memory_format=torch.channels_last)


@needs_kernel
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_float32_matches_reference_on_model_shapes(layout):
    for cin, cout, h in [(64, 256, 14), (256, 64, 14), (144, 24, 12), (960, 320, 7)]:
        x = torch.randn(2, cin, h, h)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        _check(x, torch.randn(cout, cin // 4), torch.randn(cout), 4, 0.5, tol=2e-5)


# channels_last reductions on the window-by-window kernel (csrc/forward_last.cpp: the paper's
# output assignment, cd a power of two dividing the lanes, two or more vectors per window;
# layers with cout >= cin take the stacked kernel): (N, Cin, Cout, cg, co, H, W)
WINDOW_GEMM = [
    (2, 320, 288, 4, 0.5, 5, 7),  # 36 outputs per window
    (1, 1024, 256, 4, 0.5, 3, 5),  # deep windows: partial sums across depth blocks
    (2, 192, 184, 2, 0.25, 4, 6),  # window starts wrap; 23 outputs per window (fp64; fp32 the tiles)
    (1, 512, 384, 8, 0.5, 4, 4),  # cd = 16: fp32 only (fp64 vectors have 8 lanes)
    (3, 128, 120, 2, 0.5, 3, 3),  # cd = 4
]


@needs_kernel
@pytest.mark.parametrize("n,cin,cout,cg,co,h,w", WINDOW_GEMM)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_window_gemm_matches_reference(n, cin, cout, cg, co, h, w, dtype):
    gen = torch.Generator().manual_seed(cin + cout)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin // cg, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    y, _ = _check(x, weight, bias, cg, co, tol=1e-10 if dtype == torch.float64 else 2e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)


# channels_last layers on the 4-channel dot kernel (csrc/forward_last.cpp: the paper's output
# assignment, cd dividing the lanes, windows of at least 64 channels starting at multiples of 4,
# at most 4 output vectors of lanes / 4 outputs per window): (N, Cin, Cout, cg, co, H, W)
QUAD_DOTS = [
    (2, 256, 64, 4, 0.5, 5, 7),  # 8 outputs per window (fp32: 2 vectors, fp64: 4); the last window wraps; 70 pixels, a cut register tile
    (1, 512, 128, 4, 0.5, 3, 5),  # 16 outputs: 4 vectors (fp32)
    (2, 384, 96, 4, 0.5, 3, 3),  # 12 outputs: 3 vectors (fp32)
    (2, 256, 32, 4, 0.5, 3, 3),  # 4 outputs: one vector (fp32), two (fp64)
    (1, 128, 32, 2, 0.5, 4, 5),  # cd = 4
    (1, 1024, 128, 8, 0.5, 3, 4),  # cd = 16 (fp32 only; fp64 takes the tiles)
    (2, 256, 64, 4, 0.75, 3, 3),  # windows 16 channels apart: cd = 16, 4 outputs each
]


@needs_kernel
@pytest.mark.parametrize("n,cin,cout,cg,co,h,w", QUAD_DOTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_quad_dots_kernel_matches_reference(n, cin, cout, cg, co, h, w, dtype):
    gen = torch.Generator().manual_seed(cin + cout + 2)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin // cg, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    y, _ = _check(x, weight, bias, cg, co, tol=1e-10 if dtype == torch.float64 else 2e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)


# channels_last expansions (cout >= 2 cin; rows of up to 96 channels stacked by permutes on
# AVX-512 in fp32), layers too wide for the narrow kernel with cout >= cin, and rows of 33-64
# channels whatever cout (the same), on the stacked kernel
# (csrc/forward_last.cpp: the paper's output assignment, consecutive windows, cd dividing the
# lanes, any number of outputs per window): (N, Cin, Cout, cg, co, H, W)
STACKED = [
    (2, 128, 128, 4, 0.5, 5, 7),  # cout = cin, rows too wide for the narrow kernel (zipped)
    (2, 96, 96, 2, 0.25, 3, 5),  # ... permuted: 65-96 channels, cd = 8, window starts wrap
    (1, 192, 288, 4, 0.5, 4, 4),  # ... 1.5 outputs per input
    (2, 64, 256, 4, 0.5, 5, 7),  # cd = 8; the last window wraps (the row is extended)
    (2, 48, 100, 2, 0.25, 3, 5),  # 24-channel windows (the depth padded to vectors); cout ends mid-vector
    (1, 128, 512, 8, 0.5, 4, 4),  # cd = 16: fp32 only (fp64 takes the window kernel)
    (3, 64, 160, 2, 0.5, 3, 3),  # cd = 4
    (2, 40, 96, 1, 0.5, 3, 4),  # cd = 2
    (2, 36, 80, 1, 0.0, 3, 3),  # cd = 1 (a dense layer)
    (1, 512, 1024, 4, 0.5, 3, 5),  # 128-channel windows: partial sums across depth blocks
    (1, 400, 800, 4, 0.5, 2, 3),  # 100-channel windows in two depth blocks of 50
    (2, 32, 192, 4, 0.5, 3, 5),  # rows of at most 32 channels are stacked by permutes (AVX-512)
    (2, 24, 144, 4, 0.5, 3, 5),  # ... 24 of them: the second register partly masked
    (2, 16, 96, 4, 0.5, 4, 4),  # ... 16: one register
    (2, 24, 72, 2, 0.5, 3, 3),  # ... cd = 4
    (2, 64, 64, 4, 0.5, 5, 7),  # 33-64 channels: four registers, two permutes and a blend; any cout
    (2, 64, 16, 4, 0.5, 4, 5),  # ... a reduction: 2 outputs per window, one partial vector
    (2, 40, 40, 2, 0.5, 3, 4),  # ... 40: the third register partly masked, the fourth empty
    (1, 48, 24, 8, 0.5, 3, 3),  # ... cd = 16
    (2, 96, 288, 4, 0.5, 3, 5),  # 65-96 channels (expansions): six registers, three permutes, two blends
    (2, 80, 200, 2, 0.5, 3, 3),  # ... 80: the fifth register whole, the sixth empty; cd = 4
]


@needs_kernel
@pytest.mark.parametrize("n,cin,cout,cg,co,h,w", STACKED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_stacked_kernel_matches_reference(n, cin, cout, cg, co, h, w, dtype):
    gen = torch.Generator().manual_seed(cin + cout + 1)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin // cg, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    y, _ = _check(x, weight, bias, cg, co, tol=1e-10 if dtype == torch.float64 else 2e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cin,cout", [(64, 192), (256, 64)])  # the stacked kernel, the 4-channel dots
def test_channels_last_kernels_read_a_strided_pixel_view(dtype, cin, cout):
    """Pixels a uniform step apart that is not the channel count (a channel slice of a wider
    channels_last tensor) are read in place."""
    gen = torch.Generator().manual_seed(11)
    wide = torch.randn(2, cin + 16, 4, 5, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x = wide[:, 8:8 + cin]
    weight = torch.randn(cout, cin // 4, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    y = native.scc_forward(x, weight, bias, 4, 0.5, None, "none", None)
    expected = scc_reference(x.double(), weight.double(), bias.double(), cg=4, co=0.5)
    torch.testing.assert_close(y.double(), expected, atol=(1e-10 if dtype == torch.float64 else 2e-5) *
                               expected.abs().max().item(), rtol=0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,cin,cout,cg,h,w", [(2, 160, 288, 4, 10, 14), (3, 256, 512, 4, 16, 12), (1, 64, 120, 2, 9, 9)])
def test_channels_last_window_gemm_gathers_a_subsampled_view(dtype, n, cin, cout, cg, h, w):
    """A stride-2 1x1 conv's input (every other pixel of every other row of a channels_last
    tensor: no uniform pixel step) is gathered block by block onto the window kernel."""
    gen = torch.Generator().manual_seed(cin + h)
    full = torch.randn(n, cin, h, w, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x = full[:, :, ::2, ::2]
    co = 0.5  # cd = 8, 8 and 4; 5x7, 8x6 and 5x5 pixels, in blocks that end mid-row
    weight = torch.randn(cout, cin // cg, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    y = native.scc_forward(x, weight, bias, cg, co, None, "none", None)
    expected = scc_reference(x.double(), weight.double(), bias.double(), cg=cg, co=co)
    torch.testing.assert_close(y.double(), expected, atol=(1e-10 if dtype == torch.float64 else 2e-5) *
                               expected.abs().max().item(), rtol=0)
    assert y.is_contiguous(memory_format=torch.channels_last)


# Layers on the window-by-window backward (csrc/backward_last.cpp: windows of whole vectors,
# the paper's output assignment, a wrapping window split at a vector; in NCHW the input
# gradient at up to 64 pixels per image and the weight gradient at up to 196, the other
# gradient on the tiles): (N, Cin, Cout, cg, co, H, W)
WINDOW_BACKWARD = [
    (2, 128, 128, 4, 0.5, 5, 7),  # two vectors per window; the last window wraps at a vector
    (1, 1024, 256, 4, 0.5, 3, 5),  # 16 vectors per window: register tiles side by side
    (3, 256, 100, 4, 0.5, 6, 6),  # windows of 13 and 12 outputs (cout not a multiple of cd)
    (2, 512, 512, 8, 0.5, 7, 7),  # cd = 16: fp32 only (fp64 vectors have 8 lanes)
    (2, 256, 256, 4, 0.5, 13, 14),  # NCHW: the weight gradient here, the input gradient on the tiles
    (1, 64, 40, 2, 0.5, 37, 29),  # cd = 4; many pixel blocks, the last one cut (NCHW: all on the tiles)
]


@needs_kernel
@pytest.mark.parametrize("n,cin,cout,cg,co,h,w", WINDOW_BACKWARD)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_window_backward_matches_reference(n, cin, cout, cg, co, h, w, dtype, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator().manual_seed(cin + cout + h)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype).contiguous(memory_format=fmt)
    weight = torch.randn(cout, cin // cg, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    gy = torch.randn(n, cout, h, w, generator=gen, dtype=dtype).contiguous(memory_format=fmt)
    _, (gx, _, _) = _check(x, weight, bias, cg, co, gy=gy, tol=1e-10 if dtype == torch.float64 else 2e-5)
    assert gx.is_contiguous(memory_format=fmt)
    # Either gradient alone is the same bits as both together.
    both = native.scc_backward(gy, x, weight, cg, co, None, True, True)
    assert torch.equal(native.scc_backward(gy, x, weight, cg, co, None, True, False)[0], both[0])
    assert torch.equal(native.scc_backward(gy, x, weight, cg, co, None, False, True)[1], both[1])


@needs_kernel
@pytest.mark.parametrize("n,cin,cout,h,w", [(2, 512, 256, 12, 11), (1, 1024, 300, 13, 10)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nchw_deep_windows_on_the_window_gemm_match_reference(n, cin, cout, h, w, dtype):
    """NCHW layers with windows of 128+ channels and images of 128-256 pixels take the window
    kernel through pixel-major copies (ragged 16-pixel edges, partial sums over depth blocks)."""
    gen = torch.Generator().manual_seed(cin + h)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(cout, cin // 4, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    y, _ = _check(x, weight, bias, 4, 0.5, tol=1e-10 if dtype == torch.float64 else 2e-5)
    assert y.is_contiguous()


@needs_kernel
@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "hardswish", "silu", "gelu"])
@pytest.mark.parametrize("cin,cout", [(96, 300), (96, 288), (256, 200), (256, 64)])  # stacked (cout mid-vector, whole), window, 4-channel dots
@pytest.mark.parametrize("with_residual", [True, False])
def test_channels_last_window_and_stacked_epilogue_matches_reference(activation, cin, cout, with_residual):
    """Bias, residual and activation applied as the outputs are stored in order."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, cin, 5, 6, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin // 4, generator=gen, dtype=torch.float64)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    residual = torch.randn(2, cout, 5, 6, generator=gen, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last) if with_residual else None
    y = native.scc_forward(x, weight, bias, 4, 0.5, None, activation, residual)
    act = {"none": lambda t: t, "relu": torch.relu, "relu6": torch.nn.functional.relu6,
           "hardswish": torch.nn.functional.hardswish, "silu": torch.nn.functional.silu,
           "gelu": torch.nn.functional.gelu}[activation]
    expected = act(scc_reference(x, weight, bias, cg=4, co=0.5) + (residual if with_residual else 0))
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=0)


@needs_kernel
@pytest.mark.parametrize("cin,cout,h,w", [(64, 1024, 64, 64), (320, 256, 128, 128), (16, 80, 229, 230),
                                         (32, 48, 300, 300), (256, 64, 260, 260), (48, 48, 300, 300)])
def test_channels_last_output_too_large_for_the_caches_is_streamed_correctly(cin, cout, h, w):
    """16.8 MB fp32 outputs are stored past the caches (non-temporal stores): the stacked
    kernel's (64 -> 1024, and 16 -> 80 stacked by permutes), the window kernel's (320 -> 256),
    the narrow kernel's (32 -> 48), the 4-channel dots' (256 -> 64) and the stacked kernel's on
    a 48-channel row in four registers (48 -> 48), with bias, residual and activation."""
    gen = torch.Generator().manual_seed(cin + cout)
    x = torch.randn(1, cin, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin // 4, generator=gen)
    bias = torch.randn(cout, generator=gen)
    residual = torch.randn(1, cout, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    y = native.scc_forward(x, weight, bias, 4, 0.5, None, "relu", residual)
    expected = torch.relu(scc_reference(x.double(), weight.double(), bias.double(), cg=4, co=0.5) + residual.double())
    torch.testing.assert_close(y.double(), expected, atol=2e-5 * expected.abs().max().item(), rtol=0)


@needs_kernel
@pytest.mark.parametrize("n,cin,cout,cg,co,h", [
    (2, 16, 80, 4, 0.5, 9),  # channels_last: the stacked kernel, rows stacked by permutes
    (2, 32, 40, 4, 0.5, 9),  # channels_last: the narrow kernel
    (2, 64, 256, 4, 0.5, 7),  # channels_last: the stacked kernel
    (2, 64, 64, 4, 0.5, 7),  # channels_last: the stacked kernel, a 64-channel row permuted (fp32)
    (2, 128, 200, 4, 0.5, 7),  # channels_last: window by window
    (2, 96, 96, 2, 0.25, 9),  # channels_last: the transposing tiles
    (3, 512, 256, 4, 0.5, 13),  # NCHW in place, and 128+-channel windows
    (1, 24, 20, 4, 0.5, 7),  # NCHW, images cut across
])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_forward_in_place_writes_the_functional_result_over_the_residual(n, cin, cout, cg, co, h, layout, dtype):
    """scc_native::forward_ (what compiled residual blocks call) is the functional forward with
    the same residual, bit for bit, on every path: where the output is written in place the
    tiles' kernel reads the residual before it overwrites it."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator().manual_seed(cin + h)
    x = torch.randn(n, cin, h, h, generator=gen).to(dtype).contiguous(memory_format=fmt)
    weight = torch.randn(cout, cin // cg, generator=gen).to(dtype)
    bias = torch.randn(cout, generator=gen).to(dtype)
    residual = torch.randn(n, cout, h, h, generator=gen).to(dtype).contiguous(memory_format=fmt)
    want = native.scc_forward(x, weight, bias, cg, co, None, "relu", residual)
    got = residual.clone()
    assert native.scc_forward_(x, weight, bias, cg, co, None, "relu", got) is got
    assert torch.equal(got, want)
    with pytest.raises(RuntimeError, match="cannot write its output over its input"):
        square = torch.randn(n, cin, h, h).to(dtype)
        native.scc_forward_(square, torch.randn(cin, cin // cg).to(dtype), None, cg, co, None, "relu", square)


@needs_kernel
@pytest.mark.parametrize("cin,cout,cg,co", [
    (64, 256, 4, 0.5),  # the stacked kernel (and the window backward)
    (24, 144, 4, 0.5),  # rows stacked by permutes
    (192, 256, 4, 0.5),  # window by window
    (32, 40, 4, 0.5),  # the narrow kernel
    (96, 96, 2, 0.25),  # the transposing tiles
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_kernels_take_a_column_major_weight(cin, cout, cg, co, dtype):
    """The kernels pack their weights from any strides (a transposed view: no unit-stride rows)."""
    gen = torch.Generator().manual_seed(cin + cout)
    x = torch.randn(2, cin, 5, 6, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cin // cg, cout, generator=gen).to(dtype).t()
    assert weight.stride(1) != 1
    _check(x, weight, torch.randn(cout, generator=gen).to(dtype), cg, co, tol=1e-10 if dtype == torch.float64 else 1e-5)


@needs_kernel
def test_noncontiguous_grad_output_and_custom_window_of():
    x = torch.randn(2, 16, 6, 10, dtype=torch.float64)
    window_of = [o % 8 for o in range(24)][::-1]
    gy = torch.randn(2, 24, 10, 6, dtype=torch.float64).transpose(2, 3)
    _check(x, torch.randn(24, 4, dtype=torch.float64), torch.randn(24, dtype=torch.float64), 4, 0.5, window_of, gy)


@needs_kernel
@pytest.mark.parametrize("n,cin,cout,hw", [(8, 128, 256, 28), (1, 64, 64, 14), (4, 256, 512, 7)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_weight_gradient_is_the_same_bits_for_any_thread_count(n, cin, cout, hw, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, cin, hw, hw).contiguous(memory_format=fmt)
    weight = torch.randn(cout, cin // 4)
    gy = torch.randn(n, cout, hw, hw).contiguous(memory_format=fmt)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 1, 2, 3):
            torch.set_num_threads(t)
            results.append(native.scc_backward(gy, x, weight, 4, 0.5, None, True, True))
    finally:
        torch.set_num_threads(threads)
    for gx, gw in results[1:]:
        assert torch.equal(gw, results[0][1]) and torch.equal(gx, results[0][0])


_ISA_SCRIPT = textwrap.dedent("""
    import itertools, sys, torch
    sys.path.insert(0, {tests!r})
    from reference import scc_reference
    from scc_convert.ops import native
    assert native.cpu_backend() == "native"
    print(torch.ops.scc_native.info())
    # (cin, cout, cg): 40 outputs at cd = 8, 200 and 96 at cd = 4, 96 at cd = 2, 256 at cd = 8,
    # 64 at cd = 8 (channels_last: the expansions on the stacked kernel where cd divides the
    # lanes, window by window where the vectors allow; 64 channels at cg = 2 are windows of
    # whole vectors; 256 -> 64 and 128 -> 16 take the 4-channel dots, the portable copy only the
    # latter: cd = 4 and 4 outputs per window, a vector each there)
    shapes = ((48, 40, 4), (48, 200, 2), (64, 96, 2), (40, 96, 1), (64, 256, 4), (256, 64, 4), (128, 16, 2))
    for layout, (cin, cout, cg), dtype in itertools.product(("nchw", "channels_last"), shapes,
                                                            (torch.float64, torch.float32)):
            tol = 1e-10 if dtype == torch.float64 else 2e-5
            x = torch.randn(3, cin, 6, 10, dtype=dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            w, gy = torch.randn(cout, cin // cg, dtype=dtype), torch.randn(3, cout, 6, 10, dtype=dtype)
            if layout == "channels_last":
                gy = gy.contiguous(memory_format=torch.channels_last)
            y = native.scc_forward(x, w, None, cg, 0.5, None)
            gx, gw = native.scc_backward(gy, x, w, cg, 0.5, None, True, True)
            xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
            yr = scc_reference(xr, wr, None, cg=cg, co=0.5)
            yr.backward(gy.double())
            for a, b in ((y, yr), (gx, xr.grad), (gw, wr.grad)):
                assert (a.double() - b).abs().max() <= tol * b.abs().max(), (layout, dtype)
    print("ok")
""")


@needs_kernel
@pytest.mark.parametrize("capability,isa", [("default", "portable"), ("avx2", "avx2")])
def test_every_instruction_set_matches_reference(capability, isa):
    """ATEN_CPU_CAPABILITY caps the instruction set the kernel picks, so the narrower copies
    of the micro-kernels run here too."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    env.pop(native.ENV_BACKEND, None)
    script = _ISA_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[-1] == "ok"
    if capability == "default" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert lines[0] == f"isa={isa}"


# -- finding, building, forcing, falling back ---------------------------------------------


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The loader as in a new process, with an empty cache: the choice is made again."""
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setattr(native, "_forced", None)
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(native.ENV_BACKEND, raising=False)
    return tmp_path


def test_no_compiler_runs_the_pytorch_path_with_one_warning(fresh, monkeypatch):
    monkeypatch.setattr(native, "_builtin_library", lambda: None)
    monkeypatch.setenv("CXX", "no-such-compiler-scc")
    with pytest.warns(RuntimeWarning, match="native CPU kernel is unavailable.*no C\\+\\+ compiler") as caught:
        assert native.cpu_backend() == "torch"
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        x, w = torch.randn(2, 8, 3, 3, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
        torch.testing.assert_close(scc_conv2d(x, w, cg=2, co=0.5), scc_reference(x, w, cg=2, co=0.5), atol=1e-10, rtol=0)
        assert native.status() == {"available": False, "source": None, "reason": native.status()["reason"]}


def test_calling_the_kernel_when_it_is_unavailable_says_why(fresh, monkeypatch):
    monkeypatch.setattr(native, "_builtin_library", lambda: None)
    monkeypatch.setenv(native.ENV_BACKEND, "torch")
    with pytest.raises(RuntimeError, match="native CPU kernel is unavailable: SCC_CONVERT_CPU_BACKEND=torch"):
        native.scc_forward(torch.randn(1, 8, 2, 2), torch.randn(8, 4), None, 2, 0.5, None)


@needs_kernel
def test_first_call_loads_the_kernel_in_a_new_process():
    code = ("import torch; from scc_convert.ops import native; "
            "print(tuple(native.scc_forward(torch.randn(1, 8, 2, 2), torch.randn(8, 4), None, 2, 0.5, None).shape))")
    env = dict(os.environ)
    env.pop(native.ENV_BACKEND, None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 8, 2, 2)"


def test_forced_native_without_a_kernel_is_an_error(fresh, monkeypatch):
    monkeypatch.setattr(native, "_builtin_library", lambda: None)
    monkeypatch.setenv("CXX", "no-such-compiler-scc")
    monkeypatch.setenv(native.ENV_BACKEND, "native")
    with pytest.raises(RuntimeError, match="SCC_CONVERT_CPU_BACKEND=native, but the native CPU kernel is unavailable"):
        native.cpu_backend()


def test_failed_build_names_its_log_in_one_line(fresh, monkeypatch):
    from torch.utils import cpp_extension

    def failing_load(**kwargs):
        raise RuntimeError("Error building extension 'scc_native':\nforward.cpp:1: error: something broke")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(native, "_compiler", lambda: "/usr/bin/c++")
    with pytest.raises(native.BuildError) as err:
        native.build()
    message = str(err.value)
    assert "\n" not in message and "log: " in message
    log = message.split("log: ")[1]
    assert "something broke" in open(log).read()


def test_environment_variable_forces_either_and_rejects_others(fresh, monkeypatch):
    monkeypatch.setenv(native.ENV_BACKEND, "torch")
    assert native.cpu_backend() == "torch"
    assert native.status() == {"available": False, "source": None, "reason": "SCC_CONVERT_CPU_BACKEND=torch"}
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setenv(native.ENV_BACKEND, "fast")
    with pytest.raises(ValueError, match="SCC_CONVERT_CPU_BACKEND='fast' is invalid"):
        native.cpu_backend()


def test_use_backend_switches_and_restores():
    with native.use_backend("torch"):
        assert native.cpu_backend() == "torch"
    with pytest.raises(ValueError, match="backend must be"):
        with native.use_backend("gpu"):
            pass


@needs_kernel
def test_forced_native_in_a_new_process_runs_it(tmp_path):
    env = dict(os.environ, SCC_CONVERT_CPU_BACKEND="native")
    code = "from scc_convert.ops import native, backends; print(native.cpu_backend(), backends.describe()['implementations']['cpu']['implementation'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["native", "native"]


@pytest.mark.skipif(native.source_dir() is None, reason="no C++ sources in this installation")
def test_first_use_builds_into_the_cache_says_so_once_and_build_ext_reuses_it(tmp_path):
    """The path of an installation without the built-in kernel: a real compile (about a
    minute on two cores), then `scc-convert build-ext` finds the build in the cache."""
    env = dict(os.environ, SCC_CONVERT_CACHE=str(tmp_path / "cache"))
    env.pop(native.ENV_BACKEND, None)
    code = textwrap.dedent("""
        import torch
        from scc_convert.ops import native
        native._builtin_library = lambda: None  # as if installed without it
        x, w = torch.randn(2, 8, 4, 4), torch.randn(8, 4)
        from scc_convert.functional import scc_conv2d
        scc_conv2d(x, w, cg=2, co=0.5); scc_conv2d(x, w, cg=2, co=0.5)
        print(native.status()["source"], native.cpu_backend())
    """)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    if "no C++ compiler" in done.stderr or "ninja not found" in done.stderr:
        pytest.skip("no C++ toolchain here")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["jit-cache", "native"]
    assert done.stderr.count("building the native CPU kernel") == 1
    built = subprocess.run([sys.executable, "-m", "scc_convert", "build-ext"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert str(tmp_path / "cache") in built.stdout and built.stdout.strip().endswith(".so")
