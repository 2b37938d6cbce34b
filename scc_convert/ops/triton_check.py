"""Compile check of the Triton SCC kernels for NVIDIA GPUs, on a machine without one.

``python -m scc_convert.ops.triton_check`` plans every kernel launch the launcher can make —
every tile configuration of ``triton_kernels/configs.py``, for fp16, bf16, fp32 (IEEE and
TF32) and fp64, on NCHW, channels_last and strided (unaligned) inputs — and compiles each plan
with ``triton.compile`` for sm_80 and sm_90. The signature, constants and divisibility hints
come from Triton's own JIT binder run on the planned arguments, so the variant compiled is the
variant the JIT would build for those tensors.

Each compiled kernel must:

* use tensor cores for fp16/bf16/TF32/fp64 (``mma`` in the PTX), and ``wgmma`` for 64-row
  tiles of fp16/bf16/TF32 on sm_90 (fp32 IEEE runs on FMA units by design);
* fit the architecture's shared memory per block (163 KB sm_80, 227 KB sm_90; the compiler
  does not check this without a device);
* spill no registers (``cuobjdump --dump-resource-usage``: no local memory, no stack);
* have every ``tl.dot`` dimension >= 16 (Triton's minimum for fp16/bf16, which the
  interpreter does not enforce).

The forward is also compiled with the fused op's epilogue (bias, a residual in the other
layout, an activation), one variant per layout x dtype, the activations taken in turn so that
each is compiled for several dtypes.

It prints one row per kernel x configuration x architecture and exits with status 1 if any
check fails. Run it without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["Problem", "PROBLEMS", "compile_launch", "check", "main"]

SHARED_LIMIT = {80: 166912, 90: 232448}  # bytes of shared memory per block (opt-in maximum)
ARCHS = (80, 90)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Problem:
    """A layer call the check plans: ``[N, Cin, H, W] -> Cout`` with ``cg``, ``co`` and how the
    input tensor is laid out (``nchw``, ``nhwc``, or ``strided``: a stride-2, offset view)."""

    layout: str
    n: int = 2
    cin: int = 256
    cout: int = 256
    hw: int = 28
    cg: int = 4
    co: float = 0.5

    def tensors(self, dtype: torch.dtype):
        n, c, hw = self.n, self.cin, self.hw
        if self.layout == "strided":  # x[:, :, 1::2, 1::2] of a larger image: any strides, unaligned
            x = torch.zeros(n, c, 2 * hw + 1, 2 * hw, dtype=dtype)[:, :, 1::2, 1::2]
        else:
            x = torch.zeros(n, c, hw, hw, dtype=dtype)
            if self.layout == "nhwc":
                x = x.contiguous(memory_format=torch.channels_last)
        w = torch.zeros(self.cout, c // self.cg, dtype=dtype)
        return x, w


# Layouts x two grad_output layouts cover every layout code pair the launcher passes.
PROBLEMS = (Problem("nchw"), Problem("nhwc"), Problem("strided"))


def _nvidia_tool(name: str) -> str:
    """The CUDA tool Triton ships (``triton/backends/nvidia/bin``), else the one on PATH."""
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return bundled if os.access(bundled, os.X_OK) else name


def compile_launch(launch, arch: int):
    """Compile a planned :class:`~scc_convert.ops.triton_kernels.launch.Launch` for ``sm_<arch>``
    exactly as the JIT would specialise it for the planned arguments."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    options, signature, constexprs, attrs = kernel._pack_args(backend, dict(launch.meta), bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def _resource_usage(cubin: bytes) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run(
            [_nvidia_tool("cuobjdump"), "--dump-resource-usage", path],
            capture_output=True, text=True, check=True,
        ).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


@dataclass
class Row:
    kernel: str
    config: str
    arch: int
    variants: int = 0
    mma: str = ""
    shared: int = 0
    regs: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _precisions(dtype: torch.dtype) -> tuple[bool, ...]:
    return (False, True) if dtype == torch.float32 else (False,)


def _plans(kernel: str, config):
    """Every launch of ``kernel`` with ``config`` over dtypes, layouts and TF32 settings:
    ``(description, dtype, tf32, launch)``."""
    from .common import empty_output, geometry_for
    from .epilogue import ACTIVATIONS
    from .triton_kernels import configs, launch

    fused = 0  # forward variants with the epilogue so far
    for problem in PROBLEMS:
        for dtype in DTYPES:
            for tf32 in _precisions(dtype):
                fma = dtype == torch.float64 or (dtype == torch.float32 and not tf32)
                if config is not None and not configs.usable(config, fma):
                    continue  # the rule never picks it for this dtype
                with _tf32(tf32):
                    x, w = problem.tensors(dtype)
                    geom = geometry_for(x, w, problem.cg, problem.co)
                    n, _, h, wd = x.shape
                    y = empty_output(x, (n, geom.out_channels, h, wd))
                    grads = (y, y.contiguous(memory_format=torch.channels_last)
                             if y.is_contiguous() else y.contiguous())
                    what = f"{problem.layout} {str(dtype).removeprefix('torch.')}{' tf32' if tf32 else ''}"
                    if kernel == "forward":
                        yield what, dtype, tf32, launch.plan_forward(y, x, w, None, geom, None, config)
                        bias = w[:, 0].contiguous()
                        yield what + " bias", dtype, tf32, launch.plan_forward(y, x, w, bias, geom, None, config)
                        act = ACTIVATIONS[1 + fused % (len(ACTIVATIONS) - 1)]
                        fused += 1
                        yield f"{what} bias residual {act}", dtype, tf32, launch.plan_forward(
                            y, x, w, bias, geom, None, config, activation=act, residual=grads[1])
                    elif kernel == "grad_input":
                        for gy in grads:
                            gx = empty_output(x, tuple(x.shape))
                            yield what, dtype, tf32, launch.plan_grad_input(gx, gy, w, geom, None, config)
                    elif kernel == "grad_weight":
                        acc = torch.float64 if dtype == torch.float64 else torch.float32
                        part = torch.empty((3, *w.shape), dtype=acc)
                        for gy in grads:
                            yield what, dtype, tf32, launch.plan_grad_weight(part, gy, x, geom, None, config)
                    elif kernel == "sum_splits":
                        acc = torch.float64 if dtype == torch.float64 else torch.float32
                        if problem.layout == "nchw" and not tf32:
                            yield what, dtype, tf32, launch.plan_sum_splits(w, torch.empty((3, *w.shape), dtype=acc))


