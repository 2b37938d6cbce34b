"""Timing: interleaved latency runs (CUDA events or ``perf_counter``) and peak CUDA memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

@dataclass(frozen=True)
class LatencyStats:
    """Forward latency in milliseconds: median and quartiles of ``runs`` timed runs."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int

    @property
    def iqr_ms(self) -> float:
        """Interquartile range ``q3 - q1`` in milliseconds."""
        return self.q3_ms - self.q1_ms

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if len(samples_ms) == 1:
            (s,) = samples_ms
            return cls(s, s, s, 1)
        q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
        return cls(statistics.median(samples_ms), q1, q3, len(samples_ms))

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "q1_ms": self.q1_ms, "q3_ms": self.q3_ms,
                "iqr_ms": self.iqr_ms, "runs": self.runs}


NOISY_IQR = 0.10  # a spread beyond this fraction of the median makes the timing untrustworthy


def noise_warning(label: str, batch) -> str | None:
    """A warning when the latency of ``batch`` (a ``BatchProfile``) spreads by more than
    ``NOISY_IQR`` of its median, else ``None``."""
    stats = batch.latency
    if stats is None or stats.runs < 2 or stats.iqr_ms <= NOISY_IQR * stats.median_ms:
        return None
    return (f"{label} latency at batch {batch.batch_size} is noisy: IQR {stats.iqr_ms:.3g} ms is "
            f"{100 * stats.iqr_ms / stats.median_ms:.0f}% of the median {stats.median_ms:.3g} ms; treat it as rough, "
            "or time again on an idle machine (more repeats, fewer threads)")


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """One timed call in ms: CUDA events after a synchronisation, else ``perf_counter``."""
    if device.type == "cuda":
        def timed(fn: Callable[[], object]) -> float:
            stream = torch.cuda.current_stream(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)
        return timed

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return timed


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, LatencyStats]:
    """Time each function ``repeats`` times, round-robin with the order reversed every round."""
    if is_in_torch_dispatch_mode():
        raise RuntimeError(
            "profile: latency must be measured outside any TorchDispatchMode (e.g. "
            "FlopCounterMode); call profile() outside it or pass latency=False"
        )
    timed = _timer(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            samples[name].append(timed(fns[name]))
    return {name: LatencyStats.of(s) for name, s in samples.items()}


def peak_activation_bytes(model: nn.Module, x: Tensor) -> int:
    """Peak CUDA memory allocated during one inference forward, above what was live before."""
    device = x.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        out = model(x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)
