"""The ``scc-convert`` command line: a thin shell over the public API.

    scc-convert MODEL [-o OUT] [--cg 4] [--co 0.5] [...]   convert a model file
    scc-convert profile MODEL [MODEL2] [...]               MACs/params/latency, or compare two
    scc-convert finetune CONVERTED --teacher ORIGINAL --data DIR|digits
                                                           recover accuracy (distillation)
    scc-convert export MODEL --format onnx|pt2 -o OUT     standard-op ONNX / torch.export program
    scc-convert demo                                       convert a built-in model, no download

Exit codes: 0 success, 1 failure (the inputs could not be processed), 2 usage error. Every
error is one line on stderr (``--debug`` shows the traceback); no partial output file is
ever left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["main"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


class CLIError(Exception):
    """A one-line error and its exit code (1 failure, 2 usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors, as one line, exit 2
        raise CLIError(f"{self.prog}: {message}", 2)


# -- argument types ---------------------------------------------------------------------------


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,3,224,224") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need 4 positive sizes N,C,H,W (e.g. 1,3,224,224)")
    return shape


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= 1")
    return values


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda was asked for but no CUDA GPU is available here")
    return device


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help="package.module:factory building the model when MODEL is a state_dict "
                                  "(e.g. torchvision.models:mobilenet_v2)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a whole pickled nn.Module (unpickling can run code: only for files you trust)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=_shape, default=(1, 3, 224, 224), help="N,C,H,W of the example input (default 1,3,224,224)")
    p.add_argument("--device", type=_device, default=torch.device("cpu"), help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model and input dtype (default float32)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no tables or progress, errors only")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _convert_parser() -> argparse.ArgumentParser:
    from .convert import INITS, PATTERNS

    p = _Parser(
        prog="scc-convert",
        description="Replace a CNN's pointwise convolutions with Sliding-Channel Convolutions. "
                    "Subcommands: 'scc-convert profile --help', 'scc-convert demo --help'.",
    )
    p.add_argument("model", metavar="MODEL", help="a state_dict (with --arch) or a pickled nn.Module (with --trust-pickle)")
    p.add_argument("-o", "--output", help="where to write the converted module (default: MODEL_scc.pt); a JSON report goes beside it")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--cg", type=int, default=4, help="channel groups (default 4)")
    p.add_argument("--co", type=float, default=0.5, help="channel overlap ratio in [0, 1) (default 0.5)")
    p.add_argument("--patterns", default="dw_pw,pw", help=f"comma-separated, from {','.join(PATTERNS)} (default dw_pw,pw)")
    p.add_argument("--include", action="append", help="only layers matching this glob (or re:REGEX); repeatable")
    p.add_argument("--exclude", action="append", help="skip layers matching this glob (or re:REGEX); repeatable")
    p.add_argument("--min-channels", type=int, default=16, help="skip layers with fewer input channels (default 16)")
    p.add_argument("--on-indivisible", choices=("skip", "nearest"), default="skip",
                   help="when cg does not divide a layer's input channels (default skip)")
    p.add_argument("--init", choices=INITS, default=None,
                   help="weight transfer (default: lsq with --calib, else slice; lsq needs --calib)")
    p.add_argument("--calib", help="calibration inputs: an image folder or a saved tensor [N,C,H,W] (.pt)")
    p.add_argument("--calib-limit", type=int, default=64, help="at most this many calibration images (default 64)")
    p.add_argument("--mean", type=_floats, default=(0.485, 0.456, 0.406), help="per-channel mean for --calib images")
    p.add_argument("--std", type=_floats, default=(0.229, 0.224, 0.225), help="per-channel std for --calib images")
    p.add_argument("--recalibrate-bn", action="store_true", help="re-estimate BatchNorm statistics on --calib")
    p.add_argument("--profile", action="store_true", help="also profile before vs after (MACs, params, latency)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--dry-run", action="store_true", help="convert and report, write nothing")
    _add_model_args(p)
    _add_run_args(p)
    _add_common(p)
    return p


def _profile_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scc-convert profile", description="MACs/FLOPs, parameters, size and latency of a model, or of two side by side.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("other", metavar="MODEL2", nargs="?", help="a second model (e.g. the converted one) to compare with")
    p.add_argument("--batch-sizes", type=_ints, help="comma-separated batch sizes (default: N of --input-shape)")
    p.add_argument("--train", action="store_true", help="also count the backward pass")
    p.add_argument("--no-latency", action="store_true", help="count only, do not time")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model (default 30)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", help="write a PNG chart here (needs matplotlib)")
    _add_model_args(p)
    _add_run_args(p)
    _add_common(p)
    return p


def _finetune_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scc-convert finetune",
                description="Fine-tune a converted model, with knowledge distillation from the original. "
                            "Runs unchanged under torchrun (DistributedDataParallel).")
    p.add_argument("model", metavar="CONVERTED", help="the converted model (a pickled nn.Module: needs --trust-pickle)")
    p.add_argument("--teacher", help="the original model (pickled nn.Module, or a state_dict with --arch)")
    p.add_argument("--data", required=True,
                   help="an ImageFolder directory (with train/ and val/ subfolders, or one folder of class "
                        "folders), or 'digits' for scikit-learn's bundled handwritten digits")
    p.add_argument("-o", "--output", help="where to write the fine-tuned module (default: CONVERTED_ft.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, help="learning rate (default: 0.01 for sgd, 1e-3 for adamw)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--kd-alpha", type=float, help="weight of the distillation loss (default 0.5 with a teacher)")
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument("--feature-kd", action="store_true", help="also match every SCC layer's output to the original conv's")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto")
    p.add_argument("--image-size", type=int, default=224, help="training crop size for ImageFolder data, image size for digits")
    p.add_argument("--mean", type=_floats, default=(0.485, 0.456, 0.406))
    p.add_argument("--std", type=_floats, default=(0.229, 0.224, 0.225))
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for ImageFolder data")
    p.add_argument("--device", type=_device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--checkpoint-dir", help="write last.pt / best.pt here")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/last.pt")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_model_args(p)
    _add_common(p)
    return p


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


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune import finetune
    from .io import save_model

    source = Path(args.model)
    out = Path(args.output) if args.output else source.with_name(source.stem + "_ft.pt")
    _check_output(out, source, args.force)
    args.dtype = "float32"
    args.device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student_args = argparse.Namespace(**{**vars(args), "arch": None})
    student = _load(args.model, student_args).train()
    teacher = _load(args.teacher, args) if args.teacher else None
    if args.data == "digits":
        from .data import digits_loaders

        try:
            train, val = digits_loaders(batch_size=args.batch_size, image_size=args.image_size)
        except ImportError as err:
            raise CLIError(str(err), 1) from None
    else:
        train, val = _image_folder_loaders(args)
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
    if result.world_size > 1 and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return 0
    save_model(result.model.cpu(), out, overwrite=args.force)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        final = result.final
        _say(args, f"fine-tuned {result.steps} steps in {result.wall_time_s:.1f} s on {result.device} (amp {result.amp}); "
                   f"final: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items() if v is not None))
        _say(args, f"wrote {out}")
    return 0


def _export_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scc-convert export",
                description="Export a (converted) model: ONNX with SCC written as standard ops, checked in "
                            "onnxruntime, or a torch.export program (.pt2). Dynamic batch size.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--decomposition", choices=("auto", "grouped", "dense"), default="auto",
                   help="how SCC is written in ONNX (default auto: per layer, by a rule fitted to onnxruntime timings)")
    p.add_argument("--classic", action="store_true", help="use the TorchScript-based ONNX exporter instead of dynamo")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime / reload comparison")
    _add_model_args(p)
    _add_run_args(p)
    _add_common(p)
    return p


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx, export_program

    out = Path(args.output)
    _check_output(out, args.model, args.force)
    model = _load(args.model, args)
    try:
        if args.format == "onnx":
            export_onnx(model, _example(args), out, opset=args.opset, dynamo=not args.classic,
                        check=not args.no_check, decomposition=args.decomposition)
        else:
            export_program(model, _example(args), out, check=not args.no_check)
    except ImportError as err:
        raise CLIError(f"{err} (pip install 'scc-convert[export]')", 1) from None
    except (ValueError, TypeError, RuntimeError) as err:
        raise CLIError(str(err).strip().splitlines()[0], 1) from None
    _say(args, f"wrote {out}")
    return 0


def _demo_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scc-convert demo",
                description="Convert a built-in model (torchvision's MobileNetV2, random init, or the "
                            "package's CIFAR MobileNet) and print the report and the profile.")
    p.add_argument("--model", choices=("mobilenet_v2", "cifar_mobilenet"), default="mobilenet_v2")
    p.add_argument("--cg", type=int, default=4)
    p.add_argument("--co", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--layers", action="store_true", help="also print the profile's per-layer rows")
    _add_common(p)
    return p


# -- helpers ---------------------------------------------------------------------------------


def _say(args: argparse.Namespace, *parts: object) -> None:
    if not args.quiet:
        print(*parts)


def _load(path: str, args: argparse.Namespace) -> nn.Module:
    from .io import ModelLoadError, load_model

    try:
        model = load_model(path, arch=args.arch, trust_pickle=args.trust_pickle)
    except FileNotFoundError as err:
        raise CLIError(str(err), 2) from None
    except ModelLoadError as err:
        raise CLIError(str(err), 1) from None
    return model.to(device=args.device, dtype=DTYPES[args.dtype]).eval()


def _example(args: argparse.Namespace) -> torch.Tensor:
    return torch.randn(*args.input_shape, device=args.device, dtype=DTYPES[args.dtype])


def _calibration(args: argparse.Namespace) -> torch.Tensor:
    path = Path(args.calib)
    if not path.exists():
        raise CLIError(f"--calib {path}: no such file or folder", 2)
    _, c, h, w = args.input_shape
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: args.calib_limit]
        if not files:
            raise CLIError(f"--calib {path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found", 1)
        try:
            from torchvision.io import ImageReadMode, decode_image
            from torchvision.transforms.v2 import functional as TF
        except ImportError:
            raise CLIError("--calib with an image folder needs torchvision (pip install torchvision)", 1) from None
        if len(args.mean) != c or len(args.std) != c:
            raise CLIError(f"--mean/--std need {c} values for {c}-channel input", 2)
        images = []
        for f in files:
            img = decode_image(str(f), mode=ImageReadMode.RGB if c == 3 else ImageReadMode.GRAY)
            img = TF.resize(img, min(h, w), antialias=True)
            img = TF.center_crop(img, [h, w]).float() / 255
            images.append(TF.normalize(img, list(args.mean), list(args.std)))
        x = torch.stack(images)
    else:
        try:
            x = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise CLIError(f"--calib {path}: not a tensor file torch.load can read safely ({str(err).splitlines()[0][:200]})", 1) from None
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise CLIError(f"--calib {path}: need a tensor [N,{c},H,W], got {shape}", 1)
        x = x[: args.calib_limit]
    return x.to(device=args.device, dtype=DTYPES[args.dtype])


