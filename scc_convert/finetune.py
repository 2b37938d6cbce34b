"""Fine-tuning and distillation of converted models; runs unchanged under ``torchrun``.

:func:`finetune` trains a (converted) model in place with cross-entropy on labels, knowledge
distillation from the original model, feature distillation on the converted layers, or a mix,
with AMP, checkpoints that resume exactly, a progress bar, and DistributedDataParallel when the
process was started by ``torchrun``.

Conventions:

* accuracy is top-1, as a fraction in [0, 1]; losses are means per sample;
* a *step* is one optimizer update (one batch per rank); ``epoch`` numbers in the history are
  1-based; learning-rate schedules are per step;
* distillation loss is ``KL(teacher || student)`` on temperature-softened logits times ``T**2``
  (Hinton et al.), averaged over the batch; feature distillation is the mean squared error
  between each converted layer's output and the original conv's output, summed over layers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from tqdm import tqdm

from .io import atomic_write
from .nn import SCCConv2d, SCCLinear

__all__ = ["finetune", "FinetuneResult", "EpochStats", "StepStats", "CHECKPOINT_FORMAT"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "scc_convert.finetune/1"
"""The ``"format"`` entry of every checkpoint this module writes."""

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"

_OPTIMIZER_DEFAULTS = {"sgd": (0.01, 1e-4), "adamw": (1e-3, 0.01)}  # name -> (lr, weight_decay)
_SCHEDULES = ("cosine", "constant", "step")
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_FINAL_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
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


# -- results --------------------------------------------------------------------------------


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

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, as JSON-ready built-in types."""
        out = {k: v for k, v in self.__dict__.items() if k != "model"}
        out["history"] = [asdict(e) for e in self.history]
        out["log"] = [asdict(s) for s in self.log]
        return out


# -- distributed ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # a process group is in use (DDP wraps the model)
    created: bool = False  # this call created it, and destroys it at the end

    @property
    def main(self) -> bool:
        return self.rank == 0


def _torchrun_env() -> bool:
    return all(k in os.environ for k in _TORCHRUN_ENV)


def _resolve_device(device: torch.device | str | None, local_rank: int, distributed: bool) -> torch.device:
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"finetune: device={device!r} but CUDA is not available; pass device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
    return dev


def _setup(device: torch.device | str | None) -> tuple[_Dist, torch.device]:
    """Join (or, under ``torchrun``, create) the process group and pick the device."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return _Dist(rank, world, local, active=True), _resolve_device(device, local, True)
    if not _torchrun_env():
        return _Dist(), _resolve_device(device, 0, False)
    if not dist.is_available():
        warnings.warn(
            "finetune: torchrun variables are set but this PyTorch build has no torch.distributed; "
            "training on one process",
            stacklevel=3,
        )
        return _Dist(), _resolve_device(device, 0, False)
    rank, world, local = (int(os.environ[k]) for k in _TORCHRUN_ENV)
    dev = _resolve_device(device, local, True)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl", device_id=dev)
    else:
        dist.init_process_group(backend="gloo")
    return _Dist(rank, world, local, active=True, created=True), dev


def _all_reduce_sum(values: Tensor, ctx: _Dist) -> Tensor:
    if ctx.active and ctx.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _broadcast_buffers(model: nn.Module, ctx: _Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart after the last step)."""
    if ctx.active and ctx.world_size > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


# -- data -----------------------------------------------------------------------------------


class _ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``range(n)``: every sample exactly once over all
    ranks (unlike ``DistributedSampler``, which pads), so evaluation sums are exact."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _is_sharded(loader: DataLoader) -> bool:
    samplers = (loader.sampler, getattr(loader.batch_sampler, "sampler", None))
    return any(isinstance(s, (DistributedSampler, _ShardSampler)) for s in samplers)


def _reshard(loader: DataLoader, sampler: Sampler[int]) -> DataLoader:
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs)


