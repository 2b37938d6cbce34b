"""Deploying models that contain SCC layers, one file per target:

* ``onnx.py`` — :func:`export_onnx`: ONNX with every SCC layer written as standard ops
  (``decomposition.py`` says how, and what ran fastest in onnxruntime), checked in
  onnxruntime; :func:`onnx_translation_table` / :func:`register_onnx_symbolic` for calling
  ``torch.onnx.export`` directly;
* ``program.py`` — :func:`export_program`: a ``torch.export`` program (``.pt2``) with each SCC
  layer one node of the registered op;
* ``aoti.py`` — :func:`export_aoti` / :func:`load_aoti`: an AOTInductor package, compiled
  ahead of time, that runs with torch and the native SCC kernel's library only;
* ``checks.py`` — what they share: example inputs, eval mode, atomic writes and the check of
  the exported outputs against PyTorch's (:class:`ExportCheckError`).

Every exporter writes its file atomically and only after the check passed, exports in eval
mode, and (``optimize=True``, the default) exports
:func:`~scc_convert.optimize_for_inference` of the model: BatchNorm folded into the SCC
layers, the following residual add and activation fused into their op.
"""

from .aoti import export_aoti, library_beside, load_aoti
from .checks import ExportCheckError
from .decomposition import choose_decomposition
from .onnx import export_onnx, onnx_translation_table, register_onnx_symbolic
from .program import export_program

__all__ = [
    "ExportCheckError",
    "choose_decomposition",
    "export_onnx",
    "export_program",
    "export_aoti",
    "load_aoti",
    "library_beside",
    "onnx_translation_table",
    "register_onnx_symbolic",
]
