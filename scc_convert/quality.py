"""How closely a converted model reproduces the original: top-1 agreement and KL divergence of
their predictions on the same inputs (no labels needed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Agreement", "agreement"]


@dataclass(frozen=True)
class Agreement:
    """``top1``: share of inputs on which both models predict the same class (0..1); ``kl``:
    mean ``KL(original || converted)`` of the softmax outputs, in nats; ``count``: inputs."""

    top1: float
    kl: float
    count: int

    def __str__(self) -> str:
        return f"top-1 agreement {self.top1:.3f}, KL {self.kl:.3f} ({self.count} inputs)"


@torch.no_grad()
def agreement(original: nn.Module, converted: nn.Module, inputs: Tensor, batch_size: int = 32) -> Agreement:
    """Compare the two models' predictions on ``inputs`` (``[N, ...]``), both in eval mode
    for the comparison (their modes are restored afterwards).

    Example:
        >>> import torch, torchvision, scc_convert
        >>> model = torchvision.models.mobilenet_v2().eval()
        >>> small, _ = scc_convert.convert(model, cg=1, co=0.0)
        >>> agreement(model, small, torch.randn(4, 3, 64, 64)).top1
        1.0
    """
    if inputs.shape[0] == 0:
        raise ValueError("agreement: inputs is empty")
    modes = [(m, m.training) for m in (original, converted)]
    same, kl = 0, 0.0
    try:
        original.eval()
        converted.eval()
        for chunk in inputs.split(batch_size):
            p = original(chunk).double().log_softmax(-1)
            q = converted(chunk).double().log_softmax(-1)
            same += int((p.argmax(-1) == q.argmax(-1)).sum())
            kl += float((p.exp() * (p - q)).sum())
    finally:
        for m, flag in modes:
            m.train(flag)
    n = inputs.shape[0]
    return Agreement(top1=same / n, kl=kl / n, count=n)
