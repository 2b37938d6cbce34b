"""AOTInductor packages of models with SCC layers: compiled ahead of time, run without Python
model code.

:func:`export_aoti` optimises the model for inference (:func:`~scc_convert.optimize_for_inference`),
``torch.export``-s it and compiles it with ``torch._inductor.aoti_compile_and_package`` into a
``.pt2`` package. Inside it every SCC layer is a call of the native kernel's C++ op
``scc_native::forward`` with its window table as a constant (``ops/inductor.py``), so running
the package needs torch and that op's shared library, which is copied beside the package as
``<name>.scc_native.so`` — nothing of scc_convert's Python code:

.. code-block:: python

    import torch
    torch.ops.load_library("model.scc_native.so")           # the SCC kernel
    run = torch._inductor.aoti_load_package("model.pt2")
    y = run(x)

or from C++, ``dlopen`` the library and run the package with
``torch::inductor::AOTIModelPackageLoader``. :func:`load_aoti` does the Python part. The
package is specialised to this machine's CPU (the instruction sets inductor compiled for) and
the torch version; SCC layers on CUDA tensors are not supported in packages (their Triton
kernels run from Python).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..ops import native
from ..optimize import optimize_for_inference
from .checks import batch_size, check_batches, compare, eval_mode, example_inputs, reference, resized, staging

__all__ = ["export_aoti", "load_aoti", "library_beside"]

_LIBRARY_SUFFIX = ".scc_native.so"


def library_beside(path: str | os.PathLike) -> Path:
    """Where :func:`export_aoti` puts the native kernel's library for the package ``path``."""
    path = Path(path)
    return path.with_name(path.stem + _LIBRARY_SUFFIX)


def _calls_native(program: torch.export.ExportedProgram) -> bool:
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    return bool(targets & {torch.ops.scc.scc_conv2d.default, torch.ops.scc.scc_conv2d_fused.default})


def load_aoti(path: str | os.PathLike) -> Callable:
    """Load a package written by :func:`export_aoti`: the native library beside it (unless this
    process has the native kernel loaded already), then the package; returns the callable.

    Example:
        >>> import torch, scc_convert
        >>> model = scc_convert.SCCConv2d(16, 32, cg=4, co=0.5)
        >>> path = scc_convert.export_aoti(model, torch.randn(2, 16, 8, 8), "/tmp/scc_doc_aoti.pt2")
        >>> run = scc_convert.load_aoti(path)
        >>> run(torch.randn(3, 16, 8, 8)).shape
        torch.Size([3, 32, 8, 8])
    """
    path = Path(path)
    library = library_beside(path)
    if library.is_file() and not hasattr(torch.ops.scc_native, "forward"):
        torch.ops.load_library(str(library))
    return torch._inductor.aoti_load_package(str(path))


def export_aoti(
    model: nn.Module,
    example_input: Tensor | Sequence[Tensor] | Sequence[int] | None,
    path: str | os.PathLike,
    *,
    optimize: bool = True,
    dynamic_batch: bool = True,
    freezing: bool = True,
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> Path:
    """Compile ``model`` (eval mode) into an AOTInductor package that runs without its Python code.

    Args:
        model: any ``nn.Module``, typically a converted one; CPU tensors.
        example_input: a tensor or a tuple of the model's positional input tensors (their
            layout, e.g. channels_last, is what the package is compiled for), a shape, or
            ``None`` (as in :func:`~scc_convert.export.export_onnx`).
        path: the ``.pt2`` package; the native kernel's library goes beside it as
            :func:`library_beside` names it (only when the model has SCC layers). Both are
            written atomically, and only after the check passed.
        optimize: run :func:`~scc_convert.optimize_for_inference` first (BatchNorm folding,
            fused epilogues).
        dynamic_batch: compile dim 0 of every input as one dynamic dimension ``batch``.
        freezing: inductor's ``freezing`` (weights as constants: conv + BatchNorm folding and
            prepacked weights for the model's other convolutions).
        check: load the package and compare its outputs with the model's on ``example_input``
            (and at batch N+1 with ``dynamic_batch``); tolerances as in
            :func:`~scc_convert.export.export_onnx`.

    Returns:
        ``Path(path)``.

    Raises:
        ExportCheckError: the package's outputs differ (nothing is written).
        RuntimeError: the model has SCC layers but the native CPU kernel is unavailable.

    Example:
        >>> import torch, scc_convert
        >>> model = torch.nn.Sequential(scc_convert.SCCConv2d(16, 32, cg=4, co=0.5), torch.nn.ReLU())
        >>> scc_convert.export_aoti(model, torch.randn(2, 16, 8, 8), "/tmp/scc_doc_aoti.pt2")
        PosixPath('/tmp/scc_doc_aoti.pt2')
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = example_inputs(model, example_input)
    if any(t.device.type != "cpu" for t in inputs):
        raise ValueError("export_aoti: the example inputs must be CPU tensors (packages run SCC on the native CPU kernel)")
    trace_inputs = resized(inputs, 2) if dynamic_batch and batch_size(inputs) < 2 else inputs
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    with eval_mode(model):
        expected = [(b, reference(model, b)) for b in check_batches(inputs, dynamic_batch)] if check else []
        target = optimize_for_inference(model) if optimize else model
        with torch.no_grad():
            program = torch.export.export(target, trace_inputs, dynamic_shapes=dynamic_shapes)
    needs_library = _calls_native(program)
    if needs_library and native.cpu_backend() != "native":
        raise RuntimeError(
            f"export_aoti: the model has SCC layers, which packages run on the native CPU kernel, but it is "
            f"unavailable ({native.status()['reason']}); `scc-convert build-ext` builds it"
        )
    with staging(path) as staged:
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(staged), inductor_configs={"freezing": freezing}
        )
        if needs_library:
            shutil.copyfile(native.library_path(), library_beside(staged))
        if check:
            run = load_aoti(staged)
            for batch_inputs, want in expected:
                with torch.no_grad():
                    got = [t for t in pytree.tree_leaves(run(*batch_inputs)) if isinstance(t, Tensor)]
                compare("the AOTInductor package", got, want, atol, rtol, batch_inputs[0].shape[0],
                         "export with check=False to inspect it")
    return path
