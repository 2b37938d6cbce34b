"""Data-free calibration inputs: images synthesised from BatchNorm statistics."""

import pytest
import torch
from torch import nn

from scc_convert import convert
from scc_convert.convert.synthesize import bn_statistics_loss, synthesize_inputs


def _trained_looking_net():
    """A small CNN whose BN layers remember statistics of data unlike unit noise."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )
    for bn in net.modules():  # statistics of "training data": smooth images, offset and scaled
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(8):
            net(1.0 + torch.randn(16, 3, 16, 16).cumsum(-1) / 2)
    return net.eval()


def test_synthesised_images_match_bn_statistics_better_than_noise():
    net = _trained_looking_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = synthesize_inputs(net, (6, 3, 16, 16), steps=80, batch_size=4, jitter=2)
    assert out.images.shape == (6, 3, 16, 16) and torch.isfinite(out.images).all()
    noise = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert bn_statistics_loss(net, out.images) < 0.5 * bn_statistics_loss(net, noise)
    assert out.bn_loss_end < out.bn_loss_start
    # the model is untouched: weights, running statistics, modes, requires_grad
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not net.training and all(p.requires_grad for p in net.parameters())


def test_synthesised_images_serve_as_calibration_data():
    net = _trained_looking_net()
    images = synthesize_inputs(net, (8, 3, 12, 12), steps=20, batch_size=8).images
    small, report = convert(net, cg=2, co=0.5, min_channels=1, calib_data=images, progress=False)
    assert report.init == "lsq" and report.converted
    assert small(torch.randn(2, 3, 12, 12)).shape == (2, 5)


def test_synthesis_needs_batchnorm_statistics():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten())
    with pytest.raises(ValueError, match="BatchNorm running statistics"):
        synthesize_inputs(net, (1, 3, 4, 4), steps=1)
    with pytest.raises(ValueError, match="no BatchNorm"):
        bn_statistics_loss(net, torch.randn(1, 3, 4, 4))
