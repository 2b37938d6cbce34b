"""Example inputs: what to run a model on when the caller did not say.

:func:`find_example_inputs` is the one place :func:`~scc_convert.convert`,
:func:`~scc_convert.profile`, the exporters and the CLI get their example input from:

1. the input the caller gave — a tensor, a tuple of tensors, or a shape such as
   ``(1, 3, 32, 32)`` (random normal values, seeded);
2. else the size the model declares: timm's ``pretrained_cfg`` / ``default_cfg``
   ``"input_size"``, or an ``input_size`` attribute (``(C, H, W)``, ``(N, C, H, W)``, ``(H, W)``
   or one int for square images);
3. else square images of 224, 32, 64, 96, 128 and 160 pixels, in that order.

Declared and tried sizes are run at batch 1 with the channel count of the model's first
convolution (3 when it has none), quietly: the first that runs is taken. A run happens on fake
tensors (no arithmetic) when the model allows it, else for real; PyTorch's fake-tensor and
dynamo logs are silenced meanwhile.
"""

from __future__ import annotations

import copy
import logging
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "TRIED_SIZES", "ExampleInputs", "as_inputs", "declared_shape", "find_example_inputs", "input_channels",
    "no_stand_ins_left", "run_for_shapes",
]

TRIED_SIZES = (224, 32, 64, 96, 128, 160)

