"""Converted models as weights-only files: the ``state_dict`` plus the conversion recipe.

:func:`save` writes a file that ``torch.load(path, weights_only=True)`` reads — plain
containers, numbers, strings and tensors, no pickled code:

.. code-block:: python

    {
        "format": "scc_convert.converted", "format_version": 1,
        "scc_convert_version": "0.1.0",
        "arch": "torchvision.models:mobilenet_v2",   # or None when not known
        "layers": {                                   # the conversion recipe, per layer
            "features.2.conv.0.0": {"type": "SCCConv2d", "in_channels": 16, "out_channels": 96,
                                    "cg": 4, "co": 0.5, "window_of": None, "bias": False, "stride": 1},
            "head.fc": {"type": "SCCLinear", "in_features": ..., "cg": ..., ...},
            "features.0.0": {"type": "DWSCCConv2d", ..., "kernel_size": [3, 3], "padding": [1, 1], ...},
        },
        "state_dict": {...},                          # of the converted model
    }

``window_of`` is ``None`` for the paper's default order, else the list of windows. :func:`load`
builds the original architecture (a module, ``"package.module:factory"``, or the recorded
``arch``), puts the SCC layers of the recipe in place and loads the ``state_dict`` into it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import ModelLoadError, atomic_write, build_arch, describe_mismatch
from .nn import DWSCCConv2d, SCCConv2d, SCCLinear

__all__ = ["FORMAT", "FORMAT_VERSION", "recipe", "save", "load", "is_converted", "rebuild", "from_saved", "infer_arch"]

FORMAT = "scc_convert.converted"
FORMAT_VERSION = 1


def _version() -> str:
    from . import __version__

    return __version__


def _window_of(layer) -> list[int] | None:
    return None if layer._window_of is None else list(layer._window_of)


def _layer_recipe(module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, SCCConv2d):
        return {"type": "SCCConv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "cg": module.cg, "co": module.co, "window_of": _window_of(module), "bias": module.bias is not None,
                "stride": module.stride}
    if isinstance(module, SCCLinear):
        return {"type": "SCCLinear", "in_features": module.in_features, "out_features": module.out_features,
                "cg": module.cg, "co": module.co, "window_of": _window_of(module), "bias": module.bias is not None}
    if isinstance(module, DWSCCConv2d):
        dw, pw = module.depthwise, module.pointwise
        return {"type": "DWSCCConv2d", "in_channels": dw.in_channels, "out_channels": pw.out_channels,
                "cg": pw.cg, "co": pw.co, "window_of": _window_of(pw), "bias": pw.bias is not None,
                "kernel_size": list(dw.kernel_size), "stride": list(dw.stride),
                "padding": dw.padding if isinstance(dw.padding, str) else list(dw.padding),
                "dilation": list(dw.dilation), "padding_mode": dw.padding_mode}
    return None


def recipe(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: settings}`` of every SCC layer in ``model`` (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in out):
            continue  # inside a DWSCCConv2d: its recipe covers it
        spec = _layer_recipe(module)
        if spec is not None:
            out[name] = spec
    return out


def infer_arch(model: nn.Module) -> str | None:
    """``timm.models:<name>`` for a timm model (its ``pretrained_cfg`` names the architecture)."""
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"timm.models:{name}" if isinstance(name, str) and type(model).__module__.startswith("timm.") else None


def save(model: nn.Module, path: str | os.PathLike, *, arch: str | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (a converted model) as a weights-only file, atomically.

    Args:
        model: the converted model (its SCC layers make the recipe).
        path: the file to write.
        arch: ``"package.module:factory"`` building the original architecture, recorded so
            that :func:`load` (and the CLI) can rebuild the model without being told; default:
            inferred for timm models, else ``None``.
        overwrite: replace an existing file.

    Example:
        >>> import torch, torchvision, scc_convert
        >>> small, _ = scc_convert.convert(torchvision.models.mobilenet_v2(), example_inputs=(1, 3, 64, 64))
        >>> scc_convert.save(small, "/tmp/small.pt", arch="torchvision.models:mobilenet_v2", overwrite=True)
        PosixPath('/tmp/small.pt')
        >>> sorted(torch.load("/tmp/small.pt", weights_only=True))
        ['arch', 'format', 'format_version', 'layers', 'scc_convert_version', 'state_dict']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save: model must be an nn.Module, got {type(model).__name__}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "scc_convert_version": _version(),
        "arch": arch if arch is not None else infer_arch(model),
        "layers": recipe(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=overwrite)


def is_converted(obj: object) -> bool:
    """Whether ``obj`` (what ``torch.load`` returned) is a file written by :func:`save`."""
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def _check_layer(name: str, original: nn.Module, spec: Mapping[str, Any]) -> None:
    kind = spec.get("type")
    if kind == "SCCLinear":
        want, have = (spec["in_features"], spec["out_features"]), None
        if isinstance(original, nn.Linear):
            have = (original.in_features, original.out_features)
        base = "nn.Linear"
    elif kind in ("SCCConv2d", "DWSCCConv2d"):
        want, have = (spec["in_channels"], spec["out_channels"]), None
        if isinstance(original, nn.Conv2d):
            have = (original.in_channels, original.out_channels)
        base = "nn.Conv2d"
    else:
        raise ModelLoadError(f"layer {name!r}: unknown SCC layer type {kind!r} in the recipe (a newer scc_convert?)")
    if have is None:
        raise ModelLoadError(f"layer {name!r}: the recipe replaces a {base} but the model has a "
                             f"{type(original).__name__} there; is it the architecture the model was converted from?")
    if have != want:
        raise ModelLoadError(f"layer {name!r}: the recipe has {want[0]}->{want[1]} channels, the model's layer "
                             f"{have[0]}->{have[1]}; is it the architecture the model was converted from?")


def _build_layer(spec: Mapping[str, Any]) -> nn.Module:
    kind, wo = spec["type"], spec.get("window_of")
    if kind == "SCCLinear":
        return SCCLinear(spec["in_features"], spec["out_features"], spec["cg"], spec["co"], bias=spec["bias"], window_of=wo)
    if kind == "SCCConv2d":
        return SCCConv2d(spec["in_channels"], spec["out_channels"], spec["cg"], spec["co"], stride=spec["stride"],
                         bias=spec["bias"], window_of=wo)
    padding = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
    return DWSCCConv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]), spec["cg"], spec["co"],
                       stride=tuple(spec["stride"]), padding=padding, dilation=tuple(spec["dilation"]),
                       bias=spec["bias"], padding_mode=spec["padding_mode"], window_of=wo)


def rebuild(base: nn.Module, saved: Mapping[str, Any], where: str = "the file") -> nn.Module:
    """Put the recipe's SCC layers into ``base`` (modified in place) and load the state_dict."""
    for name, spec in saved["layers"].items():
        try:
            original = base.get_submodule(name)
        except AttributeError:
            raise ModelLoadError(f"{where}: the recipe converts layer {name!r}, which the model does not have; "
                                 "is it the architecture the model was converted from?") from None
        _check_layer(name, original, spec)
        new = _build_layer(spec)
        param = next(original.parameters(), None)
        if param is not None:
            new = new.to(device=param.device, dtype=param.dtype)
        base.set_submodule(name, new)
    problem = describe_mismatch(base, saved["state_dict"])
    if problem:
        raise ModelLoadError(f"{where} does not fit the model: {problem}")
    base.load_state_dict(saved["state_dict"])
    return base


