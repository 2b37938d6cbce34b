"""Registration of the SCC op with ``torch.library``: schema, kernels, fake kernels, autograd
and FLOP formulas.

Two ops live in the ``scc`` namespace:

* ``torch.ops.scc.scc_conv2d(input, weight, bias, cg, co, window_of) -> Tensor``
* ``torch.ops.scc.scc_conv2d_backward(grad_output, input, weight, cg, co, window_of,
  input_grad, weight_grad) -> (Tensor, Tensor)`` (a gradient not asked for is empty)

Implementations: CUDA tensors run the Triton kernels (``ops/triton_kernels``, registered with
``register_kernel("cuda")``), CPU tensors the native C++ kernel (``ops/native.py``,
``csrc/``, ``register_kernel("cpu")``); either falls back to the PyTorch path, which other
devices run (``ops/backends.py`` says which runs where). ``input`` is ``[N, Cin, H, W]`` (NCHW or channels_last; the output keeps the layout),
``weight`` is ``[Cout, Cin // cg]``. Spatial stride is not part of the op: callers subsample
first. Registration happens once per process; importing this module again (a reload, or a
second copy of the package) reuses the ops already registered.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from . import backends, common, native, torch_path

__all__ = ["scc_conv2d_op", "scc_conv2d_backward_op", "scc_conv2d_call"]

_NS = "scc"
_FWD_SCHEMA = "(Tensor input, Tensor weight, Tensor? bias, int cg, float co, int[]? window_of) -> Tensor"
_BWD_SCHEMA = (
    "(Tensor grad_output, Tensor input, Tensor weight, int cg, float co, int[]? window_of, "
    "bool input_grad, bool weight_grad) -> (Tensor, Tensor)"
)


def _already_registered() -> bool:
    return hasattr(torch.ops, _NS) and hasattr(getattr(torch.ops, _NS), "scc_conv2d")


def _forward_impl(input, weight, bias, cg, co, window_of):
    return torch_path.scc_forward(input, weight, bias, cg, co, window_of)


def _backward_impl(grad_output, input, weight, cg, co, window_of, input_grad, weight_grad):
    return torch_path.scc_backward(grad_output, input, weight, cg, co, window_of, input_grad, weight_grad)


def _validated(input, weight, cg, co, window_of):
    geom = common.geometry_for(input, weight, cg, co)
    torch_path.plan_for(geom, window_of)
    return geom


def _forward_fake(input, weight, bias, cg, co, window_of):
    geom = _validated(input, weight, cg, co, window_of)
    if input.device.type == "cpu":
        # A CPU graph is being traced (torch.compile, export): settle the CPU implementation now,
        # since compiled code — inductor's cached code too — calls the native op directly.
        native.status()
    n, _, h, w = input.shape
    return common.empty_output(input, (n, geom.out_channels, h, w))


def _backward_fake(grad_output, input, weight, cg, co, window_of, input_grad, weight_grad):
    _validated(input, weight, cg, co, window_of)
    grad_input = common.empty_output(input, tuple(input.shape)) if input_grad else input.new_empty(0)
    grad_weight = torch.empty_like(weight) if weight_grad else input.new_empty(0)
    return grad_input, grad_weight


def _setup_context(ctx, inputs, output):
    input, weight, bias, cg, co, window_of = inputs
    ctx.save_for_backward(input, weight)
    ctx.scc_args = (cg, co, window_of, bias is not None)


def _autograd_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    cg, co, window_of, has_bias = ctx.scc_args
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_input = grad_weight = grad_bias = None
    if need_input or need_weight:
        gi, gw = torch.ops.scc.scc_conv2d_backward(
            grad_output, input, weight, cg, co, window_of, need_input, need_weight
        )
        grad_input = gi if need_input else None
        grad_weight = gw if need_weight else None
    if has_bias and need_bias:
        grad_bias = grad_output.sum(dim=(0, 2, 3))
    return grad_input, grad_weight, grad_bias, None, None, None


# -- FLOP formulas (torch.utils.flop_counter conventions: 2 FLOPs per MAC, bias excluded) --


def _scc_macs(input_shape, weight_shape) -> int:
    n, _, h, w = input_shape
    cout, gw = weight_shape
    return n * h * w * cout * gw


def scc_conv2d_flop(input_shape, weight_shape, bias_shape, cg, co, window_of, *, out_shape=None, **kwargs) -> int:
    """FLOPs of the SCC forward: ``2 * N*H*W * Cout * gw``."""
    return 2 * _scc_macs(input_shape, weight_shape)


def scc_conv2d_backward_flop(
    grad_output_shape, input_shape, weight_shape, cg, co, window_of, input_grad, weight_grad,
    *, out_shape=None, **kwargs,
) -> int:
    """FLOPs of the SCC backward: ``2 * N*H*W * Cout * gw`` per gradient computed."""
    return 2 * _scc_macs(input_shape, weight_shape) * (int(bool(input_grad)) + int(bool(weight_grad)))


def register_autocast(name: str) -> None:
    """Under autocast, run ``scc::<name>`` in the autocast dtype of the input's device (bf16/fp16).

    ``torch.library.register_autocast`` casts to one fixed dtype; this follows whatever dtype
    the enclosing ``torch.autocast`` region asked for. Every floating-point tensor argument on
    that device is cast.
    """
    lib = torch.library.Library(_NS, "FRAGMENT")
    _AUTOCAST_LIBS.append(lib)
    op = getattr(torch.ops.scc, name)
    for device_type in ("cpu", "cuda"):
        if not torch.amp.is_autocast_available(device_type):
            continue
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        exclude = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key_name))

        def kernel(_keyset, *args, device_type=device_type, exclude=exclude):
            dtype = torch.get_autocast_dtype(device_type)

            def cast(t):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type == device_type:
                    return t.to(dtype)
                return t

            with torch._C._ExcludeDispatchKeyGuard(exclude):
                return op(*(cast(a) for a in args))

        lib.impl(name, kernel, key_name, with_keyset=True)


# Kept alive for the process: dropping a Library removes its kernels. ``globals().get`` keeps
# the handles when the module is reloaded (registration itself is skipped then).
_AUTOCAST_LIBS: list[torch.library.Library] = globals().get("_AUTOCAST_LIBS", [])


def _register() -> None:
    fwd = torch.library.custom_op(
        f"{_NS}::scc_conv2d", _forward_impl, mutates_args=(), schema=_FWD_SCHEMA
    )
    bwd = torch.library.custom_op(
        f"{_NS}::scc_conv2d_backward", _backward_impl, mutates_args=(), schema=_BWD_SCHEMA
    )
    fwd.register_kernel("cuda", backends.cuda_forward)
    bwd.register_kernel("cuda", backends.cuda_backward)
    fwd.register_kernel("cpu", backends.cpu_forward)
    bwd.register_kernel("cpu", backends.cpu_backward)
    fwd.register_fake(_forward_fake)
    bwd.register_fake(_backward_fake)
    fwd.register_autograd(_autograd_backward, setup_context=_setup_context)
    register_flop_formula(torch.ops.scc.scc_conv2d)(scc_conv2d_flop)
    register_flop_formula(torch.ops.scc.scc_conv2d_backward)(scc_conv2d_backward_flop)
    register_autocast("scc_conv2d")


if not _already_registered():
    _register()

scc_conv2d_op = torch.ops.scc.scc_conv2d
scc_conv2d_backward_op = torch.ops.scc.scc_conv2d_backward


def op_definitions():
    """The ``torch.library`` definitions of ``(scc_conv2d, scc_conv2d_backward)``, e.g. to
    ``register_kernel`` another device or ``set_kernel_enabled`` one."""
    from torch._library.custom_ops import OPDEFS

    return OPDEFS[f"{_NS}::scc_conv2d"], OPDEFS[f"{_NS}::scc_conv2d_backward"]


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _direct_ok(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True when calling the CPU kernel directly is indistinguishable from calling the op.

    That holds for plain CPU tensors that need no gradient (or with grad mode off), with no
    dispatch or torch-function mode (FlopCounterMode, fake tensors, export, FX), functorch
    transform, tracer, compiler, autocast or profiler watching: all of those rely on
    seeing ``scc::scc_conv2d`` itself.
    """
    if torch.compiler.is_compiling():  # first: Dynamo folds it, and must not trace the rest
        return False
    if type(input) is not torch.Tensor or input.device.type != "cpu":
        return False
    if type(weight) not in _PLAIN_TYPES or (bias is not None and type(bias) not in _PLAIN_TYPES):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
        return False
    return not (
        torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._are_functorch_transforms_active()
        or torch.jit.is_tracing()
        or torch.is_autocast_enabled("cpu")
        or torch._C._autograd._profiler_enabled()
    )


@torch.jit.unused  # TorchScript calls scc_conv2d_op (see SCCConv2d.forward)
def scc_conv2d_call(input, weight, bias, cg: int, co: float, window_of):
    """Run ``torch.ops.scc.scc_conv2d`` from Python (what the layer and the functional call).

    In eager CPU inference this calls the op's CPU kernel directly: the same function, minus
    the dispatcher and ``torch.library``'s Python wrapping, which cost more than the kernel
    itself at batch 1 (bench/eager_models.py). Whenever anything may need to see the
    op (see :func:`_direct_ok`), it goes through ``torch.ops.scc.scc_conv2d``.
    """
    if _direct_ok(input, weight, bias):
        return backends.cpu_forward(input, weight, bias, cg, co, window_of)
    return scc_conv2d_op(input, weight, bias, cg, co, window_of)
