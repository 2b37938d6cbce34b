"""``convert``: find candidates -> decide per layer -> transfer weights -> rewrite -> report."""

from __future__ import annotations

import copy
import math
import re
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..geometry import SCCGeometry
from ..inputs import ExampleInputs, find_example_inputs, run_for_shapes
from . import calibrate
from .build import make_dwscc, make_pointwise, replacement
from .patterns import Candidate, channels, find_candidates
from .policy import Decision, LayerPolicy, parse_patterns
from .report import ConversionReport, LayerRecord
from .transfer import factorise_standard, window_index

__all__ = ["INITS", "convert"]

INITS = ("slice", "energy", "lsq", "random")


def convert(
    model: nn.Module,
    cg: int = 4,
    co: float = 0.5,
    *,
    patterns: str | Iterable[str] = ("dw_pw", "pw"),
    include: str | re.Pattern | Iterable[str | re.Pattern] | None = None,
    exclude: str | re.Pattern | Iterable[str | re.Pattern] | None = None,
    min_channels: int = 16,
    overrides: Mapping[str | re.Pattern, Mapping[str, float]] | None = None,
    on_indivisible: str = "skip",
    skip_first: bool = False,
    skip_last: bool = False,
    init: str | None = None,
    calib_data: Tensor | Iterable | None = None,
    recalibrate_bn: bool = False,
    example_inputs: Tensor | tuple | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, ConversionReport]:
    """Replace a CNN's pointwise convolutions with Sliding-Channel Convolutions.

    Args:
        model: any ``nn.Module``; it is deep-copied unless ``inplace=True``.
        cg, co: SCC channel groups and overlap ratio for every converted layer.
        patterns: which of ``"dw_pw"`` (1x1 conv after a depthwise conv), ``"pw"`` (any
            other 1x1 conv, groups=1), ``"std"`` (KxK conv -> depthwise KxK + SCC) and
            ``"linear"`` (``nn.Linear`` -> :class:`SCCLinear`, SCC over the last dimension; the
            classifier head only when ``include`` names it) to convert: names, or one string
            such as ``"pw"`` or ``"dw_pw,pw"``. Layers of the other patterns are still listed.
        include, exclude: module-name filters: fnmatch globs, ``re.Pattern`` objects, or
            strings prefixed ``"re:"`` (regex, full match).
        min_channels: skip layers with fewer input channels.
        overrides: ``{name_or_pattern: {"cg": .., "co": ..}}`` per-layer settings (later
            entries win).
        on_indivisible: ``"skip"`` a layer whose ``in_channels`` ``cg`` does not divide, or
            use the ``"nearest"`` divisor (never 1, which would save nothing: such a layer is
            skipped).
        skip_first, skip_last: leave the first / last enabled candidate in network order alone.
        init: weight transfer — ``"slice"`` (each output keeps its weights on its window),
            ``"energy"`` (output-to-window assignment keeping the most squared weight),
            ``"lsq"`` (least-squares reconstruction on ``calib_data``; the new layers get a
            fitted bias even where the original had none), ``"random"``. Default: ``"lsq"`` when ``calib_data`` is given, else ``"slice"`` (slicing a trained
            model's weights without calibration loses most of its accuracy until fine-tuned).
        calib_data: input batches (a tensor, or an iterable of tensors / ``(input, label)``
            pairs; labels are ignored) for ``init="lsq"`` and ``recalibrate_bn``.
        recalibrate_bn: re-estimate BatchNorm running statistics on ``calib_data`` afterwards.
        example_inputs: an input, a tuple of inputs, or a shape such as ``(1, 3, 32, 32)``
            to count MACs on. Default: the size the model declares, else the first of
            224, 32, 64, 96, 128, 160 (square) it runs on (:mod:`scc_convert.inputs`); when
            none runs the model is converted anyway and the report says MACs are unknown.
        inplace: modify ``model`` itself.
        progress: show a progress bar for calibration on stderr, when it is a terminal (a
            redirected stderr never gets one).

    Returns:
        ``(new_model, report)``. Converted layers are :class:`SCCConv2d` (or
        :class:`DWSCCConv2d` for ``std``) at the original module names; everything else,
        names included, is unchanged. The model keeps its train/eval mode.

    Example:
        >>> import torch, torchvision
        >>> small, report = convert(torchvision.models.mobilenet_v2(), cg=4, co=0.5)
        >>> print(report)  # doctest: +SKIP
    """
    started = time.perf_counter()
    patterns = parse_patterns(patterns)
    policy = LayerPolicy(
        cg, co, patterns=patterns, include=include, exclude=exclude, min_channels=min_channels,
        overrides=overrides, on_indivisible=on_indivisible, skip_first=skip_first, skip_last=skip_last,
    )
    if init is None:
        init = "lsq" if calib_data is not None else "slice"
    if init not in INITS:
        raise ValueError(f"init={init!r}; choose from {list(INITS)}")
    if init == "lsq" and calib_data is None:
        raise ValueError("init='lsq' needs calib_data: a few batches of inputs (labels are not needed)")
    if recalibrate_bn and calib_data is None:
        raise ValueError("recalibrate_bn=True needs calib_data")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")

    target = model if inplace else copy.deepcopy(model)
    candidates, trace = find_candidates(target)
    decisions = policy.decide(candidates)
    notes = policy.unmatched(candidates)
    geoms = {
        c.name: SCCGeometry(*channels(c.layer), d.cg, d.co, layer=c.name)
        for c, d in zip(candidates, decisions) if d.convert
    }
    param = next(target.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    records = {c.name: _record(c, d, geoms.get(c.name)) for c, d in zip(candidates, decisions)}
    with eval_mode(target), torch.no_grad():
        shapes, found = _count_before(target, candidates, records, example_inputs)
        todo = [c for c, d in zip(candidates, decisions) if d.convert]
        if init == "lsq":
            _convert_lsq(target, todo, geoms, records, calib_data, device, dtype, progress)
        else:
            for c in todo:
                new, quality = replacement(c, geoms[c.name], init)
                calibrate.set_module(target, c.name, new)
                _finish(records[c.name], new, quality)
        if recalibrate_bn:
            calibrate.recalibrate_batchnorm(target, calibrate.calibration_batch(calib_data, device, dtype))
    _count_after(records, geoms, shapes)
    report = ConversionReport(
        layers=list(records.values()), cg=cg, co=float(co), init=init, patterns=patterns,
        input_shape=found.shape, input_note=found.describe(), trace=trace.mode,
        trace_failures=trace.failures, seconds=time.perf_counter() - started,
    )
    if not report.converted:
        notes.append(f"no layer was converted ({report.skip_summary()})")
    report.warnings = notes
    for note in notes:
        warnings.warn(f"convert: {note}", UserWarning, stacklevel=2)
    return target, report


def _convert_lsq(target, todo, geoms, records, calib_data, device, dtype, progress) -> None:
    x = calibrate.calibration_batch(calib_data, device, dtype)
    samples = calibrate.capture_targets(target, {c.name: c.module for c in todo}, x)
    isatty = getattr(sys.stderr, "isatty", None)
    show = bool(progress and isatty and isatty())
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="lsq calibration", unit="layer", disable=not show, file=sys.stderr)

    def done(name: str, module: nn.Module, error: float) -> None:
        _finish(records[name], module, None, error)
        bar.update()

    placeholders = {}
    for c in todo:
        geom, conv = geoms[c.name], c.layer
        intercept = True  # a fitted bias absorbs the mean shift the narrower windows leave
        if c.pattern == "std":
            depthwise, scale = factorise_standard(conv.weight, geom)
            prior = _dense(scale, geom)  # what the fit may be pulled toward
            dw = make_dwscc(conv, geom, depthwise, None, None, None).depthwise

            def prepare(t, dw=dw):
                return dw(t)

            def build(window_of, weight, bias, conv=conv, geom=geom, depthwise=depthwise):
                return make_dwscc(conv, geom, depthwise, window_of, weight, bias)
        else:
            step = 1 if c.pattern == "linear" else conv.stride[0]
            prior = conv.weight.detach().reshape(conv.weight.shape[0], -1)  # the original weight

            def prepare(t, step=step):
                return t[:, :, ::step, ::step] if step > 1 else t

            def build(window_of, weight, bias, conv=conv, geom=geom):
                return make_pointwise(conv, geom, window_of, weight, bias)

        placeholders[c.name] = calibrate._Fitting(c.name, prepare, geom, intercept, samples[c.name], build, done,
                                                  prior=prior)
    try:
        calibrate.fit_in_order(target, placeholders, x)
    finally:
        bar.close()


