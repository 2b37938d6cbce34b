"""The public entry point :func:`finetune`: argument checks, setup, the run."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    Dataset,
)

from .data import _prepare_data
from .distributed import _setup
from .loop import _Run
from .optim import _OPTIMIZER_DEFAULTS, _SCHEDULES, OptimizerFactory, _resolve_amp
from .results import FinetuneResult

__all__ = ["finetune"]

def _check_args(
    model: Any,
    teacher: Any,
    epochs: Any,
    steps: Any,
    batch_size: Any,
    lr: Any,
    optimizer: Any,
    weight_decay: Any,
    schedule: Any,
    kd_alpha: Any,
    kd_temperature: Any,
    feature_kd: Any,
    checkpoint_dir: Any,
    resume: Any,
    log_every: Any,
) -> None:
    def positive_int(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"finetune: {name}={value!r} must be an int >= 1")

    if not isinstance(model, nn.Module):
        raise TypeError(f"finetune: model must be an nn.Module, got {type(model).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"finetune: teacher must be an nn.Module or None, got {type(teacher).__name__}")
    if teacher is model:
        raise ValueError("finetune: teacher is the model itself; pass the original (unconverted) model")
    positive_int("epochs", epochs)
    positive_int("batch_size", batch_size)
    positive_int("log_every", log_every)
    if steps is not None:
        positive_int("steps", steps)
    if isinstance(optimizer, str):
        if optimizer not in _OPTIMIZER_DEFAULTS:
            raise ValueError(
                f"finetune: optimizer={optimizer!r} must be 'sgd', 'adamw' or a factory "
                f"params -> torch.optim.Optimizer"
            )
    elif callable(optimizer):
        if lr is not None or weight_decay is not None:
            raise ValueError(
                "finetune: lr and weight_decay are not used when optimizer is a factory; set them in "
                "the factory, e.g. lambda params: torch.optim.SGD(params, lr=0.1, weight_decay=1e-4)"
            )
    else:
        raise TypeError(
            f"finetune: optimizer must be 'sgd', 'adamw' or a factory params -> torch.optim.Optimizer, "
            f"got {type(optimizer).__name__} (pass a factory, not an optimizer instance)"
        )
    if lr not in (None, "auto") and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ValueError(f"finetune: lr={lr!r} must be a number > 0, or 'auto' (a learning-rate range test)")
    if weight_decay is not None and not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"finetune: weight_decay={weight_decay!r} must be a number >= 0")
    if schedule not in _SCHEDULES:
        raise ValueError(f"finetune: schedule={schedule!r} must be one of {', '.join(map(repr, _SCHEDULES))}")
    if kd_alpha is not None:
        if not (isinstance(kd_alpha, (int, float)) and 0.0 <= kd_alpha <= 1.0):
            raise ValueError(f"finetune: kd_alpha={kd_alpha!r} must lie in [0, 1]")
        if teacher is None and kd_alpha > 0:
            raise ValueError(f"finetune: kd_alpha={kd_alpha!r} needs a teacher; pass teacher=original_model")
    if not (isinstance(kd_temperature, (int, float)) and kd_temperature > 0):
        raise ValueError(f"finetune: kd_temperature={kd_temperature!r} must be a number > 0")
    if not isinstance(feature_kd, (bool, int, float)) or feature_kd < 0:
        raise ValueError(f"finetune: feature_kd={feature_kd!r} must be a bool or a weight >= 0")
    if feature_kd and teacher is None:
        raise ValueError("finetune: feature_kd needs a teacher; pass teacher=original_model")
    if resume is True and checkpoint_dir is None:
        raise ValueError("finetune: resume=True needs checkpoint_dir (where last.pt is), or pass resume=PATH")
    if not isinstance(resume, (bool, str, os.PathLike)):
        raise TypeError(f"finetune: resume must be a bool or a checkpoint path, got {type(resume).__name__}")


def finetune(
    model: nn.Module,
    train_data: Iterable | Dataset,
    *,
    teacher: nn.Module | None = None,
    val_data: Iterable | Dataset | None = None,
    epochs: int = 1,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float | str | None = None,
    optimizer: str | OptimizerFactory = "sgd",
    weight_decay: float | None = None,
    schedule: str = "cosine",
    kd_alpha: float | None = None,
    kd_temperature: float = 4.0,
    feature_kd: bool | float = False,
    freeze_bn: bool = False,
    amp: bool | str | torch.dtype | None = None,
    device: torch.device | str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    log_every: int = 10,
    progress: bool = True,
    seed: int | None = 0,
    ddp_kwargs: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place (typically a converted model, with the original as teacher).

    Args:
        model: the model to train; moved to ``device`` and trained in place.
        train_data: batches of ``(inputs, labels, ...)`` or bare ``inputs`` tensors (unlabelled,
            for distillation). A ``DataLoader`` or any re-iterable of batches (a list works), or a
            map-style ``Dataset`` of samples, which is wrapped into a ``DataLoader`` with
            ``batch_size`` and a ``DistributedSampler`` (shuffled by ``seed`` and the epoch; also
            when not distributed). Labels are class indices ``[N]`` (or probabilities ``[N, C]``).
        teacher: the original model, for distillation. It is moved to ``device``, run in eval mode
            under ``no_grad`` and never updated; its train/eval flags are restored at the end.
        val_data: like ``train_data``; evaluated after every epoch (and when ``steps`` stops a run).
            With labels: cross-entropy and top-1 accuracy; without: distillation loss to ``teacher``.
        epochs: passes over ``train_data``.
        steps: if given, stop after this many optimizer steps in total (a cap on ``epochs``).
        batch_size: used only when ``train_data`` / ``val_data`` is a ``Dataset``.
        lr: peak learning rate. ``None`` (default) or ``"auto"``: a learning-rate range test
            picks it before training (about 40 extra steps on ``train_data``, on a copy of the
            starting state: model, BatchNorm statistics and RNG are restored, see
            :mod:`.lr_range`); the choice and the measured curve are in ``result.lr`` and
            ``result.lr_test``. With an optimizer factory the factory sets the rate.
        optimizer: ``"sgd"`` (momentum 0.9, Nesterov), ``"adamw"``, or a factory
            ``params -> torch.optim.Optimizer`` that sets its own lr and weight decay.
        weight_decay: on weights of dimension >= 2 only (default 1e-4 for SGD, 0.01 for AdamW).
        schedule: per-step learning-rate factor over the run's total steps: ``"cosine"`` (1 to 0),
            ``"constant"``, or ``"step"`` (x0.1 after 1/3 and 2/3 of the steps). ``"cosine"`` and
            ``"step"`` need a known length: a ``train_data`` with ``len()`` or ``steps``.
        kd_alpha: weight of distillation in ``(1 - a) * CE + a * KD`` on labelled batches
            (default 0.5 with a teacher, else 0). Unlabelled batches use KD alone if ``a > 0``.
        kd_temperature: softening temperature ``T`` of the distillation loss (scaled by ``T**2``).
        feature_kd: ``True`` (weight 1) or a weight: add the MSE between every ``SCCConv2d``'s
            (``SCCLinear``'s) output and the output of the teacher's ``nn.Conv2d`` (``nn.Linear``)
            at the same module path, on the same batch, summed over layers. Needs no labels.
        freeze_bn: keep BatchNorm running statistics fixed (BN layers in eval mode while the rest
            trains; their affine weights still learn). Good for short fine-tunes and small batches.
        amp: ``None``: bf16 autocast on CUDA where supported, else fp16 with a ``GradScaler``, and
            fp32 on CPU. Or ``"bf16"``, ``"fp16"`` (CUDA only), ``"off"``, ``True``, ``False``.
        device: default: ``cuda:LOCAL_RANK`` under torchrun with CUDA, else ``cuda``, else ``cpu``.
        checkpoint_dir: where ``last.pt`` (every epoch, and at a ``steps`` stop) and ``best.pt``
            are written, atomically, by rank 0.
        resume: ``True``: continue from ``checkpoint_dir/last.pt`` if it exists (else start
            fresh); or a checkpoint path. With the same arguments and data the continued run
            is bit-for-bit the uninterrupted one (model, optimizer, scheduler, scaler, step,
            position in the epoch, and the Python/NumPy/torch/CUDA/loader RNG states).
        log_every: record a :class:`StepStats` (and refresh the progress bar) every N steps.
        progress: show a tqdm bar on stderr (rank 0 only, and only if stderr is a terminal).
        seed: seeds Python, NumPy and torch (``seed + rank``) at a fresh start, and the order of
            wrapped ``Dataset`` s; ``None`` leaves the global RNGs alone.
        ddp_kwargs: extra keyword arguments for ``DistributedDataParallel`` (e.g.
            ``{"find_unused_parameters": True}``).

    Distributed: when the process was started by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` set) and no process group exists, one is created (NCCL on CUDA, gloo on CPU)
    and destroyed at the end; an existing group is used and left alone. The model is wrapped in
    ``DistributedDataParallel``; ``Dataset`` s and plain ``DataLoader`` s are sharded with a
    ``DistributedSampler`` (training) or an exact non-padding shard (validation); other
    iterables must shard themselves. Epoch and validation metrics are summed over ranks with
    ``all_reduce``; BatchNorm buffers are broadcast from rank 0 before evaluation and at the end,
    so all ranks finish with identical models. Only rank 0 logs, shows progress and writes.

    Returns:
        :class:`FinetuneResult`; the trained model is ``model`` itself (``result.model``).

    Example:
        >>> small, _ = scc_convert.convert(model, cg=4, co=0.5)                  # doctest: +SKIP
        >>> result = finetune(small, train_loader, teacher=model, val_data=val_loader,
        ...                   epochs=3, checkpoint_dir="ckpt")                    # doctest: +SKIP
        >>> result.final["val_accuracy"], result.best_checkpoint                  # doctest: +SKIP
    """
    start = time.perf_counter()
    _check_args(
        model, teacher, epochs, steps, batch_size, lr, optimizer, weight_decay, schedule,
        kd_alpha, kd_temperature, feature_kd, checkpoint_dir, resume, log_every,
    )
    ctx, dev = _setup(device)
    try:
        run = _Run(
            model=model, teacher=teacher, ctx=ctx, device=dev, epochs=epochs, steps=steps,
            kd_alpha=(0.5 if teacher is not None else 0.0) if kd_alpha is None else float(kd_alpha),
            kd_temperature=float(kd_temperature), feature_weight=float(feature_kd),
            freeze_bn=freeze_bn, amp_dtype=_resolve_amp(amp, dev),
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
            log_every=log_every, progress=progress, seed=seed,
        )
        train = _prepare_data(
            train_data, "train_data", train=True, batch_size=batch_size, ctx=ctx, seed=seed or 0
        )
        val = None
        if val_data is not None:
            val = _prepare_data(val_data, "val_data", train=False, batch_size=batch_size, ctx=ctx, seed=seed or 0)
        if lr is None and isinstance(optimizer, str):
            lr = "auto"
        return run.fit(train, val, optimizer, lr, weight_decay, schedule, resume, ddp_kwargs or {}, start)
    finally:
        if ctx.created:
            dist.destroy_process_group()
