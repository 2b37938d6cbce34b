"""SCC layer speed on CPU: the native kernel and the PyTorch path against the dense 1x1 conv and
a grouped 1x1 conv of the same FLOPs (``groups=cg``).

Two sets of layers:

* ``--shapes bench`` (default): the four shapes of issue 2 (target there: SCC within 1.2x of
  the grouped conv and below the dense conv);
* ``--shapes resnet50,mobilenet_v2``: every 1x1 conv of those torchvision models (the layers
  ``convert`` turns into SCC), at their 224x224 sizes and ``--batch`` (16). Strided 1x1 convs
  become SCC on the subsampled input, as ``SCCConv2d(stride=2)`` runs them. Totals weight
  each shape by how often the model has it: the model's time in its 1x1 layers.

Issue 12's targets (fp32, batch 16, cg=4, co=0.5, NCHW and channels_last): summed dense/SCC
at least 3.0x; no layer slower than its grouped conv; the expansion layers 64->256 at 56x56,
128->512 at 28x28, 64->384 and 96->576 at 14x14 at least 2.5x; with ``--train`` (forward and
both gradients) SCC within 1.1x of the grouped conv.

All four run round-robin; ratios are medians of per-round ratios (paired: the shared
machine's drift cancels). Prints a table and writes
``results/cpu_scc[_models][_channels_last][_train][_malloc_keep][_tN].json``.

    python bench/cpu_scc.py [--shapes bench|resnet50,mobilenet_v2] [--channels-last] [--train]
                            [--batch 16] [--repeats 30] [--threads N] [--cg 4] [--co 0.5]
                            [--malloc system|keep]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys

import torch
from tabulate import tabulate

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import MALLOC_MODES, machine, paired_ratio, set_malloc, time_interleaved, write_json  # noqa: E402

from scc_convert import SCCConv2d  # noqa: E402
from scc_convert.ops import native  # noqa: E402

BENCH_SHAPES = [  # N, C (in = out), H = W, cg, co: issue 2's shapes
    (32, 128, 28, 4, 0.5),
    (32, 256, 14, 4, 0.5),
    (16, 96, 28, 2, 0.25),
    (32, 512, 7, 8, 0.5),
]
EXPANSIONS = {(64, 256, 56), (128, 512, 28), (64, 384, 14), (96, 576, 14)}  # (Cin, Cout, H) of issue 12


def model_layers(name: str) -> list[tuple[int, int, int, int, int]]:
    """(Cin, Cout, stride, H of the input, count) of every 1x1 conv (groups=1) of a torchvision
    model run on 224x224, in order of first appearance."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    seen: collections.Counter = collections.Counter()
    hooks = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
            def hook(mod, inputs, output):
                seen[(mod.in_channels, mod.out_channels, mod.stride[0], inputs[0].shape[2])] += 1
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    return [(*shape, count) for shape, count in seen.items()]


def layer_cases(args) -> list[dict]:
    if args.shapes == "bench":
        return [{"model": "bench", "cin": c, "cout": c, "stride": 1, "h": hw, "count": 1, "batch": n, "cg": cg, "co": co}
                for n, c, hw, cg, co in BENCH_SHAPES]
    cases = []
    for name in args.shapes.split(","):
        for cin, cout, stride, h, count in model_layers(name):
            cases.append({"model": name, "cin": cin, "cout": cout, "stride": stride, "h": h, "count": count,
                          "batch": args.batch, "cg": args.cg, "co": args.co})
    return cases


def time_case(case: dict, fmt: torch.memory_format, train: bool, repeats: int, backends: list[str]) -> dict:
    cin, cout, stride, cg = case["cin"], case["cout"], case["stride"], case["cg"]
    x = torch.randn(case["batch"], cin, case["h"], case["h"]).contiguous(memory_format=fmt).requires_grad_(train)
    scc = SCCConv2d(cin, cout, cg, case["co"], stride=stride).to(memory_format=fmt)
    grouped = torch.nn.Conv2d(cin, cout, 1, stride=stride, groups=cg, bias=False).to(memory_format=fmt)
    dense = torch.nn.Conv2d(cin, cout, 1, stride=stride, bias=False).to(memory_format=fmt)
    with torch.no_grad():
        grad = torch.randn_like(dense(x)).contiguous(memory_format=fmt)

    def run(layer, backend=None):
        def step():
            with native.use_backend(backend) if backend else contextlib.nullcontext():
                if train:
                    return torch.autograd.grad(layer(x), (x, layer.weight), grad)
                return layer(x)
        return step

    fns = {"dense": run(dense), "grouped": run(grouped)}
    fns.update({f"scc_{b}": run(scc, b) for b in backends})
    with torch.inference_mode(mode=not train):
        t = time_interleaved(fns, repeats, keep_samples=True)
    ratios = {}
    for b in backends:
        s = t[f"scc_{b}"]["samples_ms"]
        ratios[f"dense/{b}"] = paired_ratio(t["dense"]["samples_ms"], s)
        ratios[f"grouped/{b}"] = paired_ratio(t["grouped"]["samples_ms"], s)
    if len(backends) == 2:
        ratios["torch/native"] = paired_ratio(t["scc_torch"]["samples_ms"], t["scc_native"]["samples_ms"])
    return {**case, "timings": t, "ratios": ratios}


