"""The ``scc-convert`` command line: a thin shell over the public API."""

from __future__ import annotations

import argparse
import sys

import torch
from tabulate import tabulate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .nn import SCCConv2d

__all__ = ["main"]


def _dw_pw_block(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _cost(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def _demo(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    block = _dw_pw_block(args.channels, args.channels).eval()
    pw = block[3]
    scc = SCCConv2d(args.channels, args.channels, args.cg, args.co)
    with torch.no_grad():  # each output keeps its original weights on its window
        columns = torch.tensor(scc.geometry.input_channels_of())
        scc.weight.copy_(pw.weight[:, :, 0, 0].gather(1, columns))
    small = _dw_pw_block(args.channels, args.channels).eval()
    small.load_state_dict(block.state_dict())
    small[3] = scc
    x = torch.randn(1, args.channels, args.size, args.size)
    (m0, p0), (m1, p1) = _cost(block, x), _cost(small, x)
    print(f"DW+PW block, C={args.channels}, {args.size}x{args.size} input; pointwise conv -> {scc}")
    rows = [["MACs", f"{m0:,}", f"{m1:,}", f"{m0 / m1:.2f}x"], ["params", f"{p0:,}", f"{p1:,}", f"{p0 / p1:.2f}x"]]
    print(tabulate(rows, headers=["", "DW+PW", "DW+SCC", "reduction"]))
    print("MACs: multiply-accumulates of one forward (FLOPs = 2 x MACs); bias and BatchNorm not counted.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scc-convert", description="Sliding-Channel Convolution conversion tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="swap a DW+PW block's pointwise conv for SCC and print its cost")
    demo.add_argument("--channels", type=int, default=128)
    demo.add_argument("--size", type=int, default=28, help="input height and width")
    demo.add_argument("--cg", type=int, default=4)
    demo.add_argument("--co", type=float, default=0.5)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"scc-convert: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
