"""scc_convert: turn a CNN's pointwise convolutions into Sliding-Channel Convolutions (SCC).

Public API:

* :class:`SCCConv2d` — the SCC layer; :func:`functional.scc_conv2d` — its functional form.
* :class:`SCCGeometry` — windows, window stride and cyclic distance of one SCC.
* ``torch.ops.scc.scc_conv2d`` — the registered op (fake kernel, autograd, FLOP formula).

Cost conventions everywhere: a MAC is one multiply-accumulate; FLOPs = 2 x MACs; bias and
BatchNorm/activations are not counted.
"""

from . import functional
from .geometry import SCCGeometry
from .nn import SCCConv2d

__all__ = ["SCCConv2d", "SCCGeometry", "functional"]
__version__ = "0.1.0"
