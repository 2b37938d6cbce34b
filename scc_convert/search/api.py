"""``search``: per-layer ``cg``/``co`` under a budget.

The steps of :func:`search`:

1. find the layers the converter would convert (its own policy: patterns, include,
   exclude, min_channels, skip_first/last), and what each choice costs;
2. one forward of the original model over the calibration images: targets and moments
   (:func:`.context.capture`), and each choice's cross-validated error on original inputs;
3. one fitting pass in which every layer, when the forward reaches it, measures every
   choice's error *in context* (fed by the layers already converted) and takes the choice
   that a multiple-choice knapsack over the layers still to come picks for the remaining
   budget (:func:`.allocate.knapsack`; the later layers' errors are the estimates of the
   pass before: original inputs on the first pass, in context after);
4. the end-to-end check: ``convert(model, overrides=...)`` on the calibration images, the
   cost counted (and timed) on the converted model, the function measured on held-out
   images; a budget that is missed shrinks by the miss and step 3 runs again, and the
   uniform setting nearest the budget is converted too and taken instead when it measures
   better (``check_uniform``).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from ..convert import convert
from ..convert.api import eval_mode
from ..profile import profile
from . import context
from .allocate import cheapest_cost, knapsack
from .costs import METRICS, format_cost, parse_target
from .result import LayerChoice, Point, SearchResult
from .sensitivity import Choice, choice_errors
from .space import (Layer, NamePatterns, as_list, check_grid, choice_index, cost_key, find_layers, layer_named,
                    measure, model_cost, selection_kwargs, split_data)
from .uniform import uniform_assignment, uniform_point, uniform_within

__all__ = ["search"]


def _target(target_macs, target_params, target_latency) -> tuple[str, float | str]:
    given = {m: t for m, t in zip(METRICS, (target_macs, target_params, target_latency)) if t is not None}
    if len(given) != 1:
        raise ValueError("search: give exactly one of target_macs, target_params, target_latency "
                         f"(got {sorted('target_' + m for m in given) or 'none'})")
    return next(iter(given.items()))


class _Allocator:
    """The decide callback of one fitting pass (module docstring, step 3)."""

    def __init__(self, layers: list[Layer], metric: str, room: float, lookahead: dict[str, list[float]]) -> None:
        self.layers = {layer.name: layer for layer in layers}
        self.metric, self.room, self.lookahead = metric, room, lookahead
        self.picked: dict[str, int] = {}
        self.errors: dict[str, list[float]] = {}

    def __call__(self, name: str, moments) -> Choice:
        layer = self.layers[name]
        errors = choice_errors(moments, layer.conv.in_channels, layer.conv.out_channels, layer.choices)
        self.errors[name] = errors
        spent = sum(self.layers[n].costs[self.metric][j] for n, j in self.picked.items())
        rest = [n for n in self.layers if n not in self.picked and n != name]
        costs = [layer.costs[self.metric]] + [self.layers[n].costs[self.metric] for n in rest]
        values = [errors] + [self.lookahead[n] for n in rest]
        chosen = knapsack(costs, values, self.room - spent)
        j = chosen[0] if chosen is not None else min(range(len(layer.choices)), key=lambda i: layer.costs[self.metric][i])
        self.picked[name] = j
        return layer.choices[j]


def search(
    model: nn.Module,
    calib_data: Tensor | Iterable,
    *,
    target_macs: float | str | None = None,
    target_params: float | str | None = None,
    target_latency: float | str | None = None,
    cgs: Sequence[int] = (1, 2, 4, 8),
    cos: Sequence[float] = (0.25, 0.5),
    eval_data: Tensor | Iterable | None = None,
    holdout: float = 0.25,
    patterns: Iterable[str] = ("dw_pw", "pw"),
    include: NamePatterns = None,
    exclude: NamePatterns = None,
    min_channels: int = 16,
    skip_first: bool = False,
    skip_last: bool = False,
    example_inputs: Tensor | None = None,
    folds: int = 2,
    samples: int = 8192,
    passes: int = 1,
    check_uniform: bool = True,
    corrections: int = 2,
    progress: bool = True,
) -> SearchResult:
    """Choose ``cg``/``co`` per layer to keep the most of the model's function within a budget.

    Args:
        model: the original model (not modified).
        calib_data: calibration inputs, as for :func:`scc_convert.convert` (a tensor or an
            iterable of tensors / ``(input, label)`` pairs; labels ignored).
        target_macs, target_params, target_latency: exactly one budget, for the whole model:
            a number ``<= 1`` is a share of the original's cost; a larger number is an
            absolute count (MACs at ``example_inputs``, parameters) or seconds; strings such
            as ``"150M"`` or ``"12ms"`` are accepted. Latency is measured on the model's
            device (per layer for the allocation, end to end for the check).
        cgs, cos: the settings each layer may take (a ``cg`` must divide the layer's input
            channels; ``cg=1`` keeps it dense, refitted).
        eval_data: held-out inputs to measure the function on; default: the last
            ``holdout`` share of ``calib_data`` (then not used for fitting).
        patterns, include, exclude, min_channels, skip_first, skip_last: which layers may
            be converted, as in :func:`scc_convert.convert`; the others stay out of the
            search and :attr:`SearchResult.skipped` says why.
        example_inputs: the input the costs are counted at (default: one calibration image).
        folds: image folds of the cross-validated error.
        samples: pixels per layer entering a least-squares fit (the converter's default).
        passes: fitting passes (each refines the errors the next one looks ahead with).
        check_uniform: also convert the best uniform setting within the budget and keep it
            when it measures better on the held-out images.
        corrections: how many times a missed budget may be shrunk and searched again.
        progress: progress bars of the conversions (on stderr, when it is a terminal).

    Returns:
        A :class:`SearchResult`; ``result.model`` is the converted model.

    Raises:
        ValueError: no or several targets, a target below the cheapest reachable cost (the
            message names that cost), bad ``cgs``/``co``, or no layer to search.

    Example:
        >>> import torch, torchvision
        >>> model = torchvision.models.mobilenet_v2().eval()
        >>> result = search(model, torch.randn(32, 3, 64, 64), target_macs=0.5)  # doctest: +SKIP
        >>> small, report = convert(model, overrides=result.overrides, calib_data=...)  # doctest: +SKIP
    """
    started = time.perf_counter()
    metric, target = _target(target_macs, target_params, target_latency)
    parse_target(metric, target, 1.0)  # a malformed target fails before any work
    cgs, cos = check_grid(cgs, cos)
    selection = selection_kwargs(patterns, include, exclude, min_channels, skip_first, skip_last)
    if not isinstance(model, nn.Module):
        raise TypeError(f"search: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"search: passes={passes!r} must be an int >= 1")
    fit_x, eval_x, example = split_data(model, calib_data, eval_data, holdout, example_inputs)

    with eval_mode(model):
        with warnings.catch_warnings():  # the probe's own notes are passed on below, once
            warnings.simplefilter("ignore", UserWarning)
            _, probe = convert(model, cg=1, co=0.0, init="slice", example_inputs=example, **selection)
        layers, skipped = find_layers(model, probe, cgs, cos, metric, example)
        if not layers:
            raise ValueError("search: no layer to search (" + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
        for note in probe.warnings:
            warnings.warn(f"search: {note}", UserWarning, stacklevel=2)
        original = model_cost(profile(model, example_input=example, latency=metric == "latency", dtype=None), "before", metric)
        fixed = original[cost_key(metric)] - sum(layer.before[metric] for layer in layers)
        budget = parse_target(metric, target, original[cost_key(metric)])
        cheapest = fixed + cheapest_cost([layer.costs[metric] for layer in layers])
        if budget.limit < cheapest:
            raise ValueError(
                f"search: target_{metric}={target!r} ({format_cost(metric, budget.limit)}) is below the cheapest reachable "
                f"{metric}, {format_cost(metric, cheapest)} (every searched layer at its cheapest choice, cg={max(cgs)}); "
                "raise the target, or allow larger cgs"
            )
        captured = context.capture(model, {layer.name: layer.conv for layer in layers}, fit_x, folds=folds, samples=samples)
        lookahead = {layer.name: choice_errors(captured[layer.name].moments, layer.conv.in_channels,
                                               layer.conv.out_channels, layer.choices) for layer in layers}
        exclude_extra = [re.compile(re.escape(n)) for n in skipped if n in {r.name for r in probe.converted}]
        convert_kwargs = dict(selection)
        if exclude_extra:
            convert_kwargs["exclude"] = list(as_list(exclude)) + exclude_extra
        room = budget.limit - fixed
        notes: list[str] = []
        points: list[Point] = []
        best = None
        for attempt in range(corrections + 1):
            allocator = None
            for _ in range(passes):
                allocator = _Allocator(layers, metric, room, lookahead)
                context.fit_in_context(model, [layer.name for layer in layers], fit_x, captured, folds=folds, decide=allocator)
                lookahead = allocator.errors
            overrides = {n: layer_named(layers, n).choices[j].to_dict() for n, j in allocator.picked.items()}
            small, report = convert(model, overrides=overrides, calib_data=fit_x, example_inputs=example,
                                    progress=progress, **convert_kwargs)
            cost, quality = measure(model, small, example, eval_x, metric)
            point = Point("searched", "searched", cost["macs"], cost["params"], cost["latency_ms"], quality.top1, quality.kl, overrides)
            points.append(point)
            predicted = _predicted(layers, allocator.picked, allocator.errors, original)
            best = (point, small, report, allocator, predicted, cost)
            measured_cost = cost[cost_key(metric)]
            if measured_cost <= budget.limit or attempt == corrections:
                break
            miss = measured_cost - budget.limit
            notes.append(f"measured {metric} {format_cost(metric, measured_cost)} missed the budget by "
                         f"{format_cost(metric, miss)}; searched again with that much less")
            room -= miss
            if room + fixed < cheapest:
                break
        point, small, report, allocator, predicted, cost = best
        if check_uniform:
            uniform = uniform_within(layers, metric, fixed, budget.limit, cgs, cos, allocator.errors)
            if uniform is not None:
                u_point, u_small, u_report, u_cost = uniform_point(model, layers, uniform, fit_x, eval_x, example, metric,
                                                                    convert_kwargs, progress)
                points.append(u_point)
                if u_cost[cost_key(metric)] <= budget.limit and u_point.kl < point.kl:
                    notes.append(f"the uniform setting {u_point.label} measured better (KL {u_point.kl:.3f} < {point.kl:.3f}) "
                                 "and is the result")
                    point, small, report, cost = u_point, u_small, u_report, u_cost
                    predicted = _predicted(layers, uniform_assignment(layers, *uniform), allocator.errors, original)
        measured = {**cost, "top1": point.top1, "kl": point.kl, "met": cost[cost_key(metric)] <= budget.limit}

    overrides = point.overrides
    rows = _rows(layers, overrides, allocator)
    return SearchResult(
        budget=budget, overrides=overrides, layers=rows, skipped=skipped, original=original, predicted=predicted,
        measured=measured, points=points, corrections=notes, eval_images=int(eval_x.shape[0]),
        seconds=time.perf_counter() - started, convert_kwargs={**convert_kwargs, "overrides": overrides},
        model=small, report=report,
    )


def _predicted(layers: list[Layer], picked: dict[str, int], errors: dict[str, list[float]],
               original: dict[str, float | None]) -> dict[str, float | None]:
    """Whole-model costs of an allocation (the original's minus the per-layer savings) and
    its mean in-context error."""
    out: dict[str, float | None] = {}
    for m in METRICS:
        key = cost_key(m)
        if m not in layers[0].costs:
            out[key] = None
            continue
        out[key] = original[key] - sum(layer.before[m] - layer.costs[m][picked[layer.name]] for layer in layers)
    out["error"] = sum(errors[layer.name][picked[layer.name]] for layer in layers) / len(layers)
    return out


def _rows(layers: list[Layer], overrides: dict, allocator: _Allocator) -> list[LayerChoice]:
    rows = []
    for layer in layers:
        setting = overrides[layer.name]
        j = choice_index(layer, setting)
        errors = allocator.errors[layer.name]
        lat = layer.costs.get("latency")
        rows.append(LayerChoice(
            name=layer.name, cg=int(setting["cg"]), co=float(setting["co"]),
            macs_before=int(layer.before["macs"]), macs_after=int(layer.costs["macs"][j]),
            params_before=int(layer.before["params"]), params_after=int(layer.costs["params"][j]),
            latency_before_ms=layer.before.get("latency"), latency_after_ms=None if lat is None else lat[j],
            error=errors[j], errors={f"{c.cg}/{c.co:g}": e for c, e in zip(layer.choices, errors)},
        ))
    return rows
