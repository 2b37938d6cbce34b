"""SCC in inductor's graphs (``torch.compile``, AOTInductor): a direct call of the native kernel.

Left to itself, inductor runs a custom op as a fallback call of ``torch.ops.scc.scc_conv2d``,
whose CPU kernel is Python (it finds the layer's geometry and window table, then calls the
C++ op), after copying the input into the strides eager mode saw: NCHW, where inductor's
layout optimisation keeps a conv net's activations channels_last, so every SCC layer paid two
layout copies. This module gives inductor a lowering of ``scc::scc_conv2d`` and
``scc::scc_conv2d_fused`` for CPU tensors that the native kernel runs:

* the call becomes ``torch.ops.scc_native.forward`` (C++, ``csrc/``) on the input in the
  layout inductor chose (flexible inputs: channels_last when it optimises layouts), so there
  is no copy and no Python in the call;
* the layer's window table, built by ``geometry.py`` (:func:`native.window_table`) when the
  graph is compiled, is a constant of the compiled graph — so an AOTInductor package needs
  only the native kernel's library beside it, and the C++ side still derives nothing.

CUDA tensors, and CPU tensors without the native kernel (or under
``SCC_CONVERT_CPU_BACKEND=torch`` / ``native.use_backend("torch")``), keep the fallback call
of the op (the Triton kernels, the PyTorch path). The choice is made when a graph is
compiled, and inductor's on-disk cache of compiled graphs keeps it: after switching, clear
that cache (or set ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``). Tracing a CPU graph settles
the CPU implementation (the op's fake kernel asks for it), so that compiled code, cached or
not, finds the native op loaded.

Inductor keeps its lowerings in ``torch._inductor.lowering``, whose import costs seconds, so
they are added when that module is first imported (a finder on ``sys.meta_path``, installed by
``import scc_convert``), or at once if it already is. Should that fail (inductor's internals
change between torch versions), compiled graphs keep the fallback call, with one warning.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import warnings

import torch

from . import common, epilogue, native

__all__ = ["install", "register", "registered"]

log = logging.getLogger("scc_convert")

_LOWERING = "torch._inductor.lowering"
_NHWC = [3, 0, 2, 1]  # inductor's stride orders (0: the smallest stride)
_NCHW = [3, 2, 1, 0]
_registered = False


def registered() -> bool:
    """Whether inductor has the SCC lowerings (it does once it has been imported)."""
    return _registered


def _runs_native(x) -> bool:
    device = x.get_device()
    return (
        device is not None and device.type == "cpu" and x.get_dtype() in native.SUPPORTED_DTYPES
        and native.cpu_backend() == "native"
    )


def _fixed(x, channels_last: bool):
    """``x`` realized with a fixed layout: its own when it has one, else the one asked for."""
    from torch._inductor import ir

    x = ir.ExternKernel.realize_input(x)
    if ir.is_storage_and_layout(x) and isinstance(x.get_layout(), ir.FlexibleLayout):
        x = ir.ExternKernel.require_stride_order(x, _NHWC if channels_last else _NCHW)
    return x


def _native_call(input, weight, bias, cg, co, window_of, activation, residual, inplace=False):
    from torch._inductor import ir
    from torch._inductor.lowering import fallback_handler
    from torch._inductor.virtualized import V

    x = _fixed(input, bool(V.graph.layout_opt))
    example = ir.ir_node_to_tensor(x, replace_symbols_with_hints=True)
    geom = common.geometry_for(example, ir.ir_node_to_tensor(weight, replace_symbols_with_hints=True), cg, co)
    channels_last = common.output_memory_format(example) == torch.channels_last
    if residual is not None and not inplace:  # (the in-place form writes the residual's own buffer)
        residual = _fixed(residual, channels_last)
    constant = V.graph.add_tensor_constant(native.window_table(geom, window_of), name="scc_windows").data.data
    # A view of the constant, so that inductor's fake-tensor rerun of the call sees a fake tensor
    # (it hands constants themselves over as real tensors, which fake mode refuses outside freezing).
    table = ir.ReinterpretView(data=constant, layout=constant.get_layout())
    if inplace:
        call = fallback_handler(torch.ops.scc_native.forward_.default, add_to_fallback_set=False)
        call(residual, x, weight, bias, table, epilogue.activation_code(activation))
        return None
    call = fallback_handler(torch.ops.scc_native.forward.default, add_to_fallback_set=False)
    return call(x, weight, bias, table, channels_last, epilogue.activation_code(activation), residual)


def _lower_scc(input, weight, bias, cg, co, window_of):
    if _runs_native(input):
        return _native_call(input, weight, bias, cg, co, window_of, "none", None)
    from torch._inductor.lowering import fallback_handler

    return fallback_handler(torch.ops.scc.scc_conv2d.default, add_to_fallback_set=False)(
        input, weight, bias, cg, co, window_of)


def _lower_fused(input, weight, bias, cg, co, window_of, activation, residual):
    if _runs_native(input):
        return _native_call(input, weight, bias, cg, co, window_of, activation, residual)
    from torch._inductor.lowering import fallback_handler

    return fallback_handler(torch.ops.scc.scc_conv2d_fused.default, add_to_fallback_set=False)(
        input, weight, bias, cg, co, window_of, activation, residual)


def _lower_fused_inplace(residual, input, weight, bias, cg, co, window_of, activation):
    if _runs_native(input):
        return _native_call(input, weight, bias, cg, co, window_of, activation, residual, inplace=True)
    from torch._inductor.lowering import fallback_handler

    fallback_handler(torch.ops.scc.scc_conv2d_fused_.default, add_to_fallback_set=False)(
        residual, input, weight, bias, cg, co, window_of, activation)
    return None


def _reinplaceable(node, order: dict) -> bool:
    """Whether a fused call may write its result over its residual: the residual is an
    intermediate (no graph input, constant or view) that nothing reads after this call and no
    view of it outlives it, with the output's shape, strides and dtype, and not the call's input."""
    from torch.multiprocessing.reductions import StorageWeakRef

    residual = node.args[7] if len(node.args) > 7 else None
    if not isinstance(residual, torch.fx.Node) or residual.op != "call_function":
        return False
    out, rv, xv = node.meta.get("val"), residual.meta.get("val"), node.args[0].meta.get("val")
    if not all(isinstance(t, torch.Tensor) for t in (out, rv, xv)) or rv._is_view():
        return False
    if out.shape != rv.shape or out.stride() != rv.stride() or out.dtype != rv.dtype:
        return False
    storage = StorageWeakRef(rv.untyped_storage())
    if StorageWeakRef(xv.untyped_storage()) == storage:
        return False
    for user in residual.users:
        if user is node:
            continue
        if order[user] > order[node]:
            return False
        val = user.meta.get("val")
        if isinstance(val, torch.Tensor) and StorageWeakRef(val.untyped_storage()) == storage:
            return False
    return True


def _reinplace_residuals(graph) -> None:
    """Turn fused calls with a dead residual into ``scc_conv2d_fused_`` (in place). A compiled residual block then allocates no output tensor, as oneDNN's in-place conv +
    add does not: at batch 16 each fresh 51 MB output of ResNet-50's first stage costs ~12.5k
    page faults under glibc's allocator."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    fused, inplace = torch.ops.scc.scc_conv2d_fused.default, torch.ops.scc.scc_conv2d_fused_.default
    for node in graph.nodes:
        if node.op == "call_function" and node.target is fused and _reinplaceable(node, order):
            input, weight, bias, cg, co, window_of, activation, residual = node.args
            node.replace_all_uses_with(residual)  # later readers see the overwritten residual
            node.target = inplace
            node.args = (residual, input, weight, bias, cg, co, window_of, activation)
            node.meta["val"] = None


