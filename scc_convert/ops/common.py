"""What every implementation of the SCC op shares: argument validation and the output
allocation (the fake kernels use the same helper, so fake and real strides agree)."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ..geometry import SCCGeometry

__all__ = ["geometry_for", "output_memory_format", "empty_output"]


@lru_cache(maxsize=512)
def _geometry(cin: int, cout: int, cg: int, co: float) -> SCCGeometry:
    return SCCGeometry(cin, cout, cg, co)


def geometry_for(input: Tensor, weight: Tensor, cg: int, co: float) -> SCCGeometry:
    """Validate the op's arguments against each other and return the geometry."""
    if input.dim() != 4:
        raise ValueError(f"SCC: input must be 4-D [N, C, H, W], got shape {tuple(input.shape)}")
    if weight.dim() != 2:
        raise ValueError(
            f"SCC: weight must be 2-D [out_channels, in_channels // cg], got shape {tuple(weight.shape)}"
        )
    geom = _geometry(int(input.shape[1]), int(weight.shape[0]), cg, co)
    if weight.shape[1] != geom.group_width:
        raise ValueError(
            f"SCC: weight has {weight.shape[1]} columns but in_channels={geom.in_channels} with "
            f"cg={cg} needs gw = in_channels // cg = {geom.group_width}"
        )
    return geom


def output_memory_format(input: Tensor) -> torch.memory_format:
    """The output keeps the input's layout: channels innermost in, channels_last out."""
    if input.shape[1] > 1 and input.stride(1) == 1 and not input.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_output(input: Tensor, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised ``[N, C, H, W]`` tensor in the layout :func:`output_memory_format` gives."""
    return torch.empty(
        shape,
        dtype=input.dtype if dtype is None else dtype,
        device=input.device,
        memory_format=output_memory_format(input),
    )
