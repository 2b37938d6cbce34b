"""nn.Conv2d subclasses: kept as leaves, converted when they compute what nn.Conv2d computes,
skipped with the true reason otherwise, converted through a registered adapter."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import scc_convert
from scc_convert import SCCConv2d, convert, register_conv_adapter


class Conv2dStaticSamePadding(nn.Conv2d):
    """TensorFlow "SAME" padding for a fixed image size, as EfficientNet ports write it: the
    padding is a module, the conv itself is called with padding 0."""

    def __init__(self, cin, cout, kernel_size, stride=1, groups=1, bias=False, image_size=32):
        super().__init__(cin, cout, kernel_size, stride=stride, groups=groups, bias=bias)
        out = math.ceil(image_size / stride)
        pad = max((out - 1) * stride + kernel_size - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)) if pad else nn.Identity()

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WSConv2d(nn.Conv2d):
    """Weight standardisation (BiT / NFNet style)."""

    def standardised(self):
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        return (w - mean) / (w.var(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()

    def forward(self, x):
        return F.conv2d(x, self.standardised(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def ws_as_conv(m: WSConv2d) -> nn.Conv2d:
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                     bias=m.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(m.standardised())
        if m.bias is not None:
            conv.bias.copy_(m.bias)
    return conv


def block_net(conv_cls, **kwargs):
    """stem 3x3 -> [dw 3x3 -> BN -> ReLU -> pw 1x1] x2 -> pw 1x1 (stride 2) -> pool -> fc."""
    torch.manual_seed(0)
    return nn.Sequential(
        conv_cls(3, 32, 3, **kwargs), nn.BatchNorm2d(32), nn.ReLU(),
        conv_cls(32, 32, 3, groups=32, **kwargs), nn.BatchNorm2d(32), nn.ReLU(),
        conv_cls(32, 64, 1, **kwargs), nn.BatchNorm2d(64), nn.ReLU(),
        conv_cls(64, 64, 3, groups=64, **kwargs), nn.BatchNorm2d(64), nn.ReLU(),
        conv_cls(64, 128, 1, **kwargs), nn.ReLU(),
        conv_cls(128, 64, 1, stride=2, **kwargs), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()


POINTWISE = ["6", "12", "14"]


def assert_reproduces(model, small, x):
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(small(x), want, atol=1e-5 * want.abs().max().item(), rtol=1e-4)


def test_static_same_padding_pointwise_convs_convert():
    model = block_net(Conv2dStaticSamePadding)
    x = torch.randn(2, 3, 32, 32)
    small, report = convert(model, cg=2, example_inputs=x)
    assert sorted(r.name for r in report.converted) == sorted(POINTWISE)
    assert all(isinstance(small.get_submodule(n), SCCConv2d) for n in POINTWISE)
    assert report.trace == "fx" and all(r.verified for r in report.layers)
    exact, _ = convert(model, cg=1, example_inputs=x)
    assert_reproduces(model, exact, x)
    assert small.get_submodule("14").stride == 2


def test_static_same_padding_kxk_is_skipped_with_the_true_reason():
    model = block_net(Conv2dStaticSamePadding)
    _, report = convert(model, patterns=("dw_pw", "pw", "std"), min_channels=1, example_inputs=(1, 3, 32, 32))
    stem = next(r for r in report.layers if r.name == "0")
    assert not stem.converted
    assert stem.reason.startswith("its forward differs from nn.Conv2d (Conv2dStaticSamePadding: output (2, 32, 10, 11) "
                                  "instead of (2, 32, 8, 9) on a probe input (2, 3, 10, 11))")
    assert "register_conv_adapter" in stem.reason


def test_timm_conv2d_same_converts():
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    model = nn.Sequential(layers.Conv2dSame(3, 32, 3, stride=2), nn.ReLU(), layers.Conv2dSame(32, 64, 1, stride=2),
                          nn.ReLU(), layers.Conv2dSame(64, 64, 1)).eval()
    x = torch.randn(2, 3, 33, 30)
    small, report = convert(model, cg=1, example_inputs=x)
    assert [r.name for r in report.converted] == ["2", "4"]
    assert_reproduces(model, small, x)


def test_weight_standardised_conv_is_skipped_without_an_adapter():
    model = block_net(WSConv2d)
    small, report = convert(model, example_inputs=(1, 3, 32, 32))
    assert report.converted == []
    for r in report.layers:
        if r.name in POINTWISE:
            assert r.reason.startswith("its forward differs from nn.Conv2d (WSConv2d: max |difference| ")
    assert isinstance(small.get_submodule("6"), WSConv2d)


@pytest.fixture
def ws_adapter():
    register_conv_adapter(WSConv2d, ws_as_conv)
    yield
    register_conv_adapter(WSConv2d, None)


def test_weight_standardised_conv_converts_through_its_adapter(ws_adapter):
    model = block_net(WSConv2d)
    x = torch.randn(2, 3, 32, 32)
    small, report = convert(model, cg=4, example_inputs=x)
    assert sorted(r.name for r in report.converted) == sorted(POINTWISE)
    exact, _ = convert(model, cg=1, example_inputs=x)
    assert_reproduces(model, exact, x)
    assert type(exact.get_submodule("0")) is WSConv2d  # not a candidate: left as it was
    ws = model.get_submodule("12")
    torch.testing.assert_close(small.get_submodule("12").weight[0], ws.standardised()[0, :16, 0, 0])  # window 0, gw 16


def test_an_adapter_that_does_not_reproduce_the_layer_is_refused():
    def wrong(m):
        conv = ws_as_conv(m)
        with torch.no_grad():
            conv.weight.copy_(m.weight)  # forgets the standardisation
        return conv

    register_conv_adapter(WSConv2d, wrong)
    try:
        _, report = convert(block_net(WSConv2d), example_inputs=(1, 3, 32, 32))
    finally:
        register_conv_adapter(WSConv2d, None)
    assert report.converted == []
    assert next(r for r in report.layers if r.name == "6").reason.startswith(
        "the adapter registered for WSConv2d does not reproduce it: max |difference|")


def test_an_adapter_must_return_a_plain_conv():
    register_conv_adapter(WSConv2d, lambda m: copy.deepcopy(m))
    try:
        _, report = convert(block_net(WSConv2d), example_inputs=(1, 3, 32, 32))
    finally:
        register_conv_adapter(WSConv2d, None)
    assert "returned a WSConv2d, not a plain nn.Conv2d" in report.layers[1].reason


def test_register_conv_adapter_checks_its_arguments():
    with pytest.raises(TypeError, match="subclass of nn.Conv2d"):
        register_conv_adapter(nn.Conv2d, ws_as_conv)
    with pytest.raises(TypeError, match="subclass of nn.Conv2d"):
        register_conv_adapter(nn.ReLU, ws_as_conv)
    with pytest.raises(TypeError, match="callable"):
        register_conv_adapter(WSConv2d, "ws_as_conv")


class PlainSubclass(nn.Conv2d):
    pass


def test_subclasses_that_compute_like_conv2d_convert():
    torch.manual_seed(0)
    model = nn.Sequential(PlainSubclass(16, 32, 1), nn.ReLU(),
                          parametrizations.weight_norm(nn.Conv2d(32, 32, 1)), nn.ReLU()).eval()
    x = torch.randn(2, 16, 8, 8)
    small, report = convert(model, cg=1, example_inputs=x)
    assert [r.name for r in report.converted] == ["0", "2"]
    assert_reproduces(model, small, x)


def test_a_subclass_failing_on_the_probe_is_skipped_with_its_error():
    class NeedsFixedSize(nn.Conv2d):
        def forward(self, x):
            if x.shape[-1] != 8:
                raise ValueError(f"width must be 8, got {x.shape[-1]}")
            return super().forward(x)

    _, report = convert(nn.Sequential(NeedsFixedSize(16, 32, 1)), example_inputs=(1, 16, 8, 8))
    assert report.layers[0].reason.startswith(
        "its forward differs from nn.Conv2d (NeedsFixedSize: it failed on a probe input (2, 16, 8, 9): "
        "ValueError: width must be 8, got 9)")


def test_a_conv_whose_weight_is_used_directly_says_so():
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(16, 32, 1)

        def forward(self, x):
            return F.conv2d(x, self.conv.weight, self.conv.bias)

    _, report = convert(Direct(), example_inputs=(1, 16, 8, 8))
    assert report.layers[0].reason == "its weight is read directly in forward, not called as a module"


def test_public_name():
    assert scc_convert.register_conv_adapter is register_conv_adapter
