"""The new layers: an SCC (``SCCConv2d`` / ``SCCLinear``) or a ``DWSCCConv2d`` built from the
plain layer a candidate converts from, with its weights carried over."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..geometry import SCCGeometry
from ..nn import DWSCCConv2d, SCCConv2d, SCCLinear
from .patterns import Candidate
from .transfer import energy_assignment, factorise_standard, kept_energy, slice_weight, window_index

__all__ = ["make_pointwise", "make_dwscc", "replacement"]


def dense(layer: nn.Module) -> Tensor:
    """The ``[Cout, Cin]`` weight of a 1x1 conv or a linear layer."""
    w = layer.weight.detach()
    return w if isinstance(layer, nn.Linear) else w[:, :, 0, 0]


def make_pointwise(layer: nn.Module, geom: SCCGeometry, window_of, weight: Tensor | None,
                   bias: Tensor | None) -> SCCConv2d | SCCLinear:
    """The SCC replacing a 1x1 conv (``SCCConv2d``, same stride) or a linear layer
    (``SCCLinear``), with ``weight`` (``None``: its own initialisation) and ``bias`` (``None``:
    the original's, if any)."""
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    has_bias = layer.bias is not None or bias is not None
    if isinstance(layer, nn.Linear):
        new = SCCLinear(geom.in_channels, geom.out_channels, geom.cg, geom.co, bias=has_bias, window_of=window_of, **factory)
    else:
        new = SCCConv2d(geom.in_channels, geom.out_channels, geom.cg, geom.co, stride=layer.stride[0],
                        bias=has_bias, window_of=window_of, **factory)
    if weight is not None:
        with torch.no_grad():
            new.weight.copy_(weight)
            if new.bias is not None:
                new.bias.copy_(layer.bias if bias is None else bias)
    return new


def make_dwscc(conv: nn.Conv2d, geom: SCCGeometry, depthwise: Tensor | None, window_of,
               weight: Tensor | None, bias: Tensor | None) -> DWSCCConv2d:
    new = DWSCCConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, geom.cg, geom.co,
                      stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                      bias=conv.bias is not None or bias is not None, padding_mode=conv.padding_mode, window_of=window_of,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        if depthwise is not None:
            new.depthwise.weight.copy_(depthwise)
        if weight is not None:
            new.pointwise.weight.copy_(weight)
        if new.pointwise.bias is not None:
            new.pointwise.bias.copy_(conv.bias if bias is None else bias)
    return new


def replacement(c: Candidate, geom: SCCGeometry, init: str) -> tuple[nn.Module, float | None]:
    """The new layer for ``slice`` / ``energy`` / ``random`` init, and the weight energy kept."""
    layer = c.layer
    if c.pattern == "std":
        if init == "random":
            return make_dwscc(layer, geom, None, None, None, None), None
        depthwise, weight = factorise_standard(layer.weight, geom)
        kept = _std_kept(layer.weight, depthwise, weight, geom)
        return make_dwscc(layer, geom, depthwise, None, weight, None), kept
    if init == "random":
        return make_pointwise(layer, geom, None, None, None), None
    full = dense(layer)
    window_of = energy_assignment(full, geom) if init == "energy" else None
    weight = slice_weight(full, geom, window_of)
    return make_pointwise(layer, geom, window_of, weight, None), kept_energy(full, weight)


def _std_kept(kernel: Tensor, depthwise: Tensor, weight: Tensor, geom: SCCGeometry) -> float:
    """1 - relative squared error of the factorised kernel."""
    k = kernel.detach().double()
    approx = torch.zeros_like(k)
    idx = window_index(geom, device=k.device)
    approx.scatter_(1, idx[:, :, None, None].expand(-1, -1, *k.shape[2:]),
                    weight.double()[:, :, None, None] * depthwise.double()[idx, 0])
    total = k.square().sum().item()
    return 1.0 - (k - approx).square().sum().item() / total if total > 0 else 1.0
