"""What several subcommands do the same way: print, load a model, make an example input,
guard an output path, write a JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
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


def example(args: argparse.Namespace) -> torch.Tensor:
    return torch.randn(*args.input_shape, device=args.device, dtype=DTYPES[args.dtype])


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
