"""Argument parsing for ``scc-convert``: the one-line usage error, argument types and the
argument groups several subcommands share."""

from __future__ import annotations

import argparse

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class CLIError(Exception):
    """A one-line error and its exit code (1 failure, 2 usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors, as one line, exit 2
        raise CLIError(f"{self.prog}: {message}", 2)


# -- argument types ---------------------------------------------------------------------------


def shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,3,224,224") from None
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need 4 positive sizes N,C,H,W (e.g. 1,3,224,224)")
    return dims


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= 1")
    return values


def device(text: str) -> torch.device:
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda was asked for but no CUDA GPU is available here")
    return dev


# -- shared argument groups -------------------------------------------------------------------


def add_layer_filter_args(p: argparse.ArgumentParser) -> None:
    """--include / --exclude / --min-channels: which candidate layers a command considers."""
    p.add_argument("--include", action="append", help="only layers matching this glob (or re:REGEX); repeatable")
    p.add_argument("--exclude", action="append", help="skip layers matching this glob (or re:REGEX); repeatable")
    p.add_argument("--min-channels", type=int, default=16, help="skip layers with fewer input channels (default 16)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help="package.module:factory building the model when MODEL is a state_dict "
                                  "(e.g. torchvision.models:mobilenet_v2)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a whole pickled nn.Module (unpickling can run code: only for files you trust)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=shape, default=None,
                   help="N,C,H,W of the example input (default: the size the model declares, else the first "
                        "of 224, 32, 64, 96, 128, 160 square pixels it runs on)")
    p.add_argument("--device", type=device, default=torch.device("cpu"), help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model and input dtype (default float32)")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no tables or progress, errors only")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
