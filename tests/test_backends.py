"""Which implementation each device runs: the CUDA registration of the Triton kernels (checked
without a GPU through the dispatch table, a redispatch to the CUDA key and fake CUDA
tensors), the backend switch, and ``describe``."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from reference import scc_reference
from scc_convert import DWSCCConv2d, SCCConv2d
from scc_convert.ops import backends
from scc_convert.ops.library import op_definitions

OPS = ("scc::scc_conv2d", "scc::scc_conv2d_backward")
_CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


def _args(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 4, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(24, 4, generator=gen, dtype=torch.float64)
    return x, w


@pytest.mark.parametrize("name", OPS)
def test_cuda_dispatch_key_has_our_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
    for definition in op_definitions():
        assert "cuda" in definition._backend_fns


def test_cuda_key_reaches_the_triton_launcher():
    """A call dispatched to the CUDA key runs the Triton launcher: with CPU tensors outside the
    interpreter it refuses them with its own message."""
    x, w = _args()
    with pytest.raises(RuntimeError, match="SCC Triton kernels: tensors are on cpu"):
        torch.ops.scc.scc_conv2d.default.redispatch(_CUDA, x, w, None, 4, 0.5, None)
    gy = torch.randn(2, 24, 4, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="SCC Triton kernels: tensors are on cpu"):
        torch.ops.scc.scc_conv2d_backward.default.redispatch(_CUDA, gy, x, w, 4, 0.5, None, True, True)


def test_cuda_backend_switch_runs_the_pytorch_path(monkeypatch):
    monkeypatch.setenv("SCC_CONVERT_CUDA_BACKEND", "torch")
    assert backends.cuda_backend() == "torch"
    x, w = _args()
    y = torch.ops.scc.scc_conv2d.default.redispatch(_CUDA, x, w, None, 4, 0.5, None)
    torch.testing.assert_close(y, scc_reference(x, w, cg=4, co=0.5), atol=1e-10, rtol=0)
    assert backends.describe()["implementations"]["cuda"]["implementation"] == "torch"


def test_cuda_backend_switch_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("SCC_CONVERT_CUDA_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="SCC_CONVERT_CUDA_BACKEND='cudnn'"):
        backends.cuda_backend()
    assert backends.describe()["implementations"]["cuda"]["implementation"] == "error"


def test_without_triton_cuda_runs_the_pytorch_path_with_one_warning(monkeypatch):
    monkeypatch.setattr(backends, "_triton", lambda: (None, "triton is not importable (test)"))
    monkeypatch.setattr(backends, "_warned", False)
    x, w = _args()
    with pytest.warns(RuntimeWarning, match="triton is not importable"):
        y = backends.cuda_forward(x, w, None, 4, 0.5, None)
    torch.testing.assert_close(y, scc_reference(x, w, cg=4, co=0.5), atol=1e-10, rtol=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backends.cuda_forward(x, w, None, 4, 0.5, None)  # warned once only
    assert backends.describe()["implementations"]["cuda"]["implementation"] == "torch"


def test_describe_names_versions_and_implementations():
    info = backends.describe()
    for key in ("scc_convert", "torch", "triton", "cuda_runtime", "gpus", "implementations"):
        assert key in info
    assert info["implementations"]["cuda"]["implementation"] == "triton"
    assert info["implementations"]["cpu"]["implementation"] in ("torch", "native")
    assert info["torch"] == torch.__version__


def _cuda_model():
    return torch.nn.Sequential(
        SCCConv2d(16, 32, cg=4, co=0.5, bias=True, device="cuda"),
        torch.nn.ReLU(),
        DWSCCConv2d(32, 32, kernel_size=3, padding=1, cg=2, co=0.25, device="cuda"),
    )


def _targets(graph):
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


def test_export_on_fake_cuda_tensors_keeps_the_op():
    with FakeTensorMode():
        model = _cuda_model()
        x = torch.empty(2, 16, 8, 8, device="cuda")
        program = torch.export.export(model, (x,))
        y = model(x)
    assert sum("scc.scc_conv2d" in t for t in _targets(program.graph)) == 2
    assert y.device.type == "cuda" and y.shape == (2, 32, 8, 8)


def test_compile_fullgraph_on_fake_cuda_tensors_keeps_the_op():
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with FakeTensorMode():
        model = _cuda_model()
        x = torch.empty(2, 16, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
        y = torch.compile(model, fullgraph=True, backend=capture)(x)
    assert len(graphs) == 1 and sum("scc_conv2d" in t for t in _targets(graphs[0].graph)) == 2
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_launcher_refuses_cpu_tensors_outside_the_interpreter():
    from scc_convert.ops import triton_kernels

    x, w = _args()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_kernels.scc_forward(x, w, None, 4, 0.5, None)
