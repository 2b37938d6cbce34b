"""Registration of the fused SCC op, the inference form of an SCC layer with what follows it:

``torch.ops.scc.scc_conv2d_fused(input, weight, bias, cg, co, window_of, activation, residual)
-> Tensor`` computes ``act(scc(input) + bias + residual)`` (``ops/epilogue.py``): the same
sum as ``scc::scc_conv2d`` (whose schema is unchanged), then an epilogue that the kernels
apply while the outputs are in cache. ``scc_convert.optimize_for_inference`` folds BatchNorm
into ``weight``/``bias`` and puts a following activation and residual add here.

It has a fake kernel, an autocast rule and a FLOP formula (the sum's: the epilogue is not
counted, as bias adds and activations are not elsewhere), and the same implementations as
the base op: the native C++ kernel on CPU, the Triton forward kernel on CUDA, each falling
back to the PyTorch path. It is an inference op: it has no autograd formula, so calling it on
tensors that require grad raises.

``torch.ops.scc.scc_conv2d_fused_(residual, input, ...)`` is its in-place form: the result
written over ``residual`` (it returns nothing). Nothing in eager mode calls it; a post-grad
pass of ours in inductor (``ops/inductor.py``) turns a fused call into it where the residual is
not read afterwards, as oneDNN's conv + add writes in place, so a compiled residual block
allocates no new output tensor.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from . import backends, epilogue, library, torch_path

__all__ = ["scc_conv2d_fused_op", "scc_conv2d_fused_inplace_op", "scc_conv2d_fused_call"]

_SCHEMA = (
    "(Tensor input, Tensor weight, Tensor? bias, int cg, float co, int[]? window_of, str activation, "
    "Tensor? residual) -> Tensor"
)


def _impl(input, weight, bias, cg, co, window_of, activation, residual):  # other devices: the PyTorch path
    return epilogue.apply(torch_path.scc_forward(input, weight, bias, cg, co, window_of), activation, residual)


def _fake(input, weight, bias, cg, co, window_of, activation, residual):
    out = library._forward_fake(input, weight, bias, cg, co, window_of)
    epilogue.check(tuple(out.shape), input.dtype, input.device, activation, residual)
    return out


def scc_conv2d_fused_flop(input_shape, weight_shape, bias_shape, cg, co, window_of, activation, residual_shape,
                          *, out_shape=None, **kwargs) -> int:
    """FLOPs of the fused forward: the sum's ``2 * N*H*W * Cout * gw`` (epilogue not counted)."""
    return library.scc_conv2d_flop(input_shape, weight_shape, bias_shape, cg, co, window_of)


def _register() -> None:
    op = torch.library.custom_op(f"{library._NS}::scc_conv2d_fused", _impl, mutates_args=(), schema=_SCHEMA)
    op.register_kernel("cuda", backends.cuda_forward_fused)
    op.register_kernel("cpu", backends.cpu_forward_fused)
    op.register_fake(_fake)
    register_flop_formula(torch.ops.scc.scc_conv2d_fused)(scc_conv2d_fused_flop)
    library.register_autocast("scc_conv2d_fused")


_INPLACE_SCHEMA = (  # returns nothing: inductor calls a mutating op whose outputs alias nothing
    "(Tensor(a!) residual, Tensor input, Tensor weight, Tensor? bias, int cg, float co, int[]? window_of, "
    "str activation) -> ()"
)


def _inplace_fake(residual, input, weight, bias, cg, co, window_of, activation):
    _fake(input, weight, bias, cg, co, window_of, activation, residual)


def _inplace_flop(residual_shape, input_shape, weight_shape, bias_shape, cg, co, window_of, activation,
                  *, out_shape=None, **kwargs) -> int:
    return library.scc_conv2d_flop(input_shape, weight_shape, bias_shape, cg, co, window_of)


def _register_inplace() -> None:
    name = f"{library._NS}::scc_conv2d_fused_"
    torch.library.define(name, _INPLACE_SCHEMA)
    torch.library.impl(name, "cpu")(backends.cpu_forward_fused_)
    torch.library.impl(name, "cuda")(backends.cuda_forward_fused_)
    torch.library.register_fake(name)(_inplace_fake)
    register_flop_formula(torch.ops.scc.scc_conv2d_fused_)(_inplace_flop)


if not hasattr(torch.ops.scc, "scc_conv2d_fused"):
    _register()
if not hasattr(torch.ops.scc, "scc_conv2d_fused_"):
    _register_inplace()

scc_conv2d_fused_op = torch.ops.scc.scc_conv2d_fused
scc_conv2d_fused_inplace_op = torch.ops.scc.scc_conv2d_fused_


@torch.jit.unused
def scc_conv2d_fused_call(input, weight, bias, cg: int, co: float, window_of, activation: str, residual):
    """Run ``torch.ops.scc.scc_conv2d_fused`` from Python; in eager CPU inference its CPU kernel
    directly, as :func:`~scc_convert.ops.library.scc_conv2d_call` does for the base op."""
    plain_residual = residual is None or (
        type(residual) is torch.Tensor and not (torch.is_grad_enabled() and residual.requires_grad)
    )
    if plain_residual and library._direct_ok(input, weight, bias):
        return backends.cpu_forward_fused(input, weight, bias, cg, co, window_of, activation, residual)
    return scc_conv2d_fused_op(input, weight, bias, cg, co, window_of, activation, residual)
