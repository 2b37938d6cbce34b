"""How closely a converted model reproduces the original: top-1 agreement and KL divergence of
their predictions on the same inputs (no labels needed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Agreement", "agreement"]


@dataclass(frozen=True)
class Agreement:
    """``top1``: share of inputs on which both models predict the same class (0..1); ``kl``:
    mean ``KL(original || converted)`` of the softmax outputs, in nats; ``count``: inputs.

    ``confident_top1`` is ``top1`` over the ``confident_count`` inputs on which the original's
    top-1 softmax probability is at least ``confident_at`` (``None`` when there are none): a
    near-tie of the original flips with any change to the network, so the overall agreement on
    ambiguous inputs (a crop of sky, of a spacesuit) says less about what was kept."""

    top1: float
    kl: float
    count: int
    confident_top1: float | None = None
    confident_count: int = 0
    confident_at: float = 0.5

    def __str__(self) -> str:
        text = f"top-1 agreement {self.top1:.3f}, KL {self.kl:.3f} ({self.count} inputs)"
        if self.confident_top1 is not None:
            text += (f"; {self.confident_top1:.3f} on the {self.confident_count} the original gives"
                     f" >= {self.confident_at:.0%}")
        return text


@torch.no_grad()
def agreement(original: nn.Module, converted: nn.Module, inputs: Tensor, batch_size: int = 32,
              confident_at: float = 0.5) -> Agreement:
    """Compare the two models' predictions on ``inputs`` (``[N, ...]``), both in eval mode
    for the comparison (their modes are restored afterwards). ``confident_at``: the original's
    top-1 probability from which an input also counts in ``confident_top1``.

    Example:
        >>> import torch, torchvision, scc_convert
        >>> model = torchvision.models.mobilenet_v2().eval()
        >>> small, _ = scc_convert.convert(model, cg=1, co=0.0)
        >>> agreement(model, small, torch.randn(4, 3, 64, 64)).top1
        1.0
    """
    if inputs.shape[0] == 0:
        raise ValueError("agreement: inputs is empty")
    if not 0.0 < confident_at <= 1.0:
        raise ValueError(f"agreement: confident_at={confident_at!r} must be a probability in (0, 1]")
    modes = [(m, m.training) for m in (original, converted)]
    same, kl, sure, sure_same = 0, 0.0, 0, 0
    try:
        original.eval()
        converted.eval()
        for chunk in inputs.split(batch_size):
            p = original(chunk).double().log_softmax(-1)
            q = converted(chunk).double().log_softmax(-1)
            hit = p.argmax(-1) == q.argmax(-1)
            confident = p.max(-1).values >= math.log(confident_at)
            same += int(hit.sum())
            sure += int(confident.sum())
            sure_same += int((hit & confident).sum())
            kl += float((p.exp() * (p - q)).sum())
    finally:
        for m, flag in modes:
            m.train(flag)
    n = inputs.shape[0]
    return Agreement(top1=same / n, kl=kl / n, count=n, confident_top1=sure_same / sure if sure else None,
                     confident_count=sure, confident_at=confident_at)
