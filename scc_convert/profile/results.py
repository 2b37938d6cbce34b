"""The measured numbers of one model: per layer, per batch size, in total."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .timing import LatencyStats

@dataclass
class LayerProfile:
    """One module of one model: its own parameters and the forward MACs of the ops it runs
    itself (backward counts are totals only: PyTorch's module tracking is not reliable
    enough in the backward pass to attribute them to layers)."""

    name: str
    type: str
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "params": self.params, "macs": self.macs,
                "flops": 2 * self.macs}


@dataclass
class BatchProfile:
    """Counts and timings of one model at one batch size (MACs; FLOPs = 2 x MACs)."""

    batch_size: int
    macs: int
    train_macs: int | None = None
    latency: LatencyStats | None = None
    peak_activation_bytes: int | None = None

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "macs": self.macs,
            "flops": self.flops,
            "train_macs": self.train_macs,
            "train_flops": None if self.train_macs is None else 2 * self.train_macs,
            "latency": None if self.latency is None else self.latency.to_dict(),
            "peak_activation_bytes": self.peak_activation_bytes,
        }


@dataclass
class ModelProfile:
    """Everything measured for one model.

    ``params`` counts unique parameter tensors (a tied weight once); ``size_bytes`` maps a
    dtype name to the bytes of unique parameters and buffers of that dtype. ``layers`` and
    the properties below describe the first batch size.
    """

    label: str
    model_type: str
    params: int
    size_bytes: dict[str, int]
    batches: list[BatchProfile]
    layers: list[LayerProfile]
    unknown_ops: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        """Forward MACs at the first batch size."""
        return self.batches[0].macs

    @property
    def flops(self) -> int:
        """Forward FLOPs (2 x MACs) at the first batch size."""
        return self.batches[0].flops

    @property
    def train_macs(self) -> int | None:
        """Forward + backward MACs at the first batch size (``train=True`` only)."""
        return self.batches[0].train_macs

    @property
    def total_size_bytes(self) -> int:
        return sum(self.size_bytes.values())

    def batch(self, batch_size: int) -> BatchProfile:
        for b in self.batches:
            if b.batch_size == batch_size:
                return b
        raise KeyError(f"batch size {batch_size} was not profiled; profiled: {[b.batch_size for b in self.batches]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "type": self.model_type,
            "params": self.params,
            "size_bytes": dict(self.size_bytes),
            "total_size_bytes": self.total_size_bytes,
            "batches": [b.to_dict() for b in self.batches],
            "layers": [layer.to_dict() for layer in self.layers],
            "unknown_ops": dict(self.unknown_ops),
        }


@dataclass
class LayerComparison:
    """A per-layer row joined by module name across the two models.

    When a module was replaced by a container (or the reverse), the rows of its
    submodules are merged under the outer name and the types are joined with ``+``.
    """

    name: str
    type_before: str | None
    type_after: str | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type_before": self.type_before,
            "type_after": self.type_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
        }
