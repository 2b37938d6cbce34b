"""What :func:`finetune` returns: per-epoch and per-step metrics and the result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["EpochStats", "StepStats", "FinetuneResult"]


@dataclass(frozen=True)
class EpochStats:
    """Metrics of one epoch (``complete=False``: stopped early by ``steps``).

    Training metrics are averaged over every sample of the epoch on every rank; ``None`` where
    there is nothing to measure (no labels, no ``val_data``). ``step`` is the optimizer step
    count at the end of the epoch; ``lr`` the learning rate after it.
    """

    epoch: int
    step: int
    batches: int
    train_loss: float
    train_accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    complete: bool = True


@dataclass(frozen=True)
class StepStats:
    """Training metrics averaged over the ``log_every`` steps ending at ``step`` (this rank's batches)."""

    step: int
    epoch: int
    loss: float
    accuracy: float | None
    lr: float


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the model passed in, trained in place (never the DDP wrapper).
        history: one :class:`EpochStats` per epoch, including epochs run before a resume.
        log: one :class:`StepStats` every ``log_every`` steps, including those before a resume.
        best_checkpoint / last_checkpoint: paths of ``best.pt`` / ``last.pt`` (``None`` without
            ``checkpoint_dir``). "Best" is by ``best_metric``.
        best_metric: ``"val_accuracy"`` (higher is better) with labelled ``val_data``, else
            ``"val_loss"`` with ``val_data``, else ``"train_loss"`` (lower is better).
        best_value / best_epoch: the best value of that metric and its (1-based) epoch.
        wall_time_s: seconds spent in this call (not counting runs before a resume).
        steps: optimizer steps taken in total (including before a resume).
        final: the last epoch's ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``.
        amp: ``"bf16"``, ``"fp16"`` or ``"off"``; device: where training ran; world_size: ranks.
        lr: the peak learning rate the run used (``None`` with an optimizer factory).
        lr_test: with ``lr="auto"``, the range test that chose it (rates, smoothed losses,
            reason); else ``None``.
    """

    model: nn.Module = field(repr=False)
    history: list[EpochStats]
    log: list[StepStats]
    best_checkpoint: str | None
    last_checkpoint: str | None
    best_metric: str
    best_value: float | None
    best_epoch: int | None
    wall_time_s: float
    steps: int
    final: dict[str, float | None]
    amp: str
    device: str
    world_size: int
    lr: float | None = None
    lr_test: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, as JSON-ready built-in types."""
        out = {k: v for k, v in self.__dict__.items() if k != "model"}
        out["history"] = [asdict(e) for e in self.history]
        out["log"] = [asdict(s) for s in self.log]
        return out
