"""The design space of a search: which layers are searched, their choices and what each
costs; the split of the images into fitting and held-out ones; measuring a converted model."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..convert.calibrate import calibration_batch
from ..convert.policy import parse_patterns
from ..geometry import check_cg_co
from ..profile import profile
from ..quality import agreement
from .costs import layer_latency_ms
from .sensitivity import Choice, layer_choices

NamePatterns = str | re.Pattern | Iterable[str | re.Pattern] | None


@dataclass
class Layer:
    name: str
    conv: nn.Conv2d
    choices: list[Choice]
    before: dict[str, float]  # metric -> the original layer's cost
    costs: dict[str, list[float]]  # metric -> cost of each choice


SEARCHED_PATTERNS = ("dw_pw", "pw")


def selection_kwargs(patterns, include, exclude, min_channels, skip_first, skip_last) -> dict:
    """``convert``'s layer selection, for the 1x1 conv patterns the search handles."""
    patterns = parse_patterns(patterns)
    other = [p for p in patterns if p not in SEARCHED_PATTERNS]
    if other:
        raise ValueError(f"search: pattern(s) {other} are not searched (only 1x1 convs: {list(SEARCHED_PATTERNS)}); "
                         "convert those layers with convert() after the search")
    return {"patterns": patterns, "include": include, "exclude": exclude, "min_channels": min_channels,
            "skip_first": skip_first, "skip_last": skip_last}


def check_grid(cgs: Sequence[int], cos: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    cgs, cos = tuple(cgs), tuple(float(c) for c in cos)
    if not cgs or not cos:
        raise ValueError("search: cgs and cos need at least one value each")
    for cg in cgs:
        for co in cos:
            check_cg_co(cg, co)
    return cgs, cos


def split_data(model: nn.Module, calib_data, eval_data, holdout: float,
               example_inputs: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(fit, held_out, example)`` batches on the model's device and dtype: ``eval_data``
    or the last ``holdout`` share of ``calib_data`` is held out; the example input the
    costs are counted at defaults to one fitting image."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = calibration_batch(calib_data, device, dtype)
    if eval_data is not None:
        fit, held = x, calibration_batch(eval_data, device, dtype)
    else:
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"search: holdout={holdout!r} must lie strictly between 0 and 1 (or pass eval_data)")
        count = max(1, round(holdout * x.shape[0]))
        if x.shape[0] - count < 4:
            raise ValueError(f"search: {x.shape[0]} calibration images leave too few to fit after holding out {count}; "
                             "give more images or pass eval_data")
        fit, held = x[:-count], x[-count:]
    return fit, held, (fit[:1] if example_inputs is None else example_inputs)


def model_cost(prof, label: str, metric: str) -> dict[str, float | None]:
    side = getattr(prof, label)
    lat = side.batches[0].latency
    return {"macs": side.macs, "params": side.params, "latency_ms": lat.median_ms if lat is not None else None}


def cost_key(metric: str) -> str:
    return "latency_ms" if metric == "latency" else metric


def input_shapes(model: nn.Module, names: list[str], example: Tensor) -> dict[str, tuple[int, ...]]:
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


def find_layers(model: nn.Module, probe, cgs, cos, metric: str, example: Tensor) -> tuple[list[Layer], dict[str, str]]:
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
        layers.append(Layer(
            r.name, conv, choices,
            before={"macs": r.macs_before, "params": r.params_before},
            costs={"macs": [r.macs_before // c.cg for c in choices],
                   "params": [cout * (cin // c.cg) + cout for c in choices]},
        ))
    if metric == "latency":
        shapes = input_shapes(model, [layer.name for layer in layers], example)
        for layer in layers:
            before, after = layer_latency_ms(layer.conv, shapes[layer.name], layer.choices)
            layer.before["latency"], layer.costs["latency"] = before, after
    return layers, skipped


def measure(model: nn.Module, small: nn.Module, example: Tensor, eval_x: Tensor, metric: str):
    prof = profile(model, small, example_input=example, latency=metric == "latency", dtype=None)
    cost = model_cost(prof, "after", metric)
    if metric == "latency":
        cost["original_latency_ms"] = model_cost(prof, "before", metric)["latency_ms"]
    quality = agreement(model, small, eval_x)
    return cost, quality


def as_list(patterns: NamePatterns) -> list:
    if patterns is None:
        return []
    if isinstance(patterns, (str, re.Pattern)):
        return [patterns]
    return list(patterns)


def choice_index(layer: Layer, setting: dict[str, float]) -> int:
    return next(j for j, c in enumerate(layer.choices) if c.cg == setting["cg"] and c.co == setting["co"])


def layer_named(layers: list[Layer], name: str) -> Layer:
    return next(layer for layer in layers if layer.name == name)
