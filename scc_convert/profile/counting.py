"""Counting: MACs per op and per module (``FlopCounterMode`` with a corrected grouped-conv
backward formula), parameters and bytes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from .. import ops as _ops  # noqa: F401  (registers the SCC op and its FLOP formulas)
from .results import LayerProfile

# Namespaces whose ops are understood without a FLOP formula: their compute-heavy ops
# (conv, mm, attention) have formulas, the rest are views, elementwise, norms or pooling.
_KNOWN_NAMESPACES = frozenset({"aten", "prims", "prim"})


# -- counting ------------------------------------------------------------------------------


def _conv_flops(x_shape: Sequence[int], w_shape: Sequence[int], out_shape: Sequence[int], transposed: bool) -> int:
    """FLOPs (2 per MAC) of a convolution's forward, in ``FlopCounterMode``'s shape convention.

    Regular conv: ``2 * N * prod(out spatial) * Cout * (Cin/groups) * prod(kernel)``;
    transposed conv: the same over the *input* spatial size. ``w_shape[1]`` already holds
    the per-group channel count, so grouping needs no further factor.
    """
    spatial = (x_shape if transposed else out_shape)[2:]
    return 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)


def _conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, _groups, output_mask, *, out_shape=None, **kwargs,
) -> int:
    """FLOPs of ``aten.convolution_backward``: the forward's FLOPs per gradient computed.

    Each forward multiply ``w[o, c, k] * x[n, c, p]`` yields exactly one multiply in the input
    gradient and one in the weight gradient, for any ``groups``. Replaces PyTorch's formula,
    which builds the weight gradient as a conv whose channel product ignores ``groups``.
    """
    forward = _conv_flops(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


_CUSTOM_FORMULAS = {torch.ops.aten.convolution_backward: _conv_backward_flops}


class _OpRecorder(TorchDispatchMode):
    """Records the ops that ``FlopCounterMode`` executes after its own decompositions.

    Entered *outside* the counter, so it sees what the counter ran (and could or could not
    count), not the inner kernels of a custom op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[Any, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = getattr(func, "_overloadpacket", func)
        self.calls[packet] = self.calls.get(packet, 0) + 1
        return func(*args, **(kwargs or {}))


@dataclass
class _Count:
    """Result of one counting run: FLOPs per module FQN (ops run by that module directly)."""

    total_flops: int
    self_flops: dict[str, int]
    unknown_ops: dict[str, int]


def _op_name(packet: Any) -> str:
    """``namespace::name`` of an op packet (``str()`` of anything else)."""
    return getattr(packet, "_qualified_op_name", None) or str(packet)


def _self_counts(counts: dict[str, dict[Any, int]], root_name: str) -> dict[str, int]:
    """FLOPs that each module ran itself (its total minus its tracked children's totals).

    ``FlopCounterMode`` keys modules as ``RootClass.child.grandchild``; the result is keyed
    by the ``named_modules`` name (``""`` for the root).
    """
    totals = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global"}
    child_sum: dict[str, int] = {}
    for name, total in totals.items():
        if "." in name:
            parent = name.rsplit(".", 1)[0]
            child_sum[parent] = child_sum.get(parent, 0) + total
    out = {}
    for name, total in totals.items():
        own = total - child_sum.get(name, 0)
        if name == root_name:
            key = ""
        elif name.startswith(root_name + "."):
            key = name[len(root_name) + 1:]
        else:
            key = name
        out[key] = out.get(key, 0) + own
    outside = sum(counts.get("Global", {}).values()) - totals.get(root_name, 0)
    if outside:
        out["(outside modules)"] = outside
    return out


def _float_outputs(out: Any) -> list[Tensor]:
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, Tensor) and t.is_floating_point() and t.requires_grad]


def count(model: nn.Module, x: Tensor, train: bool) -> _Count:
    """Count one forward (and, with ``train``, one backward) of ``model`` on ``x``."""
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FORMULAS)
    params = [p for p in model.parameters() if p.is_floating_point()]
    saved_flags = [p.requires_grad for p in params]
    try:
        if train:
            for p in params:
                p.requires_grad_(True)
        with recorder, counter, torch.set_grad_enabled(train):
            out = model(x)
            if train:
                outputs = _float_outputs(out)
                if outputs and params:
                    loss = sum(t.sum() for t in outputs)
                    torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p, flag in zip(params, saved_flags):
            p.requires_grad_(flag)
    unknown = {
        _op_name(packet): n
        for packet, n in recorder.calls.items()
        if packet not in counter.flop_registry
        and _op_name(packet).split("::", 1)[0] not in _KNOWN_NAMESPACES
    }
    return _Count(
        total_flops=counter.get_total_flops(),
        self_flops=_self_counts(counter.get_flop_counts(), type(model).__name__),
        unknown_ops=unknown,
    )



def unique(tensors: Iterable[Tensor]) -> list[Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def size_bytes(model: nn.Module) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for t in unique(list(model.parameters()) + list(model.buffers())):
        name = str(t.dtype).removeprefix("torch.")
        sizes[name] = sizes.get(name, 0) + t.numel() * t.element_size()
    return sizes


def layer_rows(model: nn.Module, fwd: _Count) -> list[LayerProfile]:
    """Modules that own parameters or run counted ops themselves, in ``named_modules`` order.

    A parameter shared by several modules is attributed to the first one.
    """
    seen: set[int] = set()
    modules = dict(model.named_modules(remove_duplicate=False))
    rows = []
    listed = set()
    for name, module in model.named_modules():
        own = 0
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                own += p.numel()
        macs = fwd.self_flops.get(name, 0) // 2
        if own or macs:
            rows.append(LayerProfile(name, type(module).__name__, own, macs))
            listed.add(name)
    for name, flops in fwd.self_flops.items():
        if name not in listed and flops:
            kind = type(modules[name]).__name__ if name in modules else "-"
            rows.append(LayerProfile(name, kind, 0, flops // 2))
    return rows
