"""``scc-convert info``: versions, devices, and which SCC implementation each device runs."""

from __future__ import annotations

import argparse
import json

from ..common import say
from ..parser import add_common

NAME = "info"
SUMMARY = "show versions, devices and which SCC implementation each device runs"
DESCRIPTION = ("Show the scc_convert, torch, Triton and CUDA versions, the GPUs present, and "
               "which implementation of the SCC op CPU and CUDA tensors run (native C++ kernel, "
               "Triton kernels, or the PyTorch path).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the information as JSON")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from ...ops.backends import describe

    info = describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    gpus = ", ".join(info["gpus"]) or "none"
    lines = [
        f"scc_convert {info['scc_convert']}  python {info['python']}  torch {info['torch']}  "
        f"triton {info['triton'] or 'not installed'}  CUDA runtime {info['cuda_runtime'] or 'none'}",
        f"CPU: {info['cpu']}, {info['cpu_threads']} threads   GPUs: {gpus}",
    ]
    for device, impl in info["implementations"].items():
        lines.append(f"SCC on {device}: {impl['detail']}")
    say(args, "\n".join(lines))
    return 0
