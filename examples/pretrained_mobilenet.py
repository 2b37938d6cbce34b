"""Convert a torchvision MobileNetV2 to SCC, profile it, fine-tune it briefly by distillation
from the original, and save it.

Weights: ``--weights PATH`` loads a local file — a ``state_dict`` of
``torchvision.models.mobilenet_v2`` (e.g. torchvision's ``mobilenet_v2-b0353104.pth``, or a
checkpoint holding one under ``"state_dict"``/``"model"``), read with
``torch.load(weights_only=True)``; a whole pickled model needs ``--trust-pickle``. Nothing is
downloaded. Without ``--weights`` the model is **randomly initialised** and the output says so:
the run then shows the mechanics (conversion, profile, fine-tuning, saving), not accuracy.

Data: ``--data digits`` (default; scikit-learn's bundled handwritten digits, upsampled to
``--image-size`` and replicated to 3 channels) or ``--data PATH`` to an ``ImageFolder``
directory (one sub-folder per class; images resized to ``--image-size``, ImageNet
normalisation). 10% of the images (digits: the standard 360-image split) are held out to
measure how often the converted model's top-1 prediction agrees with the original's. The
labels are never used: the fine-tune is pure distillation (``kd_alpha=1``), so the data need
not share the original's classes.

Steps:

1. ``scc_convert.convert(model, cg, co, init="lsq", calib_data=...)`` on ``--calib`` images
   (least-squares weight transfer layer by layer; ``--init slice``/``energy`` need no data);
2. ``scc_convert.profile`` before vs after at ``1 x 3 x 224 x 224`` (MACs; FLOPs = 2 x MACs;
   parameters; CPU latency of the forward pass, median of ``--repeats`` runs);
3. ``scc_convert.finetune(..., teacher=model, kd_alpha=1, freeze_bn=True)`` for ``--steps``
   optimizer steps;
4. ``scc_convert.io.save_model`` writes the converted model atomically to ``--out`` (refusing
   to overwrite without ``--force``). Load it back with
   ``scc_convert.io.load_model(path, trust_pickle=True)`` (a pickled module; ``scc_convert``
   must be importable).

The defaults (random init, digits at 64x64, 8 steps of 16 images) run in well under a minute
on 2 CPU cores:

    python examples/pretrained_mobilenet.py [--weights mobilenet_v2.pth] [--data DIR]
        [--cg 4] [--co 0.5] [--steps 8] [--out mobilenet_v2_scc.pt] [--force]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import scc_convert
from scc_convert.io import ModelLoadError, load_model, save_model

ARCH = "torchvision.models:mobilenet_v2"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="local MobileNetV2 state_dict (default: random init)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow a whole pickled model in --weights")
    parser.add_argument("--data", default="digits", help="'digits' or an ImageFolder directory (default digits)")
    parser.add_argument("--image-size", type=int, default=64, help="input side in pixels (default 64)")
    parser.add_argument("--cg", type=int, default=4, help="SCC channel groups (default 4)")
    parser.add_argument("--co", type=float, default=0.5, help="SCC channel overlap ratio (default 0.5)")
    parser.add_argument("--init", choices=("lsq", "energy", "slice"), default="lsq", help="weight transfer (default lsq)")
    parser.add_argument("--calib", type=int, default=32, help="calibration images for lsq (default 32)")
    parser.add_argument("--steps", type=int, default=8, help="fine-tuning optimizer steps (default 8)")
    parser.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch size (default 16)")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate (default 0.01)")
    parser.add_argument("--eval-images", type=int, default=256, help="held-out images for the agreement (default 256)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes per model (default 10; 0: no latency)")
    parser.add_argument("--out", type=Path, default=Path("mobilenet_v2_scc.pt"), help="output file (default mobilenet_v2_scc.pt)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data split and order (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = parser.parse_args(argv)
    for name in ("image_size", "calib", "steps", "batch_size", "eval_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.image_size < 32:
        parser.error("--image-size must be >= 32 (MobileNetV2 downsamples 32x)")
    return args


def _model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The original model and a sentence saying where its weights came from."""
    if args.weights is None:
        import torchvision

        torch.manual_seed(args.seed)
        return torchvision.models.mobilenet_v2(), (
            "RANDOM INITIALISATION (no --weights given): the numbers below show the mechanics only, not accuracy")
    return load_model(args.weights, arch=ARCH, trust_pickle=args.trust_pickle), f"weights from {args.weights}"


