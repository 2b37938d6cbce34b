"""The SCC op: ``torch.ops.scc.scc_conv2d`` and its backward, registered on import."""

from .library import scc_conv2d_backward_op, scc_conv2d_call, scc_conv2d_op

__all__ = ["scc_conv2d_op", "scc_conv2d_backward_op", "scc_conv2d_call"]