def _check_output(out: Path, source: str | Path, force: bool) -> None:
    """Refuse to overwrite the input, or an existing file without --force (before any work)."""
    if out.resolve() == Path(source).resolve():
        raise CLIError(f"-o {out} is the input file; choose another output", 2)
    if out.exists() and not force:
        raise CLIError(f"{out} exists; use --force to overwrite it", 1)


def _write_json(path: Path, payload: dict, force: bool) -> None:
    from .io import atomic_write

    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(payload, indent=2) + "\n")

    atomic_write(path, write, overwrite=force)


# -- commands --------------------------------------------------------------------------------


def _cmd_convert(args: argparse.Namespace) -> int:
    from . import convert, profile
    from .io import save_model

    if args.init == "lsq" and not args.calib:
        raise CLIError("--init lsq needs --calib (an image folder or a saved input tensor)", 2)
    if args.recalibrate_bn and not args.calib:
        raise CLIError("--recalibrate-bn needs --calib", 2)
    source = Path(args.model)
    out = Path(args.output) if args.output else source.with_name(source.stem + "_scc.pt")
    report_path = out.with_suffix(".json")
    if not args.dry_run:
        for p in (out, report_path):
            _check_output(p, source, args.force)
    model = _load(args.model, args)
    calib = _calibration(args) if args.calib else None
    try:
        small, report = convert(
            model, cg=args.cg, co=args.co, patterns=[p for p in args.patterns.split(",") if p],
            include=args.include, exclude=args.exclude, min_channels=args.min_channels,
            on_indivisible=args.on_indivisible, init=args.init, calib_data=calib,
            recalibrate_bn=args.recalibrate_bn, example_inputs=_example(args), progress=not args.quiet,
        )
    except (ValueError, TypeError) as err:
        message = str(err)
        code = 1 if "failed on an example input" in message else 2
        raise CLIError(message, code) from None
    if not report.converted:
        reasons = sorted({r.reason for r in report.layers}) or ["no 1x1 or KxK convolutions found"]
        raise CLIError(f"no convertible layer in {source} (reasons: {'; '.join(reasons)})", 1)
    payload = {"source": str(source), "report": report.to_dict()}
    prof = None
    if args.profile:
        prof = profile(model, small, input_shape=args.input_shape, device=args.device, dtype=DTYPES[args.dtype])
        payload["profile"] = prof.to_dict()
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        _say(args, report)
        if prof is not None:
            _say(args, "")
            _say(args, prof)
    if not args.dry_run:
        save_model(small, out, overwrite=args.force)
        try:
            _write_json(report_path, payload, args.force)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        if not args.json:
            _say(args, f"\nwrote {out} and {report_path}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from . import profile

    before = _load(args.model, args)
    after = _load(args.other, args) if args.other else None
    try:
        report = profile(before, after, input_shape=args.input_shape, device=args.device, dtype=DTYPES[args.dtype],
                         batch_sizes=args.batch_sizes, train=args.train, latency=not args.no_latency, repeats=args.repeats)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err), 1) from None
    if args.json:
        print(report.to_json())
    else:
        _say(args, report)
    if args.plot:
        from .io import atomic_write

        atomic_write(args.plot, report.plot, overwrite=True)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import convert, profile

    torch.manual_seed(0)
    if args.model == "mobilenet_v2":
        try:
            import torchvision
        except ImportError:
            raise CLIError("the mobilenet_v2 demo needs torchvision; try 'scc-convert demo --model cifar_mobilenet'", 1) from None
        model, shape = torchvision.models.mobilenet_v2().eval(), (1, 3, 224, 224)
        note = "torchvision mobilenet_v2 (random init: no download)"
    else:
        from .models import cifar_mobilenet

        model, shape = cifar_mobilenet().eval(), (1, 3, 32, 32)
        note = "the DSXplore poster's CIFAR MobileNet (random init)"
    small, report = convert(model, cg=args.cg, co=args.co, example_inputs=torch.randn(*shape))
    _say(args, f"demo: {note}, input {shape}\n")
    _say(args, report)
    _say(args, "")
    result = profile(model, small, input_shape=shape, repeats=args.repeats)
    _say(args, result if args.layers else result.summary())
    return 0


SUBCOMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "profile": (_profile_parser, _cmd_profile),
    "demo": (_demo_parser, _cmd_demo),
    "finetune": (_finetune_parser, _cmd_finetune),
    "export": (_export_parser, _cmd_export),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv and argv[0] in SUBCOMMANDS:
            make_parser, run = SUBCOMMANDS[argv[0]]
            args = make_parser().parse_args(argv[1:])
        else:
            args, run = _convert_parser().parse_args(argv), _cmd_convert
        return run(args)
    except CLIError as err:
        if debug:
            raise
        print(f"scc-convert: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("scc-convert: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI promises one line, not a traceback
        if debug:
            raise
        print(f"scc-convert: error: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
