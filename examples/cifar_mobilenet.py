"""The CIFAR-10 MobileNet of the DSXplore poster (Table IV), and its profile before/after SCC.

Architecture (input 3x32x32):

* stem: 3x3 conv 3->32 (stride 1, no bias) + BN + ReLU;
* 13 blocks of [3x3 depthwise conv (with bias) + BN + ReLU + 1x1 conv (no bias) + BN + ReLU]
  with output channels 64, (128, s2), 128, (256, s2), 256, (512, s2), 512, 512, 512, 512,
  512, (1024, s2), 1024 — the stride sits on the depthwise conv;
* 2x2 average pooling, then a linear layer to ``num_classes``.

Module names read as ``stem.conv``, ``blocks.3.dw``, ``blocks.3.pw``, ``classifier``.

Run ``python examples/cifar_mobilenet.py --cg 4 --co 0.5`` to convert every DW+PW pointwise
conv to SCC and print the conversion report and the profile (MACs; FLOPs = 2 x MACs).
"""

from __future__ import annotations

import argparse

import torch

from scc_convert.models import BLOCKS, cifar_mobilenet

__all__ = ["cifar_mobilenet", "BLOCKS"]


def main() -> None:
    import scc_convert
    from scc_convert.profile import profile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cg", type=int, default=4, help="channel groups of every SCC (default 4)")
    parser.add_argument("--co", type=float, default=0.5, help="channel overlap ratio (default 0.5)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model (default 30)")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    args = parser.parse_args()

    model = cifar_mobilenet().eval()
    small, report = scc_convert.convert(
        model, cg=args.cg, co=args.co, patterns=("dw_pw",), example_inputs=torch.randn(1, 3, 32, 32)
    )
    print(report)
    print()
    result = profile(model, small, input_shape=(1, 3, 32, 32), device=args.device, repeats=args.repeats)
    print(result.to_json() if args.json else result)


if __name__ == "__main__":
    main()
