"""Uniform settings: the one a budget allows (the search compares itself with it), and the
grid of all of them, each converted and measured as the search measures its result."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from ..convert import convert
from ..convert.api import eval_mode
from .result import Point
from .space import Layer, check_grid, measure, split_data

__all__ = ["uniform_points"]


def uniform_assignment(layers: list[Layer], cg: int, co: float) -> dict[str, int] | None:
    """Choice index per layer for a uniform setting; ``None`` when a layer cannot take it."""
    out = {}
    for layer in layers:
        match = [j for j, c in enumerate(layer.choices) if c.cg == cg and (cg == 1 or c.co == co)]
        if not match:
            return None
        out[layer.name] = match[0]
    return out


def uniform_within(layers, metric, fixed, limit, cgs, cos, errors) -> tuple[int, float] | None:
    """The uniform ``(cg, co)`` of highest cost within ``limit`` (ties: lowest error)."""
    best, best_key = None, None
    for cg in cgs:
        for co in ((0.0,) if cg == 1 else cos):
            picks = uniform_assignment(layers, cg, co)
            if picks is None:
                continue
            cost = fixed + sum(layer.costs[metric][picks[layer.name]] for layer in layers)
            if cost > limit:
                continue
            err = sum(errors[layer.name][picks[layer.name]] for layer in layers)
            key = (cost, -err)
            if best_key is None or key > best_key:
                best, best_key = (cg, co), key
    return best


def uniform_point(model, layers, setting, fit_x, eval_x, example, metric, convert_kwargs, progress):
    cg, co = setting
    overrides = {layer.name: {"cg": cg, "co": co} for layer in layers}
    small, report = convert(model, overrides=overrides, calib_data=fit_x, example_inputs=example, progress=progress,
                            **convert_kwargs)
    cost, quality = measure(model, small, example, eval_x, metric)
    label = f"uniform cg={cg} co={co:g}"
    return Point(label, "uniform", cost["macs"], cost["params"], cost["latency_ms"], quality.top1, quality.kl, overrides), \
        small, report, cost


def uniform_points(
    model: nn.Module,
    calib_data: Tensor | Iterable,
    *,
    cgs: Sequence[int] = (2, 4, 8),
    cos: Sequence[float] = (0.25, 0.5),
    eval_data: Tensor | Iterable | None = None,
    holdout: float = 0.25,
    example_inputs: Tensor | None = None,
    latency: bool = False,
    progress: bool = True,
    **selection,
) -> list[Point]:
    """Convert ``model`` with every uniform ``(cg, co)`` (least squares on the calibration
    images) and measure each on the held-out images, as :func:`search` measures its result.

    ``selection`` takes ``convert``'s ``patterns``/``include``/``exclude``/``min_channels``/
    ``skip_first``/``skip_last``.

    Example:
        >>> points = uniform_points(model, calib, cgs=(2, 4), cos=(0.5,))  # doctest: +SKIP
    """
    cgs, cos = check_grid(cgs, cos)
    if not isinstance(model, nn.Module):
        raise TypeError(f"uniform_points: model must be an nn.Module, got {type(model).__name__}")
    fit_x, eval_x, example = split_data(model, calib_data, eval_data, holdout, example_inputs)
    metric = "latency" if latency else "macs"
    points = []
    with eval_mode(model):
        for cg in cgs:
            for co in ((0.0,) if cg == 1 else cos):
                small, _ = convert(model, cg=cg, co=co, calib_data=fit_x, example_inputs=example, progress=progress,
                                   **selection)
                cost, quality = measure(model, small, example, eval_x, metric)
                points.append(Point(f"uniform cg={cg} co={co:g}", "uniform", cost["macs"], cost["params"],
                                    cost["latency_ms"], quality.top1, quality.kl, {}))
    return points
