"""The fused op ``scc::scc_conv2d_fused`` (``act(scc(x) + bias + residual)``) on each CPU
implementation against the fp64 dense masked-weight reference followed by torch's activation,
and its integrations: fake kernel, opcheck, FLOP formula, autocast, errors, the eager direct
call. Each activation is tested on its own."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from reference import scc_reference
from scc_convert.ops import native, scc_conv2d_fused_call, scc_conv2d_fused_op
from scc_convert.ops.fused import scc_conv2d_fused_inplace_op
from scc_convert.ops.epilogue import ACTIVATIONS

TORCH = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu,
         "gelu": F.gelu}
BACKENDS = ["torch", "native"]


@pytest.fixture(params=BACKENDS)
def cpu_backend(request):
    if request.param == "native" and not native.status()["available"]:
        pytest.skip(f"the native CPU kernel is unavailable: {native.status()['reason']}")
    with native.use_backend(request.param):
        yield request.param


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a stride-2 view, as a strided SCC layer reads its input
        return torch.repeat_interleave(t, 2, dim=2)[:, :, ::2]
    return t


def _case(n, cin, cout, cg, h, w, dtype, layout, residual_layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = _layout(torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64), layout).to(dtype)
    weight = torch.randn(cout, cin // cg, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64).to(dtype)
    residual = None
    if residual_layout is not None:
        residual = _layout(3 * torch.randn(n, cout, h, w, generator=gen, dtype=torch.float64), residual_layout).to(dtype)
    return x, weight, bias, residual


def _reference(x, weight, bias, residual, cg, co, activation, window_of=None):
    y = scc_reference(x.double(), weight.double(), bias.double(), cg=cg, co=co, window_of=window_of)
    if residual is not None:
        y = y + residual.double()
    return TORCH[activation](y)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("residual_layout", [None, "nchw", "channels_last"], ids=["no-residual", "res-nchw", "res-cl"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("cin,cout,cg,co", [(16, 24, 4, 0.5), (64, 40, 4, 0.5), (96, 96, 2, 0.25)],
                         ids=["narrow", "wide", "wrapping"])
def test_fused_matches_reference_fp64(cpu_backend, activation, residual_layout, layout, cin, cout, cg, co):
    x, weight, bias, residual = _case(2, cin, cout, cg, 5, 7, torch.float64, layout, residual_layout)
    y = scc_conv2d_fused_op(x, weight, bias, cg, co, None, activation, residual)
    torch.testing.assert_close(y, _reference(x, weight, bias, residual, cg, co, activation), atol=1e-10, rtol=1e-10)
    expected_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=expected_format)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("cin,cout,h", [(16, 96, 14), (24, 144, 9), (32, 20, 8), (144, 24, 12), (320, 1280, 7)])
def test_fused_float32_is_the_unfused_result_to_rounding(cpu_backend, activation, layout, cin, cout, h):
    """fp32 on model layer shapes (narrow and wide inputs; in channels_last the stacked kernel,
    rows stacked by permutes for 16 and 24 channels, and the narrow kernel for 32 -> 20) against
    the same op unfused, then torch's add and activation."""
    x, weight, bias, residual = _case(4, cin, cout, 4, h, h, torch.float32, layout, layout)
    y = scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, activation, residual)
    unfused = TORCH[activation](torch.ops.scc.scc_conv2d(x, weight, bias, 4, 0.5, None) + residual)
    scale = unfused.abs().max().item()
    torch.testing.assert_close(y, unfused, atol=2e-6 * scale, rtol=1e-5)
    ref = _reference(x, weight, bias, residual, 4, 0.5, activation)
    torch.testing.assert_close(y.double(), ref, atol=2e-6 * scale, rtol=1e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_custom_window_of_and_no_bias(cpu_backend, layout):
    x, weight, _, residual = _case(2, 16, 24, 4, 5, 7, torch.float64, layout, layout)
    window_of = [(7 - o) % 8 for o in range(24)]
    y = scc_conv2d_fused_op(x, weight, None, 4, 0.5, window_of, "relu6", residual)
    ref = F.relu6(scc_reference(x, weight, None, cg=4, co=0.5, window_of=window_of) + residual)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computes_in_float32(cpu_backend, dtype):
    x, weight, bias, residual = _case(2, 64, 64, 4, 6, 6, dtype, "channels_last", "nchw")
    y = scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, "silu", residual)
    assert y.dtype == dtype
    ref = _reference(x, weight, bias, residual, 4, 0.5, "silu")
    torch.testing.assert_close(y.double(), ref, atol=0.05 * ref.abs().max().item(), rtol=0.02)


