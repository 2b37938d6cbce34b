"""``optimize_for_inference``: fold BatchNorm into the SCC layers and fuse what follows them.

For every SCC layer of the model's ``torch.fx`` graph, the chain

``SCCConv2d -> [BatchNorm2d] -> [+ residual] -> [activation]``

becomes one :class:`~scc_convert.FusedSCCConv2d` (``torch.ops.scc.scc_conv2d_fused``): the
BatchNorm (eval mode: running statistics) folded into its weight and bias, the residual add
and the activation (ReLU, ReLU6 = Hardtanh(0, 6), Hardswish, SiLU, exact GELU; as modules,
functions or methods) in the kernels' epilogue. A link joins the chain only when the value
before it has no other user. Identities of eval mode on the way (Dropout, ``nn.Identity``,
torchvision's stochastic depth) are dropped first. Everything else is left as it was.

A model ``torch.fx`` cannot trace is optimised submodule by submodule (each traceable child
whole, the others recursively), the way ``convert`` analyses such models.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

from .fused import FusedSCCConv2d
from .nn import SCCConv2d

__all__ = ["optimize_for_inference", "FusionSummary"]

log = logging.getLogger("scc_convert")

_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu"}
_ACTIVATION_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
    F.silu: "silu", F.gelu: "gelu",
}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu"}
_ADD_FUNCTIONS = (operator.add, torch.add)
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


@dataclass
class FusionSummary:
    """What :func:`optimize_for_inference` fused: SCC layers, and how many of them absorbed a
    BatchNorm, a residual add, and each activation."""

    layers: int = 0
    batch_norms: int = 0
    residuals: int = 0
    activations: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        acts = ", ".join(f"{n} {k}" for k, n in sorted(self.activations.items())) or "none"
        return (f"{self.layers} SCC layers fused: {self.batch_norms} BatchNorms folded, {self.residuals} residual "
                f"adds, activations: {acts}")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SCCConv2d) or super().is_leaf_module(m, qualname)


def _is_eval_identity(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _DROPOUT_MODULES)
    if node.op != "call_function":
        return False
    if node.target in (F.dropout, F.dropout2d, F.alpha_dropout):
        return node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True) is False
    target = node.target
    if getattr(target, "__name__", "") == "stochastic_depth" and getattr(target, "__module__", "").startswith("torchvision"):
        return node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True) is False
    return False


def _activation(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The fusable activation ``node`` computes, or ``None``."""
    if node.op == "call_module":
        m = modules[node.target]
        if type(m) in _ACTIVATION_MODULES:
            return _ACTIVATION_MODULES[type(m)]
        if type(m) is nn.GELU and m.approximate == "none":
            return "gelu"
        if type(m) is nn.Hardtanh and (m.min_val, m.max_val) == (0.0, 6.0):
            return "relu6"
        return None
    if node.op == "call_function":
        if node.target is F.gelu and node.kwargs.get("approximate", "none") != "none":
            return None
        if node.target is F.hardtanh:
            bounds = (list(node.args[1:3]) + [node.kwargs.get("min_val", -1.0), node.kwargs.get("max_val", 1.0)])[:2]
            return "relu6" if bounds == [0.0, 6.0] else None
        return _ACTIVATION_FUNCTIONS.get(node.target)
    if node.op == "call_method" and len(node.args) == 1:
        return _ACTIVATION_METHODS.get(node.target)
    return None


def _residual(node: fx.Node, value: fx.Node) -> fx.Node | None:
    """The other operand when ``node`` is ``value + other`` of two tensors, else ``None``."""
    if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
        return None
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        a, b = node.args
    elif node.op == "call_method" and node.target in ("add", "add_"):
        a, b = node.args
        if node.target == "add_" and a is not value:
            return None  # other.add_(value) changes `other` for its later users
    else:
        return None
    other = b if a is value else a if b is value else None
    return other if isinstance(other, fx.Node) and other is not value else None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    if len(users) != 1 or sum(a is node for a in users[0].args) + sum(v is node for v in users[0].kwargs.values()) != 1:
        return None
    return users[0]


