"""Losses: distillation on logits, feature distillation on converted layers, accuracy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import SCCConv2d, SCCLinear


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
