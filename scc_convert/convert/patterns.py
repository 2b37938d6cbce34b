"""Find the convolutions a conversion could replace, and which pattern each one is.

Patterns (SPEC section 3):

* ``dw_pw`` — a 1x1 conv whose input comes from a depthwise conv through BatchNorm,
  activations, dropout or identities only, with no branching in between;
* ``pw`` — any other 1x1 conv with ``groups=1``;
* ``std`` — a KxK (K > 1) conv with ``groups=1`` (factorised into depthwise KxK + SCC);
* ``linear`` — an ``nn.Linear`` (SCC over the last dimension: the pointwise layers of
  ConvNeXt and of MLP / transformer blocks). A linear layer whose output is the model's
  output (through dropout, flatten or identities only) is marked as the head; when the
  model traces only in parts, the last candidate is taken for the head if it is a linear
  layer whose output is its traced part's output, or one found from module order.

The graph comes from ``torch.fx``, with every ``nn.Conv2d`` and ``nn.Linear`` (subclasses
included) kept a leaf. A model that does not trace as a whole is traced submodule by submodule; convolutions
left outside every traced submodule are classified from module order and marked unverified.
Each candidate that is a subclass is then resolved to the plain layer it converts from, or
the reason it cannot be (:mod:`.adapters`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..inputs import no_stand_ins_left
from ..nn import SCCConv2d, SCCLinear
from .adapters import resolve

__all__ = ["Candidate", "TraceInfo", "find_candidates"]

# Modules and functions a dw_pw chain may pass through (one input, one output, per channel).
_PASS_MODULES = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Hardtanh,
    nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.PReLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout,
    nn.Dropout2d, nn.AlphaDropout,
)
_PASS_FUNCTIONS = {
    F.relu, F.relu6, F.hardswish, F.silu, F.gelu, F.leaky_relu, F.hardtanh, F.mish, F.elu,
    F.celu, F.selu, F.dropout, F.dropout2d, F.batch_norm, torch.relu, torch.sigmoid, torch.tanh,
    torch.nn.functional.sigmoid, torch.nn.functional.tanh,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous"}

# What may lie between a head and the model's output: no arithmetic on the values.
_HEAD_MODULES = (nn.Identity, nn.Dropout, nn.Flatten)
_HEAD_FUNCTIONS = {F.dropout, torch.flatten}
_HEAD_METHODS = {"flatten", "view", "reshape", "squeeze", "contiguous"}

LAYERS = (nn.Conv2d, nn.Linear)


def channels(layer: nn.Module) -> tuple[int, int]:
    """``(in, out)`` channels of a conv, features of a linear layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels


def is_depthwise(conv: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and conv.groups == conv.in_channels
        and conv.in_channels > 1
        and conv.out_channels % conv.in_channels == 0
    )


def is_pointwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1


