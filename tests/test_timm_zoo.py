"""convert() on a zoo of timm architectures (random init, pretrained=False, small variants,
64x64 inputs): every candidate converted or skipped for a true reason, cg=1 reproduces the
model, MACs drop by exactly what the converted layers no longer compute."""

import pytest
import torch

from model_checks import expected_saving, total_macs, unit_layer_scale
from scc_convert import SCCConv2d, SCCLinear, convert

timm = pytest.importorskip("timm")

PATTERNS = ("dw_pw", "pw", "linear")

# name -> what makes it worth having here
ZOO = {
    "convnext_atto": "nn.Linear pointwise layers on channels-last tokens",
    "edgenext_xx_small": "Linear MLPs, split-depthwise attention",
    "inception_next_atto": "inception depthwise token mixer, conv MLP",
    "poolformerv2_s12": "MetaFormer: pooling mixer, MLP blocks",
    "mobilevit_xxs": "MobileNetV2 blocks + transformer MLP blocks (traces in parts)",
    "efficientvit_b0": "linear attention, MBConv (traces in parts)",
    "efficientvit_m0": "caches attention biases in eval mode",
    "vit_tiny_patch16_224": "plain ViT, built for 64x64 (img_size)",
    "tf_efficientnet_b0": "Conv2dSame: static TensorFlow 'same' padding",
    "mobilenetv3_small_050": "squeeze-excite, hard-swish",
    "lcnet_050": "PP-LCNet",
    "rexnet_100": "channel counts like 19 and 151",
    "mixnet_s": "MixedConv2d: several kernel sizes per layer",
    "tinynet_e": "a tiny EfficientNet",
    "nf_regnet_b0": "ScaledStdConv2d: weight standardisation (skipped: its forward differs)",
}


def build(name):
    torch.manual_seed(0)
    kwargs = {"img_size": 64} if name.startswith("vit_") else {}
    return unit_layer_scale(timm.create_model(name, pretrained=False, **kwargs)).eval()


def test_the_zoo_is_big_enough():
    assert len(ZOO) >= 12


@pytest.mark.parametrize("name", list(ZOO))
def test_timm_model(name):
    model = build(name)
    x = torch.randn(1, 3, 64, 64)
    small, report = convert(model, cg=2, patterns=PATTERNS, min_channels=8, example_inputs=x)
    assert report.input_shape == (1, 3, 64, 64)
    for r in report.layers:
        module = small.get_submodule(r.name)
        if r.converted:
            assert isinstance(module, (SCCConv2d, SCCLinear)), r.name
        else:
            assert "\n" not in r.reason and r.reason, r.name
    std = [r for r in report.layers if type(model.get_submodule(r.name)).__name__ == "ScaledStdConv2d"]
    assert bool(std) == (name == "nf_regnet_b0")
    assert all(r.reason.startswith("its forward differs from nn.Conv2d (ScaledStdConv2d:") for r in std if r.pattern != "std")
    assert len(report.converted) >= 5, report
    assert not any("never called" in r.reason for r in report.layers), report

    saving = expected_saving(model, small, report, x)
    assert total_macs(model, x) - total_macs(small, x) == saving > 0
    assert report.totals()["macs_before"] - report.totals()["macs_after"] == saving

    # cg = 1: every output reads every input channel, so the converted model computes the original
    # function (compared on the pre-logits features: some heads are zero-initialised).
    exact, _ = convert(model, cg=1, patterns=PATTERNS, min_channels=8, example_inputs=x)
    with torch.no_grad():
        want = model.forward_features(x)
        got = exact.forward_features(x)
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-4)
