"""Checks shared by the model-level conversion tests: MACs counted independently of the
converter (FlopCounterMode, hooks on the original layers)."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def total_macs(model, x):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def expected_saving(model, small, report, x):
    """MACs the converted 1x1 convs and linear layers no longer compute: output positions
    (seen by hooks on the original layers) x Cout x (Cin - gw)."""
    positions, handles = {}, []

    def record(name):
        def hook(module, inputs, out):
            n = out.shape[:-1].numel() if isinstance(module, nn.Linear) else out.shape[0] * out.shape[2] * out.shape[3]
            positions.setdefault(name, n)

        return hook

    for r in report.converted:
        handles.append(model.get_submodule(r.name).register_forward_hook(record(r.name)))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return sum(positions[r.name] * r.out_channels * (r.in_channels - small.get_submodule(r.name).geometry.group_width)
               for r in report.converted)


def unit_layer_scale(model):
    """Random-init ConvNeXt-style blocks scale each residual branch by 1e-6 (layer scale), so
    the converted layers would hardly show in the output: make the branches count."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            first = p.flatten()[0]
            if p.numel() > 1 and bool((p == first).all()) and 0 < abs(first.item()) < 1e-3:
                p.fill_(1.0)
    return model
