"""The one home of SCC index math: windows, window stride, cyclic distance, validation.

Terms (SPEC section 2, the DSXplore poster's Algorithms 1 and 2):

* ``gw = in_channels // cg`` — group width, the number of input channels each output reads.
* ``s = gw - int(co * gw)`` — window stride: window ``i+1`` starts ``s`` channels after
  window ``i``, so adjacent windows share ``int(co * gw)`` channels.
* window ``i`` reads input channels ``[(i*s + k) % in_channels for k in range(gw)]``;
  windows wrap around the channel axis.
* ``cd = min(out_channels, in_channels // gcd(in_channels, s))`` — cyclic distance, the
  number of distinct windows.
* output channel ``o`` reads window ``window_of[o]``; the default is the paper's
  ``o % cd``. A custom ``window_of`` must be a permutation of the default (the same number
  of outputs on every window).

Everything here is pure Python on ints and tuples, except :func:`cyclic_columns`, the same
window formula as a tensor, which imports torch when called.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

__all__ = ["SCCGeometry", "ExecPlan", "SortedRows", "WindowTable", "valid_cgs", "check_cg_co", "cyclic_columns"]


def _where(layer: str | None) -> str:
    return f"SCC layer {layer!r}: " if layer else "SCC: "


def valid_cgs(in_channels: int) -> tuple[int, ...]:
    """The values of ``cg`` that divide ``in_channels`` (each gives a valid SCC)."""
    return tuple(d for d in range(1, in_channels + 1) if in_channels % d == 0)


def cyclic_columns(starts: Sequence[int], width: int, channels: int, device=None):
    """``[len(starts), width]`` int64 tensor: row ``i`` holds ``(starts[i] + k) % channels``.

    The tensor form of :meth:`SCCGeometry.window_channels`, for many windows at once.
    """
    import torch

    first = torch.as_tensor(starts, dtype=torch.long, device=device)
    return (first[:, None] + torch.arange(width, device=device)) % channels


def check_cg_co(cg: int, co: float, layer: str | None = None) -> None:
    """Validate ``cg`` (an int >= 1) and ``co`` (a float in ``[0, 1)``) on their own."""
    where = _where(layer)
    if isinstance(cg, bool) or not isinstance(cg, numbers.Integral):
        raise TypeError(f"{where}cg must be an int, got {cg!r}")
    if cg < 1:
        raise ValueError(f"{where}cg={cg} is invalid: cg must be an int >= 1")
    if isinstance(co, bool) or not isinstance(co, numbers.Real):
        raise TypeError(f"{where}co must be a float in [0, 1), got {co!r}")
    if not 0.0 <= float(co) < 1.0:
        raise ValueError(
            f"{where}co={co!r} is outside [0, 1): co is the fraction of a window "
            f"shared with the next window (0 = grouped conv, 0.5 = half overlap)"
        )


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: plans are cached, and hot
class ExecPlan:
    """How the PyTorch path lays an SCC out as batched matrix multiplies.

    Batch ``b`` reads the ``group_width`` input channels that start at ``starts[b]`` (cyclic)
    and computes ``slots`` outputs; output channel ``o`` is row ``slot_of[o]`` of batch
    ``batch_of[o]``. When ``step`` is set, ``starts[b] == b * step`` and no start wraps, so
    all batches are one overlapping strided view of the input extended cyclically to
    ``ext_channels`` channels (channel ``c`` holds input channel ``c % in_channels``).
    ``regular`` means ``o == slot_of[o] * batches + batch_of[o]`` for every ``o`` and no slot
    is empty, so results reach the output by a plain permutation.
    """

    group_width: int
    starts: tuple[int, ...]
    step: int | None
    slots: int
    batch_of: tuple[int, ...]
    slot_of: tuple[int, ...]

    @property
    def batches(self) -> int:
        return len(self.starts)

    @property
    def ext_channels(self) -> int | None:
        """Length of the cyclically extended input the strided view needs (``None``: no view)."""
        if self.step is None:
            return None
        return (self.batches - 1) * self.step + self.group_width

    @cached_property
    def regular(self) -> bool:
        if self.batches * self.slots != len(self.batch_of):
            return False
        b = self.batches
        return all(
            o == r * b + w for o, (w, r) in enumerate(zip(self.batch_of, self.slot_of))
        )

    @cached_property
    def position(self) -> tuple[int, ...]:
        """Row of output ``o`` in the flattened ``[batches * slots]`` result."""
        return tuple(w * self.slots + r for w, r in zip(self.batch_of, self.slot_of))


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: cached per geometry
class SortedRows:
    """The output rows of an SCC sorted by window start, then by output channel: the layout of
    the tiled GPU kernels (``scc_convert/ops/triton_kernels``).

    Row ``r`` computes output channel ``out_channel[r]`` from the ``gw`` input channels that
    start at ``window_start[r]`` (cyclic). Because starts are sorted, a tile of consecutive rows
    reads one band of input channels: from its first row's start to its last row's start plus
    ``gw`` (the band may wrap around the channel axis once). Conversely, the rows whose windows
    touch a tile of consecutive input channels are one cyclic run of rows.
    """

    in_channels: int
    group_width: int
    out_channel: tuple[int, ...]
    window_start: tuple[int, ...]

    @property
    def rows(self) -> int:
        return len(self.out_channel)

    @cached_property
    def start_alignment(self) -> int:
        """The largest power of two (at most 16) dividing every window start and ``Cin``."""
        g = self.in_channels
        for start in self.window_start:
            g = math.gcd(g, start)
        return math.gcd(g & -g, 16)

    def row_tiles(self, tile: int) -> tuple[tuple[int, int], ...]:
        """Per tile of ``tile`` consecutive rows: ``(first input channel, band width)``.

        The band is the channels ``(first + k) % Cin`` for ``k < width``; row ``r`` of the tile
        reads band positions ``window_start[r] - first + j`` for ``j < gw``.
        """
        out = []
        for r0 in range(0, self.rows, tile):
            r1 = min(r0 + tile, self.rows) - 1
            first = self.window_start[r0]
            out.append((first, self.window_start[r1] - first + self.group_width))
        return tuple(out)

    def channel_tiles(self, tile: int) -> tuple[tuple[int, int], ...]:
        """Per tile of ``tile`` consecutive input channels: ``(first row, row count)``, the
        cyclic run of rows ``(first + j) % rows`` for ``j < count`` whose windows read at least
        one channel of the tile (count 0: no window reads the tile)."""
        cin, gw, n = self.in_channels, self.group_width, self.rows
        out = []
        for c0 in range(0, cin, tile):
            span = min(c0 + tile, cin) - c0  # channels c0 .. c0 + span - 1
            # a window starting at st reads the tile iff (c0 - st) % cin < gw or st lands in it
            hit = [(c0 - st) % cin < gw or (st - c0) % cin < span for st in self.window_start]
            count = sum(hit)
            if count in (0, n):
                out.append((0, count))
                continue
            first = next(r for r in range(n) if hit[r] and not hit[r - 1])
            assert all(hit[(first + j) % n] for j in range(count)), "rows of a tile are one run"
            out.append((first, count))
        return tuple(out)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity, like ExecPlan
class WindowTable:
    """Every window with the input channels it reads and the output channels it computes: the
    layout the native CPU kernel runs (``csrc/``), which reads it and derives nothing itself.

    ``columns[w][k]`` is the input channel that weight column ``k`` of window ``w`` multiplies;
    ``outputs`` lists the output channels grouped by window (window 0's first, ascending within
    a window), and window ``w`` computes ``outputs[offsets[w]:offsets[w + 1]]``.
    """

    columns: tuple[tuple[int, ...], ...]
    outputs: tuple[int, ...]
    offsets: tuple[int, ...]


@dataclass(frozen=True)
class SCCGeometry:
    """Validated SCC hyper-parameters and everything derived from them.

    Args:
        in_channels: input channels ``Cin`` (> 0).
        out_channels: output channels ``Cout`` (> 0).
        cg: channel groups, an int >= 1 that divides ``in_channels``.
        co: channel overlap ratio, a float in ``[0, 1)``.
        layer: optional layer name, used only in error messages.

    Example:
        >>> g = SCCGeometry(8, 8, cg=2, co=0.5)
        >>> g.group_width, g.window_stride, g.cyclic_distance, g.window_starts
        (4, 2, 4, (0, 2, 4, 6))
        >>> g.window_channels(3)
        (6, 7, 0, 1)
    """

    in_channels: int
    out_channels: int
    cg: int
    co: float
    layer: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = _where(self.layer)
        for name in ("in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{where}{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(
                f"{where}in_channels and out_channels must be >= 1, got "
                f"in_channels={self.in_channels}, out_channels={self.out_channels}"
            )
        check_cg_co(self.cg, self.co, self.layer)
        object.__setattr__(self, "cg", int(self.cg))
        if self.in_channels % self.cg != 0:
            divisors = valid_cgs(self.in_channels)
            raise ValueError(
                f"{where}in_channels={self.in_channels} is not divisible by cg={self.cg}; "
                f"cg must divide in_channels (valid: {', '.join(map(str, divisors))})"
            )
        co = float(self.co)
        object.__setattr__(self, "co", co)
        if self.window_stride < 1:
            raise ValueError(
                f"{where}window stride s = gw - int(co*gw) = {self.window_stride} < 1 for "
                f"gw={self.group_width}, co={co}; lower co"
            )

    # -- the spec's quantities -------------------------------------------------------------

    @property
    def group_width(self) -> int:
        """``gw = in_channels // cg``: input channels read by each output channel."""
        return self.in_channels // self.cg

    @property
    def overlap_channels(self) -> int:
        """``int(co * gw)``: channels shared by adjacent windows."""
        return int(self.co * self.group_width)

    @property
    def window_stride(self) -> int:
        """``s = gw - int(co * gw)``: channel distance between consecutive window starts."""
        return self.group_width - self.overlap_channels

    @property
    def cyclic_distance(self) -> int:
        """``cd = min(out_channels, in_channels // gcd(in_channels, s))``: distinct windows."""
        period = self.in_channels // math.gcd(self.in_channels, self.window_stride)
        return min(self.out_channels, period)

    @cached_property
    def window_starts(self) -> tuple[int, ...]:
        """First input channel of each window ``i`` in ``range(cd)``: ``(i*s) % in_channels``."""
        s, cin = self.window_stride, self.in_channels
        return tuple((i * s) % cin for i in range(self.cyclic_distance))

    def window_channels(self, window: int) -> tuple[int, ...]:
        """Input channels read by ``window``, in weight-column order (may wrap)."""
        if not 0 <= window < self.cyclic_distance:
            raise IndexError(f"window {window} outside [0, {self.cyclic_distance})")
        start, cin = self.window_starts[window], self.in_channels
        return tuple((start + k) % cin for k in range(self.group_width))

    @cached_property
    def default_window_of(self) -> tuple[int, ...]:
        """The paper's output-to-window assignment: output ``o`` reads window ``o % cd``."""
        cd = self.cyclic_distance
        return tuple(o % cd for o in range(self.out_channels))

    def input_channels_of(self, window_of: Sequence[int] | None = None) -> tuple[tuple[int, ...], ...]:
        """For every output channel, the input channels it reads (weight-column order)."""
        wo = self.check_window_of(window_of)
        per_window = [self.window_channels(i) for i in range(self.cyclic_distance)]
        return tuple(per_window[w] for w in wo)

    def check_window_of(self, window_of: Sequence[int] | None) -> tuple[int, ...]:
        """Validate an output-to-window assignment; ``None`` means the default.

        A valid assignment has one window index in ``[0, cd)`` per output channel and puts
        the same number of outputs on each window as the default ``o % cd`` does.
        """
        if window_of is None:
            return self.default_window_of
        where = _where(self.layer)
        try:
            wo = tuple(int(w) for w in window_of)
        except (TypeError, ValueError):
            raise TypeError(f"{where}window_of must be a sequence of ints, got {window_of!r}") from None
        if len(wo) != self.out_channels:
            raise ValueError(
                f"{where}window_of has {len(wo)} entries; it needs one per output channel "
                f"(out_channels={self.out_channels})"
            )
        cd = self.cyclic_distance
        counts = [0] * cd
        for w in wo:
            if not 0 <= w < cd:
                raise ValueError(f"{where}window_of contains {w}; windows are 0..{cd - 1} (cd={cd})")
            counts[w] += 1
        want = [0] * cd
        for w in self.default_window_of:
            want[w] += 1
        if counts != want:
            raise ValueError(
                f"{where}window_of must be a permutation of the default o % cd: every window "
                f"needs {want} outputs (by window), got {counts}"
            )
        return wo

    def window_table(self, window_of: Sequence[int] | None = None) -> WindowTable:
        """The windows, their input channels and their output channels (see :class:`WindowTable`).

        Example:
            >>> t = SCCGeometry(4, 6, cg=2, co=0.5).window_table()
            >>> t.columns, t.outputs, t.offsets
            (((0, 1), (1, 2), (2, 3), (3, 0)), (0, 4, 1, 5, 2, 3), (0, 2, 4, 5, 6))
        """
        wo = self.check_window_of(window_of)
        cd = self.cyclic_distance
        by_window: list[list[int]] = [[] for _ in range(cd)]
        for o, w in enumerate(wo):
            by_window[w].append(o)
        offsets = [0]
        for outs in by_window:
            offsets.append(offsets[-1] + len(outs))
        return WindowTable(
            columns=tuple(self.window_channels(w) for w in range(cd)),
            outputs=tuple(o for outs in by_window for o in outs),
            offsets=tuple(offsets),
        )

    # -- cost ------------------------------------------------------------------------------

    def params(self, bias: bool = False) -> int:
        """Parameter count: ``Cout * gw`` (+ ``Cout`` with bias)."""
        return self.out_channels * self.group_width + (self.out_channels if bias else 0)

    def macs(self, n: int, h: int, w: int) -> int:
        """Multiply-accumulates of one forward on an ``n x Cin x h x w`` input (bias excluded).

        FLOPs are ``2 * macs``.
        """
        return n * h * w * self.out_channels * self.group_width

    # -- execution layout ------------------------------------------------------------------

    def plan(self, window_of: Sequence[int] | None = None, *, order: str = "auto") -> ExecPlan:
        """The batched-matmul layout used by the PyTorch path (see :class:`ExecPlan`).

        ``order="window"``: one batch per window, in window order (``starts`` = window starts).
        ``order="chunk"``: one batch per multiple of ``g = gcd(in_channels, s)`` (every window
        starts on one), so the starts are uniform and never wrap; the extension stays below
        ``gw``. ``order="auto"`` (uniform starts): window order while the window starts do
        not wrap (``(cd-1)*s < in_channels``), else chunk order.
        """
        wo = self.check_window_of(window_of)
        cin, s, cd = self.in_channels, self.window_stride, self.cyclic_distance
        starts_wrap = (cd - 1) * s >= cin
        if order == "auto":
            order = "chunk" if starts_wrap else "window"
        if order == "window":
            starts, step, batch_of = self.window_starts, (None if starts_wrap else s), wo
        elif order == "chunk":
            step = math.gcd(cin, s)
            starts = tuple(range(0, cin, step))
            batch_of = tuple(self.window_starts[w] // step for w in wo)
        else:
            raise ValueError(f"order must be 'auto', 'window' or 'chunk', got {order!r}")
        filled = [0] * len(starts)
        slot_of = []
        for b in batch_of:
            slot_of.append(filled[b])
            filled[b] += 1
        return ExecPlan(
            group_width=self.group_width,
            starts=tuple(starts),
            step=step,
            slots=max(filled),
            batch_of=tuple(batch_of),
            slot_of=tuple(slot_of),
        )

    def sorted_rows(self, window_of: Sequence[int] | None = None) -> SortedRows:
        """Output rows sorted by window start, then output channel (see :class:`SortedRows`).

        Example:
            >>> t = SCCGeometry(8, 8, cg=2, co=0.5).sorted_rows()
            >>> t.out_channel, t.window_start
            ((0, 4, 1, 5, 2, 6, 3, 7), (0, 0, 2, 2, 4, 4, 6, 6))
            >>> t.row_tiles(4), t.channel_tiles(4)
            (((0, 6), (4, 6)), ((6, 6), (2, 6)))
        """
        wo = self.check_window_of(window_of)
        starts = self.window_starts
        order = sorted(range(self.out_channels), key=lambda o: (starts[wo[o]], o))
        return SortedRows(
            in_channels=self.in_channels,
            group_width=self.group_width,
            out_channel=tuple(order),
            window_start=tuple(starts[wo[o]] for o in order),
        )
