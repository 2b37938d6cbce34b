"""The training loop of :func:`finetune`: steps, evaluation, checkpoints, resume, progress."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from .checkpoints import (
    BEST_CHECKPOINT,
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    _atomic_save,
    _rng_state,
    _seed_everything,
    _set_rng_state,
    _State,
)
from .data import _data_generators, _length, _set_epoch, _split_batch
from .distributed import _all_reduce_sum, _broadcast_buffers, _Dist
from .losses import _correct, _FeatureDistiller, _kd_loss
from . import lr_range
from .optim import _OPTIMIZER_DEFAULTS, OptimizerFactory, _build_optimizer, _lr_factor
from .results import EpochStats, FinetuneResult, StepStats

logger = logging.getLogger("scc_convert.finetune")

_FINAL_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


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


def _stderr_is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


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

    def _resume_path(self, resume: bool | str | os.PathLike) -> Path | None:
        """The checkpoint this run continues from, or ``None`` for a fresh start."""
        if resume is False:
            return None
        path = self.checkpoint_dir / LAST_CHECKPOINT if resume is True else Path(resume)
        if not path.is_file():
            if resume is True:
                if self.ctx.main:
                    logger.info("finetune: no checkpoint at %s; starting from scratch", path)
                return None
            raise FileNotFoundError(f"finetune: resume={str(resume)!r}: no such checkpoint file")
        return path

    def _load(self, path: Path | None, optimizer, scheduler, scaler) -> dict[str, Any] | None:
        if path is None:
            return None
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
            lr_test=s.get("lr_test"),
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
                "lr_test": s.lr_test,
            },
        }

    def _find_lr(self, net: nn.Module, train: Iterable, optimizer_spec, weight_decay, scaler, generators) -> float:
        """``lr="auto"``: a range test on the training batches, on a copy of the run's start
        (model, BatchNorm statistics and every RNG are put back afterwards, so the run itself
        is the one a fixed rate would give). Losses are averaged over ranks, so every rank
        picks the same rate."""
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        rng = _rng_state(generators)
        optimizer = _build_optimizer(self.model, optimizer_spec, lr_range.START, weight_decay)
        meter = _Meter(self.device)
        batches = iter(())

        def step(lr: float) -> float:
            nonlocal batches
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches, None)
            if batch is None:
                batches = iter(train)
                batch = next(batches, None)
            meter.reset()
            self._step(net, batch, optimizer, None, scaler, meter, meter)
            loss_sum, n = _all_reduce_sum(meter.sums[:2].clone(), self.ctx).tolist()
            return loss_sum / max(n, 1.0)

        self._train_mode()
        try:
            test = lr_range.range_test(step, _OPTIMIZER_DEFAULTS[optimizer_spec][0])
        finally:
            self.model.load_state_dict(saved)
            _set_rng_state(rng, generators)
        self.state.lr_test = test.to_dict()
        if self.ctx.main:
            logger.info("finetune: lr='auto' chose %.3g (%s)", test.lr, test.reason)
        return test.lr

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
            generators = _data_generators(train)
            resume_path = self._resume_path(resume)
            if resume_path is None and self.seed is not None:
                _seed_everything(self.seed, ctx.rank)
            net: nn.Module = model
            if ctx.active:
                from torch.nn.parallel import DistributedDataParallel

                device_ids = [dev.index] if dev.type == "cuda" else None
                net = DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)
            scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16 and dev.type == "cuda")
            if lr == "auto":  # a resumed run takes its rate from the checkpoint's scheduler
                lr = None if resume_path is not None else self._find_lr(net, train, optimizer_spec, weight_decay, scaler, generators)
            optimizer = _build_optimizer(model, optimizer_spec, lr, weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(schedule, total))
            restored = self._load(resume_path, optimizer, scheduler, scaler)
            peak_lr = None if callable(optimizer_spec) else float(scheduler.base_lrs[0])
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
            lr=peak_lr,
            lr_test=s.lr_test,
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
        if scheduler is not None:
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
