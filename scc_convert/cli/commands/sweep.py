"""``scc-convert sweep MODEL --calib DIR``: search per-layer cg/co under a budget
(``--target-macs``/``--target-params``/``--target-latency``) and/or convert every uniform
setting (``--grid``); a table, a JSON report, a PNG Pareto chart and the chosen overrides."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from ..common import check_output, input_shape, load, say, write_json
from ..parser import DTYPES, CLIError, add_common, add_layer_filter_args, add_model_args, add_run_args, floats, ints

NAME = "sweep"
SUMMARY = "search per-layer cg/co under a MACs/params/latency budget, and/or sweep uniform settings"
DESCRIPTION = (
    "Search per-layer SCC settings under a budget (a number <= 1 is a share of the original model's cost; "
    "larger: MACs, parameters or seconds; strings like 150M or 12ms work too) and/or convert every uniform "
    "cg x co (--grid). Every model is calibrated on --calib and measured (top-1 agreement and KL with the "
    "original) on --eval, or on the last --holdout share of --calib. Writes a JSON report, a PNG chart "
    "(matplotlib) and, for a search, the chosen overrides, which 'scc-convert MODEL --overrides FILE' applies."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a state_dict (with --arch) or a pickled nn.Module (with --trust-pickle)")
    p.add_argument("--calib", required=True, help="calibration inputs: an image folder or a saved tensor [N,C,H,W] (.pt)")
    p.add_argument("--calib-limit", type=int, default=64, help="at most this many calibration images (default 64)")
    p.add_argument("--eval", help="held-out inputs to measure on (default: the last --holdout share of --calib)")
    p.add_argument("--holdout", type=float, default=0.25, help="share of --calib held out when --eval is not given (default 0.25)")
    p.add_argument("--mean", type=floats, default=(0.485, 0.456, 0.406), help="per-channel mean for image folders")
    p.add_argument("--std", type=floats, default=(0.229, 0.224, 0.225), help="per-channel std for image folders")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-macs", help="MACs budget: share (0.5) or count (150M)")
    budget.add_argument("--target-params", help="parameter budget: share (0.5) or count (1.5M)")
    budget.add_argument("--target-latency", help="latency budget on --device: share (0.6) or time (12ms)")
    p.add_argument("--grid", action="store_true", help="also convert and measure every uniform cg x co")
    p.add_argument("--cgs", type=ints, default=(1, 2, 4, 8), help="cg values (default 1,2,4,8)")
    p.add_argument("--cos", type=floats, default=(0.25, 0.5), help="co values (default 0.25,0.5)")
    p.add_argument("--patterns", default="dw_pw,pw", help="comma-separated, from dw_pw,pw (default dw_pw,pw)")
    add_layer_filter_args(p)
    p.add_argument("--no-uniform-check", action="store_true", help="do not compare the search with the uniform setting")
    p.add_argument("--report", help="JSON report path (default MODEL_sweep.json)")
    p.add_argument("--plot", help="PNG chart path (default MODEL_sweep.png; skipped without matplotlib unless given)")
    p.add_argument("--overrides-out", help="where to write the chosen overrides (default MODEL_overrides.json)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--dry-run", action="store_true", help="search and print, write nothing")
    add_model_args(p)
    add_run_args(p)
    add_common(p)


def _target(args: argparse.Namespace) -> tuple[str, float | str] | None:
    for metric in ("macs", "params", "latency"):
        value = getattr(args, f"target_{metric}")
        if value is not None:
            try:
                return metric, float(value)
            except ValueError:
                return metric, value
    return None


def _outputs(args: argparse.Namespace, searching: bool) -> dict[str, Path]:
    source = Path(args.model)
    stem = source.with_name(source.stem)
    out = {"report": Path(args.report) if args.report else Path(f"{stem}_sweep.json")}
    plot_asked = args.plot is not None
    if plot_asked or _has_matplotlib():
        out["plot"] = Path(args.plot) if plot_asked else Path(f"{stem}_sweep.png")
    if searching:
        out["overrides"] = Path(args.overrides_out) if args.overrides_out else Path(f"{stem}_overrides.json")
    return out


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def run(args: argparse.Namespace) -> int:
    from ...io import atomic_write
    from ...search import search, uniform_points
    from ...search.plot import pareto_plot
    from ...search.result import points_table
    from .convert import _calibration

    target = _target(args)
    if target is None and not args.grid:
        raise CLIError("sweep: give a budget (--target-macs, --target-params or --target-latency) and/or --grid", 2)
    if args.plot is not None and not _has_matplotlib():
        raise CLIError("--plot needs matplotlib: pip install scc-convert[plot]", 1)
    outputs = {} if args.dry_run else _outputs(args, target is not None)
    for path in outputs.values():
        check_output(path, args.model, args.force)
    model = load(args.model, args)
    example = torch.zeros(input_shape(model, args.input_shape), device=args.device, dtype=DTYPES[args.dtype])
    calib = _calibration(args, model)
    eval_x = None
    if args.eval:
        eval_args = copy.copy(args)
        eval_args.calib, eval_args.calib_limit = args.eval, 1 << 30
        eval_x = _calibration(eval_args, model)
    selection = {"patterns": args.patterns, "include": args.include,
                 "exclude": args.exclude, "min_channels": args.min_channels}
    metric = target[0] if target else "macs"
    payload: dict = {"source": str(args.model)}
    points = []
    try:
        if target is not None:
            result = search(model, calib, **{f"target_{target[0]}": target[1]}, cgs=args.cgs, cos=args.cos,
                            eval_data=eval_x, holdout=args.holdout, example_inputs=example,
                            check_uniform=not args.no_uniform_check, progress=not args.quiet, **selection)
            payload["search"] = result.to_dict()
            points.extend(result.points)
        if args.grid:
            grid = uniform_points(model, calib, cgs=[c for c in args.cgs if c > 1] or args.cgs, cos=args.cos,
                                  eval_data=eval_x, holdout=args.holdout, example_inputs=example,
                                  latency=metric == "latency", progress=not args.quiet, **selection)
            payload["grid"] = [p.to_dict() for p in grid]
            points.extend(grid)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err), 1) from None
    if args.json:
        print(json.dumps(payload, indent=2))
    elif target is not None:
        say(args, result)
        if args.grid:
            say(args, "\nuniform settings:\n" + points_table(grid))
    else:
        say(args, points_table(points))
    written = []
    try:
        if "overrides" in outputs:
            atomic_write(outputs["overrides"], lambda tmp: Path(tmp).write_text(result.overrides_json()), overwrite=args.force)
            written.append(outputs["overrides"])
        if "plot" in outputs:
            plot_metric = "latency" if metric == "latency" else "macs"
            title = f"{Path(args.model).name}: cost vs function"
            atomic_write(outputs["plot"], lambda tmp: pareto_plot(points, tmp, metric=plot_metric, title=title),
                         overwrite=args.force)
            written.append(outputs["plot"])
        if "report" in outputs:
            write_json(outputs["report"], payload, args.force)
            written.append(outputs["report"])
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    if written and not args.json:
        say(args, "\nwrote " + ", ".join(map(str, written)))
    return 0