def test_nan_propagates_through_every_activation(cpu_backend):
    x, weight, bias, residual = _case(1, 16, 16, 4, 4, 4, torch.float32, "nchw", "nchw")
    residual[0, 3, 1, 2] = float("nan")
    for activation in ACTIVATIONS:
        y = scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, activation, residual)
        assert y[0, 3, 1, 2].isnan() and y.isnan().sum() == 1, activation


@pytest.mark.parametrize("layout,residual_layout", [("nchw", "nchw"), ("channels_last", "channels_last"),
                                                     ("channels_last", "nchw")])
def test_in_place_form_writes_the_result_over_the_residual(cpu_backend, layout, residual_layout):
    """``scc_conv2d_fused_`` (what compiled residual blocks call when the residual is dead
    afterwards) gives the functional op's result, in the residual's own storage and strides."""
    x, weight, bias, residual = _case(2, 16, 24, 4, 5, 7, torch.float32, layout, residual_layout)
    want = scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, "relu", residual)
    target = residual.clone()
    ptr, strides = target.data_ptr(), target.stride()
    assert scc_conv2d_fused_inplace_op(target, x, weight, bias, 4, 0.5, None, "relu") is None
    assert target.data_ptr() == ptr and target.stride() == strides
    torch.testing.assert_close(target, want, atol=1e-6, rtol=0)
    torch.library.opcheck(scc_conv2d_fused_inplace_op, (residual.clone(), x, weight, bias, 4, 0.5, None, "silu"))


def test_opcheck_and_fake_kernel():
    x, weight, bias, residual = _case(2, 16, 24, 4, 5, 7, torch.float64, "channels_last", "nchw")
    for activation in ("relu", "gelu"):
        torch.library.opcheck(scc_conv2d_fused_op, (x, weight, bias, 4, 0.5, None, activation, residual))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx_, fw, fb, fr = (mode.from_tensor(t) for t in (x, weight, bias, residual))
        out = scc_conv2d_fused_op(fx_, fw, fb, 4, 0.5, None, "silu", fr)
    assert out.shape == (2, 24, 5, 7) and out.is_contiguous(memory_format=torch.channels_last)


def test_flop_formula_counts_the_sum_only():
    x, weight, bias, residual = _case(2, 16, 24, 4, 5, 7, torch.float32, "nchw", "nchw")
    with FlopCounterMode(display=False) as counter:
        scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, "hardswish", residual)
    assert counter.get_total_flops() == 2 * 2 * 5 * 7 * 24 * 4


def test_autocast_runs_in_the_autocast_dtype():
    x, weight, bias, residual = _case(2, 16, 24, 4, 5, 7, torch.float32, "nchw", "nchw")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, "relu", residual)
    assert y.dtype == torch.bfloat16


def test_bad_arguments_say_what_is_wrong():
    x, weight, bias, residual = _case(2, 16, 24, 4, 5, 7, torch.float32, "nchw", "nchw")
    with pytest.raises(ValueError, match="activation='tanh' is not fusable"):
        scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, "tanh", None)
    with pytest.raises(ValueError, match=r"residual has shape \(2, 24, 5, 1\)"):
        scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, "relu", residual[..., :1])
    with pytest.raises(TypeError, match="residual must match"):
        scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, "relu", residual.double())


def test_inference_only_no_gradient_formula():
    x, weight, bias, _ = _case(2, 16, 24, 4, 5, 7, torch.float32, "nchw", None)
    y = scc_conv2d_fused_op(x.requires_grad_(), weight, bias, 4, 0.5, None, "relu", None)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        y.sum().backward()


def test_eager_direct_call_is_the_op(cpu_backend):
    x, weight, bias, residual = _case(2, 16, 24, 4, 5, 7, torch.float32, "channels_last", "channels_last")
    with torch.no_grad():
        direct = scc_conv2d_fused_call(x, weight, bias, 4, 0.5, None, "silu", residual)
    torch.testing.assert_close(direct, scc_conv2d_fused_op(x, weight, bias, 4, 0.5, None, "silu", residual),
                               atol=0, rtol=0)
