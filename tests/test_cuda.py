"""The Triton kernels compiled and run on a CUDA GPU, against the fp64 dense masked-weight
reference (computed on the CPU). Skipped without a GPU; ``bench/gpu.py`` runs this file
first on a machine that has one."""

import pytest
import torch

from reference import scc_reference
from scc_convert import SCCConv2d, convert
from scc_convert.ops import torch_path

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GEOMETRIES = [
    (8, 8, 2, 0.5),
    (128, 128, 4, 0.5),
    (96, 96, 2, 0.25),
    (12, 5, 4, 0.34),
    (16, 24, 4, 0.5),
    (120, 64, 4, 0.3),
    (10, 7, 1, 0.3),
    (12, 12, 3, 0.0),
    (32, 32, 2, 0.75),
    (1, 3, 1, 0.0),
    (256, 256, 4, 0.5),
    (512, 512, 8, 0.5),
]
LAYOUTS = ("nchw", "channels_last", "strided")


def _place(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a stride-2 view with an odd offset
        big = torch.zeros(x.shape[0], x.shape[1], 2 * x.shape[2] + 1, 2 * x.shape[3] + 1,
                          dtype=x.dtype, device=x.device)
        view = big[:, :, 1::2, 1::2]
        view.copy_(x)
        return view
    return x


def _case(cin, cout, cg, n=3, h=9, w=7, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(cout, cin // cg, generator=gen, dtype=torch.float64)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    gy = torch.randn(n, cout, h, w, generator=gen, dtype=torch.float64)
    return x, weight, bias, gy


def _reference(x, weight, bias, gy, cg, co):
    xr, wr = x.double().cpu().requires_grad_(), weight.double().cpu().requires_grad_()
    y = scc_reference(xr, wr, None if bias is None else bias.double().cpu(), cg=cg, co=co)
    gx, gw = torch.autograd.grad(y, (xr, wr), gy.double().cpu())
    return y.detach(), gx, gw


def _ours(x, weight, bias, gy, cg, co, layout, dtype):
    dev = torch.device("cuda")
    xc = _place(x.to(dev, dtype), layout).requires_grad_()
    wc = weight.to(dev, dtype).requires_grad_()
    y = torch.ops.scc.scc_conv2d(xc, wc, bias.to(dev, dtype), cg, co, None)
    gx, gw = torch.autograd.grad(y, (xc, wc), gy.to(dev, dtype))
    return y, gx, gw


@pytest.mark.parametrize("cin,cout,cg,co", GEOMETRIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fp64_matches_reference(cin, cout, cg, co, layout):
    x, weight, bias, gy = _case(cin, cout, cg)
    ours = _ours(x, weight, bias, gy, cg, co, layout, torch.float64)
    for a, b in zip(ours, _reference(x, weight, bias, gy, cg, co)):
        torch.testing.assert_close(a.cpu(), b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype,tf32,tol", [
    (torch.float32, False, 1e-5), (torch.float32, True, 3e-3),
    (torch.float16, False, 3e-3), (torch.bfloat16, False, 2e-2),
])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_low_precision(dtype, tf32, tol, layout, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    x, weight, bias, gy = _case(256, 256, 4, n=4, h=28, w=28)
    x, weight, bias, gy = (t.to(dtype).double() for t in (x, weight, bias, gy))  # rounded inputs
    ours = _ours(x, weight, bias, gy, 4, 0.5, layout, dtype)
    for a, b in zip(ours, _reference(x, weight, bias, gy, 4, 0.5)):
        assert a.dtype == dtype
        assert ((a.double().cpu() - b).abs().max() / b.abs().max()).item() < tol


def test_the_op_runs_triton_on_cuda(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the PyTorch path ran on CUDA")

    monkeypatch.setattr(torch_path, "scc_forward", fail)
    monkeypatch.setattr(torch_path, "scc_backward", fail)
    x, weight, bias, gy = _case(64, 64, 4)
    _ours(x, weight, bias, gy, 4, 0.5, "nchw", torch.float32)


def test_grad_weight_is_bitwise_deterministic():
    x, weight, bias, gy = _case(256, 256, 4, n=16, h=28, w=28, dtype=torch.float32)
    runs = [_ours(x, weight, bias, gy, 4, 0.5, "nchw", torch.float32)[2] for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_no_stray_writes_into_neighbouring_memory():
    x, weight, bias, _ = _case(96, 96, 2)
    storage = torch.full((x.numel() * 3,), float("nan"), device="cuda")
    xc = storage[x.numel():2 * x.numel()].view_as(x).copy_(x.cuda().float())
    out = torch.full((3, *x.shape), float("nan"), device="cuda")
    from scc_convert.ops.common import geometry_for
    from scc_convert.ops.triton_kernels import launch

    geom = geometry_for(xc, weight.float(), 2, 0.25)
    launch.forward_into(out[1], xc, weight.cuda().float(), None, geom, None)
    assert out[0].isnan().all() and out[2].isnan().all() and not out[1].isnan().any()


def test_compiled_and_autocast_layer():
    torch.manual_seed(0)
    layer = SCCConv2d(128, 256, cg=4, co=0.5, bias=True).cuda()
    x = torch.randn(8, 128, 14, 14, device="cuda")
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), eager, atol=5e-2, rtol=5e-2)


def test_converted_mobilenet_trains_on_cuda():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10)
    small, report = convert(model, cg=4, co=0.5, example_inputs=torch.randn(1, 3, 64, 64))
    small = small.cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    cpu = small.cpu()(x.cpu())
    gpu = small.cuda()(x)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = small(x).float().logsumexp(1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in small.parameters() if p.grad is not None)
