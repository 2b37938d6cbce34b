"""The Triton forward kernel's epilogue (the fused op ``scc::scc_conv2d_fused``), run by the
interpreter, against the fp64 dense masked-weight reference followed by torch's activation.

Outputs are written into NaN-guarded storage and the residual read from it
(``conftest.Guarded``), so a stray read, a stray write or a skipped element fails the test.
"""

import pytest
import torch
import torch.nn.functional as F

from reference import scc_reference
from scc_convert.ops.common import geometry_for
from scc_convert.ops.epilogue import ACTIVATIONS
from scc_convert.ops.triton_kernels import configs, launch

TORCH = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
         "silu": F.silu, "gelu": F.gelu}


def _data(shape, dtype, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)


def _fused_guarded(guarded, x, weight, bias, residual, activation, x_layout, r_layout, config=None):
    geom = geometry_for(x, weight, 4, 0.5)
    n, _, h, w = x.shape
    out_layout = "nchw" if x_layout in ("nchw", "sliced") else "channels_last"
    xg = guarded(x.shape, x.dtype, x_layout, x)
    y = guarded((n, geom.out_channels, h, w), x.dtype, out_layout)
    rg = None if residual is None else guarded(residual.shape, x.dtype, r_layout, residual)
    plan = {} if config is None else {"config": config}
    launch.plan_forward(y.tensor, xg.tensor, weight, bias, geom, None, activation=activation,
                        residual=None if rg is None else rg.tensor, **plan).run()
    assert y.untouched(), "the kernel wrote outside its output"
    assert y.all_written(), "the kernel left an output element unwritten"
    return y.tensor


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["no-residual", "residual"])
@pytest.mark.parametrize("x_layout,r_layout", [("nchw", "nchw"), ("channels_last", "channels_last"),
                                               ("nchw", "sliced"), ("channels_last", "nchw")])
def test_epilogue_matches_reference_fp64(guarded, activation, with_residual, x_layout, r_layout):
    cin, cout, n, h, w = 16, 24, 2, 5, 7  # Cout not a multiple of cd; 35 pixels
    x = _data((n, cin, h, w), torch.float64, 0)
    weight = _data((cout, cin // 4), torch.float64, 1)
    bias = _data((cout,), torch.float64, 2)
    residual = _data((n, cout, h, w), torch.float64, 3, scale=4.0) if with_residual else None
    y = _fused_guarded(guarded, x, weight, bias, residual, activation, x_layout, r_layout)
    ref = scc_reference(x, weight, bias, cg=4, co=0.5)
    ref = TORCH[activation](ref if residual is None else ref + residual)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("config", configs.FORWARD, ids=lambda c: f"{c.rows}x{c.cols}x{c.k}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_epilogue_on_every_forward_configuration(guarded, config, dtype):
    """Each forward tile configuration, forced, with a residual and each activation in turn
    (fp32 on FMA units: its wide tiles are checked in fp16, as for the plain forward)."""
    fma = dtype == torch.float32
    if not configs.usable(config, fma):
        pytest.skip("the rule never picks this configuration for this dtype")
    cin, cout, n, h, w = 48, 40, 2, 9, 10
    x = _data((n, cin, h, w), dtype, 4)
    weight = _data((cout, cin // 4), dtype, 5)
    bias = _data((cout,), dtype, 6)
    residual = _data((n, cout, h, w), dtype, 7)
    tol = {torch.float32: 2e-6, torch.float16: 4e-3}[dtype]
    for activation in ACTIVATIONS[1:]:
        y = _fused_guarded(guarded, x, weight, bias, residual, activation, "nchw", "channels_last", config)
        ref = TORCH[activation](scc_reference(x, weight, bias, cg=4, co=0.5) + residual.double())
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        assert err < tol, f"{activation}: relative error {err:.3g}"
