"""``torch.export`` programs and TorchScript.

``torch.ops.scc.scc_conv2d`` is registered when ``scc_convert`` is imported, so
``torch.export.export`` captures it as one node, ``torch.export.save``/``load`` round-trip it
(import ``scc_convert`` before loading), and ``torch.jit.trace`` records it as a
``scc::scc_conv2d`` call that ``torch.jit.save``/``load`` keep. :func:`export_program` adds a
dynamic batch dimension, eval mode, an atomic write and a check of the saved program.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..optimize import optimize_for_inference
from .checks import batch_size, check_batches, compare, eval_mode, example_inputs, reference, resized, staging

__all__ = ["export_program"]



def export_program(
    model: nn.Module,
    example_input: Tensor | Sequence[Tensor] | Sequence[int] | None,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    check: bool = True,
    optimize: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> Path:
    """``torch.export`` the model in eval mode and save the ``.pt2`` file atomically.

    SCC layers stay one ``torch.ops.scc.scc_conv2d`` (or, optimised,
    ``torch.ops.scc.scc_conv2d_fused``) node each; load the file with ``torch.export.load``
    after ``import scc_convert`` (which registers the ops).

    Args:
        model: any ``nn.Module``.
        example_input: a tensor, a tuple of the model's positional input tensors, a shape,
            or ``None`` (as in :func:`export_onnx`).
        path: the ``.pt2`` file.
        dynamic_batch: export dim 0 of every input as one dynamic dimension ``batch``.
        check: load the saved file back and compare its outputs with the model's on
            ``example_input`` (and at batch N+1 with ``dynamic_batch``); tolerances as in
            :func:`export_onnx`.
        optimize: export :func:`~scc_convert.optimize_for_inference` of the model.

    Returns:
        ``Path(path)``.

    Example:
        >>> import torch, scc_convert
        >>> from scc_convert.export import export_program
        >>> model = scc_convert.SCCConv2d(16, 32, cg=4, co=0.5)
        >>> export_program(model, torch.randn(2, 16, 8, 8), "/tmp/scc_doc.pt2")
        PosixPath('/tmp/scc_doc.pt2')
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = example_inputs(model, example_input)
    trace_inputs = resized(inputs, 2) if dynamic_batch and batch_size(inputs) < 2 else inputs
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    with eval_mode(model):
        expected = [(b, reference(model, b)) for b in check_batches(inputs, dynamic_batch)] if check else []
        target = optimize_for_inference(model) if optimize else model
        program = torch.export.export(target, trace_inputs, dynamic_shapes=dynamic_shapes)
    with staging(path) as staged:
        torch.export.save(program, staged)
        if check:
            loaded = torch.export.load(staged).module()
            for batch_inputs, want in expected:
                with torch.no_grad():
                    got = [t for t in pytree.tree_leaves(loaded(*batch_inputs)) if isinstance(t, Tensor)]
                compare("the saved program", got, want, atol, rtol, batch_inputs[0].shape[0],
                         "export with check=False to inspect it")
    return path
