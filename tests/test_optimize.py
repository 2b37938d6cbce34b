"""``optimize_for_inference``: BatchNorm folded into SCC layers, the following residual add and
activation fused into ``scc::scc_conv2d_fused`` — exact to fp32 rounding against the unfused
model, per activation and per way of writing it, and on real architectures."""

import operator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

import scc_convert
from scc_convert import FusedSCCConv2d, FusionSummary, SCCConv2d, optimize_for_inference
from scc_convert.convert import recalibrate_batchnorm
from scc_convert.ops import native


def _bn(c, seed):
    bn = nn.BatchNorm2d(c)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.weight.copy_(torch.randn(c, generator=gen))
        bn.bias.copy_(torch.randn(c, generator=gen))
    return bn.eval()


class Block(nn.Module):
    """SCC -> BN -> (+ skip) -> activation, the activation written as ``kind``."""

    def __init__(self, act, kind="module", residual=False, cin=16, cout=24):
        super().__init__()
        self.scc = SCCConv2d(cin, cout, cg=4, co=0.5)
        self.bn = _bn(cout, 0)
        self.skip = nn.Conv2d(cin, cout, 1) if residual else None
        self.act, self.kind = act, kind
        self.module = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "hardswish": nn.Hardswish(), "silu": nn.SiLU(),
                       "gelu": nn.GELU(), "hardtanh": nn.Hardtanh(0.0, 6.0), "none": nn.Identity()}[act]

    def forward(self, x):
        y = self.bn(self.scc(x))
        if self.skip is not None:
            y = y + self.skip(x)
        if self.kind == "module":
            return self.module(y)
        if self.kind == "function":
            return {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu, "gelu": F.gelu,
                    "hardtanh": lambda t: F.hardtanh(t, 0.0, 6.0), "none": lambda t: t}[self.act](y)
        return y.relu()  # "method"


ACTS = ["none", "relu", "relu6", "hardswish", "silu", "gelu", "hardtanh"]
FUSED_NAME = {"hardtanh": "relu6"}


def _check(model, x, summary_expect=None, fp32_tol=1e-5):
    model = model.eval()
    summary = FusionSummary()
    fast = optimize_for_inference(model, summary=summary)
    with torch.no_grad():
        want = model(x)
        got = fast(x)
        ref64 = model.double()(x.double())
        model.float()
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, atol=fp32_tol * scale, rtol=fp32_tol)
    assert (got.double() - ref64).abs().max() <= 2 * (want.double() - ref64).abs().max() + 1e-6 * scale
    if summary_expect is not None:
        assert (summary.layers, summary.batch_norms, summary.residuals) == summary_expect, str(summary)
    return fast, summary


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_each_activation_fuses_and_matches(act, residual):
    block = Block(act, residual=residual)
    fast, summary = _check(block, torch.randn(2, 16, 7, 9), (1, 1, int(residual)))
    fused = [m for m in fast.modules() if isinstance(m, FusedSCCConv2d)]
    assert len(fused) == 1 and fused[0].activation == FUSED_NAME.get(act, act if act != "none" else "none")
    assert fused[0].residual == residual
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())


@pytest.mark.parametrize("kind", ["function", "method"])
def test_functional_and_method_activations(kind):
    act = "relu" if kind == "method" else "silu"
    fast, summary = _check(Block(act, kind=kind, residual=True), torch.randn(2, 16, 5, 5), (1, 1, 1))
    assert summary.activations == {act: 1}


def test_on_every_cpu_implementation_and_channels_last():
    block = Block("hardswish", residual=True)
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    backends = ["torch"] + (["native"] if native.status()["available"] else [])
    for backend in backends:
        with native.use_backend(backend):
            fast, _ = _check(block, x)
        with torch.no_grad(), native.use_backend(backend):
            assert fast(x).is_contiguous(memory_format=torch.channels_last)