# Loggers that report failures of fake-tensor runs as ERROR with a traceback; a failed probe
# is expected here, so they are muted while probing.
_NOISY_LOGGERS = ("torch._subclasses.fake_tensor", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")

HINT = "pass example_inputs=(1, C, H, W) (CLI: --input-shape N,C,H,W)"


@dataclass(frozen=True)
class ExampleInputs:
    """The outcome of :func:`find_example_inputs`.

    Attributes:
        inputs: the positional inputs the model ran on, or ``None`` when none ran.
        source: ``"given"``, ``"declared"`` (by the model), ``"tried"`` (found by trying sizes)
            or ``"none"``.
        tried: the shapes that were run and failed, in order.
        error: the first line of the last failure (``None`` when the first try ran).
    """

    inputs: tuple[Any, ...] | None
    source: str
    tried: tuple[tuple[int, ...], ...] = field(default=())
    error: str | None = None

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the first input tensor (``None`` when nothing ran)."""
        if self.inputs is None:
            return None
        first = next((t for t in self.inputs if isinstance(t, Tensor)), None)
        return None if first is None else tuple(first.shape)

    def describe(self) -> str:
        """One line: which input was used and where it came from, or why there is none."""
        if self.inputs is None:
            return f"the model ran on none of the inputs tried ({_sizes(self.tried)}; last error: {self.error}); {HINT}"
        if self.source == "given":
            return f"input {_show(self.shape)}"
        note = "declared by the model" if self.source == "declared" else "the first size it ran on"
        if self.tried:
            note += f"; it failed on {_sizes(self.tried)}"
        return f"input {_show(self.shape)} ({note})"


def _show(shape: Sequence[int] | None) -> str:
    return str(tuple(shape)) if shape else "?"


def _sizes(shapes: Sequence[tuple[int, ...]]) -> str:
    """``3-channel 224x224, 32x32`` for batch-1 images of one channel count, else the shapes."""
    if shapes and all(len(s) == 4 and s[0] == 1 and s[1] == shapes[0][1] for s in shapes):
        return f"{shapes[0][1]}-channel " + ", ".join(f"{s[2]}x{s[3]}" for s in shapes)
    return ", ".join(_show(s) for s in shapes)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:120]}" if text else type(err).__name__


def _is_shape(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list, torch.Size)) and len(value) > 0
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    )


def as_inputs(value: Tensor | Sequence[Any], device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> tuple[Any, ...]:
    """The positional inputs ``value`` stands for: a tensor -> ``(tensor,)``; a shape (a tuple of
    positive ints) -> ``(seeded randn of that shape,)`` on ``device`` in ``dtype``; a tuple of
    inputs -> itself.

    Example:
        >>> as_inputs((1, 3, 32, 32))[0].shape
        torch.Size([1, 3, 32, 32])
    """
    if isinstance(value, Tensor):
        return (value,)
    if _is_shape(value):
        if min(value) < 1:
            raise ValueError(f"example input shape {tuple(value)} is invalid: every size must be >= 1")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tuple(int(v) for v in value), generator=gen, dtype=dtype or torch.float32)
        return (x.to(device) if device is not None else x,)
    if isinstance(value, (tuple, list)) and value:
        return tuple(value)
    raise TypeError(
        f"example input must be a tensor, a tuple of tensors or a shape such as (1, 3, 224, 224); "
        f"got {type(value).__name__} {value!r}"[:300]
    )


def input_channels(model: nn.Module) -> int:
    """Input channels of the model's first ``nn.Conv2d`` in module order (3 when it has none)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def declared_shape(model: nn.Module) -> tuple[int, ...] | None:
    """``(1, C, H, W)`` from what the model declares (see the module docstring), else ``None``."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if size is not None:
            break
    else:
        size = getattr(model, "input_size", None)
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    if not _is_shape(size) or min(size) < 1:
        return None
    size = tuple(int(v) for v in size)
    if len(size) == 2:
        return (1, input_channels(model), *size)
    if len(size) == 3:
        return (1, *size)
    if len(size) == 4:
        return (1, *size[1:])
    return None


@contextmanager
def quiet_torch_logs() -> Iterator[None]:
    """Mute PyTorch's fake-tensor and dynamo loggers inside the block."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    saved = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, flag in zip(loggers, saved):
            lg.disabled = flag


def _holds_stand_in(value: Any) -> bool:
    """Whether ``value`` is, or a container holds, a fake tensor or a ``torch.fx`` proxy."""
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(value, (FakeTensor, torch.fx.Proxy)):
        return True
    if isinstance(value, dict):
        return any(_holds_stand_in(v) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_holds_stand_in(v) for v in value)
    return False


_MISSING = object()


@contextmanager
def no_stand_ins_left(model: nn.Module) -> Iterator[None]:
    """Undo what a forward on fake tensors, or an fx trace, left in the modules' state: an
    attribute or buffer that holds a fake tensor or a proxy afterwards (a cache filled in eval
    mode) gets its value from before back (containers are restored from a shallow copy)."""
    saved = {}
    for m in model.modules():
        for key, value in vars(m).items():
            saved[id(m), key] = copy.copy(value) if isinstance(value, (dict, list, set)) else value
    try:
        yield
    finally:
        for m in model.modules():
            for key, value in list(vars(m).items()):
                if key in ("_parameters", "_modules"):
                    continue
                if key == "_buffers":
                    old = saved.get((id(m), key), {})
                    for name, buf in list(value.items()):
                        if _holds_stand_in(buf):
                            value[name] = old.get(name)
                elif _holds_stand_in(value):
                    old = saved.get((id(m), key), _MISSING)
                    if old is _MISSING:
                        delattr(m, key)
                    elif isinstance(value, (dict, list, set)) and type(old) is type(value):
                        value.clear()  # restored in place: others may hold the same container
                        if isinstance(value, list):
                            value.extend(old)
                        else:
                            value.update(old)
                    else:
                        setattr(m, key, old)


def run_for_shapes(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    """One forward without gradients, on fake tensors (no arithmetic) when the model allows it,
    else for real; raises what the real run raises. What the fake run caches in the modules
    (a fake tensor in an attribute) is undone."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.no_grad(), quiet_torch_logs():
        try:
            with no_stand_ins_left(model), FakeTensorMode(allow_non_fake_inputs=True) as mode:
                model(*(mode.from_tensor(t) if isinstance(t, Tensor) else t for t in inputs))
            return
        except Exception:  # noqa: BLE001 - data-dependent or fake-unsupported ops: run for real
            pass
        model(*inputs)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def find_example_inputs(
    model: nn.Module,
    given: Tensor | Sequence[Any] | None = None,
    *,
    run: Callable[[tuple[Any, ...]], None] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ExampleInputs:
    """The inputs to run ``model`` on: ``given`` (see :func:`as_inputs`), else the first declared
    or tried size (module docstring) on which ``run(inputs)`` returns without raising.

    Args:
        model: the model (in the mode it should run in).
        given: the caller's inputs or shape; it is run once and its failure raises.
        run: what one attempt does (default :func:`run_for_shapes`); it raises on failure.
        device, dtype: for inputs made here (default: those of the model's first floating
            parameter or buffer).

    Returns:
        :class:`ExampleInputs`; ``inputs`` is ``None`` when no size ran (never raises then).

    Raises:
        ValueError: the ``given`` input does not run (the message names its shape and the error).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 2))
        >>> find_example_inputs(net).shape
        (1, 1, 32, 32)
    """
    run = run or (lambda inputs: run_for_shapes(model, inputs))
    own_device, own_dtype = _model_device_dtype(model)
    device, dtype = device or own_device, dtype or own_dtype
    if given is not None:
        inputs = as_inputs(given, device, dtype)
        try:
            run(inputs)
        except Exception as err:
            shapes = ", ".join(str(tuple(t.shape)) for t in inputs if isinstance(t, Tensor))
            raise ValueError(f"the model failed on an example input of shape {shapes}: {_first_line(err)}") from err
        return ExampleInputs(inputs, "given")
    channels = input_channels(model)
    declared = declared_shape(model)
    shapes = ([declared] if declared else []) + [(1, channels, s, s) for s in TRIED_SIZES]
    tried: list[tuple[int, ...]] = []
    error = None
    for shape in dict.fromkeys(shapes):
        inputs = as_inputs(shape, device, dtype)
        try:
            run(inputs)
        except Exception as err:  # noqa: BLE001 - the next size may run
            tried.append(shape)
            error = _first_line(err)
            continue
        return ExampleInputs(inputs, "declared" if shape == declared else "tried", tuple(tried), error)
    return ExampleInputs(None, "none", tuple(tried), error)
