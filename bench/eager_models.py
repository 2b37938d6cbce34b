"""PyTorch eager CPU latency of torchvision models before and after SCC conversion.

What a user sees after ``scc_convert.convert(model, cg=4, co=0.5)`` without exporting: both
models in eval under ``torch.inference_mode()``, fp32 NCHW, timed round-robin (original,
converted on the native CPU kernel, converted on the PyTorch path, original, ...). Besides
each median it reports the median of the per-round ratios original/converted, which cancels
the drift of a shared machine. Weights are random (no download); BatchNorm is left unfused in
both. Also the per-call time of one SCC layer on a 1x8x1x1 input (the op's overhead at batch
1) on each implementation. Prints a table and writes
``results/eager_models[_malloc_keep][_tN].json``.

Issue 12's targets: converted ResNet-50 at least 1.5x faster than the original at batch 16
and 1, MobileNetV2 at least 1.4x; the native op's per-call overhead under 10 us.

    python bench/eager_models.py [--models mobilenet_v2,resnet50] [--batches 1,16]
                                 [--repeats 40] [--threads N] [--cg 4] [--co 0.5]
                                 [--malloc system|keep]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torchvision
from tabulate import tabulate

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import MALLOC_MODES, machine, paired_ratio, set_malloc, time_interleaved, write_json  # noqa: E402

import scc_convert  # noqa: E402
from scc_convert.ops import native  # noqa: E402


def call_overhead_us(backend: str, calls: int = 20000) -> dict[str, float]:
    """Per-call time (us, median of 5 runs) on a 1x8x1x1 input, where the work is negligible:
    the ``SCCConv2d`` layer, the op's CPU entry point (``backends.cpu_forward``, what the layer
    calls in eager inference), and ``torch.relu`` on the same input as a yardstick of one
    PyTorch call on this machine at this moment."""
    from scc_convert.ops import backends

    layer = scc_convert.SCCConv2d(8, 8, 2, 0.5).eval()
    x = torch.randn(1, 8, 1, 1)
    w = layer.weight.detach()
    fns = {"layer": lambda: layer(x), "op": lambda: backends.cpu_forward(x, w, None, 2, 0.5, None),
           "torch.relu": lambda: torch.relu(x)}
    out = {}
    with torch.inference_mode(), native.use_backend(backend):
        for name, fn in fns.items():
            for _ in range(200):
                fn()
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                runs.append((time.perf_counter() - t0) / calls * 1e6)
            out[name] = statistics.median(runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cg", type=int, default=4)
    parser.add_argument("--co", type=float, default=0.5)
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="system",
                        help="keep: malloc keeps freed memory (no page faults per large tensor; see bench/_common.py)")
    args = parser.parse_args(argv)
    set_malloc(args.malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = ["native", "torch"] if native.status()["available"] else ["torch"]
    info = machine()
    info.update(malloc=args.malloc, native=native.status())
    print(f"# {info['cpu']} | {info['threads']} threads | torch {info['torch']} | fp32 NCHW | "
          f"cg={args.cg} co={args.co} | {args.repeats} interleaved rounds | malloc {args.malloc} | "
          f"native kernel: {native.status()}")
    overhead = {b: call_overhead_us(b) for b in backends}
    for b, us in overhead.items():
        print(f"per-call time on a 1x8x1x1 input, {b}: " + ", ".join(f"{k} {v:.1f} us" for k, v in us.items()))
    rows, records = [], []
    torch.manual_seed(0)
    for name in args.models.split(","):
        original = getattr(torchvision.models, name)(weights=None).eval()
        converted, report = scc_convert.convert(original, cg=args.cg, co=args.co)
        converted.eval()
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, 3, 224, 224)
            def converted_on(backend):
                def run():
                    with native.use_backend(backend):
                        return converted(x)
                return run

            fns = {"original": lambda: original(x)}
            fns.update({f"converted_{b}": converted_on(b) for b in backends})
            with torch.inference_mode():
                t = time_interleaved(fns, args.repeats, keep_samples=True)
            ratios = {b: paired_ratio(t["original"]["samples_ms"], t[f"converted_{b}"]["samples_ms"]) for b in backends}
            row = [name, batch, len(report.converted), f"{t['original']['median_ms']:.1f}"]
            row += [f"{t[f'converted_{b}']['median_ms']:.1f}" for b in backends]
            row += [f"{ratios[b]['median']:.2f}x [{ratios[b]['q1']:.2f}, {ratios[b]['q3']:.2f}]" for b in backends]
            rows.append(row)
            print(tabulate([row], tablefmt="plain"), flush=True)
            records.append({"model": name, "batch": batch, "scc_layers": len(report.converted),
                            "timings": t, "speedup_per_round": ratios})
    headers = ["model", "batch", "SCC layers", "original ms"] + [f"converted {b} ms" for b in backends]
    headers += [f"speed-up {b} (median [IQR] per-round)" for b in backends]
    print(tabulate(rows, headers=headers))
    name = ("eager_models" + ("" if args.malloc == "system" else f"_malloc_{args.malloc}")
            + (f"_t{args.threads}" if args.threads else "") + ".json")
    path = write_json(name, {"machine": info, "repeats": args.repeats, "cg": args.cg, "co": args.co,
                             "call_overhead_us": overhead, "results": records})
    print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
