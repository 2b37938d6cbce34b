"""``FusedSCCConv2d``: an SCC layer with the BatchNorm, activation and residual add that
followed it in a model folded into it, for inference (``scc_convert.optimize_for_inference``
builds them).

``y = act(scc(x, weight, bias) + residual)`` runs as one call of
``torch.ops.scc.scc_conv2d_fused``: the kernels apply the residual add and the activation to
each output while it is in cache, instead of three passes over the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .nn import SCCConv2d
from .ops import scc_conv2d_fused_call
from .ops.epilogue import TORCH_ACTIVATIONS, activation_code

__all__ = ["FusedSCCConv2d"]


class FusedSCCConv2d(SCCConv2d):
    """An :class:`~scc_convert.SCCConv2d` whose output goes through an epilogue:
    ``act(scc(input) + bias + residual)``.

    Args:
        in_channels, out_channels, cg, co, stride, bias, window_of: as :class:`SCCConv2d`.
        activation: one of ``"none", "relu", "relu6", "hardswish", "silu", "gelu"`` (exact,
            erf-based GELU), computed as torch computes it.
        residual: whether the layer takes a residual (``forward(input, residual)``), added
            before the activation.

    ``forward(input, residual=None)``: ``residual`` has the output's shape ``[N, Cout, H', W']``
    (a residual of another shape or dtype, e.g. one that broadcasts, is added outside the
    kernel). Inference only: the fused op has no autograd formula, so the parameters do not
    require grad.

    Example:
        >>> import torch
        >>> layer = FusedSCCConv2d(16, 32, cg=4, co=0.5, activation="relu", residual=True)
        >>> x, skip = torch.randn(1, 16, 8, 8), torch.randn(1, 32, 8, 8)
        >>> layer(x, skip).shape
        torch.Size([1, 32, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cg: int,
        co: float,
        stride: int = 1,
        bias: bool = True,
        window_of: Sequence[int] | None = None,
        activation: str = "none",
        residual: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        activation_code(activation)
        super().__init__(in_channels, out_channels, cg, co, stride=stride, bias=bias, window_of=window_of,
                         device=device, dtype=dtype)
        self.activation = activation
        self.residual = bool(residual)
        self.requires_grad_(False)

    @classmethod
    @torch.no_grad()
    def fold(cls, layer: SCCConv2d, batch_norm: nn.BatchNorm2d | None = None, activation: str = "none",
             residual: bool = False) -> FusedSCCConv2d:
        """``layer`` followed by ``batch_norm`` (eval mode: its running statistics), folded into
        one layer's weight and bias: ``w' = w * s``, ``b' = (b - mean) * s + beta`` with
        ``s = gamma / sqrt(var + eps)`` per output channel (in fp64, then rounded once)."""
        g = layer.geometry
        weight = layer.weight.detach().double()
        bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(g.out_channels, dtype=torch.float64,
                                                                                         device=weight.device)
        if batch_norm is not None:
            if batch_norm.running_mean is None or batch_norm.running_var is None:
                raise ValueError("FusedSCCConv2d.fold: the BatchNorm has no running statistics (track_running_stats=False)")
            scale = (batch_norm.running_var.double() + batch_norm.eps).rsqrt()
            if batch_norm.weight is not None:
                scale = scale * batch_norm.weight.double()
            shift = -batch_norm.running_mean.double() * scale
            if batch_norm.bias is not None:
                shift = shift + batch_norm.bias.double()
            weight = weight * scale[:, None]
            bias = bias * scale + shift
        fused = cls(g.in_channels, g.out_channels, g.cg, g.co, stride=layer.stride, bias=True,
                    window_of=layer.window_of, activation=activation, residual=residual,
                    device=layer.weight.device, dtype=layer.weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        return fused

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        if self.stride > 1:
            input = input[:, :, :: self.stride, :: self.stride]
        if residual is not None and not torch.jit.is_tracing():  # traced: the op checks the residual
            out_shape = (input.shape[0], self.out_channels, input.shape[2], input.shape[3])
            if tuple(residual.shape) != out_shape or residual.dtype != input.dtype or residual.device != input.device:
                y = scc_conv2d_fused_call(input, self.weight, self.bias, self._op_cg, self._op_co,
                                          self._op_window_of, "none", None)
                return TORCH_ACTIVATIONS[self.activation](y + residual)
        return scc_conv2d_fused_call(input, self.weight, self.bias, self._op_cg, self._op_co, self._op_window_of,
                                     self.activation, residual)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.activation != "none":
            text += f", activation={self.activation}"
        if self.residual:
            text += ", residual=True"
        return text

