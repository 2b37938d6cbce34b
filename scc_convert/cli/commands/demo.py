"""``scc-convert demo``: convert a built-in model (no download), print the report and profile."""

from __future__ import annotations

import argparse

import torch

from ..common import say
from ..parser import CLIError, add_common

NAME = "demo"
SUMMARY = "convert a built-in model (no download) and print the report and the profile"
DESCRIPTION = ("Convert a built-in model (torchvision's MobileNetV2, random init, or the "
               "package's CIFAR MobileNet) and print the report and the profile.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("mobilenet_v2", "cifar_mobilenet"), default="mobilenet_v2")
    p.add_argument("--cg", type=int, default=4)
    p.add_argument("--co", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--layers", action="store_true", help="also print the profile's per-layer rows")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from ... import convert, profile

    torch.manual_seed(0)
    if args.model == "mobilenet_v2":
        try:
            import torchvision
        except ImportError:
            raise CLIError("the mobilenet_v2 demo needs torchvision; try 'scc-convert demo --model cifar_mobilenet'", 1) from None
        model, shape = torchvision.models.mobilenet_v2().eval(), (1, 3, 224, 224)
        note = "torchvision mobilenet_v2 (random init: no download)"
    else:
        from ...models import cifar_mobilenet

        model, shape = cifar_mobilenet().eval(), (1, 3, 32, 32)
        note = "the DSXplore poster's CIFAR MobileNet (random init)"
    small, report = convert(model, cg=args.cg, co=args.co, example_inputs=torch.randn(*shape))
    say(args, f"demo: {note}, input {shape}\n")
    say(args, report)
    say(args, "")
    result = profile(model, small, input_shape=shape, repeats=args.repeats)
    say(args, result if args.layers else result.summary())
    return 0
