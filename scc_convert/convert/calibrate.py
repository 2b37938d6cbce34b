"""Calibration for ``init="lsq"``: layer-by-layer least-squares reconstruction.

Two forward passes over the calibration batch, whatever the number of layers:

1. the original model, with hooks that keep each layer's outputs at a fixed random sample of
   pixels (the targets);
2. the model being converted, in which every layer to convert is a :class:`_Fitting`
   placeholder. When the forward reaches it, its input already comes from the layers
   converted before it; it fits its SCC against the targets (:func:`solve_windows`:
   ridge least squares with an intercept in fp64, one Gram matrix per window, assignment by
   residual), becomes that SCC, and passes the SCC's output on.

The ridge weight, and whether the ridge pulls toward zero or toward the original layer's
sliced weights, are chosen per layer by cross-validation over the calibration images
(:data:`FOLDS` folds, images held out whole): deep layers see few pixels per image (49 at
7x7) and an unregularised fit then reproduces the calibration set and nothing else.

The calibration data is run as one batch (it is concatenated), so keep it to the few dozen
images the method needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..geometry import SCCGeometry
from .transfer import solve_windows_cv

__all__ = ["calibration_batch", "capture_targets", "fit_in_order", "recalibrate_batchnorm", "set_module"]

MAX_SAMPLES = 8192  # pixels per layer entering the least-squares problem
FOLDS = 3  # image folds of the cross-validated ridge choice
RIDGES = (1e-4, 1e-2, 1e-1, 1.0)  # ridge weights tried, relative to the mean Gram diagonal


def calibration_batch(data: Tensor | Iterable, device: torch.device, dtype: torch.dtype) -> Tensor:
    """One input batch from a tensor, or an iterable of tensors or ``(input, ...)`` tuples."""
    if isinstance(data, Tensor):
        parts = [data]
    else:
        parts = []
        for item in data:
            if isinstance(item, (tuple, list)):
                item = item[0]
            if isinstance(item, dict):
                raise TypeError("calib_data batches must be tensors or (input, label) pairs, not dicts")
            if not isinstance(item, Tensor):
                raise TypeError(f"calib_data must yield tensors, got {type(item).__name__}")
            parts.append(item)
    if not parts:
        raise ValueError("calib_data is empty: init='lsq' needs at least one calibration batch")
    x = torch.cat([p if p.dim() == 4 else p.unsqueeze(0) for p in parts])
    return x.to(device=device, dtype=dtype)


def _rows(t: Tensor, features_last: bool) -> Tensor:
    """``[positions, C]``: the pixels of a ``[N, C, H, W]`` tensor, or the rows of a
    ``[..., C]`` one (``features_last``: a linear layer's input or output)."""
    if features_last:
        return t.reshape(-1, t.shape[-1])
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class _Sample:
    """A fixed random subset of output positions of one layer, and the original outputs there."""

    def __init__(self, count: int, seed: int, features_last: bool) -> None:
        self.count, self.seed, self.features_last = count, seed, features_last
        self.index: Tensor | None = None
        self.images: Tensor | None = None  # which calibration image each sampled row is from
        self.target: Tensor | None = None

    def take(self, t: Tensor) -> Tensor:
        rows = _rows(t, self.features_last)
        if self.index is None:
            gen = torch.Generator().manual_seed(self.seed)
            n = rows.shape[0]
            idx = torch.randperm(n, generator=gen)[: self.count] if n > self.count else torch.arange(n)
            self.index = idx.to(rows.device)
            self.images = idx // max(1, n // t.shape[0])
        return rows.index_select(0, self.index)


def capture_targets(model: nn.Module, layers: dict[str, nn.Module], x: Tensor, seed: int = 0) -> dict[str, _Sample]:
    """Run the original model once; keep each layer's outputs at its sampled pixels."""
    samples = {name: _Sample(MAX_SAMPLES, seed + i, isinstance(m, nn.Linear)) for i, (name, m) in enumerate(layers.items())}
    handles = []
    for name, module in layers.items():
        def hook(_m, _inp, out, s=samples[name]):
            if s.target is None:
                s.target = s.take(out).float()

        handles.append(module.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, s in samples.items() if s.target is None]
    if missing:
        raise RuntimeError(f"layers not reached by the calibration forward: {missing}")
    return samples


class _Fitting(nn.Module):
    """Stands in for a layer during the fitting pass; becomes its SCC on first call."""

    def __init__(self, name: str, prepare: Callable[[Tensor], Tensor], geom: SCCGeometry, intercept: bool,
                 sample: _Sample, build: Callable[..., nn.Module], on_done: Callable[[str, nn.Module, float], None],
                 prior: Tensor | None = None) -> None:
        super().__init__()
        self.name, self.prepare, self.geom, self.intercept = name, prepare, geom, intercept
        self.sample, self.build, self.on_done, self.prior = sample, build, on_done, prior
        self.result: nn.Module | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.result is None:
            u = self.sample.take(self.prepare(x)).double()  # the SCC's own input
            y = self.sample.target.to(u.device).double()
            if self.intercept:
                u = torch.cat([u, u.new_ones(u.shape[0], 1)], 1)
            centred = y - y.mean(0)
            folds = [_moments(u[m], y[m]) for m in _fold_masks(self.sample.images.to(u.device), FOLDS)]
            window_of, weight, bias, err = solve_windows_cv(folds, self.geom, self.intercept, RIDGES, self.prior)
            self.result = self.build(window_of, weight, bias)
            total = centred.square().sum().item()
            self.on_done(self.name, self.result, err.sum().item() / total if total > 0 else 0.0)
        return self.result(x)


def _moments(u: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return u.t() @ u, u.t() @ y, y.square().sum(0)


def _fold_masks(images: Tensor, folds: int) -> list[Tensor]:
    """Row masks splitting the sampled rows into ``folds`` groups of whole images (fewer with
    fewer images; one, all rows, with a single image)."""
    ids = images.unique(sorted=True)
    k = min(folds, ids.numel())
    fold_of = torch.empty(int(ids.max()) + 1, dtype=torch.long, device=images.device)
    fold_of[ids] = torch.arange(ids.numel(), device=images.device) % k
    per_row = fold_of[images]
    return [per_row == f for f in range(k)]


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` inside ``root``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def fit_in_order(model: nn.Module, placeholders: dict[str, nn.Module], x: Tensor) -> None:
    """Install the placeholders (modules that become their fitted layer, ``.result``, when the
    forward reaches them), run the fitting pass, then put the fitted layers in place."""
    for name, ph in placeholders.items():
        set_module(model, name, ph)
    model(x)
    for name, ph in placeholders.items():
        if ph.result is None:
            raise RuntimeError(f"layer {name!r} was not reached by the calibration forward")
        set_module(model, name, ph.result)


def recalibrate_batchnorm(model: nn.Module, x: Tensor, batch_size: int = 32) -> int:
    """Re-estimate every BatchNorm's running statistics on ``x`` (cumulative average).

    Returns the number of BatchNorm layers updated. The model's train/eval flags are left
    to the caller.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for chunk in x.split(batch_size):
                model(chunk)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
    return len(bns)


