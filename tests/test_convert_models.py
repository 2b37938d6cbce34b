"""convert() on torchvision architectures (random init, small inputs)."""

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reference import dense_weight
from scc_convert import SCCConv2d, convert

MODELS = {
    "mobilenet_v2": 64,
    "mobilenet_v3_small": 64,
    "mobilenet_v3_large": 64,
    "efficientnet_b0": 64,
    "mnasnet0_5": 64,
    "shufflenet_v2_x0_5": 64,
    "resnet18": 64,
    "resnet50": 64,
    "regnet_y_400mf": 64,
    "densenet121": 64,
    "googlenet": 64,
    "inception_v3": 80,
}


def build(name):
    torch.manual_seed(0)
    # the auxiliary classifiers only run in training mode and need larger inputs
    kwargs = {"init_weights": True, "aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    return getattr(torchvision.models, name)(**kwargs).eval()


def called_pointwise(model, x):
    """Independent count: 1x1 groups=1 unpadded convs that the forward actually calls,
    with their output shapes."""
    shapes, handles = {}, []

    def record(name):
        def hook(mod, inputs, output):
            shapes.setdefault(name, (mod, output.shape))

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding == (0, 0):
            handles.append(m.register_forward_hook(record(name)))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


def total_flops(model, x):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model(name):
    model, size = build(name), MODELS[name]
    x = torch.randn(2, 3, size, size)
    eligible = called_pointwise(model, x)
    assert eligible, "every listed model has 1x1 convs"

    small, report = convert(model, cg=2, co=0.5, min_channels=1, on_indivisible="nearest", example_inputs=x)
    converted = {r.name for r in report.converted}
    assert converted == set(eligible)
    assert all(isinstance(small.get_submodule(n), SCCConv2d) for n in converted)

    # MACs drop by exactly what the replaced layers no longer compute
    expected = 0
    for n, (conv, shape) in eligible.items():
        gw = small.get_submodule(n).geometry.group_width
        expected += shape[0] * shape[2] * shape[3] * conv.out_channels * (conv.in_channels - gw)
    assert total_flops(model, x) - total_flops(small, x) == 2 * expected
    totals = report.totals()
    assert totals["macs_before"] - totals["macs_after"] == expected

    # forward and backward run in training mode
    small.train()
    out = small(x)
    out = out.logits if hasattr(out, "logits") else out
    out.float().sum().backward()
    assert all(small.get_submodule(n).weight.grad is not None for n in converted)

    # cg = 1 covers every channel: the converted model computes the original function.
    # Compared in fp64: some random-init nets (inception_v3) grow activations to ~1e5, where
    # fp32 summation-order noise alone exceeds 1e-5.
    ref64, x64 = copy.deepcopy(model).double(), x.double()
    exact, _ = convert(ref64, cg=1, co=0.5, min_channels=1, example_inputs=x64)
    with torch.no_grad():
        expected = ref64(x64)
        torch.testing.assert_close(exact(x64), expected, atol=1e-9 * expected.abs().max().item(), rtol=0)
        exact32, _ = convert(model, cg=1, co=0.5, min_channels=1, example_inputs=x)
        ref32 = model(x)
        torch.testing.assert_close(exact32(x), ref32, atol=1e-5 * max(1.0, ref32.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_co_zero_equals_masked_grouped_weights(name):
    """co = 0: each SCC is a grouped 1x1 conv in the paper's output order. The original model
    with every converted weight masked to its group must compute the same outputs."""
    model = build(name)
    x = torch.randn(2, 3, 64, 64)
    small, report = convert(model, cg=4, co=0.0, min_channels=1, example_inputs=x)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for r in report.converted:
            conv = masked.get_submodule(r.name)
            scc = small.get_submodule(r.name)
            dense = dense_weight(scc.weight.double(), conv.in_channels, 4, 0.0).float()
            conv.weight.copy_(dense[:, :, None, None])
        torch.testing.assert_close(small(x), masked(x), atol=1e-5, rtol=1e-4)
