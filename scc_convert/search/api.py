"""``search``: per-layer ``cg``/``co`` under a budget; ``uniform_points``: the uniform grid.

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
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..convert import convert
from ..convert.calibrate import calibration_batch
from ..geometry import check_cg_co
from ..profile import profile
from ..quality import agreement
from . import context
from .allocate import cheapest_cost, knapsack
from .costs import METRICS, Budget, format_cost, layer_latency_ms, parse_target
from .result import LayerChoice, Point, SearchResult
from .sensitivity import Choice, choice_errors, layer_choices

__all__ = ["search", "uniform_points"]

NamePatterns = str | re.Pattern | Iterable[str | re.Pattern] | None


@dataclass
class _Layer:
    name: str
    conv: nn.Conv2d
    choices: list[Choice]
    before: dict[str, float]  # metric -> the original layer's cost
    costs: dict[str, list[float]]  # metric -> cost of each choice


@contextmanager
def _eval_mode(model: nn.Module):
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, f in flags.items():
            m.training = f


def _selection(patterns, include, exclude, min_channels, skip_first, skip_last) -> dict:
    patterns = tuple(patterns)
    if "std" in patterns:
        raise ValueError("search: pattern 'std' is not searched (its SCC input depends on the choice); "
                         "use patterns=('dw_pw', 'pw')")
    return {"patterns": patterns, "include": include, "exclude": exclude, "min_channels": min_channels,
            "skip_first": skip_first, "skip_last": skip_last}


def _check_grid(cgs: Sequence[int], cos: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    cgs, cos = tuple(cgs), tuple(float(c) for c in cos)
    if not cgs or not cos:
        raise ValueError("search: cgs and cos need at least one value each")
    for cg in cgs:
        for co in cos:
            check_cg_co(cg, co)
    return cgs, cos


def _split(x: Tensor, eval_data, holdout: float, device, dtype) -> tuple[Tensor, Tensor]:
    if eval_data is not None:
        return x, calibration_batch(eval_data, device, dtype)
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"search: holdout={holdout!r} must lie strictly between 0 and 1 (or pass eval_data)")
    held = max(1, round(holdout * x.shape[0]))
    if x.shape[0] - held < 4:
        raise ValueError(f"search: {x.shape[0]} calibration images leave too few to fit after holding out {held}; "
                         "give more images or pass eval_data")
    return x[:-held], x[-held:]


def _model_cost(prof, label: str, metric: str) -> dict[str, float | None]:
    side = getattr(prof, label)
    lat = side.batches[0].latency
    return {"macs": side.macs, "params": side.params, "latency_ms": lat.median_ms if lat is not None else None}


def _input_shapes(model: nn.Module, names: list[str], example: Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(name: str):
        def hook(_module, inputs, _output) -> None:
            shapes.setdefault(name, tuple(inputs[0].shape))
        return hook

    handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _layers(model: nn.Module, probe, cgs, cos, metric: str, example: Tensor) -> tuple[list[_Layer], dict[str, str]]:
    skipped = {r.name: r.reason for r in probe.skipped}
    layers = []
    for r in probe.converted:
        conv = model.get_submodule(r.name)
        choices = layer_choices(conv.in_channels, conv.out_channels, cgs, cos)
        if not choices:
            skipped[r.name] = f"no cg in {list(cgs)} divides in_channels={conv.in_channels}"
            continue
        if r.macs_before is None:
            raise ValueError("search: the model's MACs could not be counted; pass example_inputs")
        cout, cin = conv.out_channels, conv.in_channels
        layers.append(_Layer(
            r.name, conv, choices,
            before={"macs": r.macs_before, "params": r.params_before},
            costs={"macs": [r.macs_before // c.cg for c in choices],
                   "params": [cout * (cin // c.cg) + cout for c in choices]},
        ))
    if metric == "latency":
        shapes = _input_shapes(model, [layer.name for layer in layers], example)
        for layer in layers:
            before, after = layer_latency_ms(layer.conv, shapes[layer.name], layer.choices)
            layer.before["latency"], layer.costs["latency"] = before, after
    return layers, skipped


def _target(target_macs, target_params, target_latency) -> tuple[str, float | str]:
    given = {m: t for m, t in zip(METRICS, (target_macs, target_params, target_latency)) if t is not None}
    if len(given) != 1:
        raise ValueError("search: give exactly one of target_macs, target_params, target_latency "
                         f"(got {sorted('target_' + m for m in given) or 'none'})")
    return next(iter(given.items()))


def _key(metric: str) -> str:
    return "latency_ms" if metric == "latency" else metric


class _Allocator:
    """The decide callback of one fitting pass (module docstring, step 3)."""

    def __init__(self, layers: list[_Layer], metric: str, room: float, lookahead: dict[str, list[float]]) -> None:
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


def _measure(model: nn.Module, small: nn.Module, example: Tensor, eval_x: Tensor, metric: str):
    prof = profile(model, small, example_input=example, latency=metric == "latency", dtype=None)
    cost = _model_cost(prof, "after", metric)
    if metric == "latency":
        cost["original_latency_ms"] = _model_cost(prof, "before", metric)["latency_ms"]
    quality = agreement(model, small, eval_x)
    return cost, quality


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
    passes: int = 2,
    check_uniform: bool = True,
    corrections: int = 2,
    progress: bool | None = None,
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
        progress: progress bars of the conversions (default: when stderr is a terminal).

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
    cgs, cos = _check_grid(cgs, cos)
    selection = _selection(patterns, include, exclude, min_channels, skip_first, skip_last)
    if not isinstance(model, nn.Module):
        raise TypeError(f"search: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"search: passes={passes!r} must be an int >= 1")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = calibration_batch(calib_data, device, dtype)
    fit_x, eval_x = _split(x, eval_data, holdout, device, dtype)
    example = fit_x[:1] if example_inputs is None else example_inputs

    with _eval_mode(model):
        _, probe = convert(model, cg=1, co=0.0, init="slice", example_inputs=example, **selection)
        layers, skipped = _layers(model, probe, cgs, cos, metric, example)
        if not layers:
            raise ValueError("search: no layer to search (" + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
        original = _model_cost(profile(model, example_input=example, latency=metric == "latency", dtype=None), "before", metric)
        fixed = original[_key(metric)] - sum(layer.before[metric] for layer in layers)
        budget = parse_target(metric, target, original[_key(metric)])
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
            convert_kwargs["exclude"] = list(_as_list(exclude)) + exclude_extra
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
            overrides = {n: layers_by(layers, n).choices[j].to_dict() for n, j in allocator.picked.items()}
            small, report = convert(model, overrides=overrides, calib_data=fit_x, example_inputs=example,
                                    progress=progress, **convert_kwargs)
            cost, quality = _measure(model, small, example, eval_x, metric)
            point = Point("searched", "searched", cost["macs"], cost["params"], cost["latency_ms"], quality.top1, quality.kl, overrides)
            points.append(point)
            predicted = _predicted(layers, allocator.picked, allocator.errors, original)
            best = (point, small, report, allocator, predicted, cost)
            measured_cost = cost[_key(metric)]
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
            uniform = _uniform_within(layers, metric, fixed, budget.limit, cgs, cos, allocator.errors)
            if uniform is not None:
                u_point, u_small, u_report, u_cost = _uniform_point(model, layers, uniform, fit_x, eval_x, example, metric,
                                                                    convert_kwargs, progress)
                points.append(u_point)
                if u_cost[_key(metric)] <= budget.limit and u_point.kl < point.kl:
                    notes.append(f"the uniform setting {u_point.label} measured better (KL {u_point.kl:.3f} < {point.kl:.3f}) "
                                 "and is the result")
                    point, small, report, cost = u_point, u_small, u_report, u_cost
                    predicted = _predicted(layers, _uniform_assignment(layers, *uniform), allocator.errors, original)
        measured = {**cost, "top1": point.top1, "kl": point.kl, "met": cost[_key(metric)] <= budget.limit}

    overrides = point.overrides
    rows = _rows(layers, overrides, allocator)
    return SearchResult(
        budget=budget, overrides=overrides, layers=rows, skipped=skipped, original=original, predicted=predicted,
        measured=measured, points=points, corrections=notes, eval_images=int(eval_x.shape[0]),
        seconds=time.perf_counter() - started, convert_kwargs={**convert_kwargs, "overrides": overrides},
        model=small, report=report,
    )


def _as_list(patterns: NamePatterns) -> list:
    if patterns is None:
        return []
    if isinstance(patterns, (str, re.Pattern)):
        return [patterns]
    return list(patterns)


def layers_by(layers: list[_Layer], name: str) -> _Layer:
    return next(layer for layer in layers if layer.name == name)


def _index(layer: _Layer, setting: dict[str, float]) -> int:
    return next(j for j, c in enumerate(layer.choices) if c.cg == setting["cg"] and c.co == setting["co"])


def _predicted(layers: list[_Layer], picked: dict[str, int], errors: dict[str, list[float]],
               original: dict[str, float | None]) -> dict[str, float | None]:
    """Whole-model costs of an allocation (the original's minus the per-layer savings) and
    its mean in-context error."""
    out: dict[str, float | None] = {}
    for m in METRICS:
        key = _key(m)
        if m not in layers[0].costs:
            out[key] = None
            continue
        out[key] = original[key] - sum(layer.before[m] - layer.costs[m][picked[layer.name]] for layer in layers)
    out["error"] = sum(errors[layer.name][picked[layer.name]] for layer in layers) / len(layers)
    return out


def _uniform_assignment(layers: list[_Layer], cg: int, co: float) -> dict[str, int] | None:
    """Choice index per layer for a uniform setting (layers it does not divide keep cg=1)."""
    out = {}
    for layer in layers:
        match = [j for j, c in enumerate(layer.choices) if c.cg == cg and (cg == 1 or c.co == co)]
        if not match:
            return None
        out[layer.name] = match[0]
    return out


def _uniform_within(layers, metric, fixed, limit, cgs, cos, errors) -> tuple[int, float] | None:
    """The uniform ``(cg, co)`` of highest cost within ``limit`` (ties: lowest error)."""
    best, best_key = None, None
    for cg in cgs:
        for co in ((0.0,) if cg == 1 else cos):
            picks = _uniform_assignment(layers, cg, co)
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


def _uniform_point(model, layers, setting, fit_x, eval_x, example, metric, convert_kwargs, progress):
    cg, co = setting
    overrides = {layer.name: {"cg": cg, "co": co} for layer in layers}
    small, report = convert(model, overrides=overrides, calib_data=fit_x, example_inputs=example, progress=progress,
                            **convert_kwargs)
    cost, quality = _measure(model, small, example, eval_x, metric)
    label = f"uniform cg={cg} co={co:g}"
    return Point(label, "uniform", cost["macs"], cost["params"], cost["latency_ms"], quality.top1, quality.kl, overrides), \
        small, report, cost


def _rows(layers: list[_Layer], overrides: dict, allocator: _Allocator) -> list[LayerChoice]:
    rows = []
    for layer in layers:
        setting = overrides[layer.name]
        j = _index(layer, setting)
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
    progress: bool | None = None,
    **selection,
) -> list[Point]:
    """Convert ``model`` with every uniform ``(cg, co)`` (least squares on the calibration
    images) and measure each on the held-out images, as :func:`search` measures its result.

    ``selection`` takes ``convert``'s ``patterns``/``include``/``exclude``/``min_channels``/
    ``skip_first``/``skip_last``.

    Example:
        >>> points = uniform_points(model, calib, cgs=(2, 4), cos=(0.5,))  # doctest: +SKIP
    """
    cgs, cos = _check_grid(cgs, cos)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    fit_x, eval_x = _split(calibration_batch(calib_data, device, dtype), eval_data, holdout, device, dtype)
    example = fit_x[:1] if example_inputs is None else example_inputs
    metric = "latency" if latency else "macs"
    points = []
    with _eval_mode(model):
        for cg in cgs:
            for co in ((0.0,) if cg == 1 else cos):
                small, _ = convert(model, cg=cg, co=co, calib_data=fit_x, example_inputs=example, progress=progress,
                                   **selection)
                cost, quality = _measure(model, small, example, eval_x, metric)
                points.append(Point(f"uniform cg={cg} co={co:g}", "uniform", cost["macs"], cost["params"],
                                    cost["latency_ms"], quality.top1, quality.kl, {}))
    return points
