"""Subclasses of ``nn.Conv2d`` (and ``nn.Linear``): converted only when they compute what the
base class computes.

A model's convolution may be an instance of a subclass with its own ``forward`` — timm's
``Conv2dSame`` (static "same" padding), weight-standardised convs (``StdConv2d``), ports of
TensorFlow models. The converter keeps every ``nn.Conv2d`` a leaf of the traced graph and
decides per layer, explicitly, never by guessing:

* ``nn.Conv2d`` itself converts;
* a class with a registered adapter (:func:`register_conv_adapter`) converts from the plain
  ``nn.Conv2d`` the adapter returns, once a probe shows that conv reproduces the layer;
* any other subclass converts when a probe shows that it computes exactly what
  ``nn.Conv2d`` with its parameters computes (``Conv2dSame`` with a 1x1 kernel: its "same"
  padding is zero); otherwise it is skipped, with the difference as the reason.

``nn.Linear`` subclasses follow the same rules against ``F.linear``.

The probe runs the layer and the reference on two random inputs of different, odd and even
sizes, in float64 on a copy of the layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["register_conv_adapter", "Resolved", "resolve"]

ConvAdapter = Callable[[nn.Module], nn.Module]

_BASES = (nn.Conv2d, nn.Linear)

_ADAPTERS: dict[type, ConvAdapter] = {}

_RTOL = 1e-6  # fp64 probe: a layer that computes the same agrees to rounding


def register_conv_adapter(cls: type, fn: ConvAdapter | None) -> None:
    """Convert instances of the ``nn.Conv2d`` subclass ``cls`` through ``fn``.

    ``fn(module)`` returns a plain ``nn.Conv2d`` that computes what ``module`` computes (the
    conversion starts from its weights, stride and padding); it is checked on probe inputs
    when a model is converted, and a layer whose adapter does not reproduce it is skipped
    with that reason. ``fn=None`` removes the adapter. Subclasses of ``cls`` use it too
    unless they have their own. An ``nn.Linear`` subclass takes an adapter returning a plain
    ``nn.Linear`` the same way.

    Example (a weight-standardised conv: the converted layer keeps the standardised weight
    the conv computes with, and no longer re-standardises when fine-tuned):
        >>> import torch, torch.nn.functional as F
        >>> from torch import nn
        >>> class WSConv2d(nn.Conv2d):
        ...     def standardised(self):
        ...         w = self.weight
        ...         mean = w.mean(dim=(1, 2, 3), keepdim=True)
        ...         return (w - mean) / (w.var(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()
        ...     def forward(self, x):
        ...         return F.conv2d(x, self.standardised(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        >>> def ws_as_conv(m: WSConv2d) -> nn.Conv2d:
        ...     conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
        ...                      m.dilation, m.groups, bias=m.bias is not None)
        ...     with torch.no_grad():
        ...         conv.weight.copy_(m.standardised())
        ...         if m.bias is not None:
        ...             conv.bias.copy_(m.bias)
        ...     return conv
        >>> register_conv_adapter(WSConv2d, ws_as_conv)
    """
    if not (isinstance(cls, type) and issubclass(cls, _BASES)) or cls in _BASES:
        raise TypeError(f"register_conv_adapter: cls must be a subclass of nn.Conv2d (or nn.Linear), got {cls!r}")
    if fn is None:
        _ADAPTERS.pop(cls, None)
        return
    if not callable(fn):
        raise TypeError(f"register_conv_adapter: fn must be callable (module -> plain nn.Conv2d), got {fn!r}")
    _ADAPTERS[cls] = fn


def _base(cls: type) -> type:
    return nn.Conv2d if issubclass(cls, nn.Conv2d) else nn.Linear


def _adapter(cls: type) -> ConvAdapter | None:
    for base in cls.__mro__:
        if base in _BASES:
            return None
        if base in _ADAPTERS:
            return _ADAPTERS[base]
    return None


@dataclass
class Resolved:
    """The plain ``nn.Conv2d`` / ``nn.Linear`` a layer converts from, or why it cannot be converted."""

    layer: nn.Module | None
    reason: str | None = None


def _probe_inputs(layer: nn.Module) -> list[Tensor]:
    if isinstance(layer, nn.Linear):
        shapes = [(2, 3, layer.in_features), (5, layer.in_features)]
    else:
        span = [(k - 1) * d for k, d in zip(layer.kernel_size, layer.dilation)]
        shapes = [(2, layer.in_channels, 8 + span[0], 9 + span[1]), (1, layer.in_channels, 11 + span[0], 10 + span[1])]
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(layer.weight.device) for s in shapes]


def _differs(module: nn.Module, reference: Callable[[Tensor], Tensor], inputs: list[Tensor]) -> str | None:
    """``None`` when ``module`` and ``reference`` agree on every probe input, else how they differ."""
    for x in inputs:
        shape = tuple(x.shape)
        try:
            with torch.no_grad():
                got, want = module(x), reference(x)
        except Exception as err:  # noqa: BLE001 - the layer's own failure is the reason
            text = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
            return f"it failed on a probe input {shape}: {type(err).__name__}: {text}"
        if not isinstance(got, Tensor) or got.shape != want.shape:
            found = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            return f"output {found} instead of {tuple(want.shape)} on a probe input {shape}"
        scale = want.abs().max().item()
        diff = (got - want).abs().max().item()
        if diff > _RTOL * max(scale, 1e-30):
            return f"max |difference| {diff:.3g} against max |output| {scale:.3g} on a probe input {shape}"
    return None


def _plain(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """What the base class computes with ``layer``'s parameters and settings."""
    if isinstance(layer, nn.Linear):
        return lambda x: torch.nn.functional.linear(x, layer.weight, layer.bias)
    return lambda x: nn.Conv2d._conv_forward(layer, x, layer.weight, layer.bias)


def resolve(module: nn.Module) -> Resolved:
    """The plain ``nn.Conv2d`` / ``nn.Linear`` equivalent of ``module`` (``module`` itself when
    it is one or computes like one), or the reason it has none."""
    cls = type(module)
    if cls in _BASES:
        return Resolved(module)
    base, name = _base(cls), cls.__name__
    try:
        probe = copy.deepcopy(module).double()
    except Exception as err:  # noqa: BLE001 - an uncopyable layer is left alone, with the reason
        return Resolved(None, f"{name}: it could not be copied for the probe ({type(err).__name__})")
    inputs = _probe_inputs(module)
    fn = _adapter(cls)
    if fn is not None:
        try:
            plain = fn(module)
        except Exception as err:  # noqa: BLE001
            return Resolved(None, f"the adapter registered for {name} failed: {type(err).__name__}: {err}")
        if type(plain) is not base:
            return Resolved(None, f"the adapter registered for {name} returned a {type(plain).__name__}, "
                                  f"not a plain nn.{base.__name__}")
        why = _differs(probe, _plain(copy.deepcopy(plain).double()), inputs)
        if why is not None:
            return Resolved(None, f"the adapter registered for {name} does not reproduce it: {why}")
        return Resolved(plain)
    why = _differs(probe, _plain(probe), inputs)
    if why is not None:
        return Resolved(None, f"its forward differs from nn.{base.__name__} ({name}: {why}); "
                              "register_conv_adapter() can convert it")
    return Resolved(module)