def test_what_is_not_fused_stays():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = SCCConv2d(16, 16, cg=4, co=0.5)
            self.bn = _bn(16, 1)
            self.b = SCCConv2d(16, 16, cg=4, co=0.5)
            self.gelu = nn.GELU(approximate="tanh")

        def forward(self, x):
            y = self.a(x)
            z = self.bn(y) + y  # y has two users: the BatchNorm cannot be folded
            return self.gelu(self.b(z)), torch.sigmoid(self.b(x))  # tanh-GELU, sigmoid: not fusable

    model = Branchy().eval()
    summary = FusionSummary()
    fast = optimize_for_inference(model, summary=summary)
    assert summary.layers == 0
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        for got, want in zip(fast(x), model(x)):
            torch.testing.assert_close(got, want)


def test_eval_identities_are_dropped_and_bn_without_activation_folds():
    model = nn.Sequential(SCCConv2d(16, 32, cg=4, co=0.5, bias=True), _bn(32, 2), nn.Dropout(0.3), nn.Identity())
    fast, summary = _check(model, torch.randn(2, 16, 4, 4), (1, 1, 0))
    assert not any(isinstance(m, (nn.Dropout, nn.BatchNorm2d)) for m in fast.modules())


def test_strided_layer_and_custom_window_of():
    layer = SCCConv2d(16, 24, cg=4, co=0.5, stride=2, window_of=[(7 - o) % 8 for o in range(24)])
    _check(nn.Sequential(layer, _bn(24, 3), nn.ReLU()), torch.randn(2, 16, 9, 9), (1, 1, 0))


def test_a_shared_layer_is_fused_per_call_site():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.scc = SCCConv2d(16, 16, cg=4, co=0.5)
            self.bn1, self.bn2 = _bn(16, 4), _bn(16, 5)

        def forward(self, x):
            return F.relu(self.bn1(self.scc(x))) + self.bn2(self.scc(x))

    _check(Twice(), torch.randn(1, 16, 5, 5), (2, 2, 1))  # the second call site takes the first as residual


def test_untraceable_model_is_optimised_by_submodule():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(SCCConv2d(16, 16, cg=4, co=0.5), _bn(16, 6), nn.ReLU6())

        def forward(self, x):
            if x.sum() > 0:  # fx cannot trace this
                return self.body(x)
            return -self.body(x)

    _check(DataDependent(), torch.randn(1, 16, 5, 5), (1, 1, 0))


def test_input_model_is_untouched_unless_inplace():
    model = Block("relu", residual=True).eval()
    optimize_for_inference(model)
    assert isinstance(model.scc, SCCConv2d) and isinstance(model.bn, nn.BatchNorm2d)
    with pytest.raises(TypeError, match="must be an nn.Module"):
        optimize_for_inference("model")


def test_fused_layer_falls_back_for_a_broadcast_residual():
    layer = FusedSCCConv2d(16, 8, cg=4, co=0.5, activation="relu", residual=True).eval()
    x, skip = torch.randn(2, 16, 3, 3), torch.randn(1, 8, 1, 1)
    with torch.no_grad():
        plain = torch.ops.scc.scc_conv2d(x, layer.weight, layer.bias, 4, 0.5, None)
        torch.testing.assert_close(layer(x, skip), F.relu(plain + skip))


def _prepared(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    images = torch.randn(4, 3, 64, 64)
    recalibrate_batchnorm(model, images)
    small, _ = scc_convert.convert(model.eval(), cg=4, co=0.5)
    recalibrate_batchnorm(small, images)
    return small.eval()


@pytest.mark.parametrize("arch,expect", [("mobilenet_v2", (34, 34, 10)), ("resnet50", (36, 36, 16)),
                                         ("efficientnet_b0", (48, 32, 9))])
def test_real_architectures_match_the_unfused_model(arch, expect):
    fast, summary = _check(_prepared(arch), torch.randn(2, 3, 64, 64), expect, fp32_tol=2e-5)
    assert isinstance(fast, fx.GraphModule)
    counts = {"mobilenet_v2": {"relu6": 17}, "resnet50": {"relu": 32}, "efficientnet_b0": {"silu": 32}}[arch]
    assert summary.activations == counts
    adds = [n for n in fast.graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert not adds, "every residual add of these models follows an SCC layer"
