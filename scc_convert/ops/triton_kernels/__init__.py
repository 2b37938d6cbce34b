"""SCC as Triton kernels: the CUDA implementation of ``scc::scc_conv2d`` and its backward.

``scc_forward`` / ``scc_backward`` have the contract of the ops in ``ops/library.py``. They
run compiled kernels on CUDA tensors, and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before ``triton`` is imported), which is how the tests run them.
"""

from .launch import scc_backward, scc_forward

__all__ = ["scc_forward", "scc_backward"]
