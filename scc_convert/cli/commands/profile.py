"""``scc-convert profile MODEL [MODEL2]``: MACs/FLOPs, parameters, size and latency."""

from __future__ import annotations

import argparse

from ..common import load, recorded_arch, say
from ..parser import DTYPES, CLIError, add_common, add_model_args, add_run_args, ints

NAME = "profile"
SUMMARY = "MACs/FLOPs, parameters, size and latency of a model, or of two side by side"
DESCRIPTION = "MACs/FLOPs, parameters, size and latency of a model, or of two side by side."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL")
    p.add_argument("other", metavar="MODEL2", nargs="?", help="a second model (e.g. the converted one) to compare with")
    p.add_argument("--batch-sizes", type=ints, help="comma-separated batch sizes (default: N of --input-shape)")
    p.add_argument("--train", action="store_true", help="also count the backward pass")
    p.add_argument("--no-latency", action="store_true", help="count only, do not time")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model (default 30)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", help="write a PNG chart here (needs matplotlib)")
    add_model_args(p)
    add_run_args(p)
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from ... import profile

    args.arch = args.arch or (recorded_arch(args.other) if args.other else None)  # the converted file names it
    before = load(args.model, args)
    after = load(args.other, args, base=before) if args.other else None
    try:
        report = profile(before, after, input_shape=args.input_shape, device=args.device, dtype=DTYPES[args.dtype],
                         batch_sizes=args.batch_sizes, train=args.train, latency=not args.no_latency, repeats=args.repeats)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err), 1) from None
    if args.json:
        print(report.to_json())
    else:
        say(args, report)
    if args.plot:
        from ...io import atomic_write

        atomic_write(args.plot, report.plot, overwrite=True)
    return 0
