"""PyTorch eager CPU latency of torchvision models before and after SCC conversion.

What a user sees after ``scc_convert.convert(model, cg=4, co=0.5)`` without exporting: both
models in eval under ``torch.inference_mode()``, fp32 NCHW, timed round-robin (original,
converted, original, ...). Besides each median it reports the median of the per-round
ratios original/converted, which cancels the drift of a shared machine. Weights are random
(no download); BatchNorm is left unfused in both. Prints a table and writes
``results/eager_models.json``.

    python bench/eager_models.py [--models mobilenet_v2,resnet50] [--batches 1,16]
                                 [--repeats 40] [--threads N] [--cg 4] [--co 0.5]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torchvision
from tabulate import tabulate

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, paired_ratio, time_interleaved, write_json  # noqa: E402

import scc_convert  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cg", type=int, default=4)
    parser.add_argument("--co", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(f"# {info['cpu']} | {info['threads']} threads | torch {info['torch']} | fp32 NCHW | "
          f"cg={args.cg} co={args.co} | {args.repeats} interleaved rounds")
    rows, records = [], []
    torch.manual_seed(0)
    for name in args.models.split(","):
        original = getattr(torchvision.models, name)(weights=None).eval()
        converted, report = scc_convert.convert(original, cg=args.cg, co=args.co)
        converted.eval()
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, 3, 224, 224)
            with torch.inference_mode():
                t = time_interleaved(
                    {"original": lambda: original(x), "converted": lambda: converted(x)},
                    args.repeats,
                    keep_samples=True,
                )
            ratio = paired_ratio(t["original"]["samples_ms"], t["converted"]["samples_ms"])
            o, c = t["original"]["median_ms"], t["converted"]["median_ms"]
            rows.append([name, batch, len(report.converted), f"{o:.1f}", f"{c:.1f}",
                         f"{ratio['median']:.2f}x [{ratio['q1']:.2f}, {ratio['q3']:.2f}]"])
            records.append({"model": name, "batch": batch, "scc_layers": len(report.converted),
                            "timings": t, "speedup_per_round": ratio})
    print(tabulate(rows, headers=["model", "batch", "SCC layers", "original ms", "converted ms",
                                  "speed-up (median [IQR] of per-round ratios)"]))
    path = write_json("eager_models.json", {"machine": info, "repeats": args.repeats, "cg": args.cg,
                                            "co": args.co, "results": records})
    print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