def _prepare_data(data: Any, name: str, *, train: bool, batch_size: int, ctx: _Dist, seed: int) -> Iterable:
    """Turn ``train_data`` / ``val_data`` into an iterable of batches, sharded across ranks."""
    distributed = ctx.active and ctx.world_size > 1
    if isinstance(data, Tensor):
        raise TypeError(
            f"finetune: {name} is a single Tensor; pass an iterable of batches, e.g. [x] or "
            f"DataLoader(TensorDataset(x, y), batch_size=64)"
        )
    if isinstance(data, DataLoader):
        if not distributed or _is_sharded(data):
            return data
        plain = (
            not isinstance(data.dataset, IterableDataset)
            and data.batch_size is not None
            and type(data.batch_sampler) is BatchSampler
            and type(data.sampler) in (RandomSampler, SequentialSampler)
        )
        if plain:
            if train:
                shuffle = isinstance(data.sampler, RandomSampler)
                sampler: Sampler[int] = DistributedSampler(
                    data.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed
                )
            else:
                sampler = _ShardSampler(len(data.dataset), ctx.rank, ctx.world_size)
            return _reshard(data, sampler)
        warnings.warn(
            f"finetune: {name} is a DataLoader with a custom sampler; it is not sharded, so every "
            f"rank reads all of it (use a DistributedSampler, or pass the Dataset)",
            stacklevel=3,
        )
        return data
    if isinstance(data, IterableDataset):
        if distributed:
            warnings.warn(
                f"finetune: {name} is an IterableDataset, which cannot be sharded by index; every "
                f"rank must yield its own shard, and the same number of batches",
                stacklevel=3,
            )
        return DataLoader(data, batch_size=batch_size)
    if isinstance(data, Dataset):
        n = len(data)  # type: ignore[arg-type]
        if train:
            sampler = DistributedSampler(data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
            drop_last = len(sampler) >= batch_size  # no ragged last batch (BatchNorm) when avoidable
            return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
        return DataLoader(data, batch_size=batch_size, sampler=_ShardSampler(n, ctx.rank, ctx.world_size))
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(
            f"finetune: {name} must be a DataLoader, a Dataset or an iterable of batches; got "
            f"{type(data).__name__}"
        ) from None
    if iterator is data and train:
        raise TypeError(
            f"finetune: {name} is an iterator ({type(data).__name__}), which can be read only once; "
            f"pass a re-iterable such as a list of batches or a DataLoader"
        )
    if distributed:
        warnings.warn(
            f"finetune: {name} is a plain iterable and is not sharded: every rank must yield its own "
            f"shard and the same number of batches (or pass a Dataset / DataLoader)",
            stacklevel=3,
        )
    return data


def _length(data: Iterable) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def _set_epoch(data: Iterable, epoch: int) -> None:
    seen: set[int] = set()
    candidates = [data, getattr(data, "sampler", None), getattr(data, "batch_sampler", None)]
    candidates.append(getattr(candidates[2], "sampler", None))
    for obj in candidates:
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


def _data_generators(data: Iterable) -> list[torch.Generator]:
    """The private generators a loader shuffles with (their state is part of exact resume)."""
    out: list[torch.Generator] = []
    for obj in (data, getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in out):
            out.append(gen)
    return out


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        if len(batch) == 1:
            return batch[0], None
        if not isinstance(batch[1], Tensor):
            raise TypeError(f"finetune: labels must be a Tensor, got {type(batch[1]).__name__}")
        return batch[0], batch[1]
    raise TypeError(
        f"finetune: a batch must be a Tensor (inputs only) or a tuple/list (inputs, labels, ...); "
        f"got {type(batch).__name__}"
    )


# -- RNG state ------------------------------------------------------------------------------


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


# -- losses ---------------------------------------------------------------------------------


def _kd_loss(student: Tensor, teacher: Tensor, temperature: float, reduction: str = "batchmean") -> Tensor:
    if student.shape != teacher.shape:
        raise ValueError(
            f"finetune: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
            f"differ; distillation needs the same classes (pass the original model as teacher)"
        )
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction=reduction,
        log_target=True,
    )
    return kl * (t * t)


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    target = labels.argmax(dim=1) if labels.is_floating_point() and labels.dim() == 2 else labels
    return (logits.argmax(dim=1) == target).sum()


