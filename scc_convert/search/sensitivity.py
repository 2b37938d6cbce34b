"""How much of a layer's function each ``(cg, co)`` keeps, from its :class:`LayerMoments`.

The signal is the converter's own least-squares fit, cross-validated: for each fold, the SCC
is fitted on the other folds exactly as :func:`scc_convert.convert.transfer.solve_windows`
fits it (ridge least squares with an intercept per window, output-to-window assignment by
residual) and judged on the held-out fold. The *error* of a choice is the held-out residual
summed over folds, divided by the held-out output energy (``sum((y - mean y)**2)``): 0 is a
perfect reproduction, 1 is no better than the mean. Cross-validation matters: the deep,
low-resolution layers see few pixels per image, and their in-sample residual can look
several times better than what the fit does on new images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..convert.transfer import RIDGE, assign_windows
from ..geometry import SCCGeometry, cyclic_columns
from .statistics import LayerMoments

__all__ = ["Choice", "layer_choices", "choice_errors"]


@dataclass(frozen=True)
class Choice:
    """One setting of one layer: ``cg`` and ``co`` (``cg=1`` reads every channel)."""

    cg: int
    co: float

    def to_dict(self) -> dict[str, float]:
        return {"cg": self.cg, "co": self.co}


def layer_choices(in_channels: int, out_channels: int, cgs: Iterable[int], cos: Iterable[float]) -> list[Choice]:
    """The valid, distinct settings of a layer, cheapest last.

    A ``cg`` that does not divide ``in_channels`` and a ``co`` whose window stride would be
    below 1 are left out. Settings with the same windows are one choice (the first ``co``
    is kept); ``cg=1`` is always the dense ``co=0``.
    """
    seen: set[tuple[int, tuple[int, ...]]] = set()
    out = []
    for cg in sorted(set(cgs)):
        if in_channels % cg:
            continue
        for co in ((0.0,) if cg == 1 else tuple(cos)):
            geom = SCCGeometry(in_channels, out_channels, cg, co)
            if geom.window_stride < 1:
                continue
            key = (geom.group_width, geom.window_starts)
            if key in seen:
                continue
            seen.add(key)
            out.append(Choice(cg, float(co)))
    return out


def _spd_solve(a: Tensor, b: Tensor) -> Tensor:
    """``a^-1 b`` for a batch of symmetric positive definite ``a`` (Cholesky; LU for a batch
    where one is not)."""
    factor, info = torch.linalg.cholesky_ex(a)
    return torch.cholesky_solve(b, factor) if not bool(info.any()) else torch.linalg.solve(a, b)


def _window_errors(gram: Tensor, cross: Tensor, target_sq: Tensor, judge: tuple[Tensor, Tensor, Tensor],
                   geom: SCCGeometry, ridge: float) -> tuple[Tensor, Tensor]:
    """``[Cout, cd]`` residuals of every output on every window: of the fit on ``gram/cross``
    and on the ``judge`` moments (held out). All windows are solved as one batch."""
    gw = geom.group_width
    cols = torch.cat([cyclic_columns(geom.window_starts, gw, geom.in_channels),
                      torch.full((geom.cyclic_distance, 1), geom.in_channels)], 1)  # [cd, gw+1]
    g = gram[cols[:, :, None], cols[:, None, :]]  # [cd, D, D]
    b = cross[cols]  # [cd, D, Cout]
    scale = ridge * g.diagonal(dim1=1, dim2=2)[:, :gw].mean(1).clamp_min(1e-12)  # [cd]
    reg = torch.zeros(g.shape[:2], dtype=g.dtype)
    reg[:, :gw] = scale[:, None]
    theta = _spd_solve(g + torch.diag_embed(reg), b)
    fit = target_sq - 2 * (theta * b).sum(1) + (theta * (g @ theta)).sum(1)  # [cd, Cout]
    j_gram, j_cross, j_sq = judge
    jg = j_gram[cols[:, :, None], cols[:, None, :]]
    held = j_sq - 2 * (theta * j_cross[cols]).sum(1) + (theta * (jg @ theta)).sum(1)
    return fit.t().clamp_min(0), held.t().clamp_min(0)


@contextmanager
def _one_thread():
    """Small fp64 factorisations gain nothing from intra-op threads, and on a busy CPU the
    threads' synchronisation made them 5-100x slower (measured on the project's 2-core
    machine); they run on one thread, and the caller's setting is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def choice_errors(moments: LayerMoments, in_channels: int, out_channels: int, choices: Sequence[Choice],
                  ridge: float = RIDGE) -> list[float]:
    """Cross-validated relative error (module docstring) of each choice; ``cg=1`` included."""
    with _one_thread():
        return _choice_errors(moments, in_channels, out_channels, choices, ridge)


def _choice_errors(moments: LayerMoments, in_channels: int, out_channels: int, choices: Sequence[Choice],
                   ridge: float) -> list[float]:
    folds = moments.folds
    energy = sum(moments.centred_energy(f) for f in range(folds))
    out = []
    for choice in choices:
        geom = SCCGeometry(in_channels, out_channels, choice.cg, choice.co)
        held_total = 0.0
        for f in range(folds):
            gram, cross, sq = moments.pooled(g for g in range(folds) if g != f)
            judge = (moments.gram[f], moments.cross[f], moments.target_sq[f])
            fit, held = _window_errors(gram, cross, sq, judge, geom, ridge)
            window_of = assign_windows(-fit, geom) if geom.cyclic_distance > 1 else (0,) * out_channels
            held_total += float(held[torch.arange(out_channels), list(window_of)].sum())
        out.append(held_total / energy if energy > 0 else 0.0)
    return out
