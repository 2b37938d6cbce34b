"""Tile configurations of the Triton kernels, and the rule that picks one per call.

The lists are short on purpose: ``python -m scc_convert.ops.triton_check`` compiles every
entry for every dtype and layout for sm_80 and sm_90, so whatever the rule picks has been
checked for tensor-core use, shared memory and spills. 64-row tiles are what ``wgmma`` needs
on sm_90; 32- and 16-row tiles (``mma.sync``) serve layers whose windows have few outputs,
where a 64-row tile would span several windows and read a band much wider than one window.

The rule is a heuristic, not an autotuner: no timing happens at call time, so a call's
configuration depends only on its shapes (and therefore so does its result, bit for bit).
"""

from __future__ import annotations

from typing import NamedTuple

from ...geometry import SortedRows

__all__ = ["Config", "FORWARD", "GRAD_INPUT", "GRAD_WEIGHT", "SUM_BLOCK", "SUM_WARPS", "usable", "for_dtype",
           "pick_forward", "pick_grad_input", "pick_grad_weight"]


class Config(NamedTuple):
    """``rows`` x ``cols`` output tile, ``k`` reduction step, and launch options."""

    rows: int
    cols: int
    k: int
    num_warps: int
    num_stages: int


# forward: rows = sorted output rows, cols = pixels, k = band channels
FORWARD = (
    Config(64, 128, 32, 8, 3),
    Config(64, 64, 32, 4, 3),
    Config(32, 64, 32, 4, 3),
    Config(16, 64, 32, 4, 3),
)
# grad-input: rows = input channels, cols = pixels, k = rows of the run
GRAD_INPUT = (
    Config(64, 64, 32, 4, 3),
    Config(32, 64, 32, 4, 3),
    Config(16, 64, 32, 4, 3),
)
# grad-weight: rows = sorted output rows, cols = band columns, k = pixels
GRAD_WEIGHT = (
    Config(64, 64, 32, 8, 3),
    Config(32, 32, 64, 4, 3),
    Config(16, 32, 64, 4, 3),
)
SUM_BLOCK, SUM_WARPS = 1024, 8  # elements and warps per program of the split sum


# fp32 without TF32 and fp64 multiply on FMA units: the operands of the product live in
# registers. The compile check found spills with the tensor-core settings, so for these
# dtypes tiles hold at most 2048 outputs and the reduction step is 16.
def usable(config: Config, fma: bool) -> bool:
    """Whether the rule may pick ``config`` for an FMA dtype (``fma``) or a tensor-core one."""
    return not (fma and config.rows * config.cols > 2048)


def for_dtype(config: Config, fma: bool) -> Config:
    """The configuration as launched for an FMA dtype (``fma``) or a tensor-core one."""
    return config._replace(k=16) if fma else config


# A tile may read up to this many band channels per window width before a narrower tile is
# preferred (1.0: one window per tile). The kernels are bound by memory traffic on the layer
# shapes of real networks, so a 64-row tile that reads 1.5 windows' width (two windows of 32
# outputs at half overlap, the poster's shapes) keeps wgmma.
_MAX_BAND_OVERHEAD = 1.5


def _band_overhead(rows: SortedRows, tile: int) -> float:
    bands = rows.row_tiles(tile)
    return sum(width for _, width in bands) / (len(bands) * rows.group_width)


def _rows_tile(rows: SortedRows, sizes: tuple[int, ...]) -> int:
    """The widest row tile whose mean band stays within the overhead bound (else the narrowest)."""
    for size in sizes:
        if _band_overhead(rows, size) <= _MAX_BAND_OVERHEAD:
            return size
    return sizes[-1]


def pick_forward(rows: SortedRows, pixels: int, fma: bool) -> Config:
    narrow = [c for c in FORWARD if c.cols == 64 and usable(c, fma)]
    tile = _rows_tile(rows, tuple(c.rows for c in narrow))
    if tile == 64 and pixels >= 1024 and usable(FORWARD[0], fma):
        return FORWARD[0]
    return next(c for c in narrow if c.rows == tile)


def pick_grad_input(rows: SortedRows, fma: bool) -> Config:
    """A channel tile of ``BC`` channels reads rows from a span of ``gw + BC - 1`` starts:
    the widest tile within twice the window width."""
    usable_configs = [c for c in GRAD_INPUT if usable(c, fma)]
    for config in usable_configs:
        if config.rows <= rows.group_width + 1:
            return config
    return usable_configs[-1]


def pick_grad_weight(rows: SortedRows, fma: bool) -> Config:
    usable_configs = [c for c in GRAD_WEIGHT if usable(c, fma)]
    tile = _rows_tile(rows, tuple(c.rows for c in usable_configs))
    return next(c for c in usable_configs if c.rows == tile)
