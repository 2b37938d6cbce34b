"""torch.compile (inductor, CPU): SCC layers run as direct calls of the native C++ op, in the
layout inductor chose (no copies), with their window tables as graph constants; after
``optimize_for_inference`` the calls carry the epilogue. Compiled results match eager."""

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision
from torch import nn
from torch._inductor.utils import run_and_get_code

import scc_convert
from scc_convert import FusedSCCConv2d, SCCConv2d, optimize_for_inference
from scc_convert.convert import recalibrate_batchnorm
from scc_convert.ops import inductor, native

needs_kernel = pytest.mark.skipif(not native.status()["available"], reason="native CPU kernel unavailable")
NATIVE_CALL = re.compile(r"torch\.ops\.scc_native\.forward\.default\((\w+), [^\n]*?, (\w+), (True|False), (\d), (\w+)\)")
OP_CALL = re.compile(r"torch\.ops\.scc\.scc_conv2d(_fused_?)?\.default\(")
# The in-place form (residual, input, weight, bias, table, activation): a residual layer whose
# residual is not read afterwards writes its output over it.
INPLACE_CALL = re.compile(r"torch\.ops\.scc_native\.forward_\.default\((\w+), (\w+), [^\n]*?, (\d)\)")


@pytest.fixture
def freezing(request):
    saved = torch._inductor.config.freezing
    torch._inductor.config.freezing = request.param
    torch._dynamo.reset()
    yield request.param
    torch._inductor.config.freezing = saved
    torch._dynamo.reset()


def _compiled_code(model, x):
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        out, codes = run_and_get_code(compiled, x)
    return out, "\n".join(codes)


def _block():
    torch.manual_seed(0)
    block = nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        SCCConv2d(16, 40, cg=4, co=0.5), nn.BatchNorm2d(40), nn.Hardswish(),
        nn.Conv2d(40, 40, 3, padding=1, groups=40),
    )
    recalibrate_batchnorm(block, torch.randn(8, 16, 9, 9))
    return block.eval()