def _dot_dims(kernel: str, config) -> tuple[int, int, int]:
    return (config.rows, config.cols, config.k)


def check(archs=ARCHS, kernels=None, verbose: bool = False) -> list[Row]:
    """Compile every planned launch; returns one :class:`Row` per kernel x config x arch."""
    from .triton_kernels import configs

    table = {
        "forward": configs.FORWARD,
        "grad_input": configs.GRAD_INPUT,
        "grad_weight": configs.GRAD_WEIGHT,
        "sum_splits": (configs.Config(configs.SUM_BLOCK, 1, 1, 4, 1),),
    }
    rows: list[Row] = []
    for kernel, config_list in table.items():
        if kernels and kernel not in kernels:
            continue
        for config in config_list:
            plan_config = None if kernel == "sum_splits" else config
            name = "block=%d" % config.rows if kernel == "sum_splits" else (
                f"{config.rows}x{config.cols}x{config.k} w{config.num_warps} s{config.num_stages}")
            for arch in archs:
                row = Row(kernel, name, arch)
                kinds = set()
                start = time.perf_counter()
                if kernel != "sum_splits" and min(_dot_dims(kernel, config)) < 16:
                    row.failures.append(f"tl.dot dimension below 16: {_dot_dims(kernel, config)}")
                for what, dtype, tf32, launch in _plans(kernel, plan_config):
                    try:
                        compiled = compile_launch(launch, arch)
                    except Exception as exc:  # report every failing variant, keep checking
                        row.failures.append(f"{what}: compile failed: {str(exc).splitlines()[0][:200]}")
                        continue
                    row.variants += 1
                    ptx = compiled.asm["ptx"]
                    usage = _resource_usage(compiled.asm["cubin"])
                    shared = compiled.metadata.shared
                    row.shared = max(row.shared, shared)
                    row.regs = max(row.regs, usage.get("REG", 0))
                    wgmma, mma = "wgmma.mma_async" in ptx, re.search(r"\bmma\.sync", ptx) is not None
                    if wgmma:
                        kinds.add("wgmma")
                    if mma:
                        kinds.add("mma")
                    if shared > SHARED_LIMIT[arch]:
                        row.failures.append(f"{what}: shared memory {shared} B > {SHARED_LIMIT[arch]} B")
                    if usage.get("LOCAL", 0) or usage.get("STACK", 0):
                        row.failures.append(f"{what}: register spills (local {usage.get('LOCAL')} B, stack {usage.get('STACK')} B)")
                    tensor_cores = dtype != torch.float32 or tf32
                    if kernel != "sum_splits" and tensor_cores and not (wgmma or mma):
                        row.failures.append(f"{what}: no tensor-core instruction in the PTX")
                    wants_wgmma = arch >= 90 and config.rows >= 64 and dtype != torch.float64 and tensor_cores
                    if kernel != "sum_splits" and wants_wgmma and not wgmma:
                        row.failures.append(f"{what}: 64-row tile without wgmma on sm_{arch}")
                    if verbose:
                        print(f"  {kernel} {name} sm_{arch} {what}: shared {shared} B, regs {usage.get('REG')}, "
                              f"{'wgmma' if wgmma else 'mma' if mma else 'fma'}", file=sys.stderr)
                row.mma = "+".join(sorted(kinds)) or "-"
                row.seconds = time.perf_counter() - start
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scc_convert.ops.triton_check",
        description="Compile every Triton SCC kernel configuration for sm_80/sm_90 and check it.",
    )
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS, help="only this architecture (repeatable)")
    parser.add_argument("--kernel", action="append", choices=("forward", "grad_input", "grad_weight", "sum_splits"))
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per compiled variant")
    args = parser.parse_args(argv)
    import triton

    from .triton_kernels import launch

    if launch.interpreting():
        print("triton_check: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    from tabulate import tabulate

    rows = check(tuple(args.arch or ARCHS), args.kernel, args.verbose)
    print(f"Triton {triton.__version__}, torch {torch.__version__}: compile check for "
          + ", ".join(f"sm_{a}" for a in (args.arch or ARCHS)))
    print(tabulate(
        [(r.kernel, r.config, f"sm_{r.arch}", r.variants, r.mma, f"{r.shared / 1024:.1f} / {SHARED_LIMIT[r.arch] // 1024}",
          r.regs, f"{r.seconds:.1f}", "ok" if not r.failures else f"FAIL ({len(r.failures)})") for r in rows],
        headers=("kernel", "config (rows x cols x k, warps, stages)", "arch", "variants", "tensor cores",
                 "shared KB / limit", "max regs", "s", "result"),
    ))
    failures = [(r, f) for r in rows for f in r.failures]
    for r, f in failures:
        print(f"FAIL {r.kernel} {r.config} sm_{r.arch}: {f}")
    print(f"{sum(r.variants for r in rows)} variants compiled; {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
