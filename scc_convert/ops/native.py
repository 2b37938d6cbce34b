"""The native C++ CPU kernel (``csrc/``): finding it, building it when needed, and calling it.

Which implementation CPU tensors run is settled once per process, at the first CPU call (or
:func:`status`), in this order:

1. ``SCC_CONVERT_CPU_BACKEND=torch`` — the PyTorch path (``torch_path.py``), nothing loaded.
2. The extension ``setup.py`` built at install (``scc_convert/_C*.so``).
3. A build cached under ``$SCC_CONVERT_CACHE`` (default ``~/.cache/scc_convert``), keyed by
   the torch version and the kernel's sources; when there is none yet, it is built there now
   with ``torch.utils.cpp_extension.load`` (C++ compiler and ninja; about a minute on two
   cores), and that is said once. ``scc-convert build-ext`` builds it ahead of time.
4. When neither can be had (no compiler, or a failed build, whose one-line message names its
   log) the PyTorch path runs, with one warning; under ``SCC_CONVERT_CPU_BACKEND=native``
   that is an error instead.

The kernel reads each layer's window table from :meth:`SCCGeometry.window_table`, flattened
here into one int64 tensor (layout in ``csrc/windows.h``), and derives no geometry itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from ..geometry import SCCGeometry
from . import common, epilogue
from .native_build import SOURCES as _SOURCES
from .native_build import compile_flags

__all__ = ["status", "cpu_backend", "build", "use_backend", "BuildError", "scc_forward", "scc_forward_", "scc_backward", "window_table",
           "library_path", "output_cache", "SUPPORTED_DTYPES"]

log = logging.getLogger("scc_convert")

ENV_BACKEND = "SCC_CONVERT_CPU_BACKEND"
ENV_CACHE = "SCC_CONVERT_CACHE"
BACKENDS = ("torch", "native")
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class BuildError(RuntimeError):
    """The native kernel could not be built; the message is one line naming the build log."""


def source_dir() -> Path | None:
    """Where the kernel's C++ sources are: ``csrc/`` of a checkout, or the copy a wheel carries."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "csrc", here / "_csrc"):
        if all((candidate / name).is_file() for name in _SOURCES):
            return candidate
    return None


