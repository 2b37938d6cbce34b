"""The Triton kernels under Triton's interpreter, on CPU tensors.

Run as its own pytest process with the interpreter switched on before triton is imported:

    TRITON_INTERPRET=1 SCC_CONVERT_CPU_BACKEND=torch python -m pytest -q tests/triton

(the main run leaves this folder out: see ``tests/conftest.py``).
"""

import math

import pytest
import torch

import triton

if not triton.knobs.runtime.interpret:
    raise pytest.UsageError("tests/triton needs TRITON_INTERPRET=1 in the environment (see its conftest.py)")

from scc_convert.ops.triton_kernels import launch  # noqa: E402  (after the check above)

assert launch.interpreting()

LAYOUTS = ("nchw", "channels_last", "sliced")


class Guarded:
    """A ``[N, C, H, W]`` tensor placed in a larger storage whose every other element is NaN:
    before it, after it, and (``sliced``: a strided view) in the gaps between its elements.

    A kernel that reads outside the tensor gets NaN into its result; one that writes outside it
    overwrites a NaN (:meth:`untouched` fails); one that skips an element of an output leaves
    a NaN in it (:meth:`all_written` fails).
    """

    MARGIN = 67

    def __init__(self, shape, dtype, layout, data=None):
        n, c, h, w = shape
        if layout == "nchw":
            strides, extent = (c * h * w, h * w, w, 1), n * c * h * w
        elif layout == "channels_last":
            strides, extent = (h * w * c, 1, w * c, c), n * c * h * w
        elif layout == "sliced":  # x[:, 1:c+1, 1::2, ::2] of an [n, c+3, 2h+1, 2w] tensor
            big = (n, c + 3, 2 * h + 1, 2 * w)
            strides = (big[1] * big[2] * big[3], big[2] * big[3], 2 * big[3], 2)
            extent = math.prod(big)
        else:
            raise ValueError(layout)
        offset = self.MARGIN + (strides[1] + big[3] if layout == "sliced" else 0)
        self.storage = torch.full((extent + 2 * self.MARGIN,), float("nan"), dtype=dtype)
        self.tensor = self.storage.as_strided(shape, strides, offset)
        index = torch.arange(self.storage.numel()).as_strided(shape, strides, offset)
        self.inside = torch.zeros(self.storage.numel(), dtype=torch.bool)
        self.inside[index.flatten()] = True
        if data is not None:
            self.tensor.copy_(data)

    def untouched(self) -> bool:
        return bool(self.storage[~self.inside].isnan().all())

    def all_written(self) -> bool:
        return not bool(self.tensor.isnan().any())


@pytest.fixture
def guarded():
    return Guarded


@pytest.fixture(scope="session")
def triton_on_cpu():
    """Registers the Triton kernels as the CPU implementation of the SCC ops, for this
    interpreter session only (the product registers them for CUDA)."""
    from scc_convert.ops.library import op_definitions
    from scc_convert.ops import triton_kernels

    fwd, bwd = op_definitions()
    fwd.register_kernel("cpu", triton_kernels.scc_forward)
    bwd.register_kernel("cpu", triton_kernels.scc_backward)
    yield
    from scc_convert.ops import torch_path

    fwd.register_kernel("cpu", torch_path.scc_forward)
    bwd.register_kernel("cpu", torch_path.scc_backward)
