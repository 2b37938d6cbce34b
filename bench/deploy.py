"""CPU inference latency where models are deployed: eager, torch.compile, AOTInductor, onnxruntime.

Issue 14's targets, per runtime, original/converted time of back-to-back runs (paired ratios):
the converted model faster than the original in every column; under torch.compile and in
AOTInductor packages MobileNetV2 at least 1.3x at batch 16 and 1.15x at batch 1, ResNet-50 at
least 1.4x at batch 16; eager no worse than before this issue (the issue's table: MobileNetV2
1.11x / 1.24x, ResNet-50 1.26x / 1.33x at batch 1 / 16).

Each model (torchvision, random init: no download; BatchNorm statistics re-estimated on random
images so activations stay O(1)) is converted with ``scc_convert.convert(cg=4, co=0.5)``, and
the converted one optimised with ``scc_convert.optimize_for_inference`` (BatchNorm folded,
activations and residual adds in the SCC kernels' epilogue). What is timed, fp32, NCHW input,
``torch.inference_mode()``:

* ``eager``: the original; the converted model as ``convert`` returns it (``SCC``); and
  optimised (``SCC opt``);
* ``compile``: ``torch.compile`` (inductor, ``freezing=True``: weights as constants, so the
  original's convolutions get BatchNorm folded and prepacked weights) of the original and of
  the optimised converted model, one graph per batch size;
* ``aoti``: ``scc_convert.export_aoti`` packages (AOTInductor, freezing, dynamic batch: what
  ``scc-convert export --format aoti`` writes) of both, loaded with ``load_aoti``;
* ``ort``: ``scc_convert.export_onnx`` files (dynamic batch; the converted one optimised, its
  SCC layers in the ``auto`` decomposition) in one onnxruntime ``CPUExecutionProvider``
  session each.

Every variant of one model and batch size is timed round-robin in the same rounds, so the
drift of a shared machine hits all alike; each speed-up is the median (and quartiles) of the
per-round ratios. Every variant's output is compared with its eager model's first (the original's or
the converted one's; the maximum error relative to the output's largest value is reported). Prints a table and
the targets, and writes ``results/deploy[_malloc_keep]_t<threads>.json`` with the machine,
versions, thread counts, the load average before and after each model, and every timing.

    python bench/deploy.py [--models mobilenet_v2,resnet50,efficientnet_b0] [--batches 1,16]
                           [--runtimes eager,compile,aoti,ort] [--threads 1] [--repeats 15]
                           [--size 224] [--cg 4] [--co 0.5] [--malloc system|keep]

``--threads`` sets torch's intra-op threads (before compiling: inductor's generated code uses
that many) and onnxruntime's; the default 1 keeps a shared machine's numbers stable.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import MALLOC_MODES, machine, paired_ratio, set_malloc, time_interleaved, write_json  # noqa: E402

import scc_convert  # noqa: E402
from scc_convert.convert import recalibrate_batchnorm  # noqa: E402
from scc_convert.ops import native  # noqa: E402

RUNTIMES = ("eager", "compile", "aoti", "ort")
# Issue 14's minimum speed-ups (original / converted, median of the paired ratios).
TARGETS = {
    ("compile", "mobilenet_v2", 16): 1.3, ("compile", "mobilenet_v2", 1): 1.15, ("compile", "resnet50", 16): 1.4,
    ("aoti", "mobilenet_v2", 16): 1.3, ("aoti", "mobilenet_v2", 1): 1.15, ("aoti", "resnet50", 16): 1.4,
}
# Eager speed-ups before issue 14 (the table): "eager no worse than today".
EAGER_BEFORE = {("mobilenet_v2", 1): 1.11, ("mobilenet_v2", 16): 1.24, ("resnet50", 1): 1.26, ("resnet50", 16): 1.33}
# The pairs each runtime's speed-up compares: (original variant, converted variant).
PAIRS = {"eager": ("eager", "eager SCC"), "eager opt": ("eager", "eager SCC opt"),
         "compile": ("compile", "compile SCC"), "aoti": ("aoti", "aoti SCC"), "ort": ("ort", "ort SCC")}


def _models(arch: str, size: int, cg: int, co: float) -> tuple[nn.Module, nn.Module, nn.Module, str]:
    import torchvision

    torch.manual_seed(0)
    images = torch.randn(4, 3, size, size)
    original = getattr(torchvision.models, arch)(weights=None)
    recalibrate_batchnorm(original, images)
    converted, _ = scc_convert.convert(original.eval(), cg=cg, co=co)
    recalibrate_batchnorm(converted, images)
    summary = scc_convert.FusionSummary()
    optimized = scc_convert.optimize_for_inference(converted.eval(), summary=summary)
    return original.eval(), converted.eval(), optimized, str(summary)


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _runners(runtimes: list[str], original: nn.Module, converted: nn.Module, optimized: nn.Module,
             example: torch.Tensor, tmp: Path, threads: int) -> dict[str, object]:
    """Each variant as a callable of the input, built (compiled, exported) once per model."""
    tmp.mkdir()
    run: dict[str, object] = {}
    if "eager" in runtimes:
        run.update({"eager": original, "eager SCC": converted, "eager SCC opt": optimized})
    if "compile" in runtimes:  # compiled on first call per batch size, under main()'s freezing=True
        run["compile"] = torch.compile(original, dynamic=False)
        run["compile SCC"] = torch.compile(optimized, dynamic=False)
    if "aoti" in runtimes:
        run["aoti"] = scc_convert.load_aoti(scc_convert.export_aoti(original, example, tmp / "original.pt2"))
        run["aoti SCC"] = scc_convert.load_aoti(scc_convert.export_aoti(converted, example, tmp / "scc.pt2"))
    if "ort" in runtimes:
        run["ort"] = _ort_session(scc_convert.export_onnx(original, example, tmp / "original.onnx"), threads)
        run["ort SCC"] = _ort_session(scc_convert.export_onnx(converted, example, tmp / "scc.onnx"), threads)
    return run


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _verdict(arch: str, batch: int, column: str, ratio: float) -> str:
    need = TARGETS.get((column, arch, batch), 1.0)
    if column == "eager" and (arch, batch) in EAGER_BEFORE:
        need = max(need, EAGER_BEFORE[(arch, batch)])
    if column == "eager opt":
        return "-"
    return f"{'met' if ratio >= need else 'NOT met'} (>= {need:g}x)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50,efficientnet_b0", help="torchvision model names")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--cg", type=int, default=4)
    parser.add_argument("--co", type=float, default=0.5)
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="system",
                        help="keep: malloc keeps freed memory (no page faults per large tensor; see bench/_common.py)")
    args = parser.parse_args(argv)
    runtimes = args.runtimes.split(",")
    if unknown := set(runtimes) - set(RUNTIMES):
        parser.error(f"unknown runtimes {sorted(unknown)}; choose from {','.join(RUNTIMES)}")
    if ("compile" in runtimes or "aoti" in runtimes) and native.status()["source"] is None:
        parser.error(f"the native CPU kernel is unavailable ({native.status()['reason']}): `scc-convert build-ext`")
    set_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    info = machine()
    info.update(malloc=args.malloc, scc_cpu=native.status()["source"], load_average_start=os.getloadavg())
    if "ort" in runtimes:
        import onnxruntime

        info.update(onnxruntime=onnxruntime.__version__, onnxruntime_intra_op_threads=args.threads)
    print(
        f"# {info['cpu']}, {info['cores']} cores | torch {info['torch']} | threads {args.threads} (torch, inductor, "
        f"onnxruntime) | SCC CPU kernel: native ({info['scc_cpu']}) | fp32 NCHW {args.size}x{args.size} | "
        f"cg={args.cg} co={args.co} | malloc {args.malloc} | {args.repeats} interleaved rounds | "
        f"load average {info['load_average_start'][0]:.2f}"
    )
    rows, records = [], []
    # freezing must hold when inductor compiles, i.e. at each compiled model's first call with a
    # batch size (torch.compile itself compiles nothing; a patch around it alone freezes nothing)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(), torch._inductor.config.patch(freezing=True):
        for arch in args.models.split(","):
            load_before = os.getloadavg()
            original, converted, optimized, fused = _models(arch, args.size, args.cg, args.co)
            print(f"{arch}: {fused}", flush=True)
            example = torch.randn(2, 3, args.size, args.size)
            run = _runners(runtimes, original, converted, optimized, example, Path(tmp) / arch, args.threads)
            for batch in batches:
                x = torch.randn(batch, 3, args.size, args.size)
                want = {False: original(x), True: converted(x)}
                errors = {name: _max_error(fn(x), want["SCC" in name]) for name, fn in run.items()}
                timings = time_interleaved({name: (lambda fn=fn, x=x: fn(x)) for name, fn in run.items()}, args.repeats,
                                           keep_samples=True)
                speedups = {
                    column: paired_ratio(timings[a]["samples_ms"], timings[b]["samples_ms"])
                    for column, (a, b) in PAIRS.items() if a in timings and b in timings
                }
                for column, ratio in speedups.items():
                    a, b = PAIRS[column]
                    rows.append([arch, batch, column, f"{timings[a]['median_ms']:.1f}", f"{timings[b]['median_ms']:.1f}",
                                 f"{ratio['median']:.2f}x [{ratio['q1']:.2f}, {ratio['q3']:.2f}]",
                                 _verdict(arch, batch, column, ratio["median"]), f"{errors[b]:.1e}"])
                records.append({"model": arch, "batch": batch, "timings": timings, "speedups": speedups,
                                "max_relative_error": errors})
                print(f"{arch} batch {batch}: " + ", ".join(f"{c} {r['median']:.2f}x" for c, r in speedups.items()),
                      flush=True)
            records.append({"model": arch, "fusion": fused, "load_average_before": load_before,
                            "load_average_after": os.getloadavg()})
            del run
            torch._dynamo.reset()
    headers = ["model", "batch", "runtime", "original ms", "SCC ms", "speed-up: per-round median [IQR]", "target",
               "SCC max err"]
    print(tabulate(rows, headers=headers))
    print("speed-up: original/converted time of back-to-back runs (median of the rounds' ratios); 'eager opt' is the "
          "converted model after optimize_for_inference, eagerly. SCC max err: max |variant - converted eager| / "
          "max |converted eager| on the timed input.")
    info["load_average_end"] = os.getloadavg()
    payload = {"machine": info, "repeats": args.repeats, "size": args.size, "cg": args.cg, "co": args.co,
               "targets": {f"{r}/{m}/{b}": v for (r, m, b), v in TARGETS.items()},
               "eager_before": {f"{m}/{b}": v for (m, b), v in EAGER_BEFORE.items()}, "results": records}
    suffix = "" if args.malloc == "system" else f"_malloc_{args.malloc}"
    path = write_json(f"deploy{suffix}_t{args.threads}.json", payload)
    print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