def _datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, str]:
    """``(train, held_out, description)``; images are 3 x image_size x image_size floats."""
    if args.data == "digits":
        from scc_convert.data import digits_tensors

        train, val = digits_tensors(image_size=args.image_size, channels=3, seed=args.seed)
        return train, val, f"scikit-learn digits upsampled to {args.image_size}x{args.image_size} (labels unused)"
    root = Path(args.data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {args.data}: not 'digits' and not a directory")
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.Resize(args.image_size), transforms.CenterCrop(args.image_size), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    full = datasets.ImageFolder(root, transform=tf)
    if len(full) < 2:
        raise ValueError(f"--data {root}: an ImageFolder with at least 2 images is needed, found {len(full)}")
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(args.seed)).tolist()
    n_val = max(1, len(full) // 10)
    return (Subset(full, order[n_val:]), Subset(full, order[:n_val]),
            f"ImageFolder {root} ({len(full)} images, {len(full.classes)} classes; labels unused)")


def _images(data: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` images of ``data`` stacked into one batch."""
    return torch.stack([data[i][0] for i in range(min(n, len(data)))])


@torch.no_grad()
def agreement(student: nn.Module, teacher: nn.Module, images: torch.Tensor, batch_size: int = 64) -> float:
    """Fraction of ``images`` on which the two models' top-1 predictions agree (eval mode)."""
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    same = sum((student(x).argmax(1) == teacher(x).argmax(1)).sum().item() for x in images.split(batch_size))
    student.train(modes[0])
    teacher.train(modes[1])
    return same / len(images)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    if args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    try:
        model, source = _model(args)
        train, held_out, data_text = _datasets(args)
    except (ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model.eval()
    print(f"MobileNetV2: {source}")
    print(f"data: {data_text}")

    calib = _images(train, args.calib) if args.init == "lsq" else None
    started = time.perf_counter()
    small, report = scc_convert.convert(
        model, args.cg, args.co, init=args.init, calib_data=calib,
        example_inputs=torch.zeros(1, 3, args.image_size, args.image_size), progress=False,
    )
    print(f"\nconverted {len(report.converted)} of {len(report.layers)} candidate 1x1 convs "
          f"(cg={args.cg}, co={args.co}, init={args.init}) in {time.perf_counter() - started:.1f} s; "
          f"skipped: {len(report.skipped)}")
    for record in report.skipped:
        print(f"  skipped {record.name}: {record.reason}")

    prof = scc_convert.profile(model, small, input_shape=(1, 3, 224, 224), latency=args.repeats > 0,
                               repeats=max(args.repeats, 1), warmup=2)
    print("\nprofile at 1x3x224x224 (MACs; FLOPs = 2 x MACs):")
    print(f"  MACs   {prof.before.macs / 1e6:8.1f}M -> {prof.after.macs / 1e6:8.1f}M")
    print(f"  params {prof.before.params / 1e6:8.2f}M -> {prof.after.params / 1e6:8.2f}M")
    if args.repeats > 0:
        lat_b, lat_a = prof.before.batches[0].latency, prof.after.batches[0].latency
        print(f"  CPU latency (median of {args.repeats}) {lat_b.median_ms:.1f} ms -> {lat_a.median_ms:.1f} ms")

    held = _images(held_out, args.eval_images)
    before_ft = agreement(small, model, held)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    result = scc_convert.finetune(
        small, loader, teacher=model, epochs=math.ceil(args.steps / len(loader)), steps=args.steps,
        lr=args.lr, kd_alpha=1.0, freeze_bn=True, seed=args.seed, progress=sys.stderr.isatty(), device="cpu",
    )
    after_ft = agreement(small, model, held)
    small.eval()
    print(f"\nfine-tuned {result.steps} steps (batch {args.batch_size}, pure distillation, BN frozen) in "
          f"{result.wall_time_s:.1f} s; final distillation loss {result.final['train_loss']:.3g}")
    print(f"top-1 agreement with the original on {len(held)} held-out images: "
          f"{100 * before_ft:.1f}% after conversion -> {100 * after_ft:.1f}% after fine-tuning")

    path = save_model(small, args.out, overwrite=args.force)
    print(f"\nsaved {path} (load with scc_convert.io.load_model(path, trust_pickle=True))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