def test_lowerings_are_registered_once_inductor_is_loaded():
    import torch._inductor.lowering  # noqa: F401

    assert inductor.registered()
    script = textwrap.dedent("""
        import sys, scc_convert
        from scc_convert.ops import inductor
        assert "torch._inductor.lowering" not in sys.modules and not inductor.registered()
        import torch._inductor.lowering
        assert inductor.registered()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)


@needs_kernel
@pytest.mark.parametrize("freezing", [False, True], indirect=True, ids=["params", "freezing"])
def test_scc_is_a_direct_native_call_in_the_convs_layout(freezing):
    block = _block()
    x = torch.randn(2, 16, 9, 9)
    out, code = _compiled_code(block, x)
    with torch.no_grad():
        torch.testing.assert_close(out, block(x), atol=1e-5, rtol=1e-5)
    calls = NATIVE_CALL.findall(code)
    assert len(calls) == 1 and not OP_CALL.search(code), code
    _, table, channels_last, activation, residual = calls[0]
    assert table.startswith("scc_windows") and activation == "0" and residual == "None"
    if freezing:  # inductor keeps conv activations channels_last: SCC reads and writes them so
        assert channels_last == "True"
        assert not re.search(r"def cpp_fused\w*scc_conv2d|cpp_fused\w*scc_conv2d\w* = ", code), "a copy around SCC"


@needs_kernel
@pytest.mark.parametrize("activation", ["relu", "relu6", "hardswish", "silu", "gelu"])
def test_fused_layers_compile_to_one_call_with_the_epilogue(activation):
    torch.manual_seed(0)
    act = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "hardswish": nn.Hardswish(), "silu": nn.SiLU(),
           "gelu": nn.GELU()}[activation]

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.scc, self.bn, self.act = SCCConv2d(24, 24, cg=4, co=0.5), nn.BatchNorm2d(24), act

        def forward(self, x):
            return self.act(self.bn(self.scc(x)) + x)

    model = Residual()
    recalibrate_batchnorm(model, torch.randn(8, 24, 6, 6))
    fast = optimize_for_inference(model.eval())
    x = torch.randn(2, 24, 6, 6).contiguous(memory_format=torch.channels_last)
    out, code = _compiled_code(fast, x)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    (call,) = NATIVE_CALL.findall(code)
    assert call[3] == str(["none", "relu", "relu6", "hardswish", "silu", "gelu"].index(activation))
    assert call[4] != "None" and call[2] == "True"


@needs_kernel
@pytest.mark.parametrize("freezing", [True], indirect=True, ids=["freezing"])
def test_optimized_mobilenet_v2_compiles_to_fused_native_calls(freezing):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    images = torch.randn(4, 3, 64, 64)
    recalibrate_batchnorm(model, images)
    small, _ = scc_convert.convert(model, cg=4, co=0.5)
    recalibrate_batchnorm(small, images)
    fast = optimize_for_inference(small.eval())
    x = torch.randn(2, 3, 64, 64)
    out, code = _compiled_code(fast, x)
    with torch.no_grad():
        torch.testing.assert_close(out, small(x), atol=2e-4, rtol=1e-4)
    calls, inplace = NATIVE_CALL.findall(code), INPLACE_CALL.findall(code)
    assert len(calls) == 24 and len(inplace) == 10 and not OP_CALL.search(code)
    # the 17 expansions with ReLU6; the 10 residual adds each write over their dead residual
    assert sum(c[3] == "2" for c in calls) == 17 and all(c[4] == "None" for c in calls)
    assert all(c[2] == "True" for c in calls), "every SCC layer reads inductor's channels_last activations"


@needs_kernel
@pytest.mark.parametrize("freezing", [True], indirect=True, ids=["freezing"])
def test_optimized_efficientnet_b0_compiles_to_fused_native_calls(freezing):
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(weights=None).eval()
    images = torch.randn(4, 3, 64, 64)
    recalibrate_batchnorm(model, images)
    small, _ = scc_convert.convert(model, cg=4, co=0.5)
    recalibrate_batchnorm(small, images)
    n_scc = sum(isinstance(m, SCCConv2d) for m in small.modules())
    fast = optimize_for_inference(small.eval())
    x = torch.randn(2, 3, 64, 64)
    out, code = _compiled_code(fast, x)
    with torch.no_grad():
        want = small(x)
    torch.testing.assert_close(out, want, atol=2e-4 * want.abs().max().item(), rtol=1e-4)
    calls, inplace = NATIVE_CALL.findall(code), INPLACE_CALL.findall(code)
    assert len(calls) + len(inplace) == n_scc > 0 and len(inplace) > 0 and not OP_CALL.search(code)
    assert sum(c[3] == "4" for c in calls) > 0, "SiLU of the expansion layers in the epilogue"


class _ResidualBlock(nn.Module):
    """One SCC layer makes the residual, a second adds it; ``keep`` also returns the residual
    (then it is read after the second call and must not be overwritten). (A residual from a
    oneDNN conv under freezing has other strides in the graph's metadata than the SCC output,
    and is left alone.)"""

    def __init__(self, keep: bool):
        super().__init__()
        torch.manual_seed(0)
        self.keep = keep
        self.pre = FusedSCCConv2d(16, 32, cg=4, co=0.5, activation="relu")
        self.scc = FusedSCCConv2d(16, 32, cg=4, co=0.5, activation="relu", residual=True)

    def forward(self, x):
        r = self.pre(x)
        out = self.scc(x, r)
        return (out, r) if self.keep else out


@needs_kernel
@pytest.mark.parametrize("freezing", [False, True], indirect=True, ids=["params", "freezing"])
@pytest.mark.parametrize("keep", [False, True], ids=["dead residual", "live residual"])
def test_a_dead_residual_is_overwritten_in_place_and_a_live_one_is_not(freezing, keep):
    block = _ResidualBlock(keep).eval()
    x = torch.randn(2, 16, 9, 9)
    out, code = _compiled_code(block, x)
    with torch.no_grad():
        want = block(x)
    for got, ref in zip(out if keep else (out,), want if keep else (want,)):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert len(INPLACE_CALL.findall(code)) == (0 if keep else 1), code
    assert len(NATIVE_CALL.findall(code)) == (2 if keep else 1), code


@needs_kernel
def test_a_residual_that_is_a_graph_input_is_left_alone():
    layer = FusedSCCConv2d(16, 32, cg=4, co=0.5, activation="relu", residual=True).eval()
    x, r = torch.randn(2, 16, 9, 9), torch.randn(2, 32, 9, 9)
    saved = r.clone()
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        out, codes = run_and_get_code(compiled, x, r)
        want = layer(x, r)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(r, saved), "the caller's residual was overwritten"
    assert not INPLACE_CALL.search("\n".join(codes))


def test_without_the_native_kernel_the_graph_calls_the_op():
    block = _block()
    x = torch.randn(2, 16, 9, 9)
    torch._dynamo.reset()
    # the choice is made when a graph is compiled: inductor's cache of the graph keeps it
    with native.use_backend("torch"), torch._inductor.config.patch(fx_graph_cache=False):
        out, code = _compiled_code(block, x)
    torch._dynamo.reset()
    assert OP_CALL.search(code) and not NATIVE_CALL.search(code)
    with torch.no_grad():
        torch.testing.assert_close(out, block(x), atol=1e-5, rtol=1e-5)