def load(path: str | os.PathLike, model_or_arch: nn.Module | str | None = None, *,
         map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a converted model from a file written by :func:`save` (no code is unpickled).

    Args:
        path: the file.
        model_or_arch: the original (unconverted) architecture: a module (not modified: a copy
            is rebuilt; its weights do not matter), ``"package.module:factory"``, or ``None``
            for the ``arch`` recorded in the file.
        map_location: where the tensors are loaded (as in ``torch.load``).

    Returns:
        The converted model, in eval mode.

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError (a ``ValueError``): not such a file, no architecture known, or the
            architecture does not fit (the message names the first mismatched layers or keys).

    Example:
        >>> small = scc_convert.load("/tmp/small.pt")  # doctest: +SKIP
        >>> small = scc_convert.load("/tmp/small.pt", torchvision.models.mobilenet_v2())  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - not a weights-only file: say so
        text = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{path} is not a weights-only file written by scc_convert.save ({text})") from None
    if not is_converted(saved):
        raise ModelLoadError(f"{path} is not a converted model written by scc_convert.save "
                             "(for a pickled module use scc_convert.io.load_model(path, trust_pickle=True))")
    return from_saved(saved, model_or_arch, str(path))


def from_saved(saved: Mapping[str, Any], model_or_arch: nn.Module | str | None, where: str) -> nn.Module:
    """The model of an already loaded :func:`save` payload (see :func:`load`)."""
    if saved.get("format_version", 0) > FORMAT_VERSION:
        raise ModelLoadError(f"{where} has format version {saved['format_version']}; this scc_convert "
                             f"({_version()}) reads up to {FORMAT_VERSION}: upgrade scc_convert")
    if isinstance(model_or_arch, nn.Module):
        base = copy.deepcopy(model_or_arch)
    else:
        arch = model_or_arch or saved.get("arch")
        if not arch:
            raise ModelLoadError(
                f"{where} does not record the architecture it was converted from: pass it "
                "(--arch package.module:factory, or scc_convert.load(path, original_model))")
        base = build_arch(arch)
    return rebuild(base, saved, where).eval()
