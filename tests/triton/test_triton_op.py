"""The registered ops with the Triton kernels as their implementation (registered for CPU in
this interpreter session only; the product registers them for CUDA): torch.library's opcheck,
autograd, torch.compile, a converted model."""

import pytest
import torch

from reference import scc_reference
from scc_convert import SCCConv2d
from scc_convert.ops import torch_path

pytestmark = pytest.mark.usefixtures("triton_on_cpu")


def _args(n, cin, cout, cg, co, window_of=None, bias=True, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, 5, 3, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin // cg, generator=gen, dtype=torch.float64)
    b = torch.randn(cout, generator=gen, dtype=torch.float64) if bias else None
    return x, w, b, cg, co, window_of


@pytest.mark.parametrize(
    "args",
    [
        _args(2, 16, 24, 4, 0.5),
        _args(1, 12, 5, 4, 0.34, bias=False),
        _args(2, 16, 24, 4, 0.5, window_of=[(7 - o) % 8 for o in range(24)]),
        _args(2, 32, 32, 2, 0.75, channels_last=True),
    ],
    ids=["bias", "Cout<cd", "window_of", "channels_last"],
)
def test_opcheck_forward_and_backward(args):
    x, w, b, cg, co, window_of = args
    x.requires_grad_()
    w.requires_grad_()
    torch.library.opcheck(torch.ops.scc.scc_conv2d.default, (x, w, b, cg, co, window_of))
    gy = torch.randn(x.shape[0], w.shape[0], *x.shape[2:], dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.scc.scc_conv2d_backward.default,
        (gy, x.detach(), w.detach(), cg, co, window_of, True, True),
    )


def test_the_op_runs_the_triton_kernels(monkeypatch):
    """With the Triton kernels registered, the op never reaches the PyTorch path."""

    def fail(*args, **kwargs):
        raise AssertionError("the PyTorch path ran")

    monkeypatch.setattr(torch_path, "scc_forward", fail)
    monkeypatch.setattr(torch_path, "scc_backward", fail)
    x, w, b, cg, co, _ = _args(2, 16, 24, 4, 0.5)
    x.requires_grad_()
    y = torch.ops.scc.scc_conv2d(x, w, b, cg, co, None)
    y.sum().backward()
    torch.testing.assert_close(y, scc_reference(x, w, b, cg=cg, co=co), atol=1e-10, rtol=0)


def test_gradcheck_through_the_op():
    x, w, b, cg, co, _ = _args(2, 12, 10, 3, 0.5)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda a, c, d: torch.ops.scc.scc_conv2d(a, c, d, cg, co, None), inputs)


def test_layer_training_step_matches_the_pytorch_path():
    torch.manual_seed(0)
    layer = SCCConv2d(24, 48, cg=4, co=0.5, stride=2, bias=True).double()
    x = torch.randn(3, 24, 9, 9, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, layer.weight, layer.bias), gy)
    ref_x = x.detach().requires_grad_()
    ref_w = layer.weight.detach().requires_grad_()
    ref = scc_reference(ref_x, ref_w, layer.bias.detach(), cg=4, co=0.5, stride=2)
    ref_grads = torch.autograd.grad(ref, (ref_x, ref_w), gy)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=0)
    for a, b in zip(grads[:2], ref_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.testing.assert_close(grads[2], gy.sum((0, 2, 3)), atol=1e-10, rtol=0)


def test_compiled_graph_calls_the_triton_kernels():
    torch.manual_seed(0)
    model = torch.nn.Sequential(SCCConv2d(16, 32, cg=4, co=0.5), torch.nn.ReLU()).double()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    ref_x = x.detach().requires_grad_()
    ref = torch.relu(scc_reference(ref_x, model[0].weight, cg=4, co=0.5))
    ref.sum().backward()
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-10, rtol=0)


def test_gpu_benchmark_script_dry_run(tmp_path):
    """bench/gpu.py end to end on tiny shapes under the interpreter: every implementation and
    pass it times on a GPU runs, and the JSON has the fields the targets are read from."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    assert module.main(["--dry-run", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    impls = {r["impl"] for r in data["records"]}
    assert impls == {"scc_triton", "scc_torch", "cudnn_grouped", "cudnn_dense", "naive", "model_original", "model_scc"}
    layer = [r for r in data["records"] if "Cout" in r]
    assert {r["pass"] for r in layer} == {"forward", "forward_backward"} and {r["layout"] for r in layer} == {"nchw", "nhwc"}
    for r in layer:
        assert set(r) >= {"impl", "pass", "N", "C", "H", "W", "cg", "co", "dtype", "layout", "median_us", "roofline_us"}
    assert data["targets"] == [] and "dry run" in data["device"]


def test_naive_baseline_matches_reference():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from naive_scc import naive_scc_forward

    x, w, _, cg, co, _ = _args(2, 24, 36, 3, 0.5, bias=False)
    torch.testing.assert_close(naive_scc_forward(x.float(), w.float(), cg, co).double(),
                               scc_reference(x.float(), w.float(), cg=cg, co=co), atol=1e-4, rtol=1e-4)
