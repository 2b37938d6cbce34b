"""An SCC reference independent of the package: the poster's Algorithm 1 taken literally, and
the dense masked-weight 1x1 convolution in fp64 (SPEC section 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def algorithm1(cin: int, cout: int, cg: int, co: float) -> list[tuple[int, int]]:
    """Windows as (start, end) pairs, built the way the poster's Algorithm 1 builds them.

    One deviation: the poster starts with ``end = gw`` unreduced, so with ``cg = 1`` the
    first window ``(0, Cin)`` never equals its repeat ``(0, 0)`` and the loop counts one
    window too many. SPEC section 2 defines ``cd = Cin // gcd(Cin, s)`` (the first repeated
    window), so the first end is reduced modulo ``Cin`` here as every later one is.
    """
    channel_map: list[tuple[int, int]] = []
    gw = cin // cg
    start_v, end_v = 0, gw
    start, end = start_v % cin, end_v % cin
    for _ in range(cout):
        item = (start, end)
        if item in channel_map:
            break
        channel_map.append(item)
        start_v = end_v - int(co * gw)
        end_v = start_v + gw
        start = start_v % cin
        end = end_v % cin
    return channel_map


def dense_weight(weight: torch.Tensor, cin: int, cg: int, co: float, window_of=None) -> torch.Tensor:
    """The ``[Cout, Cin]`` fp64 weight whose row ``o`` holds ``weight[o]`` on its window."""
    cout, gw = weight.shape
    windows = algorithm1(cin, cout, cg, co)
    cd = len(windows)
    rows = []
    for o in range(cout):
        start, _ = windows[o % cd if window_of is None else window_of[o]]
        cols = torch.tensor([(start + k) % cin for k in range(gw)])
        rows.append(torch.zeros(cin, dtype=torch.float64).index_add(0, cols, weight[o].double()))
    return torch.stack(rows)


def scc_reference(x, weight, bias=None, *, cg, co, stride=1, window_of=None) -> torch.Tensor:
    """fp64 SCC output via a dense 1x1 conv with the masked weight."""
    cin = x.shape[1]
    wd = dense_weight(weight, cin, cg, co, window_of)
    b = None if bias is None else bias.double()
    return F.conv2d(x.double(), wd[:, :, None, None], b, stride=stride)
