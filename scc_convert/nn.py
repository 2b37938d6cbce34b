"""``SCCConv2d``, the SCC layer (functional form: ``scc_convert.functional.scc_conv2d``), and
``DWSCCConv2d``, a KxK conv factorised into depthwise KxK + SCC."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .functional import check_stride
from .geometry import SCCGeometry
from .ops import scc_conv2d_call, scc_conv2d_op

__all__ = ["SCCConv2d", "DWSCCConv2d"]


class SCCConv2d(nn.Module):
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
        super().__init__()
        self.geometry = SCCGeometry(in_channels, out_channels, cg, co)
        self.stride = check_stride(stride, "SCCConv2d: ")
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

    # -- geometry ------------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        return self.geometry.in_channels

    @property
    def out_channels(self) -> int:
        return self.geometry.out_channels

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
        """``nn.Conv2d``'s initialisation with fan-in ``gw``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.geometry.group_width)
            nn.init.uniform_(self.bias, -bound, bound)

    # -- module protocol -----------------------------------------------------------------

    def forward(self, input: Tensor) -> Tensor:
        if self.stride > 1:
            input = input[:, :, :: self.stride, :: self.stride]
        if torch.jit.is_scripting():
            return scc_conv2d_op(input, self.weight, self.bias, self._op_cg, self._op_co, self._op_window_of)
        return scc_conv2d_call(input, self.weight, self.bias, self._op_cg, self._op_co, self._op_window_of)

    def extra_repr(self) -> str:
        g = self.geometry
        text = f"{g.in_channels}, {g.out_channels}, cg={g.cg}, co={g.co}, gw={g.group_width}, cd={g.cyclic_distance}"
        if self.stride != 1:
            text += f", stride={self.stride}"
        if self.bias is None:
            text += ", bias=False"
        if self._window_of is not None:
            text += ", window_of=custom"
        return text

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
