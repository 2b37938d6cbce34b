"""The Triton SCC kernels on a CUDA GPU: the CUDA tests, then the benchmark.

    python bench/gpu.py                # tests/test_cuda.py, then every measurement (< 8 min on an H200)
    python bench/gpu.py --quick        # fewer shapes and dtypes
    python bench/gpu.py --dry-run      # no GPU: CPU tensors under Triton's interpreter, tiny
                                       # shapes, one run each; checks this script, times nothing

Writes ``results/gpu_<device>.json``: ``device``, date, torch/triton/CUDA versions, the test
run's summary, the measured copy bandwidth, and ``records`` — one object per measurement with
``impl`` (``scc_triton``, ``scc_torch``, ``cudnn_grouped``, ``cudnn_dense``, ``naive``), ``pass``
(``forward`` or ``forward_backward``), ``N``, ``C``, ``Cout``, ``H``, ``W``, ``cg``, ``co``,
``dtype``, ``layout`` (``nchw``/``nhwc``), ``median_us`` and ``roofline_us`` (bytes the pass
must move at least, over the copy bandwidth measured in the same run); model rows have
``impl`` ``model_original``/``model_scc`` and ``pass`` ``inference``/``train_step``. fp32 rows
run with TF32 allowed for every implementation (``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32``). Then prints the tables and whether each target holds:

* forward fp16/bf16 within 1.25x of the roofline where H*W >= 196 and C, Cout >= 128;
  forward+backward within 1.5x;
* faster than the grouped conv of the same FLOPs and than the PyTorch path on every shape;
* at least 10x faster than the naive one-thread-per-output kernel (forward).
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # before triton is imported anywhere
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from tabulate import tabulate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402
from naive_scc import naive_scc_forward  # noqa: E402

from scc_convert.ops import torch_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

POSTER = [  # N, Cin, Cout, H(=W), cg, co: the poster-like shapes
    (128, 256, 256, 28, 4, 0.5),
    (128, 512, 512, 14, 8, 0.5),
    (128, 96, 96, 56, 2, 0.25),
]
MODEL_LAYERS = [  # MobileNetV2 and ResNet-50 1x1 layers at batch 32, cg=4 co=0.5
    (32, 24, 144, 56, 4, 0.5), (32, 144, 24, 56, 4, 0.5), (32, 32, 192, 28, 4, 0.5),
    (32, 192, 32, 28, 4, 0.5), (32, 96, 576, 14, 4, 0.5), (32, 576, 96, 14, 4, 0.5),
    (32, 960, 160, 7, 4, 0.5), (32, 320, 1280, 7, 4, 0.5),
    (32, 64, 256, 56, 4, 0.5), (32, 256, 64, 56, 4, 0.5), (32, 128, 512, 28, 4, 0.5),
    (32, 512, 128, 28, 4, 0.5), (32, 256, 1024, 14, 4, 0.5), (32, 1024, 256, 14, 4, 0.5),
    (32, 512, 2048, 7, 4, 0.5), (32, 2048, 512, 7, 4, 0.5),
]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
IMPLS = ("scc_triton", "scc_torch", "cudnn_grouped", "cudnn_dense", "naive")


class Timer:
    """Median microseconds of ``fn``: CUDA events through ``triton.testing.do_bench`` (L2
    flushed between runs), or one wall-clock run in ``--dry-run``."""

    def __init__(self, dry: bool, warmup_ms: int, rep_ms: int):
        self.dry, self.warmup_ms, self.rep_ms = dry, warmup_ms, rep_ms

    def __call__(self, fn) -> float:
        if self.dry:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e6
        return 1e3 * triton.testing.do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median")


def copy_bandwidth(device, timer: Timer, dry: bool) -> float:
    """Bytes per second of a device-to-device copy (read + write), measured now."""
    numel = (1 << 12) if dry else (1 << 28)
    src = torch.empty(numel, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    us = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (us * 1e-6)


def _bytes(n, cin, cout, hw, cg, es, pass_):
    """Bytes a pass must move at least: forward reads x and w and writes y; the backward
    reads gy, x and w and writes gx and gw."""
    x, y, w = n * cin * hw * hw * es, n * cout * hw * hw * es, cout * (cin // cg) * es
    return x + y + w if pass_ == "forward" else (x + y + w) + (y + 2 * x + 2 * w)


def _layer_fns(impl, pass_, x, w_scc, w_grouped, w_dense, gy, cg, co):
    """The callable timed for one implementation and pass (``None``: not measured)."""
    if impl == "naive":
        if pass_ != "forward" or not x.is_contiguous():
            return None
        return lambda: naive_scc_forward(x, w_scc, cg, co)
    if impl == "scc_torch":
        if pass_ == "forward":
            return lambda: torch_path.scc_forward(x, w_scc, None, cg, co, None)
        return lambda: (torch_path.scc_forward(x, w_scc, None, cg, co, None),
                        torch_path.scc_backward(gy, x, w_scc, cg, co, None, True, True))
    if impl == "scc_triton":
        def run(xx, ww):
            return torch.ops.scc.scc_conv2d(xx, ww, None, cg, co, None)
    elif impl == "cudnn_grouped":
        if w_grouped is None:
            return None
        w_scc = w_grouped

        def run(xx, ww):
            return F.conv2d(xx, ww, groups=cg)
    else:
        w_scc = w_dense

        def run(xx, ww):
            return F.conv2d(xx, ww)
    if pass_ == "forward":
        return lambda: run(x, w_scc)
    xg, wg = x.detach().requires_grad_(), w_scc.detach().requires_grad_()
    return lambda: torch.autograd.grad(run(xg, wg), (xg, wg), gy)


def bench_layers(shapes, dtypes, timer, bandwidth, device, dry):
    records = []
    for n, cin, cout, hw, cg, co in shapes:
        for dname in dtypes:
            dtype = DTYPES[dname]
            for layout in ("nchw", "nhwc"):
                fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                x = torch.randn(n, cin, hw, hw, device=device, dtype=dtype).contiguous(memory_format=fmt)
                gy = torch.randn(n, cout, hw, hw, device=device, dtype=dtype).contiguous(memory_format=fmt)
                w_scc = torch.randn(cout, cin // cg, device=device, dtype=dtype)
                w_grouped = (w_scc[:, :, None, None].contiguous(memory_format=fmt)
                             if cout % cg == 0 else None)
                w_dense = torch.randn(cout, cin, 1, 1, device=device, dtype=dtype).contiguous(memory_format=fmt)
                for pass_ in ("forward", "forward_backward"):
                    roof = 1e6 * _bytes(n, cin, cout, hw, cg, x.element_size(), pass_) / bandwidth
                    for impl in IMPLS:
                        fn = _layer_fns(impl, pass_, x, w_scc, w_grouped, w_dense, gy, cg, co)
                        if fn is None:
                            continue
                        records.append({
                            "impl": impl, "pass": pass_, "N": n, "C": cin, "Cout": cout, "H": hw, "W": hw,
                            "cg": cg, "co": co, "dtype": dname, "layout": layout,
                            "median_us": round(timer(fn), 2), "roofline_us": round(roof, 2),
                        })
                        print(f"  {impl:13s} {pass_:16s} N={n} {cin}->{cout} {hw}x{hw} cg={cg} {dname} {layout}: "
                              f"{records[-1]['median_us']:.1f} us (roofline {roof:.1f})", flush=True)
    return records


def bench_models(timer, device, dry, batch_inf, batch_train):
    import torchvision

    from scc_convert import convert

    records = []
    size = 32 if dry else 224
    for name in ("mobilenet_v2",) if dry else ("mobilenet_v2", "resnet50"):
        torch.manual_seed(0)
        original = getattr(torchvision.models, name)(num_classes=10 if dry else 1000)
        converted, _ = convert(original, cg=4, co=0.5, example_inputs=torch.randn(1, 3, size, size))
        for label, model in (("model_original", original), ("model_scc", converted)):
            model = model.to(device).to(memory_format=torch.channels_last)
            x = torch.randn(batch_inf, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
            model.eval()

            def infer():
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=not dry):
                    return model(x)

            records.append({"impl": label, "pass": "inference", "model": name, "N": batch_inf, "H": size,
                            "W": size, "dtype": "amp_float16", "layout": "nhwc", "median_us": round(timer(infer), 1)})
            model.train()
            xt = x[:batch_train]
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry):
                    loss = model(xt).float().logsumexp(1).mean()
                loss.backward()
                opt.step()

            records.append({"impl": label, "pass": "train_step", "model": name, "N": batch_train, "H": size,
                            "W": size, "dtype": "amp_bfloat16", "layout": "nhwc", "median_us": round(timer(step), 1)})
            print(f"  {name} {label}: inference {records[-2]['median_us']:.0f} us, "
                  f"train step {records[-1]['median_us']:.0f} us", flush=True)
    return records


def run_cuda_tests(timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_cuda.py")]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"returncode": done.returncode, "summary": lines[-1] if lines else done.stderr[-500:],
            "failures": failures}


def _key(r):
    return (r["pass"], r["N"], r["C"], r["Cout"], r["H"], r["cg"], r["co"], r["dtype"], r["layout"])


def targets(records) -> list[tuple[str, str, str]]:
    """(target, measured, met) rows read from the records."""
    by = {}
    for r in records:
        if "Cout" in r:
            by.setdefault(_key(r), {})[r["impl"]] = r
    out = []
    for pass_, limit in (("forward", 1.25), ("forward_backward", 1.5)):
        ratios = [g["scc_triton"]["median_us"] / g["scc_triton"]["roofline_us"] for k, g in by.items()
                  if k[0] == pass_ and k[7] in ("float16", "bfloat16") and k[4] ** 2 >= 196
                  and min(k[2], k[3]) >= 128 and "scc_triton" in g]
        if ratios:
            out.append((f"{pass_} fp16/bf16 <= {limit}x roofline (H*W>=196, C>=128)",
                        f"worst {max(ratios):.2f}x, median {statistics.median(ratios):.2f}x over {len(ratios)}",
                        "met" if max(ratios) <= limit else "not met"))
    for other in ("cudnn_grouped", "scc_torch"):
        ratios = [g["scc_triton"]["median_us"] / g[other]["median_us"] for g in by.values()
                  if "scc_triton" in g and other in g]
        if ratios:
            out.append((f"faster than {other} on every shape", f"worst Triton/{other} {max(ratios):.2f}x",
                        "met" if max(ratios) < 1 else "not met"))
    ratios = [g["naive"]["median_us"] / g["scc_triton"]["median_us"] for g in by.values() if "naive" in g]
    if ratios:
        out.append((">= 10x faster than the naive kernel", f"least {min(ratios):.1f}x",
                    "met" if min(ratios) >= 10 else "not met"))
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="poster shapes and fp16 only; no model rows")
    p.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny shapes (no timings)")
    p.add_argument("--skip-tests", action="store_true", help="do not run tests/test_cuda.py first")
    p.add_argument("--test-timeout", type=int, default=180)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/gpu_<device>.json)")
    args = p.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device (use --dry-run to check the script on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else "cuda")
    if dry:  # the Triton kernels as the CPU implementation, under the interpreter
        from scc_convert.ops import triton_kernels
        from scc_convert.ops.library import op_definitions

        for definition, fn in zip(op_definitions(), (triton_kernels.scc_forward, triton_kernels.scc_backward)):
            definition.register_kernel("cpu", fn)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    info = machine()
    info.update({
        "device": "cpu (Triton interpreter, dry run)" if dry else torch.cuda.get_device_name(device),
        "triton": triton.__version__, "cuda": torch.version.cuda,
        "fp32": "TF32 allowed for every implementation",
    })
    print(f"# {info['device']} | torch {info['torch']} | triton {info['triton']} | CUDA {info['cuda']} | {info['date']}")
    started = time.perf_counter()
    if not args.skip_tests and not dry:
        info["cuda_tests"] = run_cuda_tests(args.test_timeout)
        print(f"# tests/test_cuda.py: {info['cuda_tests']['summary']}", flush=True)
    timer = Timer(dry, warmup_ms=10, rep_ms=40)
    bandwidth = copy_bandwidth(device, timer, dry)
    info["copy_bandwidth_GBps"] = round(bandwidth / 1e9, 1)
    if dry:
        shapes, dtypes = [(2, 16, 16, 4, 4, 0.5), (2, 12, 24, 3, 2, 0.25)], ["float16"]
    elif args.quick:
        shapes, dtypes = POSTER, ["float16"]
    else:
        shapes, dtypes = POSTER + MODEL_LAYERS, list(DTYPES)
    poster = [s for s in shapes if s in POSTER] or shapes
    records = bench_layers(poster, dtypes, timer, bandwidth, device, dry)
    others = [s for s in shapes if s not in poster]
    if others:  # model layers: fp16 only, to stay within the time budget
        records += bench_layers(others, ["float16"], timer, bandwidth, device, dry)
    if not args.quick:
        records += bench_models(timer, device, dry, batch_inf=2 if dry else 64, batch_train=2 if dry else 32)
    info["records"] = records
    info["targets"] = [] if dry else [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(records)]
    info["seconds"] = round(time.perf_counter() - started, 1)
    name = args.out or Path(f"gpu_{_slug(info['device'] if not dry else 'dry_run')}.json")
    path = write_json(name.name, info) if args.out is None else _write(args.out, info)
    print(tabulate([(r["impl"], r["pass"], f"{r['N']} {r['C']}->{r['Cout']} {r['H']}x{r['W']} cg={r['cg']}",
                     r["dtype"], r["layout"], r["median_us"], r["roofline_us"]) for r in records if "Cout" in r],
                   headers=("impl", "pass", "shape", "dtype", "layout", "median us", "roofline us")))
    if dry:
        print("# dry run: CPU tensors under the interpreter; the times above are not GPU timings")
    else:
        print(tabulate(targets(records), headers=("target", "measured", "result")))
    print(f"# wrote {path} ({info['seconds']} s)")
    return 0


def _write(path: Path, payload: dict) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


if __name__ == "__main__":
    sys.exit(main())