def cache_dir() -> Path:
    """Where built kernels are kept: ``$SCC_CONVERT_CACHE``, else ``$XDG_CACHE_HOME/scc_convert``
    or ``~/.cache/scc_convert``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "scc_convert"


def _build_key(sources: Path) -> str:
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (sources / name).read_bytes())
    digest.update(" ".join(sum(compile_flags(), [])).encode())
    tag = f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}"
    return f"{tag}-{digest.hexdigest()[:12]}".replace("+", "_")


def _cached_library(sources: Path) -> Path:
    key = _build_key(sources)
    return cache_dir() / key / f"scc_native_{key.rsplit('-', 1)[1]}.so"


def _builtin_library() -> Path | None:
    spec = importlib.util.find_spec("scc_convert._C")
    return Path(spec.origin) if spec is not None and spec.origin else None


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported without the warning it logs on a CUDA build of
    torch on a machine with no CUDA runtime ("No CUDA runtime is found")."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def build(force: bool = False) -> Path:
    """Build the kernel into the cache (if not there yet, or ``force``) and return its path.

    Raises :class:`BuildError` (one line: what failed and where the log is) when the sources,
    a C++ compiler or ninja are missing, or the compiler fails. Loads nothing.

    Example:
        >>> from scc_convert.ops import native
        >>> native.build().suffix
        '.so'
    """
    sources = source_dir()
    if sources is None:
        raise BuildError("the native kernel's C++ sources (csrc/) are not part of this installation")
    target = _cached_library(sources)
    if target.is_file() and not force:
        return target
    cpp_extension = _cpp_extension()
    if _compiler() is None:
        raise BuildError(f"no C++ compiler found ({os.environ.get('CXX', 'c++')!r}; set CXX or install g++)")
    if not cpp_extension.is_ninja_available():
        raise BuildError("ninja not found (pip install ninja)")
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = target.parent / "build.log"
    cflags, ldflags = compile_flags()
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        try:
            built = cpp_extension.load(
                name=target.stem,
                sources=[str(sources / name) for name in _SOURCES if name.endswith(".cpp")],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                build_directory=work,
                is_python_module=False,
                verbose=False,
            )
        except (RuntimeError, OSError, ImportError) as err:
            log_path.write_text(f"{err}\n")
            raise BuildError(f"building the native CPU kernel failed; log: {log_path}") from None
        os.replace(built, target)  # atomic: other processes see the whole file or none
    log_path.write_text(f"built {target}\n")
    return target


# -- which implementation runs ------------------------------------------------------------

_state: dict | None = None  # {"available", "source", "reason"} once resolved
_forced: str | None = None  # use_backend()


def _requested() -> str | None:
    value = os.environ.get(ENV_BACKEND, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"{ENV_BACKEND}={value!r} is invalid: use 'torch', 'native' or leave it unset")
    return value


_library: Path | None = None  # the kernel's shared library, once loaded


def _load_library(path: Path) -> None:
    global _library
    torch.ops.load_library(str(path))
    _library = path
    _register_fakes()


def library_path() -> Path | None:
    """The shared library of the native kernel this process loaded (``None``: not loaded).

    A program that runs an AOTInductor package of a converted model loads it first
    (``torch.ops.load_library``); :func:`scc_convert.export_aoti` copies it beside the package.
    """
    _resolve()
    return _library


def _load() -> dict:
    if _requested() == "torch":
        return {"available": False, "source": None, "reason": f"{ENV_BACKEND}=torch"}
    reasons = []
    builtin = _builtin_library()
    if builtin is not None:
        try:
            _load_library(builtin)
            return {"available": True, "source": "built-in", "reason": None}
        except OSError as err:
            reasons.append(f"the built-in kernel {builtin.name} does not load ({str(err).splitlines()[0]})")
    sources = source_dir()
    try:
        if sources is None or not _cached_library(sources).is_file():
            log.warning("scc_convert: building the native CPU kernel into %s (once; about a minute)", cache_dir())
        _load_library(build())
        return {"available": True, "source": "jit-cache", "reason": None}
    except (BuildError, OSError) as err:
        reasons.append(str(err).splitlines()[0])
    return {"available": False, "source": None, "reason": "; ".join(reasons)}


def _resolve() -> dict:
    global _state
    if _state is None:
        state = _load()
        if not state["available"] and _requested() != "torch":
            if _requested() == "native":
                raise RuntimeError(f"{ENV_BACKEND}=native, but the native CPU kernel is unavailable: {state['reason']}")
            warnings.warn(
                f"scc_convert: the native CPU kernel is unavailable ({state['reason']}); SCC layers on CPU run "
                f"the slower PyTorch path (`scc-convert build-ext` builds the kernel)",
                RuntimeWarning,
                stacklevel=4,
            )
        _state = state
    return _state


def status() -> dict:
    """Whether the native CPU kernel is available: ``available`` (bool), ``source``
    (``"built-in"``, ``"jit-cache"`` or ``None``) and ``reason`` (why not, or ``None``).

    Settles the choice (see the module docstring): may load, or build, the kernel.

    Example:
        >>> from scc_convert.ops import native
        >>> sorted(native.status())
        ['available', 'reason', 'source']
    """
    return dict(_resolve())


def cpu_backend() -> str:
    """``"native"`` or ``"torch"``: what SCC on CPU tensors runs now.

    Example:
        >>> from scc_convert.ops import native
        >>> native.cpu_backend() in ("native", "torch")
        True
    """
    if _forced is not None:
        return _forced
    return "native" if _resolve()["available"] else "torch"


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run CPU tensors on ``"torch"`` or ``"native"`` inside the block (tests and benchmarks;
    a module-wide switch, not thread-safe). ``"native"`` raises when the kernel is unavailable."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'torch' or 'native', got {name!r}")
    if name == "native" and not _resolve()["available"]:
        raise RuntimeError(f"the native CPU kernel is unavailable: {_resolve()['reason']}")
    saved, _forced = _forced, name
    try:
        yield
    finally:
        _forced = saved


# -- calling it ---------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _window_table(geom: SCCGeometry, window_of: tuple[int, ...] | None) -> Tensor:
    t = geom.window_table(window_of)
    flat = [len(t.columns), geom.group_width, geom.out_channels]
    for row in t.columns:
        flat.extend(row)
    flat.extend(t.offsets)
    flat.extend(t.outputs)
    return torch.tensor(flat, dtype=torch.long)


def _require() -> None:
    if not _resolve()["available"]:
        raise RuntimeError(f"the native CPU kernel is unavailable: {_resolve()['reason']}")


def _channels_last(input: Tensor) -> bool:
    return common.output_memory_format(input) == torch.channels_last


def window_table(geom: SCCGeometry, window_of: Sequence[int] | None) -> Tensor:
    """The kernel's window table of a layer (``csrc/windows.h``), from
    :meth:`SCCGeometry.window_table`; cached, so callers must not modify it."""
    return _window_table(geom, None if window_of is None else tuple(int(w) for w in window_of))


def scc_forward(input: Tensor, weight: Tensor, bias: Tensor | None, cg: int, co: float,
            window_of: Sequence[int] | None, activation: str = "none", residual: Tensor | None = None) -> Tensor:
    """The SCC forward on the native kernel (the contract of ``torch_path.scc_forward``), with
    the fused op's epilogue (``ops/epilogue.py``) when ``activation`` or ``residual`` is given."""
    _require()
    geom = common.geometry_for(input, weight, cg, co)
    return torch.ops.scc_native.forward.default(
        input, weight, bias, window_table(geom, window_of), _channels_last(input),
        epilogue.activation_code(activation), residual,
    )