class _FeatureDistiller:
    """Hooks that record each converted layer's output and the original conv's output.

    A pair is every ``SCCConv2d`` (``SCCLinear``) in the student whose module path names an
    ``nn.Conv2d`` (``nn.Linear``) in the teacher (the converter replaces layers at the same path). Outputs are recorded only inside
    :meth:`recording`, so evaluation and the user's own forwards are untouched.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        teacher_modules = dict(teacher.named_modules())
        self.names = [
            name
            for name, module in student.named_modules()
            if (isinstance(module, SCCConv2d) and isinstance(teacher_modules.get(name), nn.Conv2d))
            or (isinstance(module, SCCLinear) and isinstance(teacher_modules.get(name), nn.Linear))
        ]
        if not self.names:
            raise ValueError(
                "finetune: feature_kd is on but no SCCConv2d / SCCLinear in the model has an nn.Conv2d / "
                "nn.Linear at the same module path in the teacher; pass the original (unconverted) model as teacher, or "
                "feature_kd=False"
            )
        student_modules = dict(student.named_modules())
        self._on = False
        self._student: dict[str, list[Tensor]] = {n: [] for n in self.names}
        self._teacher: dict[str, list[Tensor]] = {n: [] for n in self.names}
        self._handles = []
        for name in self.names:
            self._handles.append(student_modules[name].register_forward_hook(self._hook(self._student[name])))
            self._handles.append(teacher_modules[name].register_forward_hook(self._hook(self._teacher[name])))

    def _hook(self, store: list[Tensor]):
        def record(module: nn.Module, args: Any, output: Tensor) -> None:
            if self._on:
                store.append(output)

        return record

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self._on = True
        try:
            yield
        finally:
            self._on = False

    def loss(self) -> Tensor:
        """Sum over layers of the MSE between student and teacher outputs; clears the records."""
        total: Tensor | None = None
        for name in self.names:
            s_out, t_out = self._student[name], self._teacher[name]
            if len(s_out) != len(t_out):
                raise RuntimeError(
                    f"finetune: layer {name!r} ran {len(s_out)} times in the model but {len(t_out)} "
                    f"times in the teacher; feature_kd needs the same calls"
                )
            for s, t in zip(s_out, t_out):
                if s.shape != t.shape:
                    raise ValueError(
                        f"finetune: feature_kd layer {name!r}: model output {tuple(s.shape)} differs from "
                        f"teacher output {tuple(t.shape)}"
                    )
                term = F.mse_loss(s.float(), t.detach().float())
                total = term if total is None else total + term
            s_out.clear()
            t_out.clear()
        if total is None:
            raise RuntimeError("finetune: feature_kd recorded no layer outputs in this step")
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# -- checkpoints ----------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    """Readers see the old checkpoint or the new one, never a partial one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite=True)


