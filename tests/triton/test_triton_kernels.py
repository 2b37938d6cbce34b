"""Every Triton kernel, run by the interpreter, against the fp64 dense masked-weight reference.

Inputs sit in NaN-guarded storage and outputs are written into NaN-guarded storage
(``conftest.Guarded``), so a stray read, a stray write or a skipped element fails the test.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LAYOUTS
from reference import algorithm1, scc_reference
from scc_convert.geometry import valid_cgs
from scc_convert.ops.common import geometry_for
from scc_convert.ops.triton_kernels import configs, launch, scc_backward, scc_forward

# (cin, cout, cg, co, what the case covers): the op suite's awkward geometries
GEOMETRIES = [
    (8, 8, 2, 0.5, "poster-like, last window wraps"),
    (128, 128, 4, 0.5, "bench shape, two windows per 64-row tile"),
    (96, 96, 2, 0.25, "window starts wrap"),
    (12, 5, 4, 0.34, "Cout < cd, an input channel no window reads"),
    (16, 24, 4, 0.5, "Cout not a multiple of cd"),
    (16, 12, 4, 0.5, "fewer outputs than windows twice"),
    (120, 64, 4, 0.3, "gcd(Cin, s) = 3, many windows"),
    (10, 7, 1, 0.3, "cg = 1, co not a round fraction"),
    (12, 12, 3, 0.0, "co = 0"),
    (6, 6, 6, 0.0, "gw = 1"),
    (32, 32, 2, 0.75, "large overlap"),
    (1, 3, 1, 0.0, "one input channel"),
    (80, 200, 4, 0.5, "band of a 64-row tile wider than Cin"),
]
IDS = [g[-1] for g in GEOMETRIES]


def _data(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _reference(x, weight, bias, gy, cg, co, window_of):
    """fp64 forward and gradients of the dense masked-weight conv."""
    xr = x.double().requires_grad_()
    wr = weight.double().requires_grad_()
    br = None if bias is None else bias.double()
    y = scc_reference(xr, wr, br, cg=cg, co=co, window_of=window_of)
    gx, gw = torch.autograd.grad(y, (xr, wr), gy.double())
    return y.detach(), gx, gw


def _run_guarded(guarded, x, weight, bias, gy, cg, co, window_of, layout, splits=3, config=None):
    """Forward, grad-input and grad-weight into guarded outputs, through the planned launches."""
    geom = geometry_for(x, weight, cg, co)
    n, cin, h, w = x.shape
    out_layout = "nchw" if layout == "nchw" else "channels_last"
    if layout == "sliced":  # a sliced NCHW view keeps the NCHW output layout
        out_layout = "nchw"
    xg = guarded(x.shape, x.dtype, layout, x)
    gyg = guarded(gy.shape, gy.dtype, out_layout, gy)
    y = guarded((n, geom.out_channels, h, w), x.dtype, out_layout)
    gx = guarded(x.shape, x.dtype, out_layout)
    plan = {} if config is None else {"config": config}
    launch.plan_forward(y.tensor, xg.tensor, weight, bias, geom, window_of, **plan).run()
    launch.plan_grad_input(gx.tensor, gyg.tensor, weight, geom, window_of, **plan).run()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    partial = guarded((1, splits, *weight.shape), acc, "nchw")
    grad_w = guarded((1, 1, *weight.shape), weight.dtype, "nchw")
    launch.plan_grad_weight(partial.tensor[0], gyg.tensor, xg.tensor, geom, window_of, **plan).run()
    assert partial.all_written(), "a grad-weight split left an entry unwritten"
    launch.plan_sum_splits(grad_w.tensor[0, 0], partial.tensor[0]).run()
    for t in (y, gx, partial, grad_w):
        assert t.untouched(), "a kernel wrote outside its output"
        assert t.all_written(), "a kernel left an output element unwritten"
    return y.tensor, gx.tensor, grad_w.tensor[0, 0]


@pytest.mark.parametrize("cin,cout,cg,co,case", GEOMETRIES, ids=IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernels_match_reference_fp64(guarded, cin, cout, cg, co, case, layout):
    n, h, w = 2, 5, 7  # 35 pixels: not a multiple of any pixel tile
    x = _data((n, cin, h, w), torch.float64, 0)
    weight = _data((cout, cin // cg), torch.float64, 1)
    bias = _data((cout,), torch.float64, 2)
    gy = _data((n, cout, h, w), torch.float64, 3)
    y, gx, gw = _run_guarded(guarded, x, weight, bias, gy, cg, co, None, layout)
    y_r, gx_r, gw_r = _reference(x, weight, bias, gy, cg, co, None)
    torch.testing.assert_close(y, y_r, atol=1e-10, rtol=0)
    torch.testing.assert_close(gx, gx_r, atol=1e-10, rtol=0)
    torch.testing.assert_close(gw, gw_r, atol=1e-10, rtol=0)


def _all_configs():
    for kind, table in (("forward", configs.FORWARD), ("grad_input", configs.GRAD_INPUT),
                        ("grad_weight", configs.GRAD_WEIGHT)):
        for config in table:
            yield pytest.param(kind, config, id=f"{kind}-{config.rows}x{config.cols}x{config.k}")


@pytest.mark.parametrize("kind,config", list(_all_configs()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_every_configuration(guarded, kind, config, dtype):
    """Each tile configuration the rule can pick, forced, on a geometry whose tiles span
    several windows and whose pixels (9x10) overrun one pixel tile. fp32 runs on FMA units
    here (TF32 is off), so its wide tiles are checked in fp16."""
    fma = dtype in (torch.float64, torch.float32)
    if not configs.usable(config, fma):
        pytest.skip("the rule never picks this configuration for this dtype")
    cin, cout, cg, co = 48, 40, 4, 0.5  # gw 12, s 6, cd 8: five outputs per window
    n, h, w = 2, 9, 10
    x = _data((n, cin, h, w), dtype, 4)
    weight = _data((cout, cin // cg), dtype, 5)
    bias = _data((cout,), dtype, 6)
    gy = _data((n, cout, h, w), dtype, 7)
    only = {"config": config}
    y, gx, gw = _run_guarded(guarded, x, weight, bias, gy, cg, co, None, "nchw", **only)
    y_r, gx_r, gw_r = _reference(x, weight, bias, gy, cg, co, None)
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3}[dtype]
    ours, ref = {"forward": (y, y_r), "grad_input": (gx, gx_r), "grad_weight": (gw, gw_r)}[kind]
    assert ((ours.double() - ref).abs().max() / ref.abs().max()).item() < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
def test_low_precision(guarded, dtype, tol, layout, bias):
    """fp32/fp16/bf16 inputs, fp32 accumulation: error within the output dtype's rounding of
    the fp64 result on the same (rounded) inputs. bf16 runs with its dot upcast: the
    interpreter's bf16 dot is wrong (triton issue 11584); the compile check covers the real one."""
    cin, cout, cg, co = 64, 48, 4, 0.5
    n, h, w = 2, 6, 6
    x = _data((n, cin, h, w), dtype, 8)
    weight = _data((cout, cin // cg), dtype, 9)
    b = _data((cout,), dtype, 10) if bias else None
    gy = _data((n, cout, h, w), dtype, 11)
    y, gx, gw = _run_guarded(guarded, x, weight, b, gy, cg, co, None, layout)
    refs = _reference(x, weight, b, gy, cg, co, None)
    for ours, ref in zip((y, gx, gw), refs):
        assert ours.dtype == dtype
        err = ((ours.double() - ref).abs().max() / ref.abs().max()).item()
        assert err < tol, err


@settings(max_examples=40, deadline=None)
@given(
    cin=st.integers(1, 40),
    cout=st.integers(1, 40),
    cg_index=st.integers(0, 10),
    co=st.floats(0.0, 0.95, allow_nan=False),
    n=st.integers(1, 2),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    layout=st.sampled_from(LAYOUTS),
    permute=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_geometries(cin, cout, cg_index, co, n, h, w, layout, permute, seed):
    from conftest import Guarded

    divisors = valid_cgs(cin)
    cg = divisors[cg_index % len(divisors)]
    cd = len(algorithm1(cin, cout, cg, co))
    window_of = [o % cd for o in range(cout)]
    if permute:
        perm = torch.randperm(cout, generator=torch.Generator().manual_seed(seed)).tolist()
        window_of = [window_of[p] for p in perm]
    x = _data((n, cin, h, w), torch.float64, seed)
    weight = _data((cout, cin // cg), torch.float64, seed + 1)
    bias = _data((cout,), torch.float64, seed + 2)
    gy = _data((n, cout, h, w), torch.float64, seed + 3)
    ours = _run_guarded(Guarded, x, weight, bias, gy, cg, co, window_of, layout, splits=1 + seed % 3)
    refs = _reference(x, weight, bias, gy, cg, co, window_of)
    for a, b in zip(ours, refs):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_public_launchers_match_reference_and_fake_strides():
    """``scc_forward``/``scc_backward`` (the registered contract): results, and strides equal
    to the fake kernel's (inductor checks this), for both layouts and a stride-2 view."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cin, cout, cg, co = 24, 36, 3, 0.5
    for make in (lambda t: t, lambda t: t.contiguous(memory_format=torch.channels_last),
                 lambda t: t[:, :, ::2, ::2]):
        x = make(_data((2, cin, 8, 6), torch.float64, 12))
        weight = _data((cout, cin // cg), torch.float64, 13)
        gy = _data((x.shape[0], cout, *x.shape[2:]), torch.float64, 14)
        y = scc_forward(x, weight, None, cg, co, None)
        gx, gw = scc_backward(gy, x, weight, cg, co, None, True, True)
        y_r, gx_r, gw_r = _reference(x, weight, None, gy, cg, co, None)
        torch.testing.assert_close(y, y_r, atol=1e-10, rtol=0)
        torch.testing.assert_close(gx, gx_r, atol=1e-10, rtol=0)
        torch.testing.assert_close(gw, gw_r, atol=1e-10, rtol=0)
        with FakeTensorMode() as mode:
            fx, fw, fgy = (mode.from_tensor(t) for t in (x, weight, gy))
            fy = torch.ops.scc.scc_conv2d(fx, fw, None, cg, co, None)
            fgx, fgw = torch.ops.scc.scc_conv2d_backward(fgy, fx, fw, cg, co, None, True, True)
        assert y.stride() == fy.stride() and gx.stride() == fgx.stride() and gw.stride() == fgw.stride()


def test_only_requested_gradients_and_empty_inputs():
    x = _data((2, 8, 3, 3), torch.float64, 15)
    weight = _data((8, 4), torch.float64, 16)
    gy = _data((2, 8, 3, 3), torch.float64, 17)
    gx, gw = scc_backward(gy, x, weight, 2, 0.5, None, False, True)
    assert gx.numel() == 0 and gw.shape == weight.shape
    gx, gw = scc_backward(gy, x, weight, 2, 0.5, None, True, False)
    assert gx.shape == x.shape and gw.numel() == 0
    empty = x[:0]
    assert scc_forward(empty, weight, None, 2, 0.5, None).shape == (0, 8, 3, 3)
    gx, gw = scc_backward(gy[:0], empty, weight, 2, 0.5, None, True, True)
    assert gx.shape == (0, 8, 3, 3) and torch.equal(gw, torch.zeros_like(weight))


def test_grad_weight_is_deterministic_and_split_independent():
    """Run to run bit-for-bit; any number of splits gives the same sum up to rounding."""
    x = _data((3, 32, 9, 9), torch.float32, 18)
    weight = _data((64, 8), torch.float32, 19)
    gy = _data((3, 64, 9, 9), torch.float32, 20)
    geom = geometry_for(x, weight, 4, 0.5)
    runs = [launch.grad_weight_into(torch.empty_like(weight), gy, x, geom, None) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    for splits in (1, 2, 5):
        partial = torch.full((splits, *weight.shape), float("nan"))
        other = launch.grad_weight_into(torch.empty_like(weight), gy, x, geom, None, partial=partial)
        torch.testing.assert_close(other, runs[0], atol=1e-4, rtol=1e-5)


def test_mismatched_dtypes_are_refused():
    x = _data((1, 8, 2, 2), torch.float32, 21)
    with pytest.raises(TypeError, match="must match the input's dtype"):
        scc_forward(x, _data((8, 4), torch.float64, 22), None, 2, 0.5, None)
    with pytest.raises(TypeError, match="not supported"):
        scc_forward(x.to(torch.int32), torch.zeros(8, 4, dtype=torch.int32), None, 2, 0.5, None)
