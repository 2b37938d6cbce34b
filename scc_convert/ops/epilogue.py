"""The epilogue of the fused SCC op (``scc::scc_conv2d_fused``): what runs on each output
after the sum and the bias, in this order:

``y = act(scc(x) + bias + residual)``

``activation`` is one of :data:`ACTIVATIONS` (``"none"`` or an elementwise activation,
computed as torch computes it: ``relu``, ``relu6`` = ``hardtanh(0, 6)``, ``hardswish``,
``silu`` and the exact, erf-based ``gelu``); ``residual`` is ``None`` or a tensor of the
output's shape and dtype (a skip connection). The native CPU kernel receives the activation
as its index in :data:`ACTIVATIONS` (``csrc/kernels.h``, ``enum Activation``); the Triton
kernels as the same code; the PyTorch path applies :func:`apply` after the plain forward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["ACTIVATIONS", "TORCH_ACTIVATIONS", "activation_code", "check", "check_call", "apply"]

ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "silu", "gelu")

# Each activation as a torch function (what the kernels compute, and the PyTorch path runs).
TORCH_ACTIVATIONS = {
    "none": lambda t: t,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "silu": F.silu,
    "gelu": F.gelu,
}


def activation_code(activation: str) -> int:
    """The kernels' code of ``activation`` (its index in :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS.index(activation)
    except ValueError:
        raise ValueError(
            f"SCC: activation={activation!r} is not fusable; use one of {', '.join(ACTIVATIONS)}"
        ) from None


def check(output_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, activation: str,
          residual: Tensor | None) -> None:
    """Validate the epilogue's arguments against the output the op will produce."""
    activation_code(activation)
    if residual is None:
        return
    if tuple(residual.shape) != tuple(output_shape):
        raise ValueError(
            f"SCC: the residual has shape {tuple(residual.shape)}; it must have the output's shape "
            f"{tuple(output_shape)} (add a broadcast residual outside the op)"
        )
    if residual.dtype != dtype or residual.device != device:
        raise TypeError(
            f"SCC: the residual must match the input's dtype and device ({dtype}, {device}); "
            f"got {residual.dtype} on {residual.device}"
        )


def check_call(input: Tensor, weight: Tensor, activation: str, residual: Tensor | None) -> None:
    """:func:`check` for an SCC call on ``input`` ``[N, Cin, H, W]`` with ``weight`` ``[Cout, gw]``
    (other shapes are left to the op's own validation)."""
    if input.dim() != 4 or weight.dim() != 2:
        return
    n, _, h, w = input.shape
    check((n, weight.shape[0], h, w), input.dtype, input.device, activation, residual)


def apply(y: Tensor, activation: str, residual: Tensor | None) -> Tensor:
    """``act(y + residual)`` in place on ``y`` (the PyTorch path's epilogue); returns ``y``."""
    if residual is not None:
        y.add_(residual)
    if activation != "none":
        y.copy_(TORCH_ACTIVATIONS[activation](y))
    return y
