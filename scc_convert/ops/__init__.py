"""The SCC ops: ``torch.ops.scc.scc_conv2d``, its backward, and the fused inference form
``torch.ops.scc.scc_conv2d_fused``, registered on import, with their inductor lowerings."""

from . import inductor
from .fused import scc_conv2d_fused_call, scc_conv2d_fused_op
from .library import scc_conv2d_backward_op, scc_conv2d_call, scc_conv2d_op

inductor.install()  # torch.compile / AOTInductor call the native kernel directly

__all__ = ["scc_conv2d_op", "scc_conv2d_backward_op", "scc_conv2d_call", "scc_conv2d_fused_op", "scc_conv2d_fused_call"]