def scc_forward_(input: Tensor, weight: Tensor, bias: Tensor | None, cg: int, co: float,
                 window_of: Sequence[int] | None, activation: str, residual: Tensor) -> Tensor:
    """:func:`scc_forward` with the result written over ``residual`` (returned)."""
    _require()
    geom = common.geometry_for(input, weight, cg, co)
    torch.ops.scc_native.forward_.default(
        residual, input, weight, bias, window_table(geom, window_of), epilogue.activation_code(activation),
    )
    return residual


def scc_backward(grad_output: Tensor, input: Tensor, weight: Tensor, cg: int, co: float,
             window_of: Sequence[int] | None, input_grad: bool, weight_grad: bool) -> tuple[Tensor, Tensor]:
    """The SCC backward on the native kernel (the contract of ``torch_path.scc_backward``)."""
    _require()
    geom = common.geometry_for(input, weight, cg, co)
    return torch.ops.scc_native.backward.default(
        grad_output, input, weight, window_table(geom, window_of), _channels_last(input), input_grad, weight_grad
    )


def output_cache(limit_mb: float | None = None) -> dict[str, int]:
    """The native kernel's cache of output memory (``csrc/output_cache.h``): its state, after
    setting its limit to ``limit_mb`` megabytes when given (0 turns it off and frees what it
    holds; the default limit is 512, or ``$SCC_CONVERT_OUTPUT_CACHE_MB``).

    Outputs (and input gradients) of at least 1 MB are taken from blocks the kernel's earlier
    outputs freed, so a model run again does not page-fault its large outputs in anew (with
    glibc's malloc, every block over 32 MB is mapped and unmapped per call).

    Returns ``{"limit_bytes", "cached_bytes", "hits", "misses"}`` (hits and misses count the
    requests of at least 1 MB since the process started).

    Example:
        >>> from scc_convert.ops import native
        >>> sorted(native.output_cache())  # doctest: +SKIP
        ['cached_bytes', 'hits', 'limit_bytes', 'misses']
    """
    _require()
    if limit_mb is not None and not limit_mb >= 0:
        raise ValueError(f"output_cache: limit_mb={limit_mb!r} must be >= 0")
    limit = -1 if limit_mb is None else int(limit_mb * 2**20)
    values = torch.ops.scc_native.output_cache.default(limit)
    return dict(zip(("limit_bytes", "cached_bytes", "hits", "misses"), (int(v) for v in values)))


# -- fake kernels of the private ops (torch.compile and AOTInductor call them directly) ----


def _forward_fake(input, weight, bias, windows, channels_last, activation, residual):
    n, _, h, w = input.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((n, weight.shape[0], h, w), dtype=input.dtype, device=input.device, memory_format=fmt)


def _backward_fake(grad_output, input, weight, windows, channels_last, input_grad, weight_grad):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_input = torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=fmt) if input_grad else input.new_empty(0)
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format) if weight_grad else input.new_empty(0)
    return grad_input, grad_weight


def _forward_inplace_fake(residual, input, weight, bias, windows, activation):
    return None


def _register_fakes() -> None:
    """Fake kernels for ``scc_native::forward`` / ``forward_`` / ``backward``, registered when
    the kernel is loaded: the compiled graphs of ``ops/inductor.py`` call these ops directly."""
    torch.library.register_fake("scc_native::forward", _forward_fake)
    torch.library.register_fake("scc_native::forward_", _forward_inplace_fake)
    torch.library.register_fake("scc_native::backward", _backward_fake)
