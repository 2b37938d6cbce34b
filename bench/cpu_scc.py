"""SCC forward on CPU vs a grouped 1x1 conv of the same FLOPs vs the dense 1x1 conv.

Target (issue 2): SCC within 1.2x of ``nn.Conv2d(C, C, 1, groups=cg)`` and below the dense
1x1 conv on the four shapes below. Prints a table and writes ``results/cpu_scc.json``.

    python bench/cpu_scc.py [--repeats 50] [--threads N] [--channels-last] [--train]

The SCC forward runs one of two implementations, picked by window size (``SCC forward``
column); ``other ms`` times the other one, forced, for comparison.
``--train`` times a training step instead (forward + backward for input and weight gradients,
``results/cpu_scc_train.json``); the targets are for the forward only.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch
from tabulate import tabulate

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, time_interleaved, write_json  # noqa: E402

from scc_convert import SCCConv2d  # noqa: E402
from scc_convert.ops.torch_path import forced_forward, uses_masked_dense  # noqa: E402

SHAPES = [  # N, C, H(=W), cg, co
    (32, 128, 28, 4, 0.5),
    (32, 256, 14, 4, 0.5),
    (16, 96, 28, 2, 0.25),
    (32, 512, 7, 8, 0.5),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true", help="run all three in channels_last")
    parser.add_argument("--train", action="store_true", help="time forward + backward (input and weight grads)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    info = machine()
    info["layout"] = "channels_last" if args.channels_last else "NCHW"
    info["pass"] = "forward + backward" if args.train else "forward"
    print(f"# {info['cpu']} | {info['threads']} threads | torch {info['torch']} | {info['layout']} | fp32 | "
          f"{info['pass']} | median of {args.repeats}")
    rows, records = [], []
    torch.manual_seed(0)
    with torch.inference_mode(mode=not args.train):
        for n, c, hw, cg, co in SHAPES:
            x = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt).requires_grad_(args.train)
            scc = SCCConv2d(c, c, cg, co).to(memory_format=fmt)
            grouped = torch.nn.Conv2d(c, c, 1, groups=cg, bias=False).to(memory_format=fmt)
            dense = torch.nn.Conv2d(c, c, 1, bias=False).to(memory_format=fmt)
            grad = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt)

            def run(layer, forced=None):
                def step():
                    with forced_forward(forced) if forced else contextlib.nullcontext():
                        if args.train:
                            return torch.autograd.grad(layer(x), (x, layer.weight), grad)
                        return layer(x)

                return step

            other = "windows" if uses_masked_dense(scc.geometry, fmt) else "masked_dense"
            t = time_interleaved(
                {"scc": run(scc), f"scc_{other}": run(scc, other), "grouped": run(grouped), "dense": run(dense)},
                args.repeats,
            )
            s, o, g, d = (t[k]["median_ms"] for k in ("scc", f"scc_{other}", "grouped", "dense"))
            chosen = "masked dense" if other == "windows" else "windows"
            shape = f"N={n} C={c} {hw}x{hw} cg={cg} co={co}"
            rows.append([shape, chosen, f"{s:.2f}", f"{o:.2f}", f"{g:.2f}", f"{d:.2f}", f"{s / g:.2f}x",
                         f"{s / d:.2f}x", "yes" if s <= 1.2 * g and s < d else "no"])
            records.append({"shape": {"N": n, "C": c, "H": hw, "W": hw, "cg": cg, "co": co},
                            "scc_forward": chosen, "timings": t})
    verdict = "<= 1.2x grouped and < dense" if args.train else "target met"  # the targets are the forward's
    print(tabulate(rows, headers=["shape", "SCC forward", "SCC ms", "other ms", "grouped ms", "dense ms",
                                  "SCC/grouped", "SCC/dense", verdict]))
    print("SCC forward: the implementation the rule picks (windows: one product per window; masked dense: one "
          "GEMM on the weight scattered into [Cout, Cin]); other ms: the other one, forced.")
    name = "cpu_scc" + ("_channels_last" if args.channels_last else "") + ("_train" if args.train else "") + ".json"
    path = write_json(name, {"machine": info, "repeats": args.repeats, "results": records})
    print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
