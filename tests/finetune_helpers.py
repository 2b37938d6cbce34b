"""Tiny models and data shared by tests/test_finetune.py, tests/test_lr_range.py and
tests/ddp_worker.py, and the one-thread fixture of the two test modules."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from scc_convert import SCCConv2d

NUM_CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest, and steadiest on a shared machine, on one thread (autouse in
    every test module that imports it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_net(pointwise: nn.Module, *, dropout: float = 0.0, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """stem conv -> DW 3x3 -> ``pointwise`` (8 -> 16 channels, at module path ``"pw"``) -> head."""
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 8, 3, padding=1, bias=False),
            stem_bn=nn.BatchNorm2d(8),
            stem_act=nn.ReLU(),
            dw=nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
            dw_bn=nn.BatchNorm2d(8),
            dw_act=nn.ReLU(),
            pw=pointwise,
            pw_bn=nn.BatchNorm2d(16),
            pw_act=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            drop=nn.Dropout(dropout),
            head=nn.Linear(16, num_classes),
        )
    )


def scc_net(seed: int = 0, **kwargs) -> nn.Sequential:
    """The converted model: an ``SCCConv2d(8, 16, cg=2, co=0.5)`` at ``pw``."""
    torch.manual_seed(seed)
    return make_net(SCCConv2d(8, 16, cg=2, co=0.5), **kwargs)


def conv_net(seed: int = 1, **kwargs) -> nn.Sequential:
    """The original model: a dense 1x1 ``nn.Conv2d(8, 16, 1)`` at ``pw``."""
    torch.manual_seed(seed)
    return make_net(nn.Conv2d(8, 16, 1, bias=False), **kwargs)


def synthetic(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy 3x8x8 images of ``NUM_CLASSES`` fixed random patterns, balanced labels."""
    g = torch.Generator().manual_seed(seed)
    pg = torch.Generator().manual_seed(1234)
    patterns = torch.randn(NUM_CLASSES, 3, 1, 1, generator=pg) + 0.5 * torch.randn(NUM_CLASSES, 3, 8, 8, generator=pg)
    labels = torch.arange(n) % NUM_CLASSES
    images = patterns[labels] + 0.7 * torch.randn(n, 3, 8, 8, generator=g)
    return images, labels


def calibrate_bn(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to the exact statistics of ``images`` (as a
    trained model would have them); returns ``model`` in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass gives the exact statistics
    model.train()
    with torch.no_grad():
        model(images)
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()
