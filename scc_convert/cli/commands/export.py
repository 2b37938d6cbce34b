"""``scc-convert export MODEL --format onnx|pt2|aoti -o OUT``: standard-op ONNX, a torch.export
program, or an AOTInductor package that runs without Python model code."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common import check_output, load, say
from ..parser import CLIError, add_common, add_model_args, add_run_args

NAME = "export"
SUMMARY = "export a (converted) model to ONNX (SCC as standard ops), a torch.export program or an AOTInductor package"
DESCRIPTION = ("Export a (converted) model: ONNX with SCC written as standard ops, checked in "
               "onnxruntime; a torch.export program (.pt2); or an AOTInductor package (.pt2, CPU), compiled "
               "ahead of time, with the native SCC kernel's library written beside it (<name>.scc_native.so). "
               "Dynamic batch size.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", choices=("onnx", "pt2", "aoti"), default="onnx")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--decomposition", choices=("auto", "grouped", "dense"), default="auto",
                   help="how SCC is written in ONNX (default auto: per layer, by a rule fitted to onnxruntime timings)")
    p.add_argument("--classic", action="store_true", help="use the TorchScript-based ONNX exporter instead of dynamo")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime / reload comparison")
    add_model_args(p)
    add_run_args(p)
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from ...export import export_aoti, export_onnx, export_program, library_beside

    out = Path(args.output)
    check_output(out, args.model, args.force)
    model = load(args.model, args)
    try:
        if args.format == "onnx":
            export_onnx(model, args.input_shape, out, opset=args.opset, dynamo=not args.classic,
                        check=not args.no_check, decomposition=args.decomposition)
        elif args.format == "pt2":
            export_program(model, args.input_shape, out, check=not args.no_check)
        else:
            export_aoti(model, args.input_shape, out, check=not args.no_check)
    except ImportError as err:
        raise CLIError(f"{err} (pip install 'scc-convert[export]')", 1) from None
    except (ValueError, TypeError, RuntimeError) as err:
        raise CLIError(str(err).strip().splitlines()[0], 1) from None
    say(args, f"wrote {out}")
    if args.format == "aoti" and library_beside(out).is_file():
        say(args, f"wrote {library_beside(out)} (load it before the package: torch.ops.load_library)")
    return 0
