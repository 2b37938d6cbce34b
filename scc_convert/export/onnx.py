"""ONNX export: :func:`export_onnx`, and the hooks that teach torch's two ONNX exporters the SCC
ops (:func:`onnx_translation_table` for the dynamo-based one, :func:`register_onnx_symbolic`
for the TorchScript-based one), both writing the decomposition of ``decomposition.py``."""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..optimize import optimize_for_inference
from .checks import ExportCheckError, batch_size, check_batches, compare, eval_mode, example_inputs, reference, resized, staging
from .decomposition import (
    MIN_OPSET,
    Decomposition,
    ScriptBuilder,
    TorchScriptBuilder,
    check_decomposition,
    emit_epilogue,
    emit_scc,
    geometry_from_weight,
)

__all__ = ["export_onnx", "onnx_translation_table", "register_onnx_symbolic"]

logger = logging.getLogger("scc_convert.export")

_SYMBOLIC_NAME = "scc::scc_conv2d"



def onnx_translation_table(decomposition: Decomposition = "auto") -> dict[Callable, Callable]:
    """``custom_translation_table`` entry for ``torch.onnx.export(..., dynamo=True)``.

    Example:
        >>> import torch, scc_convert
        >>> from scc_convert.export import onnx_translation_table
        >>> layer = scc_convert.SCCConv2d(16, 16, cg=4, co=0.5).eval()
        >>> program = torch.onnx.export(layer, (torch.randn(1, 16, 4, 4),), dynamo=True,
        ...     custom_translation_table=onnx_translation_table(), verbose=False)
    """
    check_decomposition(decomposition)
    builder = ScriptBuilder()

    def scc_conv2d(input, weight, bias=None, cg=1, co=0.0, window_of=None):
        shape = weight.shape
        dims = None if shape is None else [d if isinstance(d, int) else None for d in shape]
        geom = geometry_from_weight(dims, cg, co)
        return emit_scc(builder, input, weight, bias, geom, window_of, decomposition)

    def scc_conv2d_fused(input, weight, bias=None, cg=1, co=0.0, window_of=None, activation="none", residual=None):
        return emit_epilogue(builder, scc_conv2d(input, weight, bias, cg, co, window_of), activation, residual, input)

    return {torch.ops.scc.scc_conv2d.default: scc_conv2d, torch.ops.scc.scc_conv2d_fused.default: scc_conv2d_fused}


def register_onnx_symbolic(decomposition: Decomposition = "auto") -> None:
    """Teach ``torch.onnx.export(..., dynamo=False)`` (TorchScript-based) the SCC op.

    Registers a symbolic for ``scc::scc_conv2d``, opset >= 13, process-wide (torch keeps one
    registry); a second call replaces the first. :func:`export_onnx` registers it with
    ``"auto"`` on its first TorchScript-based export if it is not registered yet, and uses its
    own ``decomposition`` argument for its exports either way.

    Example:
        >>> import torch, scc_convert
        >>> from scc_convert.export import register_onnx_symbolic
        >>> register_onnx_symbolic()
        >>> torch.onnx.export(scc_convert.SCCConv2d(16, 16, cg=4, co=0.5), (torch.randn(1, 16, 4, 4),),
        ...     "/tmp/scc_doc_ts.onnx", dynamo=False)
    """
    global _registered_decomposition
    check_decomposition(decomposition)
    from torch.onnx import symbolic_helper as sh

    def scc_conv2d(g, input, weight, bias, cg, co, window_of):
        geom = geometry_from_weight(sh._get_tensor_sizes(weight), sh._maybe_get_const(cg, "i"), sh._maybe_get_const(co, "f"))
        wo = None if sh._is_none(window_of) else [int(w) for w in sh._maybe_get_const(window_of, "is")]
        b = None if sh._is_none(bias) else bias
        form = _decomposition_override.get() or decomposition
        return emit_scc(TorchScriptBuilder(g), input, weight, b, geom, wo, form)

    def scc_conv2d_fused(g, input, weight, bias, cg, co, window_of, activation, residual):
        y = scc_conv2d(g, input, weight, bias, cg, co, window_of)
        r = None if sh._is_none(residual) else residual
        return emit_epilogue(TorchScriptBuilder(g), y, sh._maybe_get_const(activation, "s"), r, input)

    torch.onnx.register_custom_op_symbolic(_SYMBOLIC_NAME, scc_conv2d, MIN_OPSET)
    torch.onnx.register_custom_op_symbolic(_SYMBOLIC_NAME + "_fused", scc_conv2d_fused, MIN_OPSET)
    _registered_decomposition = decomposition


# What register_onnx_symbolic registered (torch's registry is process-wide), and the form an
# export_onnx call asks of it.
_registered_decomposition: str | None = None
_decomposition_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scc_onnx_decomposition", default=None
)



