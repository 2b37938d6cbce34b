"""What every exporter of this package shares: example inputs, eval mode, atomic writes, and the
check of an exported model's outputs against the PyTorch model's."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..inputs import as_inputs, find_example_inputs

__all__ = ["ExportCheckError", "example_inputs", "batch_size", "resized", "eval_mode", "staging", "compare", "reference",
           "check_batches"]

_DEFAULT_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 1e-2}  # otherwise 1e-4


class ExportCheckError(RuntimeError):
    """The exported model's outputs differ from the PyTorch model's (the file is not written)."""



def example_inputs(model: nn.Module, example_input: Tensor | Sequence[Tensor] | Sequence[int] | None) -> tuple[Tensor, ...]:
    """The example inputs: given, made from a shape, or (``None``) found as
    :func:`scc_convert.inputs.find_example_inputs` does."""
    if example_input is None:
        with eval_mode(model):
            found = find_example_inputs(model)
        if found.inputs is None:
            raise ValueError(f"export: no example_input given, and {found.describe()}")
        return found.inputs
    param = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    try:
        inputs = as_inputs(example_input, *((param.device, param.dtype) if param is not None else ()))
    except TypeError:
        inputs = ()
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(
            "example_input must be a Tensor, a tuple of Tensors (the model's positional inputs) or a shape "
            f"such as (1, 3, 224, 224), got {type(example_input).__name__}"
        )
    return inputs


def batch_size(inputs: tuple[Tensor, ...]) -> int:
    sizes = {t.shape[0] if t.dim() else None for t in inputs}
    if len(sizes) != 1 or None in sizes:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise ValueError(
            f"dynamic_batch=True needs every input to carry the batch on dim 0 with one batch size; "
            f"got shapes {shapes} (pass dynamic_batch=False to export fixed shapes)"
        )
    return sizes.pop()


def resized(inputs: tuple[Tensor, ...], batch: int) -> tuple[Tensor, ...]:
    """The inputs with batch ``batch``, built by repeating the example samples."""
    out = []
    for t in inputs:
        reps = math.ceil(batch / t.shape[0])
        out.append(t.repeat(reps, *([1] * (t.dim() - 1)))[:batch].contiguous(memory_format=_memory_format(t)))
    return tuple(out)


def _memory_format(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with every module in eval mode; restore each module's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def staging(path: Path) -> Iterator[Path]:
    """A path in a fresh sibling directory; on success its files move next to ``path``.

    The final file appears in one rename (sidecar files such as external weights first), and
    nothing is left behind on failure.
    """
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = tmpdir / path.name
        yield staged
        if not staged.is_file():
            raise RuntimeError(f"the exporter did not write {str(staged)!r}")
        files = sorted(tmpdir.iterdir(), key=lambda f: f == staged)  # sidecar files first
        for f in files:
            with open(f, "rb+") as handle:  # on disk before it takes the final name
                os.fsync(handle.fileno())
        for f in files:
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def compare(
    what: str,
    got: Sequence[Any],
    expected: Sequence[Tensor],
    atol: float | None,
    rtol: float | None,
    batch: int,
    hint: str,
) -> None:
    """Raise :class:`ExportCheckError` unless ``|got - expected| <= atol + rtol * |expected|``.

    NaN matches NaN and an infinity matches the same infinity; anything else non-finite fails.
    """
    if len(got) != len(expected):
        raise ExportCheckError(f"{what} returned {len(got)} outputs, the PyTorch model {len(expected)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        g = torch.as_tensor(g)
        tol = _DEFAULT_TOLERANCE.get(e.dtype, 1e-4)
        a, r = (tol if atol is None else atol), (tol if rtol is None else rtol)
        if tuple(g.shape) != tuple(e.shape):
            raise ExportCheckError(
                f"{what} output {i} has shape {tuple(g.shape)}, the PyTorch model's {tuple(e.shape)} (batch {batch})"
            )
        e64, g64 = e.detach().cpu().double(), g.detach().cpu().double()
        err = (g64 - e64).abs()
        close = (e64.isfinite() & (err <= a + r * e64.abs())) | (g64 == e64) | (g64.isnan() & e64.isnan())
        bad = ~close
        err = torch.where(close, torch.zeros_like(err), err.nan_to_num(nan=math.inf))
        if bad.any():
            worst = int(torch.argmax(err))
            index = tuple(int(k) for k in torch.unravel_index(torch.tensor(worst), e.shape))
            raise ExportCheckError(
                f"{what} output {i} differs from PyTorch at batch {batch}: {int(bad.sum())} of {e.numel()} "
                f"values exceed atol={a:g} + rtol={r:g}*|expected|; worst at {index}: got "
                f"{float(g64.flatten()[worst]):.6g}, expected {float(e64.flatten()[worst]):.6g} "
                f"(largest failing |diff| {float(err.max()):.3g}). The file was not written; {hint}"
            )


def reference(model: nn.Module, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    with torch.no_grad():
        return [t for t in pytree.tree_leaves(model(*inputs)) if isinstance(t, Tensor)]


def check_batches(inputs: tuple[Tensor, ...], dynamic_batch: bool) -> list[tuple[Tensor, ...]]:
    """The example inputs, plus (dynamic batch) the same samples at another batch size."""
    if not dynamic_batch:
        return [inputs]
    n = batch_size(inputs)
    return [inputs, resized(inputs, n + 1)]