def _post_grad_pass():
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class ReinplaceResiduals(CustomGraphPass):
        def __call__(self, graph) -> None:
            _reinplace_residuals(graph)

        def uuid(self):
            return get_hash_for_files((__file__,))

    return ReinplaceResiduals()


def _install_pass() -> None:
    """Install the residual reinplacing as inductor's post-grad custom pass, unless the user
    has one (then compiled residual blocks keep allocating their outputs)."""
    from torch._inductor import config

    if config.post_grad_custom_post_pass is None:
        config.post_grad_custom_post_pass = _post_grad_pass()


def register() -> None:
    """Add the SCC lowerings to inductor (imports it; idempotent)."""
    global _registered
    if _registered:
        return
    from torch._inductor import lowering

    for op, fn in ((torch.ops.scc.scc_conv2d.default, _lower_scc),
                   (torch.ops.scc.scc_conv2d_fused.default, _lower_fused),
                   (torch.ops.scc.scc_conv2d_fused_.default, _lower_fused_inplace)):
        lowering.register_lowering(op, type_promotion_kind=None)(fn)
    _install_pass()
    _registered = True


def _register_or_warn() -> None:
    try:
        register()
    except Exception as err:  # noqa: BLE001 - inductor internals: never break inductor's import
        warnings.warn(
            f"scc_convert: could not add the SCC lowerings to inductor ({type(err).__name__}: {err}); "
            f"compiled graphs call the SCC ops through Python", RuntimeWarning, stacklevel=2,
        )


class _AfterLowering(importlib.abc.MetaPathFinder):
    """Finds ``torch._inductor.lowering`` as usual and registers the lowerings right after the
    module has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _LOWERING:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def run(module):
            exec_module(module)
            _register_or_warn()

        spec.loader.exec_module = run
        return spec


def install() -> None:
    """Register now if inductor's lowerings are loaded, else when they are (once per process)."""
    if _LOWERING in sys.modules:
        _register_or_warn()
    elif not any(isinstance(f, _AfterLowering) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterLowering())
