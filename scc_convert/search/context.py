"""The two passes over the calibration batch that give every layer its errors.

1. :func:`capture` runs the original model once. Each searched layer keeps its original
   outputs at its sampled pixels (the targets) and the moments of its *original* inputs.
2. :func:`fit_in_context` runs a copy of the model in which each searched layer is a
   placeholder. When the forward reaches one, its input comes from the layers already
   replaced before it, exactly as in the converter's least-squares calibration; the
   placeholder measures the moments of that input against the original targets, asks a
   ``decide`` callback which setting to take (the callback sees every choice's error *in
   context*: upstream errors included, downstream compensation of the fit included), fits
   the chosen SCC on all folds with :func:`~scc_convert.convert.transfer.solve_windows`,
   and passes the SCC's output on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..convert.calibrate import fit_in_order
from ..convert.transfer import solve_windows
from ..geometry import SCCGeometry
from ..nn import SCCConv2d
from .sensitivity import Choice
from .statistics import LayerMoments, PixelSample, layer_moments, per_image

__all__ = ["Captured", "capture", "fit_in_context"]


@dataclass
class Captured:
    """One layer after :func:`capture`: its pixel sample, targets and original-input moments."""

    sample: PixelSample
    targets: Tensor  # [N, k, Cout] float32
    moments: LayerMoments


def _scc_input(conv: nn.Conv2d, x: Tensor) -> Tensor:
    step = conv.stride[0]
    return x[:, :, ::step, ::step] if step > 1 else x


@torch.no_grad()
def capture(model: nn.Module, layers: dict[str, nn.Conv2d], x: Tensor, *, folds: int, samples: int,
            seed: int = 0) -> dict[str, Captured]:
    """Run the original ``model`` on ``x`` once (the caller puts it in eval mode)."""
    k = per_image(samples, x.shape[0])
    out: dict[str, Captured] = {}

    def hook_for(name: str, conv: nn.Conv2d, sample: PixelSample):
        def hook(_module, inputs, output) -> None:
            if name not in out:
                targets = sample.rows(output).float()
                moments = layer_moments(sample.rows(_scc_input(conv, inputs[0])), targets, folds)
                out[name] = Captured(sample, targets, moments)
        return hook

    handles = [conv.register_forward_hook(hook_for(name, conv, PixelSample(k, seed + i)))
               for i, (name, conv) in enumerate(layers.items())]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in layers if name not in out]
    if missing:
        raise RuntimeError(f"layers not reached by the calibration forward: {missing}")
    return out


Decide = Callable[[str, LayerMoments], Choice]


class _Placeholder(nn.Module):
    def __init__(self, name: str, conv: nn.Conv2d, captured: Captured, folds: int, decide: Decide) -> None:
        super().__init__()
        self.name, self.conv, self.captured, self.folds, self.decide = name, conv, captured, folds, decide
        self.result: SCCConv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.result is None:
            cap = self.captured
            moments = layer_moments(cap.sample.rows(_scc_input(self.conv, x)), cap.targets, self.folds)
            choice = self.decide(self.name, moments)
            self.result = _fitted(self.conv, choice, moments)
        return self.result(x)


def _fitted(conv: nn.Conv2d, choice: Choice, moments: LayerMoments) -> SCCConv2d:
    geom = SCCGeometry(conv.in_channels, conv.out_channels, choice.cg, choice.co)
    gram, cross, sq = moments.pooled()
    window_of, weight, bias, _ = solve_windows(gram, cross, sq, geom, intercept=True)
    new = SCCConv2d(geom.in_channels, geom.out_channels, geom.cg, geom.co, stride=conv.stride[0], bias=True,
                    window_of=window_of, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new


@torch.no_grad()
def fit_in_context(model: nn.Module, names: list[str], x: Tensor, captured: dict[str, Captured], *, folds: int,
                   decide: Decide) -> nn.Module:
    """A copy of ``model`` (eval mode) whose ``names`` layers are SCCs chosen by ``decide``,
    called once per layer in forward order with the layer's in-context moments."""
    work = copy.deepcopy(model).eval()
    holders = {name: _Placeholder(name, work.get_submodule(name), captured[name], folds, decide) for name in names}
    fit_in_order(work, holders, x)
    return work
