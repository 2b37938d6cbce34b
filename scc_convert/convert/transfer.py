"""Weight transfer from an original convolution to its SCC replacement.

* ``slice``  — output ``o`` keeps the original weights on the channels of its window
  (default window order ``o % cd``).
* ``energy`` — the output-to-window assignment that keeps the most squared weight
  magnitude, with the same number of outputs per window (a transportation problem,
  solved as a linear assignment over window slots).
* ``lsq``    — see :mod:`scc_convert.convert.calibrate` (uses :func:`solve_windows`).
* ``random`` — the layer's own initialisation.

For ``std`` layers the KxK kernel is first factorised into a depthwise KxK kernel and an
SCC (:func:`factorise_standard`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import SCCGeometry, cyclic_columns

__all__ = [
    "window_index", "slice_weight", "assign_windows", "energy_assignment", "kept_energy", "factorise_standard",
    "solve_windows", "solve_windows_cv", "window_solutions", "window_errors", "RIDGE",
]

RIDGE = 1e-4  # solve_windows' Tikhonov weight, relative to the mean diagonal of a window's Gram matrix


def window_index(geom: SCCGeometry, window_of: tuple[int, ...] | None = None, device=None) -> Tensor:
    """``[Cout, gw]`` long tensor: the input channels each output reads, in weight order."""
    starts = [geom.window_starts[w] for w in geom.check_window_of(window_of)]
    return cyclic_columns(starts, geom.group_width, geom.in_channels, device)


def slice_weight(dense: Tensor, geom: SCCGeometry, window_of: tuple[int, ...] | None = None) -> Tensor:
    """``[Cout, gw]``: the entries of the ``[Cout, Cin]`` weight that fall on each output's window."""
    return dense.gather(1, window_index(geom, window_of, dense.device))


def _window_mask(geom: SCCGeometry, dtype: torch.dtype, device=None) -> Tensor:
    """``[cd, Cin]`` 0/1: which input channels each window reads."""
    cols = cyclic_columns(geom.window_starts, geom.group_width, geom.in_channels, device)
    return torch.zeros(geom.cyclic_distance, geom.in_channels, dtype=dtype, device=device).scatter_(1, cols, 1)


