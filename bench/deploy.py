"""onnxruntime CPU latency of torchvision models before and after SCC conversion.

Target (issue 7): the converted model at cg=4 runs faster than the original in onnxruntime.
Both models are exported with ``scc_convert.export.export_onnx`` (dynamic batch, checked
against PyTorch) and timed in one onnxruntime ``CPUExecutionProvider`` session each, fp32,
NCHW, interleaved round-robin so machine drift hits all of them alike. The converted model is
timed in each requested ONNX form of its SCC layers (``auto`` is the export default).

Weights are random (no download); BatchNorm statistics are re-estimated on random images so
activations stay O(1) (values only matter to speed through denormals, which this avoids).
Prints a table and writes ``results/deploy.json``.

    python bench/deploy.py [--models mobilenet_v2,resnet50] [--batches 1,16] [--threads 1]
                           [--repeats 20] [--forms auto,grouped,dense]

The speed-up column is the median (and quartiles) of the per-round ratios original/converted:
each compares two runs made back to back, so slow drift of a shared machine cancels.

``--threads`` is onnxruntime's intra-op thread count (0: its default, one per core); the
default 1 keeps numbers stable on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, paired_ratio, time_interleaved, write_json  # noqa: E402

import scc_convert  # noqa: E402
from scc_convert import SCCConv2d  # noqa: E402
from scc_convert.convert import recalibrate_batchnorm  # noqa: E402
from scc_convert.export import export_onnx  # noqa: E402


def _recalibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    recalibrate_batchnorm(model, images)
    return model.eval()


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def _session(ort, path: Path, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _verdict(ratio: dict[str, float]) -> str:
    """``yes`` when the converted model won at least three rounds in four (lower quartile > 1)."""
    if ratio["q1"] > 1.0:
        return "yes"
    return "within noise" if ratio["q3"] > 1.0 else "no"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet50", help="torchvision model names")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cg", type=int, default=4)
    parser.add_argument("--co", type=float, default=0.5)
    parser.add_argument("--forms", default="auto,grouped,dense", help="ONNX forms of the SCC layers to time")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torchvision

    batches = [int(b) for b in args.batches.split(",")]
    forms = args.forms.split(",")
    info = machine()
    info.update(onnxruntime=ort.__version__, intra_op_threads=args.threads or "onnxruntime default")
    print(
        f"# {info['cpu']} | onnxruntime {ort.__version__} CPUExecutionProvider | intra-op threads: "
        f"{info['intra_op_threads']} | torch {info['torch']} | fp32 NCHW {args.size}x{args.size} | "
        f"cg={args.cg} co={args.co} | median of {args.repeats} interleaved runs"
    )
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            torch.manual_seed(0)
            images = torch.randn(4, 3, args.size, args.size)
            original = _recalibrate_batchnorm(getattr(torchvision.models, arch)(weights=None), images)
            converted, _ = scc_convert.convert(original, cg=args.cg, co=args.co)
            converted = _recalibrate_batchnorm(converted, images)
            n_scc = sum(isinstance(m, SCCConv2d) for m in converted.modules())
            one = images[:1]
            macs = {"original": _macs(original, one), "scc": _macs(converted, one)}
            example = images[:2]
            paths = {"original": export_onnx(original, example, Path(tmp) / f"{arch}.onnx")}
            for form in forms:
                paths[f"scc-{form}"] = export_onnx(converted, example, Path(tmp) / f"{arch}_scc_{form}.onnx", decomposition=form)
            for batch in batches:
                x = torch.randn(batch, 3, args.size, args.size).numpy()
                sessions = {name: _session(ort, p, args.threads) for name, p in paths.items()}
                feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
                timings = time_interleaved(
                    {name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()},
                    args.repeats,
                    keep_samples=True,
                )
                base = timings["original"]["median_ms"]
                ratio = paired_ratio(timings["original"]["samples_ms"], timings[f"scc-{forms[0]}"]["samples_ms"])
                rows.append(
                    [arch, batch, f"{macs['original'] / 1e6:.0f}M / {macs['scc'] / 1e6:.0f}M", f"{base:.1f}"]
                    + [f"{timings[f'scc-{f}']['median_ms']:.1f}" for f in forms]
                    + [f"{ratio['median']:.3f}x [{ratio['q1']:.3f}, {ratio['q3']:.3f}]", _verdict(ratio)]
                )
                records.append(
                    {"model": arch, "batch": batch, "scc_layers": n_scc, "macs_per_image": macs, "timings": timings,
                     f"speedup_per_round_{forms[0]}": ratio}
                )
    headers = ["model", "batch", "MACs orig / SCC", "original ms"] + [f"SCC {f} ms" for f in forms]
    headers += [f"speed-up ({forms[0]}): per-round median [IQR]", "faster"]
    print(tabulate(rows, headers=headers))
    print("MACs: multiply-accumulates per image (FLOPs = 2 x MACs), from torch.utils.flop_counter.")
    print("speed-up: original/converted time of back-to-back runs; faster = yes when its lower quartile > 1.")
    payload = {"machine": info, "repeats": args.repeats, "size": args.size, "cg": args.cg, "co": args.co, "results": records}
    path = write_json("deploy.json", payload)
    print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