def is_standard(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.kernel_size != (1, 1)


@dataclass
class Candidate:
    """A convolution found in the model, in network (or module) order.

    ``module`` is the layer in the model; ``layer`` the plain ``nn.Conv2d`` / ``nn.Linear``
    it converts from (``module`` itself, or what a registered adapter made of it).
    """

    name: str
    module: nn.Module
    pattern: str  # "dw_pw", "pw", "std" or "linear"
    verified: bool  # found in an fx graph (False: from module order)
    used: bool = True  # called in the traced forward
    unused_reason: str = "never called in forward"
    unsupported: str | None = None  # why it cannot be converted (a subclass computing otherwise)
    layer: nn.Module | None = None
    head: bool = False  # a linear layer computing the model's output
    ends_graph: bool = False  # a linear layer computing the output of the graph it was found in

    def __post_init__(self) -> None:
        if self.layer is None:
            self.layer = self.module


@dataclass
class TraceInfo:
    """How the model was analysed."""

    mode: str  # "fx" (whole model), "partial" (some submodules) or "modules" (none traced)
    traced: list[str]
    failures: dict[str, str]


class _Tracer(fx.Tracer):
    """Keeps every convolution and linear layer (subclasses too), our own layers and
    already-converted modules as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (SCCConv2d, SCCLinear, *LAYERS)) or super().is_leaf_module(m, qualname)


def _trace(module: nn.Module) -> fx.Graph:
    with no_stand_ins_left(module):
        return _Tracer().trace(module)


def _passes_through(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    return False


def _first_tensor_arg(node: fx.Node) -> fx.Node | None:
    arg = node.args[0] if node.args else node.kwargs.get("input")
    return arg if isinstance(arg, fx.Node) else None


def _follows_depthwise(conv_node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when ``conv_node``'s input reaches back to a depthwise conv with no branching."""
    node = _first_tensor_arg(conv_node)
    while node is not None:
        if len(node.users) != 1:
            return False
        if node.op == "call_module" and is_depthwise(modules.get(node.target)):
            return True
        if not _passes_through(node, modules):
            return False
        node = _first_tensor_arg(node)
    return False


def _feeds_output(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when every path from ``node`` reaches the graph's output through value-preserving
    ops only (dropout, flatten, reshapes, identities)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        for user in n.users:
            if user.op == "output":
                continue
            plain = (
                (user.op == "call_module" and isinstance(modules.get(user.target), _HEAD_MODULES))
                or (user.op == "call_function" and user.target in _HEAD_FUNCTIONS)
                or (user.op == "call_method" and user.target in _HEAD_METHODS)
            )
            if not plain:
                return False
            if user not in seen:
                seen.add(user)
                todo.append(user)
    return bool(node.users)


def _classify(conv: nn.Module, follows_dw: bool) -> str | None:
    if isinstance(conv, nn.Linear):
        return "linear"
    if is_pointwise(conv):
        return "dw_pw" if follows_dw else "pw"
    if is_standard(conv):
        return "std"
    return None


def _from_graph(graph: fx.Graph, root: nn.Module, prefix: str) -> list[Candidate]:
    modules = dict(root.named_modules())
    found: dict[str, Candidate] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        conv = modules.get(node.target)
        if not isinstance(conv, LAYERS):
            continue
        pattern = _classify(conv, _follows_depthwise(node, modules))
        if pattern is None:
            continue
        name = f"{prefix}{node.target}"
        ends = pattern == "linear" and _feeds_output(node, modules)
        if name in found:  # a shared module: dw_pw only if every use is, the output layer only if every use is
            if found[name].pattern != pattern:
                found[name].pattern = "pw" if pattern in ("pw", "dw_pw") else pattern
            found[name].ends_graph = found[name].ends_graph and ends
            continue
        found[name] = Candidate(name, conv, pattern, verified=True, ends_graph=ends)
    read = {node.target for node in graph.nodes if node.op == "get_attr"}
    for name, conv in modules.items():  # convs that forward never calls
        full = f"{prefix}{name}"
        if isinstance(conv, LAYERS) and full not in found and _classify(conv, False):
            direct = any(t.startswith(f"{name}.") for t in read)
            why = "its weight is read directly in forward, not called as a module" if direct else "never called in forward"
            found[full] = Candidate(full, conv, _classify(conv, False), verified=True, used=False, unused_reason=why)
    return list(found.values())


def _from_module_order(root: nn.Module, prefix: str) -> list[Candidate]:
    """Classify by registration order: a 1x1 conv right after a depthwise conv (only
    pass-through modules between, same parent) is taken to be ``dw_pw``."""
    out = []
    previous_dw: nn.Conv2d | None = None
    for name, m in root.named_modules():
        if isinstance(m, LAYERS):
            follows = isinstance(m, nn.Conv2d) and previous_dw is not None and previous_dw.out_channels == m.in_channels
            pattern = _classify(m, follows)
            if pattern is not None:
                out.append(Candidate(f"{prefix}{name}", m, pattern, verified=False))
            previous_dw = m if is_depthwise(m) else None
        elif not isinstance(m, _PASS_MODULES) and len(m._modules) == 0:
            previous_dw = None
    return out


def _walk(module: nn.Module, prefix: str, info: TraceInfo) -> Iterator[Candidate]:
    try:
        graph = _trace(module)
    except Exception as err:  # noqa: BLE001 - any tracing failure means: go one level down
        info.failures[prefix.rstrip(".") or "<model>"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        info.traced.append(prefix.rstrip(".") or "<model>")
        yield from _from_graph(graph, module, prefix)
        return
    children = list(module.named_children())
    if isinstance(module, LAYERS) or not children:
        yield from _from_module_order(module, prefix)
        return
    # Convs registered directly here, between children, are only seen by module order.
    pending: list[tuple[str, nn.Module]] = []
    for name, child in children:
        if isinstance(child, (*LAYERS, *_PASS_MODULES)):
            pending.append((name, child))
            continue
        yield from _flush(pending, prefix)
        pending = []
        yield from _walk(child, f"{prefix}{name}.", info)
    yield from _flush(pending, prefix)


def _flush(pending: list[tuple[str, nn.Module]], prefix: str) -> Iterator[Candidate]:
    if pending:
        yield from _from_module_order(_Group(pending), prefix)


class _Group(nn.Module):
    """A plain container keeping the original names, for module-order classification."""

    def __init__(self, items: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for name, m in items:
            self.add_module(name, m)


def find_candidates(model: nn.Module) -> tuple[list[Candidate], TraceInfo]:
    """All replaceable convolutions and linear layers of ``model`` in network order, and how
    they were found."""
    info = TraceInfo(mode="fx", traced=[], failures={})
    candidates = list(_walk(model, "", info))
    for c in candidates:
        resolved = resolve(c.module)
        c.layer = resolved.layer or c.module
        c.unsupported = resolved.reason
    if info.failures:
        info.mode = "partial" if info.traced else "modules"
    if info.mode == "fx":
        for c in candidates:
            c.head = c.ends_graph
    elif candidates and candidates[-1].pattern == "linear":
        last = candidates[-1]
        last.head = last.ends_graph or not last.verified
    return candidates, info
