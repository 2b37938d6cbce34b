"""Loading models safely and writing files atomically.

``load_model`` accepts:

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

__all__ = ["ModelLoadError", "load_model", "build_arch", "atomic_write", "save_model"]

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


def load_model(path: str | os.PathLike, *, arch: str | None = None, trust_pickle: bool = False,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model file (see the module docstring for the accepted formats).

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: the file is not a usable model, or needs ``arch`` / ``trust_pickle``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    kind = _archive_kind(path)
    if not zipfile.is_zipfile(path) and not _is_pickle(path):
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
            raise ModelLoadError(f"{path} is not a PyTorch file torch.load can read ({_first_line(safe_err)})") from None
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
            raise ModelLoadError(f"{path}: unpickling failed ({_first_line(err)}); is the model's code importable here?") from None
    if isinstance(obj, nn.Module):
        return obj
    state = _state_dict_of(obj)
    if state is None:
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a model or a state_dict")
    if arch is None:
        raise ModelLoadError(f"{path} is a state_dict: pass --arch package.module:factory to build the model (e.g. torchvision.models:resnet50)")
    model = build_arch(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelLoadError(f"{path} does not fit --arch {arch}: {_first_line(err)}") from None
    return model


def _looks_like_pickled_object(err: Exception) -> bool:
    text = str(err)
    return "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


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
