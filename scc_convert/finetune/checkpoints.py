"""Checkpoints: the format, atomic writes, the run state and every RNG state (exact resume)."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write
from .results import EpochStats, StepStats

CHECKPOINT_FORMAT = "scc_convert.finetune/1"
"""The ``"format"`` entry of every checkpoint this module writes."""

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


def _numpy():
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _rng_state(generators: list[torch.Generator]) -> dict[str, Any]:
    """Every RNG training draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = _numpy()
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (name, keys.tolist(), int(pos), int(has_gauss), float(cached))
    return state


def _set_rng_state(state: dict[str, Any], generators: list[torch.Generator]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if len(state["generators"]) != len(generators):
        warnings.warn(
            f"finetune: the checkpoint holds {len(state['generators'])} data-loader generator states "
            f"but train_data has {len(generators)}; its shuffling will not continue exactly",
            stacklevel=4,
        )
    else:
        for gen, gen_state in zip(generators, state["generators"]):
            gen.set_state(gen_state)
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np = _numpy()
    if np is not None and "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _seed_everything(seed: int, rank: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed + rank)  # distinct dropout masks per rank; data order uses `seed`
    np = _numpy()
    if np is not None:
        np.random.seed(seed)


def _atomic_save(obj: Any, path: Path) -> None:
    """Readers see the old checkpoint or the new one, never a partial one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite=True)

@dataclass
class _State:
    """Where the run is: what a checkpoint stores besides model/optimizer/scheduler/scaler."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of it already trained
    step: int = 0
    history: list[EpochStats] = field(default_factory=list)
    log: list[StepStats] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    epoch_meter: list[float] = field(default_factory=lambda: [0.0] * 4)
    window_meter: list[float] = field(default_factory=lambda: [0.0] * 4)
    epoch_seconds: float = 0.0
    lr_test: dict | None = None  # what lr="auto" measured, if it ran
