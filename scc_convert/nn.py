"""The SCC layers: ``SCCConv2d`` (functional form: ``scc_convert.functional.scc_conv2d``),
``SCCLinear`` (SCC over the last dimension, for ``nn.Linear`` pointwise layers) and
``DWSCCConv2d``, a KxK conv factorised into depthwise KxK + SCC. All of them run the one op
``torch.ops.scc.scc_conv2d``."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .functional import check_stride
from .geometry import SCCGeometry
from .ops import scc_conv2d_call, scc_conv2d_op

__all__ = ["SCCConv2d", "SCCLinear", "DWSCCConv2d"]


class _SlidingWindows(nn.Module):
    """What every SCC layer holds: its geometry, the ``[Cout, gw]`` weight, the optional bias
    and the output-to-window assignment (a buffer, so it travels with ``state_dict``)."""

    __jit_unused_properties__ = ["cg", "co", "window_of"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cg: int,
        co: float,
        bias: bool,
        window_of: Sequence[int] | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        self.geometry = SCCGeometry(in_channels, out_channels, cg, co)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, self.geometry.group_width, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._window_of: tuple[int, ...] | None = None
        # What forward passes to the op, as plain attributes TorchScript can read.
        self._op_cg, self._op_co, self._op_window_of = self.geometry.cg, self.geometry.co, None
        self.register_buffer(
            "window_assignment", torch.empty(out_channels, dtype=torch.int32, device=device)
        )
        self.set_window_of(window_of)
        self.reset_parameters()

    @property
    def cg(self) -> int:
        return self.geometry.cg

    @property
    def co(self) -> float:
        return self.geometry.co

    @property
    def window_of(self) -> tuple[int, ...]:
        """The window each output channel reads (the default is ``o % cd``)."""
        return self._window_of if self._window_of is not None else self.geometry.default_window_of

    def set_window_of(self, window_of: Sequence[int] | None) -> None:
        """Set the output-to-window assignment (validated; ``None`` restores the default)."""
        wo = self.geometry.check_window_of(window_of)
        self._window_of = None if wo == self.geometry.default_window_of else wo
        self._op_window_of = None if self._window_of is None else list(self._window_of)
        with torch.no_grad():
            self.window_assignment.copy_(torch.tensor(wo, dtype=torch.int32))

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s (and ``nn.Linear``'s) initialisation with fan-in ``gw``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.geometry.group_width)
            nn.init.uniform_(self.bias, -bound, bound)

    def _geometry_repr(self) -> str:
        g = self.geometry
        return f"cg={g.cg}, co={g.co}, gw={g.group_width}, cd={g.cyclic_distance}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + "window_assignment"
        if key in state_dict:
            try:
                self.set_window_of(self.window_assignment.tolist())
            except ValueError as err:
                error_msgs.append(f"{key}: {err}")


class SCCConv2d(_SlidingWindows):
    """A drop-in replacement for a 1x1 ``nn.Conv2d`` whose outputs read sliding channel windows.

    Args:
        in_channels: ``Cin``.
        out_channels: ``Cout``.
        cg: channel groups; each output reads ``gw = Cin // cg`` input channels.
        co: channel overlap ratio in ``[0, 1)`` between adjacent windows.
        stride: spatial stride (the input is subsampled, as a strided 1x1 conv does).
        bias: whether to learn a bias ``[Cout]``.
        window_of: output-to-window assignment (default: the paper's ``o % cd``).

    Attributes:
        weight: ``[Cout, gw]``, initialised like ``nn.Conv2d`` with fan-in ``gw``.
        bias: ``[Cout]`` or ``None``.
        window_assignment: buffer ``[Cout]`` (int32) holding ``window_of``; it travels with
            ``state_dict``.
        geometry: the :class:`~scc_convert.SCCGeometry` of the layer.

    Example:
        >>> import torch
        >>> layer = SCCConv2d(64, 128, cg=4, co=0.5)
        >>> layer(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 128, 8, 8])
    """

    __jit_unused_properties__ = ["in_channels", "out_channels", "cg", "co", "window_of"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cg: int,
        co: float,
        stride: int = 1,
        bias: bool = False,
        window_of: Sequence[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        stride = check_stride(stride, "SCCConv2d: ")
        super().__init__(in_channels, out_channels, cg, co, bias, window_of, device, dtype)
        self.stride = stride

    @property
    def in_channels(self) -> int:
        return self.geometry.in_channels

    @property
    def out_channels(self) -> int:
        return self.geometry.out_channels

    def forward(self, input: Tensor) -> Tensor:
        if self.stride > 1:
            input = input[:, :, :: self.stride, :: self.stride]
        if torch.jit.is_scripting():
            return scc_conv2d_op(input, self.weight, self.bias, self._op_cg, self._op_co, self._op_window_of)
        return scc_conv2d_call(input, self.weight, self.bias, self._op_cg, self._op_co, self._op_window_of)

    def extra_repr(self) -> str:
        g = self.geometry
        text = f"{g.in_channels}, {g.out_channels}, {self._geometry_repr()}"
        if self.stride != 1:
            text += f", stride={self.stride}"
        if self.bias is None:
            text += ", bias=False"
        if self._window_of is not None:
            text += ", window_of=custom"
        return text


class SCCLinear(_SlidingWindows):
    """A drop-in replacement for ``nn.Linear`` whose outputs read sliding windows of the input
    features: SCC over the last dimension.

    ``y[..., o] = sum_k weight[o, k] * x[..., (start(window_of[o]) + k) % in_features] + bias[o]``

    The same geometry, weight layout ``[out_features, gw]`` and op as :class:`SCCConv2d`: the
    input ``[..., in_features]`` is viewed as a one-image channels_last batch
    ``[1, in_features, 1, M]`` (``M`` = the product of the leading dimensions; no copy when
    the input is contiguous), so ``torch.ops.scc.scc_conv2d`` computes it and counts its
    ``M * out_features * gw`` MACs.

    Args:
        in_features, out_features: as ``nn.Linear``.
        cg, co, window_of: as :class:`SCCConv2d`.
        bias: whether to learn a bias ``[out_features]`` (default ``True``, as ``nn.Linear``).

    Example:
        >>> import torch
        >>> layer = SCCLinear(96, 384, cg=4, co=0.5)
        >>> layer(torch.randn(2, 7, 7, 96)).shape
        torch.Size([2, 7, 7, 384])
    """

    __jit_unused_properties__ = ["in_features", "out_features", "cg", "co", "window_of"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        cg: int,
        co: float,
        bias: bool = True,
        window_of: Sequence[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, cg, co, bias, window_of, device, dtype)

    @property
    def in_features(self) -> int:
        return self.geometry.in_channels

    @property
    def out_features(self) -> int:
        return self.geometry.out_channels

    def forward(self, input: Tensor) -> Tensor:
        lead = input.shape[:-1]
        x = input.reshape(1, 1, -1, input.shape[-1]).permute(0, 3, 1, 2)  # [1, Cin, 1, M], channels_last
        if torch.jit.is_scripting():
            y = scc_conv2d_op(x, self.weight, self.bias, self._op_cg, self._op_co, self._op_window_of)
        else:
            y = scc_conv2d_call(x, self.weight, self.bias, self._op_cg, self._op_co, self._op_window_of)
        return y.permute(0, 2, 3, 1).reshape(list(lead) + [y.shape[1]])

    def extra_repr(self) -> str:
        g = self.geometry
        text = f"in_features={g.in_channels}, out_features={g.out_channels}, {self._geometry_repr()}"
        if self.bias is None:
            text += ", bias=False"
        if self._window_of is not None:
            text += ", window_of=custom"
        return text


class DWSCCConv2d(nn.Sequential):
    """A KxK convolution factorised into a depthwise KxK conv followed by an SCC.

    ``depthwise`` keeps the original stride, padding, dilation and padding mode;
    ``pointwise`` is an :class:`SCCConv2d` (stride 1) carrying the original bias.

    Example:
        >>> import torch
        >>> layer = DWSCCConv2d(32, 64, kernel_size=3, padding=1, cg=4, co=0.5)
        >>> layer(torch.randn(1, 32, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        cg: int,
        co: float,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        window_of: Sequence[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=in_channels, bias=False, padding_mode=padding_mode, device=device, dtype=dtype,
        )
        pointwise = SCCConv2d(in_channels, out_channels, cg, co, bias=bias, window_of=window_of, device=device, dtype=dtype)
        super().__init__(OrderedDict(depthwise=depthwise, pointwise=pointwise))