def _fuse_graph(gm: fx.GraphModule, summary: FusionSummary, residual: bool) -> None:
    graph = gm.graph
    modules = dict(gm.named_modules())
    for node in list(graph.nodes):
        if _is_eval_identity(node, modules):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), SCCConv2d):
            continue
        layer = modules[node.target]
        if isinstance(layer, FusedSCCConv2d) or len(node.args) != 1 or node.kwargs:
            continue
        chain, last, bn, skip, act = [node], node, None, None, "none"
        user = _only_user(last)
        if user is not None and user.op == "call_module" and type(modules[user.target]) is nn.BatchNorm2d:
            candidate = modules[user.target]
            if not candidate.training and candidate.running_mean is not None:
                bn, last = candidate, user
                chain.append(user)
        user = _only_user(last)
        if residual and user is not None and (other := _residual(user, last)) is not None:
            skip, last = other, user
            chain.append(user)
        user = _only_user(last)
        if user is not None and (name := _activation(user, modules)) is not None:
            act, last = name, user
            chain.append(user)
        if len(chain) == 1:
            continue
        fused = FusedSCCConv2d.fold(layer, bn, act, residual=skip is not None)
        target = node.target if calls[node.target] == 1 else _free_name(gm, f"{node.target}_fused")
        gm.add_submodule(target, fused)
        with graph.inserting_before(last):
            new = graph.call_module(target, (node.args[0],) if skip is None else (node.args[0], skip))
        last.replace_all_uses_with(new)
        for n in reversed(chain):
            graph.erase_node(n)
        summary.layers += 1
        summary.batch_norms += bn is not None
        summary.residuals += skip is not None
        if act != "none":
            summary.activations[act] += 1
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


def _free_name(gm: nn.Module, name: str) -> str:
    taken = dict(gm.named_modules())
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}{i}"
    return candidate


def _optimize(module: nn.Module, summary: FusionSummary, residual: bool) -> nn.Module:
    if isinstance(module, SCCConv2d):
        return module
    try:
        graph = _Tracer().trace(module)
    except Exception as err:  # noqa: BLE001 - any tracing failure: optimise the children instead
        log.debug("optimize_for_inference: tracing %s failed (%s); optimising its children", type(module).__name__, err)
        for name, child in list(module.named_children()):
            setattr(module, name, _optimize(child, summary, residual))
        return module
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    _fuse_graph(gm, summary, residual)
    return gm


def optimize_for_inference(
    model: nn.Module, *, residual: bool = True, inplace: bool = False, summary: FusionSummary | None = None,
) -> nn.Module:
    """Fold BatchNorm into SCC layers and fuse the following residual add and activation into
    their kernels (see the module docstring); returns the model in eval mode.

    The result computes what ``model.eval()`` computes, up to fp32 rounding (the folded weights
    are rounded once; the epilogue's SiLU and GELU agree with torch's to a few ulp), and is an
    ordinary module for ``torch.compile``, ``torch.export``, AOTInductor and ONNX export. The
    fused layers are inference-only (no gradients).

    Args:
        model: a model with :class:`~scc_convert.SCCConv2d` layers (e.g. from
            :func:`scc_convert.convert`); other layers are left as they are.
        residual: also fuse ``+ residual`` after an SCC layer (and its BatchNorm).
        inplace: modify ``model`` itself instead of a deep copy.
        summary: a :class:`FusionSummary` to fill in with what was fused.

    Returns:
        The optimised model (an ``fx.GraphModule`` when the model traces as a whole).

    Example:
        >>> import torch, torchvision, scc_convert
        >>> small, _ = scc_convert.convert(torchvision.models.mobilenet_v2().eval(), cg=4, co=0.5)
        >>> fast = scc_convert.optimize_for_inference(small)
        >>> x = torch.randn(1, 3, 224, 224)
        >>> with torch.no_grad():
        ...     print(torch.allclose(fast(x), small.eval()(x), rtol=1e-4, atol=1e-4))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference: model must be an nn.Module, got {type(model).__name__}")
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    summary = FusionSummary() if summary is None else summary
    result = _optimize(target, summary, residual).eval()
    log.info("optimize_for_inference: %s", summary)
    return result