def assign_windows(score: Tensor, geom: SCCGeometry) -> tuple[int, ...]:
    """The ``window_of`` maximising ``sum_o score[o, window_of[o]]`` among valid assignments.

    ``score`` is ``[Cout, cd]``. Valid means each window gets as many outputs as in the
    default ``o % cd`` order; solved exactly as a linear assignment of outputs to window
    slots (``scipy.optimize.linear_sum_assignment``).
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "init='energy' and init='lsq' need scipy for the output-to-window assignment: "
            "pip install 'scc-convert[scipy]'"
        ) from err
    slots = list(geom.default_window_of)  # slot j belongs to window slots[j]
    cost = score.detach().double().cpu()[:, slots].numpy()
    rows, cols = linear_sum_assignment(cost, maximize=True)
    window_of = [0] * geom.out_channels
    for o, j in zip(rows.tolist(), cols.tolist()):
        window_of[o] = slots[j]
    return tuple(window_of)


def energy_assignment(dense: Tensor, geom: SCCGeometry) -> tuple[int, ...]:
    """Assignment keeping the most ``sum(weight**2)`` of a ``[Cout, Cin]`` weight."""
    sq = dense.detach().double().square()
    return assign_windows(sq @ _window_mask(geom, sq.dtype, sq.device).t(), geom)


def kept_energy(dense: Tensor, scc_weight: Tensor) -> float:
    """Fraction of the original squared weight magnitude the SCC weight carries."""
    total = dense.detach().double().square().sum().item()
    return scc_weight.detach().double().square().sum().item() / total if total > 0 else 1.0


def factorise_standard(kernel: Tensor, geom: SCCGeometry, iterations: int = 25) -> tuple[Tensor, Tensor]:
    """Factorise a ``[Cout, Cin, k, k]`` kernel into depthwise ``[Cin, 1, k, k]`` + SCC ``[Cout, gw]``.

    Minimises ``sum_{o, c in window(o)} ||K[o, c] - s[o, c] * d[c]||^2`` (channels outside an
    output's window cannot be represented and are left out) by alternating least squares,
    started from each input channel's leading singular vector. Computed in fp64.
    """
    cout, cin, kh, kw = kernel.shape
    k = kernel.detach().double().reshape(cout, cin, kh * kw)
    idx = window_index(geom, device=k.device)  # [Cout, gw]
    mask = torch.zeros(cout, cin, dtype=torch.float64, device=k.device).scatter_(1, idx, 1.0)
    # d[c]: leading right singular vector of the slices K[o, c] over the outputs that read c.
    _, sv, vh = torch.linalg.svd((k * mask[:, :, None]).transpose(0, 1), full_matrices=False)
    d = vh[:, 0] * sv[:, :1].sqrt()  # [Cin, k*k]
    scale = torch.zeros(cout, cin, dtype=torch.float64, device=k.device)
    for _ in range(iterations):
        denom = d.square().sum(1).clamp_min(1e-30)  # [Cin]
        scale = (k * d[None]).sum(2) / denom * mask  # best s for fixed d
        weight = scale.square().sum(0)  # [Cin]
        d = torch.where(
            weight[:, None] > 0,
            (scale[:, :, None] * k).sum(0) / weight.clamp_min(1e-30)[:, None],
            d,
        )
    denom = d.square().sum(1).clamp_min(1e-30)
    scale = (k * d[None]).sum(2) / denom * mask
    depthwise = d.reshape(cin, 1, kh, kw)
    return depthwise.to(kernel.dtype), scale.gather(1, idx).to(kernel.dtype)


def _window_columns(geom: SCCGeometry, w: int, intercept: bool) -> list[int]:
    return list(geom.window_channels(w)) + ([geom.in_channels] if intercept else [])


def window_solutions(gram: Tensor, cross: Tensor, geom: SCCGeometry, intercept: bool, ridge: float,
                     prior: Tensor | None = None) -> list[Tensor]:
    """Per window ``w``, the ridge solution ``[D_w, Cout]`` of every output restricted to that
    window's channels (and the intercept). Arguments as in :func:`solve_windows`."""
    return [_solve_window(gram, cross, _window_columns(geom, w, intercept), geom.group_width, ridge, prior)
            for w in range(geom.cyclic_distance)]


def _solve_window(gram: Tensor, cross: Tensor, cols: list[int], gw: int, ridge: float,
                  prior: Tensor | None) -> Tensor:
    """``[D_w, n]``: the ridge solution on the window's columns ``cols`` for the outputs
    ``cross`` has columns for (``prior``: their rows of the ``[Cout, Cin]`` prior)."""
    g = gram[cols][:, cols]
    reg = torch.zeros(len(cols), dtype=g.dtype, device=g.device)
    reg[:gw] = ridge * g.diagonal()[:gw].mean().clamp_min(1e-12)
    rhs = cross[cols] if prior is None else cross[cols] + _prior_rows(prior, cols[:gw], reg, len(cols))
    return torch.linalg.solve(g + torch.diag(reg), rhs)


def window_errors(gram: Tensor, cross: Tensor, target_sq: Tensor, geom: SCCGeometry, intercept: bool,
                  thetas: list[Tensor]) -> Tensor:
    """``[Cout, cd]``: the squared error each output would leave on data with these second
    moments (e.g. a held-out fold's) if it read window ``w`` with ``thetas[w]``."""
    errors = []
    for w, theta in enumerate(thetas):
        cols = _window_columns(geom, w, intercept)
        g, b = gram[cols][:, cols], cross[cols]
        errors.append((target_sq - 2 * (theta * b).sum(0) + (theta * (g @ theta)).sum(0)).clamp_min(0))
    return torch.stack(errors, 1)


def solve_windows(
    gram: Tensor, cross: Tensor, target_sq: Tensor, geom: SCCGeometry, intercept: bool, ridge: float = RIDGE,
    prior: Tensor | None = None,
) -> tuple[tuple[int, ...], Tensor, Tensor | None, Tensor]:
    """Least-squares SCC weights from second moments of the calibration data (fp64).

    Args:
        gram: ``[D, D]`` with ``D = Cin (+1 with intercept)``: ``A^T A`` of the SCC's inputs
            ``A = [u, 1]``, one row per sampled pixel.
        cross: ``[D, Cout]``: ``A^T Y`` with the original layer's outputs ``Y``.
        target_sq: ``[Cout]``: ``sum(Y**2)`` per output.
        intercept: fit a bias (the last row/column of ``gram`` is the constant input).
        ridge: Tikhonov weight, relative to the mean diagonal of each window's Gram matrix.
        prior: optional ``[Cout, Cin]`` weight the ridge pulls toward (each output's entries on
            its window's channels) instead of toward zero: with few samples per unknown a large
            ``ridge`` then keeps the fit near the original layer.

    For every window the ridge problem is solved for all outputs at once (the window's Gram
    matrix is shared); the residual each output would leave on each window then drives the
    assignment (:func:`assign_windows` on ``-error``).

    Returns:
        ``(window_of, weight [Cout, gw], bias [Cout] or None, error [Cout])``.
    """
    thetas = window_solutions(gram, cross, geom, intercept, ridge, prior)
    error = window_errors(gram, cross, target_sq, geom, intercept, thetas)
    window_of = assign_windows(-error, geom)
    chosen = torch.stack([thetas[w][:, o] for o, w in enumerate(window_of)])  # [Cout, D_w]
    weight, bias = chosen[:, : geom.group_width], (chosen[:, geom.group_width] if intercept else None)
    return window_of, weight, bias, error[torch.arange(geom.out_channels), list(window_of)]


Moments = tuple[Tensor, Tensor, Tensor]  # (gram, cross, target_sq), as solve_windows takes them


def solve_windows_cv(folds: list[Moments], geom: SCCGeometry, intercept: bool, ridges: tuple[float, ...],
                     prior: Tensor | None = None) -> tuple[tuple[int, ...], Tensor, Tensor | None, Tensor]:
    """:func:`solve_windows` with its regularisation chosen by cross-validation.

    For every ridge in ``ridges`` and every pull (toward zero, and toward ``prior`` when
    given), the layer is fitted on all folds (which fixes its window assignment), then each
    fold's moments are held out in turn from a fit on the others and scored at that
    assignment. The setting with the least total held-out error wins (one per layer: chosen
    per output, the choice follows the noise of small folds). With a single fold:
    :func:`solve_windows` at the smallest ridge. Returns as :func:`solve_windows`.
    """
    total = tuple(sum(f[i] for f in folds) for i in range(3))
    if len(folds) < 2:
        return solve_windows(*total, geom, intercept, ridge=min(ridges))
    best_error, best_fit = float("inf"), None
    for pull in (None, prior) if prior is not None else (None,):
        for ridge in ridges:
            fit = solve_windows(*total, geom, intercept, ridge=ridge, prior=pull)
            error = sum(_held_out_error([t - h for t, h in zip(total, held)], held, geom, intercept, ridge, pull, fit[0])
                        for held in folds)
            if error < best_error:
                best_error, best_fit = error, fit
    return best_fit


def _held_out_error(rest: list[Tensor], held: Moments, geom: SCCGeometry, intercept: bool, ridge: float,
                    prior: Tensor | None, window_of: tuple[int, ...]) -> float:
    """The squared error on ``held`` of the fit on ``rest`` at the assignment ``window_of``
    (each window solved for its own outputs only)."""
    gw, owners, error = geom.group_width, torch.tensor(window_of), 0.0
    for w in range(geom.cyclic_distance):
        outs = (owners == w).nonzero().flatten().to(rest[0].device)
        if outs.numel() == 0:
            continue
        cols = _window_columns(geom, w, intercept)
        theta = _solve_window(rest[0], rest[1][:, outs], cols, gw, ridge, None if prior is None else prior[outs])
        hg, hc, hs = held[0][cols][:, cols], held[1][cols][:, outs], held[2][outs]
        error += (hs - 2 * (theta * hc).sum(0) + (theta * (hg @ theta)).sum(0)).clamp_min(0).sum().item()
    return error


def _prior_rows(prior: Tensor, channels: list[int], reg: Tensor, rows: int) -> Tensor:
    """``reg * theta0``: the ridge's pull toward the prior weight, as rows of the right-hand side
    (``[rows, Cout]``; the intercept row, if any, is not pulled)."""
    theta0 = torch.zeros(rows, prior.shape[0], dtype=reg.dtype, device=reg.device)
    theta0[: len(channels)] = prior.detach().to(reg.dtype).t()[channels]
    return reg[:, None] * theta0
