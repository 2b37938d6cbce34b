"""``profile``: check the arguments, prepare the models, count and time them, build the report."""

from __future__ import annotations

import copy
import platform
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..inputs import find_example_inputs
from .counting import count, layer_rows, size_bytes, unique
from .report import ProfileReport
from .results import BatchProfile, LayerProfile, ModelProfile
from .timing import noise_warning, peak_activation_bytes, time_interleaved

def _check_positive_ints(name: str, value: Any, example: str) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ValueError(
            f"profile: {name}={value!r} is invalid: expected a non-empty sequence of positive ints, e.g. {example}"
        )
    return items


def _model_device(model: nn.Module) -> torch.device | None:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None


def _resolve_device(device: torch.device | str | None, models: Iterable[nn.Module]) -> torch.device:
    if device is None:
        for m in models:
            found = _model_device(m)
            if found is not None:
                return found
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"profile: device={device!r} is not a device: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"profile: device={device!r} but torch.cuda.is_available() is False; use device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _prepared(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """``model`` itself if it already lives on ``device`` in ``dtype``, else a moved copy
    (the caller's model is never moved or cast)."""
    tensors = list(model.parameters()) + list(model.buffers())
    fits = all(
        t.device == device and (dtype is None or not t.is_floating_point() or t.dtype == dtype)
        for t in tensors
    )
    if fits:
        return model
    moved = copy.deepcopy(model)
    return moved.to(device=device, dtype=dtype) if dtype is not None else moved.to(device=device)



def _batched_input(
    input_shape: tuple[int, ...], example_input: Tensor | None, batch: int,
    device: torch.device, dtype: torch.dtype,
) -> Tensor:
    """The input for one batch size: ``example_input``'s rows repeated cyclically (floating
    inputs cast to ``dtype``), or seeded ``randn`` of ``input_shape`` with ``N = batch``."""
    if example_input is not None:
        x = example_input.to(device=device, dtype=dtype if example_input.is_floating_point() else None)
        if x.shape[0] != batch:
            x = x[torch.arange(batch, device=device) % x.shape[0]]
        return x
    gen = torch.Generator().manual_seed(0)
    return torch.randn((batch, *input_shape[1:]), generator=gen, dtype=dtype).to(device)


def _input_dtype(model: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    """``dtype``, or with ``None`` the dtype of the model's first floating parameter."""
    if dtype is not None:
        return dtype
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return str(device)


def profile(
    before: nn.Module,
    after: nn.Module | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = torch.float32,
    batch_sizes: Sequence[int] | None = None,
    train: bool = False,
    latency: bool = True,
    warmup: int = 5,
    repeats: int = 30,
    example_input: Tensor | None = None,
) -> ProfileReport:
    """Count MACs/FLOPs, parameters and size, and time the forward pass of one model, or of
    an original (``before``) and its converted form (``after``) side by side.

    Args:
        before: the model (the original, when comparing).
        after: the converted model, or ``None`` to profile ``before`` alone.
        input_shape: NCHW shape of the random input (``N`` is the batch size unless
            ``batch_sizes`` is given). ``None``: the size ``before`` declares, else the first
            of 224, 32, 64, 96, 128, 160 (square, batch 1) it runs on
            (:func:`scc_convert.inputs.find_example_inputs`).
        device: where to run; ``None`` means where ``before``'s parameters live (CPU if it
            has none). Models elsewhere are copied there; the caller's models are never moved.
        dtype: floating dtype of parameters and input (``None``: keep the models' own).
            Models in another dtype are profiled as a cast copy.
        batch_sizes: batch sizes to count and time (replacing ``input_shape[0]``).
        train: also count the backward pass of a training step (MACs of forward +
            backward; latency stays forward-only).
        latency: time the forward pass (set ``False`` to count only).
        warmup: untimed runs of each model before timing.
        repeats: timed runs of each model (the report gives their median and IQR).
        example_input: a real input tensor to use instead of a random one; its rows are
            repeated cyclically to reach each batch size.

    Returns:
        A :class:`ProfileReport`. Counts are MACs (multiply-accumulates) with FLOPs = 2 x MACs;
        bias adds, BatchNorm, activations and pooling are not counted.

    Raises:
        TypeError: a model is not an ``nn.Module``.
        ValueError: a bad ``input_shape``/``batch_sizes``/``device``/``warmup``/``repeats``,
            a model that fails on the input (the message names the shape and the error), or
            no ``input_shape`` given and none found.

    Example:
        >>> import torch
        >>> from scc_convert import SCCConv2d
        >>> before = torch.nn.Conv2d(64, 128, 1, bias=False)
        >>> after = SCCConv2d(64, 128, cg=4, co=0.5)
        >>> report = profile(before, after, input_shape=(1, 64, 8, 8), latency=False)
        >>> report.before.macs, report.after.macs
        (524288, 131072)
    """
    for label, model in (("before", before), ("after", after)):
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"profile: {label} must be a torch.nn.Module, got {type(model).__name__}")
    if example_input is not None:
        if not isinstance(example_input, Tensor) or example_input.dim() == 0:
            raise ValueError("profile: example_input must be a tensor with a batch dimension")
        input_shape = tuple(example_input.shape)
    shape = None if input_shape is None else _check_positive_ints("input_shape", input_shape, "(1, 3, 224, 224)")
    if batch_sizes is not None:
        batch_sizes = _check_positive_ints("batch_sizes", batch_sizes, "(1, 8, 32)")
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"profile: {name}={value!r} is invalid: expected an int >= {low}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"profile: dtype={dtype!r} is invalid: expected a floating torch.dtype such as torch.float32")

    originals = {"before": before} if after is None else {"before": before, "after": after}
    dev = _resolve_device(device, originals.values())
    models = {label: _prepared(m, dev, dtype) for label, m in originals.items()}
    modes = {label: m.training for label, m in models.items()}
    in_dtype = _input_dtype(models["before"], dtype)
    warn: list[str] = []
    source = "given"
    try:
        for m in models.values():
            m.eval()
        if shape is None:
            found = find_example_inputs(models["before"], device=dev, dtype=in_dtype)
            if found.inputs is None:
                raise ValueError(f"profile: no input_shape given, and {found.describe()}")
            shape, source = found.shape, found.source
        batches = tuple(dict.fromkeys(batch_sizes if batch_sizes is not None else (shape[0],)))
        results = _measure(models, shape, example_input, batches, dev, in_dtype, train, latency, warmup, repeats)
    finally:
        for label, m in models.items():
            m.train(modes[label])

    if after is None:
        results["before"].label = "model"
    for prof in results.values():
        warn += [noisy for b in prof.batches if (noisy := noise_warning(prof.label, b)) is not None]
        if prof.unknown_ops:
            ops_text = ", ".join(f"{op} ({n} calls)" for op, n in sorted(prof.unknown_ops.items()))
            warn.append(
                f"{prof.label}: ops with no FLOP formula were counted as 0 MACs: {ops_text}; register one "
                "with torch.utils.flop_counter.register_flop_formula to count them"
            )
    for w in warn:
        warnings.warn(w, RuntimeWarning, stacklevel=2)

    env = {
        "device": str(dev),
        "device_name": _device_name(dev),
        "dtype": str(in_dtype).removeprefix("torch."),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "python": platform.python_version(),
    }
    settings = {
        "input_shape": list(shape),
        "input_source": source,
        "batch_sizes": list(batches),
        "train": bool(train),
        "latency": bool(latency),
        "warmup": warmup,
        "repeats": repeats,
        "example_input": example_input is not None,
    }
    return ProfileReport(results["before"], results.get("after"), env, settings, warn)


def _measure(
    models: dict[str, nn.Module], shape: tuple[int, ...], example_input: Tensor | None,
    batches: tuple[int, ...], dev: torch.device, dtype: torch.dtype,
    train: bool, latency: bool, warmup: int, repeats: int,
) -> dict[str, ModelProfile]:
    per_batch: dict[str, list[BatchProfile]] = {label: [] for label in models}
    layers: dict[str, list[LayerProfile]] = {}
    unknown: dict[str, dict[str, int]] = {label: {} for label in models}
    for batch in batches:
        x = _batched_input(shape, example_input, batch, dev, dtype)
        for label, model in models.items():
            try:
                fwd = count(model, x, train=False)
                trn = count(model, x, train=True) if train else None
            except Exception as err:  # noqa: BLE001 - the model's own error, re-raised with context
                raise ValueError(
                    f"profile: the {label} model ({type(model).__name__}) failed on an input of shape "
                    f"{tuple(x.shape)}: {type(err).__name__}: {err}"
                ) from err
            for op, n in {**fwd.unknown_ops, **(trn.unknown_ops if trn else {})}.items():
                unknown[label][op] = max(unknown[label].get(op, 0), n)
            if label not in layers:
                layers[label] = layer_rows(model, fwd)
            peak = peak_activation_bytes(model, x) if dev.type == "cuda" else None
            per_batch[label].append(BatchProfile(
                batch_size=batch,
                macs=fwd.total_flops // 2,
                train_macs=trn.total_flops // 2 if trn else None,
                peak_activation_bytes=peak,
            ))
        if latency:
            with torch.inference_mode():
                fns = {label: (lambda m=model: m(x)) for label, model in models.items()}
                stats = time_interleaved(fns, dev, warmup, repeats)
            for label in models:
                per_batch[label][-1].latency = stats[label]
    return {
        label: ModelProfile(
            label=label,
            model_type=type(model).__name__,
            params=sum(p.numel() for p in unique(model.parameters())),
            size_bytes=size_bytes(model),
            batches=per_batch[label],
            layers=layers[label],
            unknown_ops=unknown[label],
        )
        for label, model in models.items()
    }
