"""Counting and timing, before vs after: MACs/FLOPs, parameters, model size and latency.

:func:`profile` measures one model, or an original and its converted form side by side, and
returns a :class:`ProfileReport` (``str(report)`` is a table, ``report.to_json()`` is JSON,
``report.plot(path)`` a PNG chart).

Counting conventions (stated in every report):

* A MAC is one multiply-accumulate; FLOPs = 2 x MACs. Counts come from
  ``torch.utils.flop_counter.FlopCounterMode`` (the SCC op registers its own formula):
  convolutions, matrix products and attention. Bias additions are not counted;
  BatchNorm, activations, pooling and other elementwise ops count 0 (as if folded into the
  neighbouring convolution). Ops outside ``aten``/``prims`` that have no formula are listed
  as warnings, never silently treated as free.
* Forward pass by default. ``train=True`` adds the backward pass of a training step that
  computes the gradient of every floating-point parameter (not of the input): each
  convolution costs its forward MACs once for the weight gradient and once more for the
  input gradient when one is needed. PyTorch's own formula for the weight gradient of a
  grouped convolution (``aten.convolution_backward``, checked on torch 2.14.1) counts
  ``groups`` times too many MACs (a depthwise conv's by ``C``); :func:`profile` replaces it.
  Backward counts are totals: per-layer rows hold forward MACs only, because PyTorch's
  module tracking attributes backward ops to the wrong module around residual branches.
* Counting runs the model for real, in eval mode (no BatchNorm statistic updates); gradients
  are taken with ``torch.autograd.grad``, so no ``.grad`` of the caller's model is touched.

Latency is the forward pass in eval mode under ``torch.inference_mode()``, measured outside
any dispatch mode: warm-up runs, then ``repeats`` timed runs of each model taken in turn
(before, after, after, before, ...) so that drift of the machine affects both alike; the
report gives the median and the interquartile range in milliseconds. CUDA runs are timed
with events after a synchronisation, CPU runs with ``time.perf_counter`` (the thread count
is reported).
"""

from .api import profile
from .report import CONVENTION, ProfileReport
from .results import BatchProfile, LayerComparison, LayerProfile, ModelProfile
from .timing import LatencyStats

__all__ = [
    "CONVENTION", "BatchProfile", "LatencyStats", "LayerComparison", "LayerProfile", "ModelProfile",
    "ProfileReport", "profile",
]