def targets(records: list[dict], summary: dict, args, backend: str) -> list[str]:
    """Issue 12's targets, each with its measured number and met or not."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    if args.train:
        for r in records:
            ratio = 1 / r["ratios"][f"grouped/{backend}"]["median"]
            lines.append(f"training step {r['cin']}ch {r['h']}x{r['h']} cg={r['cg']}: SCC/grouped {ratio:.2f}x "
                         f"(target <= 1.1x): {verdict(ratio <= 1.1)}")
        return lines
    if args.shapes == "bench":
        return lines
    for model, s in summary.items():
        if model in ("targets",):
            continue
        v = s[f"dense/{backend}"]
        lines.append(f"{model}: summed dense/SCC {v:.2f}x (target >= 3.0x): {verdict(v >= 3.0)}")
    worst = min(records, key=lambda r: r["ratios"][f"grouped/{backend}"]["median"])
    w = worst["ratios"][f"grouped/{backend}"]["median"]
    lines.append(f"slowest layer against its grouped conv: {worst['model']} {worst['cin']}->{worst['cout']} "
                 f"{worst['h'] // worst['stride']}x{worst['h'] // worst['stride']}: grouped/SCC {w:.2f}x "
                 f"(target >= 1.0x for every layer): {verdict(w >= 1.0)}")
    for r in records:
        if (r["cin"], r["cout"], r["h"] // r["stride"]) in EXPANSIONS:
            v = r["ratios"][f"dense/{backend}"]["median"]
            lines.append(f"expansion {r['cin']}->{r['cout']} {r['h']}x{r['h']}: dense/SCC {v:.2f}x "
                         f"(target >= 2.5x): {verdict(v >= 2.5)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="bench", help="'bench', or torchvision model names (comma-separated)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the model layers")
    parser.add_argument("--cg", type=int, default=4)
    parser.add_argument("--co", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--channels-last", action="store_true", help="run everything in channels_last")
    parser.add_argument("--train", action="store_true", help="time forward + backward (input and weight grads)")
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="system",
                        help="keep: malloc keeps freed memory (no page faults per large tensor; see bench/_common.py)")
    args = parser.parse_args(argv)
    set_malloc(args.malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    backends = ["native", "torch"] if native.status()["available"] else ["torch"]
    info = machine()
    info.update(layout="channels_last" if args.channels_last else "NCHW", dtype="float32", malloc=args.malloc,
                pass_="forward + backward" if args.train else "forward", native=native.status())
    print(f"# {info['cpu']} | {info['threads']} threads | torch {info['torch']} | {info['layout']} | fp32 | "
          f"{info['pass_']} | {args.repeats} interleaved rounds | malloc {args.malloc} | native kernel: {native.status()}")

    records, rows = [], []
    totals: dict = collections.defaultdict(float)
    torch.manual_seed(0)
    for case in layer_cases(args):
        r = time_case(case, fmt, args.train, args.repeats, backends)
        records.append(r)
        t, q = r["timings"], r["ratios"]
        for key in t:
            totals[(case["model"], key)] += case["count"] * t[key]["median_ms"]
        n = "native" if "native" in backends else "torch"
        expansion = (case["cin"], case["cout"], case["h"] // case["stride"]) in EXPANSIONS
        shape = (f"{case['cin']}->{case['cout']} {case['h'] // case['stride']}x{case['h'] // case['stride']}"
                 + (f" s{case['stride']}" if case["stride"] > 1 else "") + (" (expansion)" if expansion else ""))
        row = [case["model"], shape, case["count"], f"{t['dense']['median_ms']:.2f}", f"{t['grouped']['median_ms']:.2f}"]
        row += [f"{t[f'scc_{b}']['median_ms']:.2f}" for b in backends]
        row += [f"{q[f'dense/{n}']['median']:.2f}x", f"{q[f'grouped/{n}']['median']:.2f}x"]
        if len(backends) == 2:
            row += [f"{q['torch/native']['median']:.2f}x"]
        rows.append(row)
        print(tabulate([row], tablefmt="plain"), flush=True)
    headers = ["model", "layer", "count", "dense ms", "grouped ms"] + [f"SCC {b} ms" for b in backends]
    headers += [f"dense/SCC {n}", f"grouped/SCC {n}"] + (["torch/native"] if len(backends) == 2 else [])
    print(tabulate(rows, headers=headers))
    summary = {}
    models = list(dict.fromkeys(c["model"] for c in records))
    for model in models + (["all"] if len(models) > 1 else []):
        names = models if model == "all" else [model]
        total = {key: sum(totals[(m, key)] for m in names) for key in ["dense", "grouped"] + [f"scc_{b}" for b in backends]}
        s = {f"dense/{b}": total["dense"] / total[f"scc_{b}"] for b in backends}
        s.update({f"grouped/{b}": total["grouped"] / total[f"scc_{b}"] for b in backends})
        summary[model] = s
        print(f"{model}: summed over its 1x1 layers (medians x count): "
              + ", ".join(f"{k} {v:.2f}x" for k, v in s.items()))
    summary["targets"] = targets(records, summary, args, n)
    for line in summary["targets"]:
        print(line)
    name = ("cpu_scc" + ("" if args.shapes == "bench" else "_models") + ("_channels_last" if args.channels_last else "")
            + ("_train" if args.train else "") + ("" if args.malloc == "system" else f"_malloc_{args.malloc}")
            + (f"_t{args.threads}" if args.threads else "") + ".json")
    path = write_json(name, {"machine": info, "repeats": args.repeats, "summary": summary, "results": records})
    print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
