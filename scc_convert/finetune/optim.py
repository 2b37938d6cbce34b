"""Optimizer, learning-rate schedule and mixed precision of a fine-tuning run."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

_OPTIMIZER_DEFAULTS = {"sgd": (0.01, 1e-4), "adamw": (1e-3, 0.01)}  # name -> (lr, weight_decay)
_SCHEDULES = ("cosine", "constant", "step")
_AMP_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": None,
    "float32": None,
    "off": None,
}

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def _resolve_amp(amp: bool | str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    if amp is None or amp is True:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp is True else None
    if amp is False:
        return None
    if isinstance(amp, str) and amp.lower() in _AMP_NAMES:
        dtype = _AMP_NAMES[amp.lower()]
    elif isinstance(amp, torch.dtype) and amp in (torch.bfloat16, torch.float16, torch.float32):
        dtype = None if amp == torch.float32 else amp
    else:
        raise ValueError(f"finetune: amp={amp!r} must be None (automatic), True/False, 'bf16', 'fp16' or 'off'")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("finetune: amp='fp16' needs CUDA; on CPU use amp='bf16' or amp=None (fp32)")
    return dtype


def _build_optimizer(
    model: nn.Module, optimizer: str | OptimizerFactory, lr: float | None, weight_decay: float | None
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("finetune: the model has no parameter with requires_grad=True; nothing to train")
    if callable(optimizer) and not isinstance(optimizer, str):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"finetune: optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer"
            )
        return opt
    default_lr, default_wd = _OPTIMIZER_DEFAULTS[optimizer]
    lr = default_lr if lr is None else lr
    wd = default_wd if weight_decay is None else weight_decay
    # No weight decay on biases and normalisation parameters (the 1-D ones).
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [
        group
        for group in ({"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0})
        if group["params"]
    ]
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def _lr_factor(schedule: str, total: int | None) -> Callable[[int], float]:
    if schedule == "constant":
        return lambda step: 1.0
    assert total is not None
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return lambda step: 0.1 ** min(2, (3 * step) // total)  # "step": x0.1 at 1/3 and at 2/3
