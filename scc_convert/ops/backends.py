"""Which implementation of the SCC op each device runs, and the CUDA entry points.

* CUDA: the Triton kernels (``ops/triton_kernels``), imported on first use. Without Triton
  (or with ``SCC_CONVERT_CUDA_BACKEND=torch``) CUDA tensors run the PyTorch path, with one
  warning when Triton is missing.
* CPU: the native C++ kernel when it is built and loadable (``ops/native.py``; fp32, fp64,
  bf16, fp16), else the PyTorch path (``ops/torch_path.py``).

:func:`describe` reports all of it, with versions; ``scc-convert info`` prints it.
"""

from __future__ import annotations

import importlib
import os
import platform
import warnings
from functools import lru_cache
from types import ModuleType

import torch

from . import epilogue, native, torch_path

__all__ = ["cuda_backend", "cuda_forward", "cuda_backward", "cuda_forward_fused", "cuda_forward_fused_", "cpu_forward",
           "cpu_backward", "cpu_forward_fused", "cpu_forward_fused_", "describe"]

_CUDA_ENV = "SCC_CONVERT_CUDA_BACKEND"


@lru_cache(maxsize=1)
def _triton() -> tuple[ModuleType | None, str | None]:
    """The Triton kernels module, or ``None`` and why it could not be imported."""
    try:
        return importlib.import_module(".triton_kernels", __package__), None
    except ImportError as exc:
        return None, f"triton is not importable ({exc})"


def cuda_backend() -> str:
    """``"triton"`` or ``"torch"``: what CUDA tensors run now."""
    forced = os.environ.get(_CUDA_ENV, "").strip().lower()
    if forced not in ("", "triton", "torch"):
        raise ValueError(f"{_CUDA_ENV}={forced!r}: use 'triton' or 'torch'")
    if forced == "torch":
        return "torch"
    module, reason = _triton()
    if module is None:
        if forced == "triton":
            raise RuntimeError(f"{_CUDA_ENV}=triton, but {reason}")
        return "torch"
    return "triton"


_warned = False


def _cuda_impl():
    global _warned
    if cuda_backend() == "triton":
        return _triton()[0]
    if not _warned and not os.environ.get(_CUDA_ENV):
        _warned = True
        warnings.warn(f"SCC: {_triton()[1]}; CUDA tensors run the PyTorch path", RuntimeWarning, stacklevel=3)
    return torch_path


def cuda_forward(input, weight, bias, cg, co, window_of):
    """The CUDA kernel of ``scc::scc_conv2d``."""
    return _cuda_impl().scc_forward(input, weight, bias, cg, co, window_of)


def cuda_backward(grad_output, input, weight, cg, co, window_of, input_grad, weight_grad):
    """The CUDA kernel of ``scc::scc_conv2d_backward``."""
    return _cuda_impl().scc_backward(grad_output, input, weight, cg, co, window_of, input_grad, weight_grad)


def _torch_path_fused(input, weight, bias, cg, co, window_of, activation, residual):
    return epilogue.apply(torch_path.scc_forward(input, weight, bias, cg, co, window_of), activation, residual)


def cuda_forward_fused(input, weight, bias, cg, co, window_of, activation, residual):
    """The CUDA kernel of ``scc::scc_conv2d_fused``: the epilogue in the Triton forward kernel."""
    epilogue.check_call(input, weight, activation, residual)
    impl = _cuda_impl()
    if impl is torch_path:
        return _torch_path_fused(input, weight, bias, cg, co, window_of, activation, residual)
    return impl.scc_forward(input, weight, bias, cg, co, window_of, activation, residual)


def _cpu_impl(dtype: torch.dtype):
    return native if dtype in native.SUPPORTED_DTYPES and native.cpu_backend() == "native" else torch_path


def cpu_forward(input, weight, bias, cg, co, window_of):
    """The CPU kernel of ``scc::scc_conv2d``."""
    return _cpu_impl(input.dtype).scc_forward(input, weight, bias, cg, co, window_of)


def cpu_backward(grad_output, input, weight, cg, co, window_of, input_grad, weight_grad):
    """The CPU kernel of ``scc::scc_conv2d_backward``."""
    return _cpu_impl(input.dtype).scc_backward(grad_output, input, weight, cg, co, window_of, input_grad, weight_grad)


def cpu_forward_fused(input, weight, bias, cg, co, window_of, activation, residual):
    """The CPU kernel of ``scc::scc_conv2d_fused``: the epilogue in the native kernel."""
    epilogue.check_call(input, weight, activation, residual)
    if _cpu_impl(input.dtype) is native:
        return native.scc_forward(input, weight, bias, cg, co, window_of, activation, residual)
    return _torch_path_fused(input, weight, bias, cg, co, window_of, activation, residual)


def cpu_forward_fused_(residual, input, weight, bias, cg, co, window_of, activation):
    """The CPU kernel of ``scc::scc_conv2d_fused_``: the fused result written over ``residual``
    (by the native kernel itself, else copied there from the PyTorch path's)."""
    epilogue.check_call(input, weight, activation, residual)
    if _cpu_impl(input.dtype) is native:
        native.scc_forward_(input, weight, bias, cg, co, window_of, activation, residual)
    else:
        residual.copy_(_torch_path_fused(input, weight, bias, cg, co, window_of, activation, residual))


def cuda_forward_fused_(residual, input, weight, bias, cg, co, window_of, activation):
    """The CUDA kernel of ``scc::scc_conv2d_fused_``."""
    residual.copy_(cuda_forward_fused(input, weight, bias, cg, co, window_of, activation, residual))


def _cpu() -> dict:
    status = native.status()
    backend = native.cpu_backend()
    if backend == "native":
        limit = native.output_cache()["limit_bytes"] / 2**20
        return {"implementation": "native",
                "detail": f"native C++ kernel ({status.get('source')}; output cache {limit:g} MB)"}
    why = status.get("reason") or "not selected"
    return {"implementation": "torch", "detail": f"PyTorch path (native kernel: {why})"}


def _cuda() -> dict:
    try:
        backend = cuda_backend()
    except (ValueError, RuntimeError) as exc:
        return {"implementation": "error", "detail": str(exc)}
    if backend == "triton":
        import triton

        return {"implementation": "triton", "detail": f"Triton kernels (triton {triton.__version__})"}
    reason = _triton()[1] or f"{_CUDA_ENV}=torch"
    return {"implementation": "torch", "detail": f"PyTorch path ({reason})"}


def describe() -> dict:
    """Versions, devices, and the implementation each device type runs, as a JSON-able dict."""
    from .. import __version__

    module, _ = _triton()
    triton_version = None
    if module is not None:
        import triton

        triton_version = triton.__version__
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "scc_convert": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
        "gpus": gpus,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "implementations": {"cpu": _cpu(), "cuda": _cuda()},
    }
