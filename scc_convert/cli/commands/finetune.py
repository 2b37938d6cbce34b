"""``scc-convert finetune CONVERTED --data DIR|digits``: recover accuracy, with distillation."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import torch

from ...data import DIGITS_IMAGE_SIZE
from ...inputs import declared_shape, input_channels
from ..common import add_output_args, check_output, input_shape, load, recorded_arch, say, write_model
from ..parser import CLIError, add_common, add_model_args, device, floats

NAME = "finetune"
SUMMARY = "fine-tune a converted model, with distillation from the original"
DESCRIPTION = ("Fine-tune a converted model, with knowledge distillation from the original. "
               "Runs unchanged under torchrun (DistributedDataParallel).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CONVERTED",
                   help="the converted model: a file written by scc-convert (built on the architecture it records, "
                        "--arch, or the teacher), or a pickled nn.Module (with --trust-pickle)")
    p.add_argument("--teacher", help="the original model (a state_dict with --arch, or a pickled nn.Module)")
    p.add_argument("--data", required=True,
                   help="an ImageFolder directory (with train/ and val/ subfolders, or one folder of class "
                        "folders), or 'digits' for scikit-learn's bundled handwritten digits")
    p.add_argument("-o", "--output", help="where to write the fine-tuned model (default: CONVERTED_ft.pt; weights only, "
                                          "as scc-convert writes it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=_lr, default="auto",
                   help="peak learning rate, or 'auto' (default): a learning-rate range test picks it")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--kd-alpha", type=float, help="weight of the distillation loss (default 0.5 with a teacher)")
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument("--feature-kd", action="store_true", help="also match every SCC layer's output to the original conv's")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto")
    p.add_argument("--image-size", type=int, default=None,
                   help="training crop size for ImageFolder data, image size for digits (default: the size "
                        "the model declares, else 32 for digits and for folders the first of 224, 32, 64, "
                        "96, 128, 160 it runs on)")
    p.add_argument("--mean", type=floats, default=(0.485, 0.456, 0.406))
    p.add_argument("--std", type=floats, default=(0.229, 0.224, 0.225))
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for ImageFolder data")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--checkpoint-dir", help="write last.pt / best.pt here")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/last.pt")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_output_args(p)
    add_model_args(p)
    add_common(p)


def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'auto'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _image_folder_loaders(args: argparse.Namespace):
    try:
        from torchvision import datasets
        from torchvision import transforms as T
    except ImportError:
        raise CLIError("--data DIR needs torchvision (pip install torchvision)", 1) from None
    root = Path(args.data)
    if not root.is_dir():
        raise CLIError(f"--data {root}: no such folder (or use --data digits)", 2)
    normalize = T.Normalize(list(args.mean), list(args.std))
    train_tf = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    val_tf = T.Compose([T.Resize(int(args.image_size * 8 / 7)), T.CenterCrop(args.image_size), T.ToTensor(), normalize])
    train_dir, val_dir = root / "train", root / "val"
    try:
        if train_dir.is_dir():
            train = datasets.ImageFolder(train_dir, train_tf)
            val = datasets.ImageFolder(val_dir, val_tf) if val_dir.is_dir() else None
        else:
            train, val = datasets.ImageFolder(root, train_tf), None
    except (FileNotFoundError, RuntimeError) as err:
        raise CLIError(f"--data {root}: {err}", 1) from None
    loader = torch.utils.data.DataLoader
    kwargs = {"batch_size": args.batch_size, "num_workers": args.workers}
    return loader(train, shuffle=True, drop_last=True, **kwargs), (loader(val, **kwargs) if val is not None else None)


def _outputs(model: torch.nn.Module, data, device: torch.device) -> int | None:
    """The size of the model's last output dimension on one image of ``data`` (eval mode)."""
    x = next(iter(data))[0][:1].to(device)
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model.to(device)(x)
    finally:
        for m, flag in flags.items():
            m.training = flag
    out = getattr(out, "logits", out)
    return out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() >= 1 else None


def run(args: argparse.Namespace) -> int:
    from ...finetune import finetune

    source = Path(args.model)
    out = Path(args.output) if args.output else source.with_name(source.stem + "_ft.pt")
    check_output(out, source, args.force)
    args.dtype = "float32"
    args.device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.arch = args.arch or recorded_arch(args.model)  # the converted file names the teacher's architecture
    teacher = load(args.teacher, args) if args.teacher else None
    student = load(args.model, args, base=teacher).train()
    channels = input_channels(student)
    if args.image_size is None:
        declared = declared_shape(student)
        if declared is not None:
            _, channels, args.image_size, _ = declared
        elif args.data == "digits":  # 8x8 scans: probing the model for 224 would upsample them 28x
            args.image_size = DIGITS_IMAGE_SIZE
        else:
            _, channels, args.image_size, _ = input_shape(student, None)
    if args.data == "digits":
        from ...data import DIGITS_NUM_CLASSES, digits_loaders

        try:
            train, val = digits_loaders(batch_size=args.batch_size, image_size=args.image_size, channels=channels)
        except ImportError as err:
            raise CLIError(str(err), 1) from None
        classes = DIGITS_NUM_CLASSES
    else:
        train, val = _image_folder_loaders(args)
        classes = len(train.dataset.classes)
    outputs = _outputs(student, train, args.device)
    if outputs is not None and outputs != classes:
        warnings.warn(f"the data has {classes} classes but the model has {outputs} outputs: the loss trains the "
                      f"first {classes} (replace the classifier to match, if that is not what you want)",
                      UserWarning, stacklevel=1)
    amp = {"auto": None, "off": False, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    try:
        result = finetune(
            student, train, teacher=teacher, val_data=val, epochs=args.epochs, steps=args.steps, lr=args.lr,
            optimizer=args.optimizer, kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
            feature_kd=args.feature_kd, freeze_bn=args.freeze_bn, amp=amp, device=args.device,
            checkpoint_dir=args.checkpoint_dir, resume=args.resume, progress=not args.quiet,
        )
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        raise CLIError(str(err), 1) from None
    if result.world_size > 1 and int(os.environ.get("RANK", "0")) != 0:  # the process group is gone by now
        return 0  # rank 0 alone writes the file and reports
    write_model(result.model.cpu(), out, args, args.arch or recorded_arch(args.model))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        final = result.final
        chosen = f"lr {result.lr:.3g}" + (" (range test: " + result.lr_test["reason"] + ")" if result.lr_test else "")
        say(args, f"fine-tuned {result.steps} steps in {result.wall_time_s:.1f} s on {result.device} (amp {result.amp}, "
                  f"{chosen}); final: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items() if v is not None))
        say(args, f"wrote {out}")
    return 0
