"""Shared helpers for the benchmarks: machine description and interleaved CPU timing."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

MALLOC_MODES = ("system", "keep")


def set_malloc(mode: str) -> None:
    """``"keep"``: glibc malloc keeps freed memory for reuse (no mmap per large block, no trim).

    With the default (``"system"``) every tensor over 32 MiB is a fresh mmap, and on this VM the
    first touch of each 4 KiB page costs about 2 us: a 50 MB output pays some 20 ms of page
    faults per call, whatever computes it. ``"keep"`` times the computation without them, as an
    allocator that caches (jemalloc, tcmalloc) would. No effect on other platforms.
    """
    if mode == "system":
        return
    if mode != "keep":
        raise ValueError(f"malloc mode must be one of {MALLOC_MODES}, got {mode!r}")
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3, keep_samples: bool = False
) -> dict[str, dict]:
    """Median and interquartile range (ms) of each function, run round-robin so drift cancels.

    ``keep_samples`` adds every timing (``samples_ms``, in round order) for paired ratios.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, s in samples.items():
        q = statistics.quantiles(s, n=4)
        out[name] = {"median_ms": statistics.median(s), "q1_ms": q[0], "q3_ms": q[2], "runs": len(s)}
        if keep_samples:
            out[name]["samples_ms"] = s
    return out


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median and quartiles of the per-round ratios of two interleaved timing series.

    Each ratio compares two runs made back to back, so slow drift of a shared machine cancels
    out of it; the quartiles say how much the comparison itself varies.
    """
    ratios = [a / b for a, b in zip(numerator, denominator)]
    q = statistics.quantiles(ratios, n=4)
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2]}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path
