"""Functional form of the SCC layer."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .ops import scc_conv2d_call

__all__ = ["scc_conv2d"]


def check_stride(stride: int | tuple[int, int], where: str) -> int:
    """Validate a 1x1 conv's spatial stride; ``(s, s)`` is accepted as ``s``."""
    if isinstance(stride, (tuple, list)):
        if len(stride) != 2 or stride[0] != stride[1]:
            raise ValueError(f"{where}stride={tuple(stride)!r}: only equal strides (s, s) are supported")
        stride = stride[0]
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{where}stride={stride!r} is invalid: stride must be an int >= 1")
    return stride


def scc_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    cg: int,
    co: float,
    stride: int = 1,
    window_of: Sequence[int] | None = None,
) -> Tensor:
    """Sliding-channel convolution (SPEC section 2).

    ``y[n, o, h, w] = sum_k weight[o, k] * x[n, (start(window_of[o]) + k) % Cin, h, w] + bias[o]``
    where ``x = input[:, :, ::stride, ::stride]`` (a strided 1x1 conv subsamples first).

    Args:
        input: ``[N, Cin, H, W]``, NCHW or channels_last (the output keeps the layout).
        weight: ``[Cout, Cin // cg]``.
        bias: optional ``[Cout]``.
        cg: channel groups (divides ``Cin``).
        co: channel overlap ratio in ``[0, 1)``.
        stride: spatial stride of the 1x1 convolution.
        window_of: optional output-to-window assignment, a permutation of ``o % cd``.

    Cost: ``N*H'*W'*Cout*(Cin//cg)`` MACs (``H', W'`` after the stride); FLOPs are twice that.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 8, 4, 4)
        >>> w = torch.randn(8, 4)
        >>> scc_conv2d(x, w, cg=2, co=0.5).shape
        torch.Size([2, 8, 4, 4])
    """
    stride = check_stride(stride, "scc_conv2d: ")
    if stride > 1:
        input = input[:, :, ::stride, ::stride]
    wo = None if window_of is None else [int(w) for w in window_of]
    return scc_conv2d_call(input, weight, bias, cg, float(co), wo)
