"""scc_convert: turn a CNN's pointwise convolutions into Sliding-Channel Convolutions (SCC).

Public API:

* :class:`SCCConv2d` — the SCC layer; :func:`functional.scc_conv2d` — its functional form;
  :class:`SCCLinear` — SCC over the last dimension (for `nn.Linear` pointwise layers).
* :class:`SCCGeometry` — windows, window stride and cyclic distance of one SCC.
* :func:`convert` — the torch.fx pass replacing a model's 1x1 convs, with a
  :class:`ConversionReport`; :func:`register_conv_adapter` — how a user's ``nn.Conv2d``
  subclass converts.
* :func:`save` / :func:`load` — a converted model as a weights-only file (``state_dict`` plus
  the conversion recipe) and back, without unpickling code.
* :func:`profile` — MACs/FLOPs, parameters, size and latency, before vs after
  (:class:`ProfileReport`).
* :func:`optimize_for_inference` — BatchNorm folded into the SCC layers, the following
  activation and residual add fused into their kernels (:class:`FusedSCCConv2d`).
* :func:`export_onnx` / :func:`export_program` / :func:`export_aoti` — ONNX with SCC as
  standard ops (checked in onnxruntime) / ``torch.export`` programs / AOTInductor packages
  that run without Python model code.
* :func:`search` — per-layer ``cg``/``co`` under a MACs, parameter or latency budget
  (:class:`SearchResult`; ``result.overrides`` feeds :func:`convert`).
* :func:`finetune` — distillation / cross-entropy fine-tuning, AMP, checkpoints, torchrun
  (:class:`FinetuneResult`).
* ``torch.ops.scc.scc_conv2d`` — the registered op (fake kernel, autograd, FLOP formula).

Cost conventions everywhere: a MAC is one multiply-accumulate; FLOPs = 2 x MACs; bias and
BatchNorm/activations are not counted.
"""

from . import functional
from .convert import ConversionReport, convert, register_conv_adapter
from .geometry import SCCGeometry
from .nn import DWSCCConv2d, SCCConv2d, SCCLinear
from .fused import FusedSCCConv2d
from .optimize import FusionSummary, optimize_for_inference
from .export import export_aoti, export_onnx, export_program, load_aoti
from .finetune import FinetuneResult, finetune
from .profile import ProfileReport, profile
from .saving import load, save
from .search import SearchResult, search

__all__ = [
    "SCCConv2d", "SCCLinear", "DWSCCConv2d", "SCCGeometry", "functional", "convert", "ConversionReport", "register_conv_adapter",
    "save", "load", "profile", "ProfileReport", "search", "SearchResult", "finetune", "FinetuneResult", "export_onnx",
    "export_program", "FusedSCCConv2d", "optimize_for_inference", "FusionSummary", "export_aoti", "load_aoti",
]
__version__ = "0.1.0"