def _dense(scc_weight: Tensor, geom: SCCGeometry) -> Tensor:
    """``[Cout, Cin]``: an SCC weight ``[Cout, gw]`` in the default window order, scattered
    into a dense pointwise weight (zeros off the windows)."""
    dense = scc_weight.detach().new_zeros(geom.out_channels, geom.in_channels)
    return dense.scatter_(1, window_index(geom, device=scc_weight.device), scc_weight.detach())


# -- bookkeeping ------------------------------------------------------------------------------


@contextmanager
def eval_mode(model: nn.Module):
    """Every submodule in eval mode inside the block; each one's own flag restored after."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, f in flags.items():
            m.training = f


def _record(c: Candidate, d: Decision, geom: SCCGeometry | None) -> LayerRecord:
    layer = c.layer
    params = sum(p.numel() for p in c.module.parameters())
    cin, cout = channels(layer)
    linear = isinstance(layer, nn.Linear)
    return LayerRecord(
        name=c.name, pattern=c.pattern, in_channels=cin, out_channels=cout,
        kernel_size=(1, 1) if linear else tuple(layer.kernel_size), stride=(1, 1) if linear else tuple(layer.stride),
        converted=d.convert,
        reason=d.reason, cause=d.cause, verified=c.verified, cg=d.cg, co=d.co,
        cd=geom.cyclic_distance if geom else None, params_before=params, params_after=params,
    )


def _finish(record: LayerRecord, module: nn.Module, kept: float | None, error: float | None = None) -> None:
    record.params_after = sum(p.numel() for p in module.parameters())
    record.kept_energy, record.calib_error = kept, error
    record.new_type = type(module).__name__


def _shape_hook(store: dict[str, tuple[int, ...]], name: str):
    """A forward hook recording the first output shape under ``name`` (returns None: output kept)."""

    def hook(module, inputs, output) -> None:
        store.setdefault(name, tuple(output.shape))

    return hook


def _count_before(
    model: nn.Module, candidates: list[Candidate], records: dict[str, LayerRecord], given
) -> tuple[dict[str, tuple[int, ...]], ExampleInputs]:
    """Run the original model once on the example input (given, declared or found by trying
    sizes); MACs of each candidate from its output size. Returns the output shapes."""
    outputs: dict[str, tuple[int, ...]] = {}

    def attempt(inputs: tuple) -> None:
        outputs.clear()  # a failed size may have reached some layers
        run_for_shapes(model, inputs)

    handles = [c.module.register_forward_hook(_shape_hook(outputs, c.name)) for c in candidates]
    try:
        found = find_example_inputs(model, given, run=attempt)
    finally:
        for h in handles:
            h.remove()
    if found.inputs is None:
        outputs.clear()
    for c in candidates:
        rec = records[c.name]
        shape = outputs.get(c.name)
        if shape is None:
            continue
        groups = getattr(c.layer, "groups", 1)
        rec.macs_before = _positions(shape, rec.pattern) * rec.out_channels * rec.in_channels // groups * math.prod(rec.kernel_size)
        rec.macs_after = rec.macs_before
    return outputs, found


def _positions(shape: tuple[int, ...], pattern: str) -> int:
    """Output positions of a layer: ``N*H*W`` of a conv's output, the product of all but the
    last dimension of a linear layer's."""
    return math.prod(shape[:-1]) if pattern == "linear" else shape[0] * shape[2] * shape[3]


def _count_after(records: dict[str, LayerRecord], geoms: dict[str, SCCGeometry], shapes: dict[str, tuple[int, ...]]) -> None:
    """MACs of the new layers from their geometry at the original layers' output sizes."""
    for name, geom in geoms.items():
        rec, shape = records[name], shapes.get(name)
        if shape is None or not rec.converted:
            continue
        positions = _positions(shape, rec.pattern)
        rec.macs_after = geom.macs(positions, 1, 1)
        if rec.pattern == "std":  # plus the depthwise KxK conv
            rec.macs_after += positions * rec.in_channels * rec.kernel_size[0] * rec.kernel_size[1]
