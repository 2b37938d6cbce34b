"""``scc-convert MODEL``: convert a model file, write the converted model and a JSON report."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from ..common import add_output_args, check_output, input_shape, load, say, write_json, write_model
from ..parser import DTYPES, CLIError, add_common, add_layer_filter_args, add_model_args, add_run_args, floats

NAME = "convert"
SUMMARY = "convert a model file's pointwise layers to SCC (the default: 'scc-convert MODEL' works too)"
DESCRIPTION = ("Replace a CNN's pointwise convolutions (and, with --patterns ...,linear, its nn.Linear "
               "pointwise layers) with Sliding-Channel Convolutions; write the converted model (weights "
               "only: state_dict + conversion recipe) and a JSON report. 'scc-convert --help' lists "
               "the other commands.")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ...convert import INITS, PATTERNS

    p.add_argument("model", metavar="MODEL", help="a state_dict (with --arch) or a pickled nn.Module (with --trust-pickle)")
    p.add_argument("-o", "--output", help="where to write the converted model (default: MODEL_scc.pt): weights only, "
                                          "the state_dict and the conversion recipe; a JSON report goes beside it")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--cg", type=int, default=4, help="channel groups (default 4)")
    p.add_argument("--co", type=float, default=0.5, help="channel overlap ratio in [0, 1) (default 0.5)")
    p.add_argument("--patterns", default="dw_pw,pw", help=f"comma-separated, from {','.join(PATTERNS)} (default dw_pw,pw)")
    add_layer_filter_args(p)
    p.add_argument("--overrides", help="JSON file {layer: {\"cg\": N, \"co\": R}} of per-layer settings "
                                       "(e.g. from 'scc-convert sweep'); layers it names take them")
    p.add_argument("--on-indivisible", choices=("skip", "nearest"), default="skip",
                   help="when cg does not divide a layer's input channels (default skip)")
    p.add_argument("--init", choices=INITS, default=None,
                   help="weight transfer (default: lsq with --calib, else slice; lsq needs --calib)")
    p.add_argument("--calib", help="calibration inputs: an image folder or a saved tensor [N,C,H,W] (.pt)")
    p.add_argument("--calib-limit", type=int, default=64, help="at most this many calibration images (default 64)")
    p.add_argument("--mean", type=floats, default=(0.485, 0.456, 0.406), help="per-channel mean for --calib images")
    p.add_argument("--std", type=floats, default=(0.229, 0.224, 0.225), help="per-channel std for --calib images")
    p.add_argument("--recalibrate-bn", action="store_true", help="re-estimate BatchNorm statistics on --calib")
    p.add_argument("--profile", action="store_true", help="also profile before vs after (MACs, params, latency)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--dry-run", action="store_true", help="convert and report, write nothing")
    add_output_args(p)
    add_model_args(p)
    add_run_args(p)
    add_common(p)


def _calibration(args: argparse.Namespace, model: torch.nn.Module) -> torch.Tensor:
    path = Path(args.calib)
    if not path.exists():
        raise CLIError(f"--calib {path}: no such file or folder", 2)
    _, c, h, w = input_shape(model, args.input_shape)
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
        from ...io import error_line, is_torch_file

        if not is_torch_file(path):
            raise CLIError(f"--calib {path}: neither an image folder nor a file torch.save wrote (give a folder of "
                           f"images or a tensor [N,{c},H,W] saved with torch.save)", 1)
        try:
            x = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise CLIError(f"--calib {path}: not a tensor file torch.load can read safely ({error_line(err)})", 1) from None
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise CLIError(f"--calib {path}: need a tensor [N,{c},H,W], got {shape}", 1)
        x = x[: args.calib_limit]
    return x.to(device=args.device, dtype=DTYPES[args.dtype])


def _overrides(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CLIError(f"--overrides {path}: no such file", 2) from None
    except (OSError, ValueError) as err:
        raise CLIError(f"--overrides {path}: not a JSON file ({str(err).splitlines()[0][:200]})", 1) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CLIError(f"--overrides {path}: need a JSON object {{layer: {{\"cg\": N, \"co\": R}}}}", 1)
    return data


def run(args: argparse.Namespace) -> int:
    from ... import convert, profile
    if args.init == "lsq" and not args.calib:
        raise CLIError("--init lsq needs --calib (an image folder or a saved input tensor)", 2)
    if args.recalibrate_bn and not args.calib:
        raise CLIError("--recalibrate-bn needs --calib", 2)
    source = Path(args.model)
    out = Path(args.output) if args.output else source.with_name(source.stem + "_scc.pt")
    report_path = out.with_suffix(".json")
    if not args.dry_run:
        for p in (out, report_path):
            check_output(p, source, args.force)
    overrides = _overrides(args.overrides)
    model = load(args.model, args)
    calib = _calibration(args, model) if args.calib else None
    try:
        with warnings.catch_warnings():  # the report's warnings are shown below, once
            warnings.simplefilter("ignore", UserWarning)
            small, report = convert(
                model, cg=args.cg, co=args.co, patterns=args.patterns,
                include=args.include, exclude=args.exclude, min_channels=args.min_channels,
                overrides=overrides, on_indivisible=args.on_indivisible, init=args.init, calib_data=calib,
                recalibrate_bn=args.recalibrate_bn, example_inputs=args.input_shape, progress=not args.quiet,
            )
    except (ValueError, TypeError) as err:
        message = str(err)
        code = 1 if "failed on an example input" in message else 2
        raise CLIError(message, code) from None
    if not report.converted:
        raise CLIError(f"no convertible layer in {source}: {report.skip_summary()}", 1)
    for note in report.warnings:
        warnings.warn(note, UserWarning, stacklevel=1)
    payload = {"source": str(source), "report": report.to_dict()}
    prof = None
    if args.profile:
        try:
            prof = profile(model, small, input_shape=args.input_shape or report.input_shape, device=args.device,
                           dtype=DTYPES[args.dtype])
        except (ValueError, TypeError) as err:
            raise CLIError(str(err), 1) from None
        payload["profile"] = prof.to_dict()
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        say(args, report)
        if prof is not None:
            say(args, "")
            say(args, prof)
    if not args.dry_run:
        write_model(small, out, args, args.arch)
        try:
            write_json(report_path, payload, args.force)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        if not args.json:
            say(args, f"\nwrote {out} and {report_path}")
    return 0