class _Meter:
    """Sums of loss, samples and correct predictions, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, n, correct, labelled

    def add(self, loss: Tensor, n: int, correct: Tensor | None, labelled: int) -> None:
        self.sums[0] += loss.detach().double() * n
        self.sums[1] += n
        if correct is not None:
            self.sums[2] += correct
            self.sums[3] += labelled

    def reset(self) -> None:
        self.sums.zero_()

    def state(self) -> list[float]:
        return self.sums.tolist()

    def load(self, values: list[float]) -> None:
        self.sums.copy_(torch.tensor(values, dtype=torch.float64))

    @staticmethod
    def summary(values: list[float]) -> tuple[float, float | None]:
        loss_sum, n, correct, labelled = values
        return loss_sum / max(n, 1.0), (correct / labelled if labelled else None)


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


# -- the loop -------------------------------------------------------------------------------


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
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"finetune: lr={lr!r} must be a number > 0")
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


def _stderr_is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def finetune(
    model: nn.Module,
    train_data: Iterable | Dataset,
    *,
    teacher: nn.Module | None = None,
    val_data: Iterable | Dataset | None = None,
    epochs: int = 1,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
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
        lr: peak learning rate (default 0.01 for SGD, 1e-3 for AdamW).
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
        return run.fit(train, val, optimizer, lr, weight_decay, schedule, resume, ddp_kwargs or {}, start)
    finally:
        if ctx.created:
            dist.destroy_process_group()


class _Run:
    """One call of :func:`finetune`: configuration, the training loop, evaluation, checkpoints."""

    def __init__(
        self,
        *,
        model: nn.Module,
        teacher: nn.Module | None,
        ctx: _Dist,
        device: torch.device,
        epochs: int,
        steps: int | None,
        kd_alpha: float,
        kd_temperature: float,
        feature_weight: float,
        freeze_bn: bool,
        amp_dtype: torch.dtype | None,
        checkpoint_dir: Path | None,
        log_every: int,
        progress: bool,
        seed: int | None,
    ) -> None:
        self.model = model
        self.teacher = teacher
        self.ctx = ctx
        self.device = device
        self.epochs = epochs
        self.steps = steps
        self.kd_alpha = kd_alpha
        self.temperature = kd_temperature
        self.feature_weight = feature_weight
        self.freeze_bn = freeze_bn
        self.amp_dtype = amp_dtype
        self.checkpoint_dir = checkpoint_dir
        self.log_every = log_every
        self.progress = progress
        self.seed = seed
        self.state = _State()
        self.use_teacher = teacher is not None and (kd_alpha > 0 or feature_weight > 0)
        self.features: _FeatureDistiller | None = None
        self._improved = False

    # -- pieces --------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_mode(self) -> None:
        self.model.train()
        if self.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def _loss(
        self, logits: Tensor, teacher_logits: Tensor | None, labels: Tensor | None
    ) -> Tensor:
        kd = None
        if teacher_logits is not None and self.kd_alpha > 0:
            kd = _kd_loss(logits, teacher_logits, self.temperature)
        if labels is not None:
            ce = F.cross_entropy(logits.float(), labels)
            loss = ce if kd is None else (1.0 - self.kd_alpha) * ce + self.kd_alpha * kd
        elif kd is not None:
            loss = kd
        elif self.features is not None:
            loss = logits.new_zeros((), dtype=torch.float32)
        else:
            raise ValueError(
                "finetune: a batch has no labels and there is no distillation to learn from; pass "
                "teacher=original_model (with kd_alpha > 0 or feature_kd=True), or yield (inputs, labels)"
            )
        if self.features is not None:
            loss = loss + self.feature_weight * self.features.loss()
        return loss

    def _evaluate(self, data: Iterable) -> tuple[float | None, float | None]:
        """``(loss, accuracy)`` over all ranks' shards of ``data``."""
        _broadcast_buffers(self.model, self.ctx)
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss*n, n, correct, labelled
        with torch.no_grad():
            for batch in data:
                x, y = _split_batch(batch)
                x = x.to(self.device, non_blocking=True)
                with self._autocast():
                    logits = self.model(x).float()
                if y is not None:
                    y = y.to(self.device, non_blocking=True)
                    sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
                    sums[2] += _correct(logits, y)
                    sums[3] += x.shape[0]
                elif self.teacher is not None:
                    with self._autocast():
                        teacher_logits = self.teacher(x)
                    sums[0] += _kd_loss(logits, teacher_logits, self.temperature, reduction="sum").double()
                else:
                    raise ValueError(
                        "finetune: val_data batches have no labels and there is no teacher to compare "
                        "with; yield (inputs, labels) or pass teacher="
                    )
                sums[1] += x.shape[0]
        loss_sum, n, correct, labelled = _all_reduce_sum(sums, self.ctx).tolist()
        if n == 0:
            raise ValueError("finetune: val_data yielded no batches")
        return loss_sum / n, (correct / labelled if labelled else None)

    def _checkpoint(
        self, payload: dict[str, Any], rng: dict[str, Any], epoch_rng: dict[str, Any], is_best: bool
    ) -> None:
        """Write ``last.pt`` (and ``best.pt``) with every rank's RNG states: ``rng`` where the run
        goes on, ``epoch_rng`` where the epoch in progress began. Collective under DDP."""
        assert self.checkpoint_dir is not None
        states = [(rng, epoch_rng)]
        if self.ctx.active and self.ctx.world_size > 1:
            states = [None] * self.ctx.world_size
            dist.all_gather_object(states, (rng, epoch_rng))
        if not self.ctx.main:
            return
        payload["rng"] = [r for r, _ in states]
        payload["epoch_rng"] = [e for _, e in states]
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(payload, self.checkpoint_dir / LAST_CHECKPOINT)
        if is_best:
            _atomic_save(payload, self.checkpoint_dir / BEST_CHECKPOINT)

    def _load(self, resume: bool | str | os.PathLike, optimizer, scheduler, scaler) -> dict[str, Any] | None:
        if resume is False:
            return None
        path = self.checkpoint_dir / LAST_CHECKPOINT if resume is True else Path(resume)
        if not path.is_file():
            if resume is True:
                if self.ctx.main:
                    logger.info("finetune: no checkpoint at %s; starting from scratch", path)
                return None
            raise FileNotFoundError(f"finetune: resume={str(resume)!r}: no such checkpoint file")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"finetune: {path} is not a finetune checkpoint (format {CHECKPOINT_FORMAT!r})")
        self.model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        s = ckpt["state"]
        self.state = _State(
            epoch=s["epoch"],
            batch_in_epoch=s["batch_in_epoch"],
            step=s["step"],
            history=[EpochStats(**e) for e in s["history"]],
            log=[StepStats(**r) for r in s["log"]],
            best_value=s["best_value"],
            best_epoch=s["best_epoch"],
            epoch_meter=s["epoch_meter"],
            window_meter=s["window_meter"],
            epoch_seconds=s["epoch_seconds"],
        )
        if ckpt["world_size"] != self.ctx.world_size:
            warnings.warn(
                f"finetune: checkpoint {path} was written with world_size={ckpt['world_size']}, this run "
                f"has {self.ctx.world_size}; data order and RNG will not continue exactly",
                stacklevel=4,
            )
            return None
        if self.ctx.main:
            logger.info("finetune: resumed from %s at step %d (epoch %d)", path, self.state.step, self.state.epoch + 1)
        return {"rng": ckpt["rng"][self.ctx.rank], "epoch_rng": ckpt["epoch_rng"][self.ctx.rank]}

    def _payload(self, optimizer, scheduler, scaler) -> dict[str, Any]:
        s = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "world_size": self.ctx.world_size,
            "state": {
                "epoch": s.epoch,
                "batch_in_epoch": s.batch_in_epoch,
                "step": s.step,
                "history": [asdict(e) for e in s.history],
                "log": [asdict(r) for r in s.log],
                "best_value": s.best_value,
                "best_epoch": s.best_epoch,
                "epoch_meter": s.epoch_meter,
                "window_meter": s.window_meter,
                "epoch_seconds": s.epoch_seconds,
            },
        }

    # -- fit -----------------------------------------------------------------------------

    def fit(
        self,
        train: Iterable,
        val: Iterable | None,
        optimizer_spec: str | OptimizerFactory,
        lr: float | None,
        weight_decay: float | None,
        schedule: str,
        resume: bool | str | os.PathLike,
        ddp_kwargs: dict[str, Any],
        start: float,
    ) -> FinetuneResult:
        model, teacher, ctx, dev = self.model, self.teacher, self.ctx, self.device
        per_epoch = _length(train)
        if per_epoch == 0:
            raise ValueError("finetune: train_data yielded no batches (is it empty, or smaller than one batch?)")
        candidates = [t for t in (self.steps, None if per_epoch is None else per_epoch * self.epochs) if t]
        total = min(candidates) if candidates else None
        if total is None and schedule != "constant":
            raise ValueError(
                f"finetune: schedule={schedule!r} needs the run's length, but train_data has no len(); "
                f"pass steps=N or schedule='constant'"
            )
        metric = "val_accuracy" if val is not None else "train_loss"
        flags = {m: m.training for m in model.modules()}
        teacher_flags = {} if teacher is None else {m: m.training for m in teacher.modules()}
        self.features = _FeatureDistiller(model, teacher) if self.feature_weight > 0 else None
        try:
            model.to(dev)
            if teacher is not None:
                teacher.to(dev).eval()
            optimizer = _build_optimizer(model, optimizer_spec, lr, weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(schedule, total))
            scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16 and dev.type == "cuda")
            generators = _data_generators(train)
            restored = self._load(resume, optimizer, scheduler, scaler)
            if restored is None and self.seed is not None and self.state.step == 0:
                _seed_everything(self.seed, ctx.rank)
            net: nn.Module = model
            if ctx.active:
                from torch.nn.parallel import DistributedDataParallel

                device_ids = [dev.index] if dev.type == "cuda" else None
                net = DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)
            show = self.progress and ctx.main and _stderr_is_tty()
            self._loop(net, train, val, per_epoch, optimizer, scheduler, scaler, generators, restored, show)
            _broadcast_buffers(model, ctx)
        finally:
            if self.features is not None:
                self.features.remove()
            for module, was_training in (flags | teacher_flags).items():
                module.training = was_training
        s = self.state
        if val is not None and s.history and s.history[-1].val_accuracy is None:
            metric = "val_loss"
        last = final_best = None
        if self.checkpoint_dir is not None and ctx.main:
            last = str(self.checkpoint_dir / LAST_CHECKPOINT)
            if (self.checkpoint_dir / BEST_CHECKPOINT).is_file():
                final_best = str(self.checkpoint_dir / BEST_CHECKPOINT)
        tail = s.history[-1] if s.history else None
        return FinetuneResult(
            model=model,
            history=list(s.history),
            log=list(s.log),
            best_checkpoint=final_best,
            last_checkpoint=last if last is not None and Path(last).is_file() else None,
            best_metric=metric,
            best_value=s.best_value,
            best_epoch=s.best_epoch,
            wall_time_s=time.perf_counter() - start,
            steps=s.step,
            final={k: getattr(tail, k) if tail else None for k in _FINAL_METRICS},
            amp={None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype],
            device=str(dev),
            world_size=ctx.world_size,
        )

    def _loop(
        self,
        net: nn.Module,
        train: Iterable,
        val: Iterable | None,
        per_epoch: int | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        generators: list[torch.Generator],
        restored: dict[str, Any] | None,
        show: bool,
    ) -> None:
        s, dev = self.state, self.device
        cap = self.steps if self.steps is not None else math.inf
        epoch_meter, window_meter = _Meter(dev), _Meter(dev)
        epoch_meter.load(s.epoch_meter)
        window_meter.load(s.window_meter)
        while s.epoch < self.epochs and s.step < cap:
            epoch_start = time.perf_counter() - s.epoch_seconds
            _set_epoch(train, s.epoch)
            self._train_mode()
            batches, epoch_rng = self._open_epoch(train, generators, restored)
            restored = None
            bar = tqdm(
                total=per_epoch,
                initial=s.batch_in_epoch,
                desc=f"epoch {s.epoch + 1}/{self.epochs}",
                unit="step",
                disable=not show,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            exhausted = True
            with bar:
                for batch in batches:
                    self._step(net, batch, optimizer, scheduler, scaler, epoch_meter, window_meter)
                    s.step += 1
                    s.batch_in_epoch += 1
                    bar.update(1)
                    if s.step % self.log_every == 0:
                        loss, acc = _Meter.summary(window_meter.state())
                        window_meter.reset()
                        s.log.append(StepStats(s.step, s.epoch + 1, loss, acc, optimizer.param_groups[0]["lr"]))
                        bar.set_postfix(_postfix(s.log[-1]))
                        logger.debug("finetune: step %d loss %.4f accuracy %s", s.step, loss, acc)
                    if s.step >= cap:
                        exhausted = per_epoch is not None and s.batch_in_epoch == per_epoch
                        break
                s.epoch_meter, s.window_meter = epoch_meter.state(), window_meter.state()
                if not exhausted:  # stopped by `steps`: the run continues from here, before evaluation
                    rng_here = _rng_state(generators)
                stats = self._end_epoch(val, optimizer, epoch_meter, time.perf_counter() - epoch_start, exhausted)
                bar.set_postfix(_postfix(stats))
            if exhausted:
                s.epoch += 1
                s.batch_in_epoch = 0
                s.epoch_seconds = 0.0
                epoch_meter.reset()
                s.epoch_meter = epoch_meter.state()
                rng_here = _rng_state(generators)
                epoch_rng = rng_here
            else:
                s.epoch_seconds = time.perf_counter() - epoch_start
            if self.checkpoint_dir is not None:
                self._checkpoint(self._payload(optimizer, scheduler, scaler), rng_here, epoch_rng, self._improved)

    def _open_epoch(
        self, train: Iterable, generators: list[torch.Generator], restored: dict[str, Any] | None
    ) -> tuple[Iterator, dict[str, Any]]:
        """An iterator over this epoch's batches, past the ``batch_in_epoch`` already trained, with
        every RNG where the uninterrupted run has it; and the RNG state at the epoch's start."""
        skip = self.state.batch_in_epoch
        if restored is not None and skip > 0:
            _set_rng_state(restored["epoch_rng"], generators)  # replay the epoch's data order...
        elif restored is not None:
            _set_rng_state(restored["rng"], generators)
        epoch_rng = _rng_state(generators)
        batches = iter(train)
        for _ in range(skip):
            next(batches)
        if restored is not None and skip > 0:
            _set_rng_state(restored["rng"], generators)  # ...then go on from where training stopped
        return batches, epoch_rng

    def _step(
        self,
        net: nn.Module,
        batch: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        epoch_meter: _Meter,
        window_meter: _Meter,
    ) -> None:
        x, y = _split_batch(batch)
        x = x.to(self.device, non_blocking=True)
        if y is not None:
            y = y.to(self.device, non_blocking=True)
        recording = self.features.recording() if self.features is not None else contextlib.nullcontext()
        with self._autocast(), recording:
            teacher_logits = None
            if self.use_teacher:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
            logits = net(x)
            if not isinstance(logits, Tensor):
                raise TypeError(
                    f"finetune: the model returned {type(logits).__name__}; it must return a logits Tensor [N, classes]"
                )
            loss = self._loss(logits, teacher_logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        correct = None if y is None else _correct(logits.detach(), y)
        for meter in (epoch_meter, window_meter):
            meter.add(loss, x.shape[0], correct, x.shape[0])

    def _end_epoch(
        self,
        val: Iterable | None,
        optimizer: torch.optim.Optimizer,
        epoch_meter: _Meter,
        seconds: float,
        complete: bool,
    ) -> EpochStats:
        """Reduce the epoch's training metrics over ranks, validate, record, track the best."""
        s = self.state
        train_loss, train_acc = _Meter.summary(_all_reduce_sum(epoch_meter.sums.clone(), self.ctx).tolist())
        val_loss = val_acc = None
        if val is not None:
            val_loss, val_acc = self._evaluate(val)
        stats = EpochStats(
            epoch=s.epoch + 1,
            step=s.step,
            batches=s.batch_in_epoch,
            train_loss=train_loss,
            train_accuracy=train_acc,
            val_loss=val_loss,
            val_accuracy=val_acc,
            lr=optimizer.param_groups[0]["lr"],
            seconds=seconds,
            complete=complete,
        )
        if s.history and s.history[-1].epoch == stats.epoch and not s.history[-1].complete:
            s.history[-1] = stats  # the epoch a resumed run finished
        else:
            s.history.append(stats)
        if val_acc is not None:
            value, better = val_acc, lambda new, old: new > old
        else:
            value, better = (val_loss if val is not None else train_loss), lambda new, old: new < old
        self._improved = s.best_value is None or better(value, s.best_value)
        if self._improved:
            s.best_value, s.best_epoch = value, stats.epoch
        if self.ctx.main:
            logger.info(
                "finetune: epoch %d%s step %d: train loss %.4f acc %s | val loss %s acc %s",
                stats.epoch, "" if complete else " (stopped by steps)", stats.step, train_loss,
                _fmt(train_acc), _fmt(val_loss), _fmt(val_acc),
            )
        return stats


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _postfix(stats: EpochStats | StepStats) -> dict[str, str]:
    """Progress-bar fields: training loss/accuracy, and validation ones at the end of an epoch."""
    if isinstance(stats, StepStats):
        fields = {"loss": stats.loss, "acc": stats.accuracy}
    else:
        fields = {"loss": stats.train_loss, "acc": stats.train_accuracy,
                  "val_loss": stats.val_loss, "val_acc": stats.val_accuracy}
    return {k: f"{v:.4f}" for k, v in fields.items() if v is not None}
