"""Loading models safely and writing files atomically.

``load_model`` accepts:

* a converted model written by :func:`scc_convert.save` (weights only: the ``state_dict`` and
  the conversion recipe), rebuilt on the architecture it records, on ``arch``, or on ``base``;
* a ``state_dict`` (or a checkpoint dict holding one under ``"state_dict"`` / ``"model"`` /
  ``"model_state_dict"``) plus ``arch="package.module:factory"`` — loaded with
  ``torch.load(weights_only=True)``, which cannot run code;
* a whole pickled ``nn.Module`` saved with ``torch.save(model)`` — only with
  ``trust_pickle=True``, because unpickling can run arbitrary code from the file.

TorchScript archives and ``torch.export`` programs are recognised and refused with a message
saying what to save instead.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["ModelLoadError", "load_model", "build_arch", "describe_mismatch", "error_line", "is_torch_file", "atomic_write", "save_model"]

_STATE_KEYS = ("state_dict", "model_state_dict", "model")


class ModelLoadError(ValueError):
    """The file exists but does not give a usable model (the message says why and what to do)."""


def build_arch(spec: str) -> nn.Module:
    """Instantiate ``"package.module:factory"`` (called with no arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"--arch {spec!r} must look like package.module:factory (e.g. torchvision.models:mobilenet_v2)")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelLoadError(f"--arch {spec!r}: cannot import it ({err})") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def _archive_kind(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names):
        return "export"
    return None


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # the pickle protocol opcode legacy torch.save files start with


def _state_dict_of(obj: object) -> Mapping[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in _STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    return None


def _first(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def describe_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into ``model`` (strictly), in one line naming the
    first mismatched keys, or ``None`` when it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing from the file (first: {_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {_first(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} with another shape, file vs model (first: {_first(shapes, 2)})")
    return "; ".join(parts) or None


def load_model(path: str | os.PathLike, *, arch: str | None = None, trust_pickle: bool = False,
               map_location: str | torch.device = "cpu", base: nn.Module | None = None) -> nn.Module:
    """Load a model file (see the module docstring for the accepted formats).

    ``base`` is an original model to rebuild a converted weights-only file on when neither
    ``arch`` nor the file names its architecture (a copy is used).

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: the file is not a usable model, or needs ``arch`` / ``trust_pickle``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    kind = _archive_kind(path)
    if not is_torch_file(path):
        raise ModelLoadError(f"{path} is not a PyTorch file (neither a torch.save archive nor a pickle)")
    if kind == "torchscript":
        raise ModelLoadError(
            f"{path} is a TorchScript archive, which is not supported: save the nn.Module "
            "itself (torch.save(model, path)) or its state_dict with --arch"
        )
    if kind == "export":
        raise ModelLoadError(
            f"{path} is a torch.export program, which cannot be converted (it has no conv "
            "modules left): save the nn.Module (torch.save(model, path)) or its state_dict with --arch"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as safe_err:  # noqa: BLE001 - weights_only refuses anything but tensors and containers
        if not _looks_like_pickled_object(safe_err):
            raise ModelLoadError(f"{path} is not a PyTorch file torch.load can read ({error_line(safe_err)})") from None
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} holds a pickled Python object (a whole nn.Module?); unpickling it can run "
                "arbitrary code from the file, so it is refused by default. Re-run with "
                "--trust-pickle (trust_pickle=True) if you trust its source, or save a state_dict "
                "and pass --arch"
            ) from None
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(f"{path}: unpickling failed ({error_line(err)}); is the model's code importable here?") from None
    if isinstance(obj, nn.Module):
        return obj
    from .saving import from_saved, is_converted

    if is_converted(obj):
        return from_saved(obj, arch or (None if obj.get("arch") else base), str(path))
    state = _state_dict_of(obj)
    if state is None:
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a model or a state_dict")
    if arch is None:
        raise ModelLoadError(f"{path} is a state_dict: pass --arch package.module:factory to build the model (e.g. torchvision.models:resnet50)")
    model = build_arch(arch)
    problem = describe_mismatch(model, state)
    if problem:
        raise ModelLoadError(f"{path} does not fit --arch {arch}: {problem}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelLoadError(f"{path} does not fit --arch {arch}: {error_line(err)}") from None
    return model


def _looks_like_pickled_object(err: Exception) -> bool:
    text = str(err)
    return "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text


def error_line(err: Exception) -> str:
    """The informative line of an error: for ``torch.load(weights_only=True)``'s long preamble,
    the line after ``WeightsUnpickler error:``; otherwise the first line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1][:300]
    return (lines[0] if lines else type(err).__name__)[:300]


def is_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like something ``torch.save`` wrote (a zip archive or a pickle)."""
    return zipfile.is_zipfile(path) or _is_pickle(Path(path))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, overwrite: bool = False) -> Path:
    """Write ``path`` through a temporary file in the same folder and an atomic rename.

    ``write`` receives the temporary path. On any error the temporary file is removed and
    ``path`` is untouched. ``FileExistsError`` if ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; use --force (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_model(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``torch.save`` the whole module atomically (load it with scc_convert importable)."""
    return atomic_write(path, lambda tmp: torch.save(model, tmp), overwrite=overwrite)
