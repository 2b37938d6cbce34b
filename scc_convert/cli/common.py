"""What several subcommands do the same way: print, load a model, find its input shape,
guard an output path, write the converted model and a JSON report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from .parser import DTYPES, CLIError


def say(args: argparse.Namespace, *parts: object) -> None:
    if not args.quiet:
        print(*parts)


def load(path: str, args: argparse.Namespace, base: nn.Module | None = None) -> nn.Module:
    """The model in ``path`` (``--arch`` / ``--trust-pickle`` as given; a converted weights-only
    file that records no architecture is rebuilt on ``base``), on ``--device`` in ``--dtype``,
    in eval mode; load failures become one-line errors."""
    from ..io import ModelLoadError, load_model

    try:
        model = load_model(path, arch=args.arch, trust_pickle=args.trust_pickle, base=base)
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


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-module", action="store_true",
                   help="write a pickled nn.Module (torch.save(model)) instead of the weights-only file "
                        "(state_dict + conversion recipe); loading it needs --trust-pickle")


def recorded_arch(path: str) -> str | None:
    """The architecture a converted weights-only file records (``None``: another kind of file)."""
    import torch

    from ..saving import is_converted

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a pickled module or a legacy file: nothing recorded
        return None
    return saved.get("arch") if is_converted(saved) else None


def write_model(model: nn.Module, out: Path, args: argparse.Namespace, arch: str | None) -> None:
    """The converted model as a weights-only file recording ``arch`` (``--save-module``: a
    pickled module); a warning when the architecture is unknown, since loading then needs it."""
    import warnings

    from ..io import save_model
    from ..saving import infer_arch, save

    if args.save_module:
        save_model(model, out, overwrite=args.force)
        return
    arch = arch or infer_arch(model)
    save(model, out, arch=arch, overwrite=args.force)
    if arch is None:
        warnings.warn(f"{out} records no architecture (none was given with --arch): load it with --arch "
                      "package.module:factory or scc_convert.load(path, original_model), or write a pickled "
                      "module with --save-module", UserWarning, stacklevel=2)


def write_json(path: Path, payload: dict, force: bool) -> None:
    from ..io import atomic_write

    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(payload, indent=2) + "\n")

    atomic_write(path, write, overwrite=force)