def export_onnx(
    model: nn.Module,
    example_input: Tensor | Sequence[Tensor] | Sequence[int] | None,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamo: bool | None = True,
    check: bool = True,
    decomposition: Decomposition = "auto",
    optimize: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> Path:
    """Export ``model`` to an ONNX file that uses standard ONNX ops only.

    SCC layers become ``Gather`` + grouped ``Conv`` + ``Gather`` or one masked dense ``Conv``
    (``decomposition``; ``"auto"`` picks per layer what ran fastest in onnxruntime, see
    ``scc_convert/export/decomposition.py``). The model is exported in eval mode (BatchNorm uses its running
    statistics) and each module's train/eval flag is restored afterwards.

    Args:
        model: any ``nn.Module``, with or without ``SCCConv2d`` layers.
        example_input: a tensor (NCHW or channels_last; ONNX has no memory format), a tuple
            of the model's positional input tensors, a shape such as ``(1, 3, 224, 224)``
            (random input), or ``None`` to use the size the model declares or runs on
            (:func:`scc_convert.inputs.find_example_inputs`).
        path: the ``.onnx`` file; written atomically (a temporary file, then a rename) and
            only after the check passed. Models over 2 GB keep their weights in ``<path>.data``.
        opset: ONNX opset (>= 13); ``None``: the exporter's default.
        dynamic_batch: make dim 0 of every input and output dynamic (named ``batch``).
        dynamo: ``True``: the torch.export-based exporter; ``False``: the TorchScript-based one;
            ``None``: the former, falling back to the latter if it fails (logged).
        check: run ``onnx.checker`` and compare onnxruntime's (CPU) outputs with PyTorch's on
            ``example_input`` and, with ``dynamic_batch``, on the same samples at batch N+1.
        decomposition: ``"auto"``, ``"grouped"`` or ``"dense"``.
        optimize: export :func:`~scc_convert.optimize_for_inference` of the model (BatchNorm
            folded into SCC layers, the following add and activation after each SCC's ops);
            the check compares with the model as given.
        atol, rtol: check tolerances, ``|ort - torch| <= atol + rtol * |torch|``; default
            ``1e-4`` for fp32/fp64 and ``1e-2`` for fp16/bf16.

    Returns:
        ``Path(path)``.

    Raises:
        ExportCheckError: the outputs differ (nothing is written).
        ValueError / TypeError: bad arguments (the message names the value and the rule).

    Example:
        >>> import torch, scc_convert
        >>> from scc_convert.export import export_onnx
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), scc_convert.SCCConv2d(16, 32, cg=4, co=0.5))
        >>> export_onnx(model, torch.randn(2, 3, 16, 16), "/tmp/scc_doc.onnx")
        PosixPath('/tmp/scc_doc.onnx')
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = example_inputs(model, example_input)
    check_decomposition(decomposition)
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET):
        raise ValueError(f"opset={opset!r} is not supported: the SCC decomposition needs opset >= {MIN_OPSET}")
    if dynamo not in (True, False, None):
        raise ValueError(f"dynamo must be True, False or None, got {dynamo!r}")
    trace_inputs = inputs
    if dynamic_batch and batch_size(inputs) < 2:
        # A batch of 1 would be specialised into the graph; trace with 2, the file stays dynamic.
        trace_inputs = resized(inputs, 2)
    with eval_mode(model):
        expected = [(batch, reference(model, batch)) for batch in check_batches(inputs, dynamic_batch)] if check else []
        n_outputs = len(reference(model, trace_inputs)) if not expected else len(expected[0][1])
        model = optimize_for_inference(model) if optimize else model
        with staging(path) as staged:
            if dynamo is False:
                _export_torchscript(model, trace_inputs, staged, opset, dynamic_batch, decomposition, n_outputs)
            else:
                try:
                    _export_dynamo(model, trace_inputs, staged, opset, dynamic_batch, decomposition, n_outputs)
                except Exception as err:
                    if dynamo is True:
                        raise
                    logger.warning(
                        "torch.export-based ONNX export failed (%s: %s); retrying with the TorchScript-based exporter",
                        type(err).__name__, err,
                    )
                    _export_torchscript(model, trace_inputs, staged, opset, dynamic_batch, decomposition, n_outputs)
            if opset is not None:
                _check_opset(staged, opset)
            if check:
                _check_onnx(staged, expected, atol, rtol)
    return path


def _check_opset(path: Path, opset: int) -> None:
    """The exporters may keep a higher opset when they cannot convert down; say so."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise RuntimeError(
            f"the exporter wrote ONNX opset {got}, not the requested opset={opset} (its version "
            f"converter could not convert the graph); request opset {got} or try dynamo=False"
        )


def _io_names(n_inputs: int, n_outputs: int) -> tuple[list[str], list[str]]:
    ins = ["input"] if n_inputs == 1 else [f"input_{i}" for i in range(n_inputs)]
    outs = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    return ins, outs


def _export_dynamo(model, inputs, dest: Path, opset, dynamic_batch, decomposition, n_outputs) -> None:
    input_names, output_names = _io_names(len(inputs), n_outputs)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    program = torch.onnx.export(
        model,
        inputs,
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        custom_translation_table=onnx_translation_table(decomposition),
        input_names=input_names,
        output_names=output_names,
        verbose=False,
    )
    program.save(dest)


def _export_torchscript(model, inputs, dest: Path, opset, dynamic_batch, decomposition, n_outputs) -> None:
    import warnings

    input_names, output_names = _io_names(len(inputs), n_outputs)
    dynamic_axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    if _registered_decomposition is None:
        register_onnx_symbolic()
    token = _decomposition_override.set(decomposition)
    try:
        with warnings.catch_warnings():
            # dynamo=False was asked for: its deprecation notices are not news to the caller
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated.*")
            torch.onnx.export(
                model,
                inputs,
                str(dest),
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
    finally:
        _decomposition_override.reset(token)


def _check_onnx(path: Path, expected: list[tuple[tuple[Tensor, ...], list[Tensor]]], atol, rtol) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for inputs, want in expected:
        if len(names) != len(inputs):
            raise ExportCheckError(f"the ONNX model takes {len(names)} inputs, the example has {len(inputs)}")
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(names, inputs)}
        got = session.run(None, feed)
        compare("onnxruntime", got, want, atol, rtol, inputs[0].shape[0] if inputs[0].dim() else 0,
                 "export with check=False to inspect it, or try decomposition='dense' / 'grouped'")
