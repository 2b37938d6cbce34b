"""What several subcommands do the same way: print, load a model, find its input shape,
guard an output path, write a JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from .parser import DTYPES, CLIError


def say(args: argparse.Namespace, *parts: object) -> None:
    if not args.quiet:
        print(*parts)


def load(path: str, args: argparse.Namespace) -> nn.Module:
    """The model in ``path`` (``--arch`` / ``--trust-pickle`` as given), on ``--device`` in
    ``--dtype``, in eval mode; load failures become one-line errors."""
    from ..io import ModelLoadError, load_model

    try:
        model = load_model(path, arch=args.arch, trust_pickle=args.trust_pickle)
    except FileNotFoundError as err:
        raise CLIError(str(err), 2) from None
    except ModelLoadError as err:
        raise CLIError(str(err), 1) from None
    return model.to(device=args.device, dtype=DTYPES[args.dtype]).eval()


def input_shape(model: nn.Module, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """``given`` (``--input-shape``), else the shape :func:`scc_convert.inputs.find_example_inputs` finds."""
    if given is not None:
        return given
    from ..inputs import find_example_inputs

    found = find_example_inputs(model)
    if found.inputs is None:
        raise CLIError(f"no --input-shape given, and {found.describe()}", 1)
    return found.shape


def check_output(out: Path, source: str | Path, force: bool) -> None:
    """Refuse to overwrite the input, or an existing file without --force (before any work)."""
    if out.resolve() == Path(source).resolve():
        raise CLIError(f"-o {out} is the input file; choose another output", 2)
    if out.exists() and not force:
        raise CLIError(f"{out} exists; use --force to overwrite it", 1)


def write_json(path: Path, payload: dict, force: bool) -> None:
    from ..io import atomic_write

    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(payload, indent=2) + "\n")

    atomic_write(path, write, overwrite=force)
