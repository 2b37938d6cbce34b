"""The DSXplore poster's Table IV rebuilt on scikit-learn's digits: DW+SCC vs DW+GPW vs
DW+GPW+channel-shuffle at equal MACs, right after conversion and after fine-tuning.

Protocol (all defaults; ``--help`` lists the knobs):

1. Train the DW+PW CNN of ``examples/digits_cnn.py`` (1x16x16 input, 3.99M MACs, 136k
   parameters) from scratch on the digits training split (1,437 images) for 10 epochs (SGD,
   cosine, lr 0.1); the 360-image validation split is never trained on.
2. For every ``cg`` in {2, 4, 8}: replace all five DW+PW pointwise convs by
   * SCC at ``co`` in {0.25, 0.5} (paper order ``o % cd``),
   * GPW, a plain grouped 1x1 conv (SCC with ``co = 0`` in block order ``o // (Cout/cg)``),
   * GPW + shuffle, a grouped 1x1 conv followed by ShuffleNet's channel shuffle (SCC with
     ``co = 0`` in the default order ``o % cg``),
   all with the same MACs and parameters at a given ``cg`` (the replacements are built by
   ``scc_convert.convert`` and checked against ``nn.Conv2d(groups=cg)`` /
   ``nn.ChannelShuffle`` before use; see ``examples/digits_cnn.py``). Weights: ``init="slice"``
   (each output keeps its original weights on the channels it still reads) for every family,
   then BatchNorm statistics re-estimated on 64 training images (no labels). ``slice`` is
   used because ``energy``/``lsq`` choose each output's group themselves, which would turn
   both GPW variants into "GPW + some permutation"; ``bench/convert_quality.py`` compares the
   inits.
3. Fine-tune each with the same budget: 2 epochs, SGD (Nesterov) lr 0.02 with a cosine
   schedule, batch 64, loss ``0.5 * CE + 0.5 * KD`` from the original (T = 4), through
   ``scc_convert.finetune``. Seeds 0-7: seed ``s`` picks the 64 BN-calibration images and the
   order of the training batches, identically for every family (so differences between
   families at one seed are paired).
4. Report top-1 validation accuracy mean +- std (over seeds) right after conversion and after
   fine-tuning, the paired differences to DW+GPW and DW+GPW+shuffle at the same ``cg``, MACs
   (one 1x16x16 image; FLOPs = 2 x MACs) and parameters, as a table, raw JSON
   (``bench/results/accuracy_study.json``) and a PNG plot of accuracy vs MACs
   (``bench/results/accuracy_study.png``).

Run time: 6.6 minutes measured on this project's 2-core CPU machine, otherwise idle, with 2
threads (baseline 15 s; 12 variants x 8 seeds x 2 epochs at ~30 s per variant). Under CPU
contention from other processes two threads can slow down many-fold; ``--threads 1`` is the
safer choice on a shared machine (accuracies may then differ slightly: the original trains
with another floating-point summation order). ``--quick`` is a < 1 minute smoke run (narrower
net on 8x8 inputs, two settings, two seeds, three steps) whose numbers mean nothing.

    python examples/accuracy_study.py [--quick] [--out DIR] [--seeds 8] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_cnn as dc  # noqa: E402

import scc_convert  # noqa: E402
from scc_convert.io import atomic_write  # noqa: E402

FAMILY_ORDER = ("gpw", "gpw_shuffle", "scc")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (< 1 min); numbers mean nothing")
    parser.add_argument("--out", type=Path, default=dc.RESULTS, help="folder for the JSON and PNG (default bench/results)")
    parser.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds 0..N-1 (default 8; quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs per run (default 2; quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="cap on fine-tuning steps per run (default none; quick 3)")
    parser.add_argument("--baseline-epochs", type=int, default=None, help="training epochs of the original (default 10; quick 2)")
    parser.add_argument("--cg", type=int, nargs="+", default=None, help="channel groups (default 2 4 8; quick 2 4)")
    parser.add_argument("--co", type=float, nargs="+", default=None, help="SCC overlaps (default 0.25 0.5; quick 0.5)")
    parser.add_argument("--lr", type=float, default=0.02, help="fine-tuning peak learning rate (default 0.02)")
    parser.add_argument("--kd-alpha", type=float, default=0.5, help="weight of distillation vs CE (default 0.5)")
    parser.add_argument("--calib", type=int, default=64, help="training images for BN re-estimation (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "seeds": (2, 8), "epochs": (1, 2), "baseline_epochs": (2, 10),
        "cg": ([2, 4], [2, 4, 8]), "co": ([0.5], [0.25, 0.5]),
    }
    for name, (q, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, q if quick else full)
    if args.steps is None and quick:
        args.steps = 3
    args.image_size, args.width = (8, 0.5) if quick else (16, 1.0)
    if args.seeds < 1 or args.epochs < 1 or args.baseline_epochs < 1:
        parser.error("--seeds, --epochs and --baseline-epochs must be >= 1")
    return args


def _variants(cgs: list[int], cos: list[float]) -> list[dict]:
    out = []
    for cg in cgs:
        out.append({"family": "gpw", "cg": cg, "co": 0.0})
        out.append({"family": "gpw_shuffle", "cg": cg, "co": 0.0})
        out.extend({"family": "scc", "cg": cg, "co": co} for co in cos)
    return out


def label(family: str, cg: int, co: float) -> str:
    """Table IV style name, e.g. ``DW+SCC-cg2-co25%`` or ``DW+GPW-cg4``."""
    name = f"{dc.FAMILIES[family]}-cg{cg}"
    return f"{name}-co{round(co * 100)}%" if family == "scc" else name


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pct(values: list[float]) -> str:
    mean, std = _mean_std([100 * v for v in values])
    return f"{mean:.2f} ± {std:.2f}"


def run_variant(original: torch.nn.Module, data: dc.DigitsData, variant: dict, seed: int, args: argparse.Namespace) -> dict:
    """Convert, measure, fine-tune and measure one (variant, seed)."""
    calib = dc.calibration_images(data, args.calib, seed)
    model, _ = dc.convert_family(original, variant["family"], variant["cg"], variant["co"],
                                 input_shape=data.input_shape, init="slice", calib=calib, recalibrate_bn=True)
    if variant["family"] != "scc":
        dc.check_gpw(model, "block" if variant["family"] == "gpw" else "shuffle", seed=seed)
    val = dc.val_loader(data)
    converted = dc.evaluate(model, val)
    started = time.perf_counter()
    result = scc_convert.finetune(
        model, dc.train_loader(data, 64, seed), teacher=original, epochs=args.epochs, steps=args.steps,
        lr=args.lr, kd_alpha=args.kd_alpha, seed=seed, progress=False, device="cpu",
    )
    return {
        "seed": seed, "after_conversion": converted, "after_finetune": dc.evaluate(model, val),
        "finetune_steps": result.steps, "finetune_seconds": time.perf_counter() - started,
    }


def study(args: argparse.Namespace) -> dict:
    """Run everything; return the JSON payload."""
    started = time.perf_counter()
    data = dc.load_digits(args.image_size)
    original, baseline = dc.trained_original(data, width=args.width, epochs=args.baseline_epochs)
    print(f"original: val accuracy {100 * baseline['val_accuracy']:.2f}% after {args.baseline_epochs} epochs "
          f"({baseline['seconds']:.0f} s); {baseline['macs'] / 1e6:.2f}M MACs, {baseline['params'] / 1e3:.1f}k params",
          flush=True)
    rows = []
    for variant in _variants(args.cg, args.co):
        probe, _ = dc.convert_family(original, variant["family"], variant["cg"], variant["co"], input_shape=data.input_shape)
        counts = dc.count(original, probe, data.input_shape)
        runs = [run_variant(original, data, variant, seed, args) for seed in range(args.seeds)]
        row = {**variant, "label": label(**variant), "macs": counts["macs"], "params": counts["params"], "runs": runs}
        rows.append(row)
        print(f"{row['label']:24s} converted {_pct([r['after_conversion'] for r in runs]):>14s}   "
              f"fine-tuned {_pct([r['after_finetune'] for r in runs]):>14s}   "
              f"({sum(r['finetune_seconds'] for r in runs):.0f} s)", flush=True)
    _paired_differences(rows)
    return {
        "benchmark": "accuracy_study",
        "machine": dc.machine(),
        "conventions": "accuracy: top-1 on the 360-image digits validation split, fraction in [0, 1]; "
                       "MACs for one image (FLOPs = 2 x MACs), whole model; params: whole model",
        "config": {
            "quick": args.quick, "image_size": args.image_size, "width": args.width, "split_seed": data.split_seed,
            "train_images": len(data.train), "val_images": len(data.val),
            "baseline_epochs": args.baseline_epochs, "init": "slice", "bn_recalibration_images": args.calib,
            "finetune": {"epochs": args.epochs, "steps": args.steps, "optimizer": "sgd (nesterov, momentum 0.9)",
                         "lr": args.lr, "schedule": "cosine", "batch_size": 64, "kd_alpha": args.kd_alpha,
                         "kd_temperature": 4.0, "seeds": list(range(args.seeds))},
        },
        "original": baseline,
        "variants": rows,
        "seconds": time.perf_counter() - started,
    }


def _paired_differences(rows: list[dict]) -> None:
    """Add ``vs_gpw`` / ``vs_gpw_shuffle``: per-seed fine-tuned accuracy minus that of DW+GPW /
    DW+GPW+shuffle at the same cg and seed (same data order and calibration images)."""
    for ref_family in ("gpw", "gpw_shuffle"):
        ref = {r["cg"]: {run["seed"]: run["after_finetune"] for run in r["runs"]} for r in rows if r["family"] == ref_family}
        for r in rows:
            if order_of(r["family"]) > order_of(ref_family) and r["cg"] in ref:
                r[f"vs_{ref_family}"] = [run["after_finetune"] - ref[r["cg"]][run["seed"]] for run in r["runs"]]


def order_of(family: str) -> int:
    return FAMILY_ORDER.index(family)


def _diff(row: dict, key: str) -> str:
    if key not in row:
        return "—"
    mean, std = _mean_std([100 * d for d in row[key]])
    return f"{mean:+.2f} ± {std:.2f}"


def table(payload: dict) -> str:
    """The results as a tabulate table (accuracies in %, mean ± std over seeds; differences in
    points, mean ± std of the per-seed paired differences)."""
    base = payload["original"]
    headers = ["Network", "MACs (M)", "Params (k)", "Acc. converted (%)", "Acc. fine-tuned (%)",
               "FT − GPW (pts)", "FT − GPW+shuffle (pts)"]
    lines = [["Baseline (DW+PW)", f"{base['macs'] / 1e6:.2f}", f"{base['params'] / 1e3:.1f}",
              f"{100 * base['val_accuracy']:.2f}", "—", "—", "—"]]
    for r in sorted(payload["variants"], key=lambda r: (r["cg"], order_of(r["family"]), r["co"])):
        lines.append([r["label"], f"{r['macs'] / 1e6:.2f}", f"{r['params'] / 1e3:.1f}",
                      _pct([x["after_conversion"] for x in r["runs"]]),
                      _pct([x["after_finetune"] for x in r["runs"]]), _diff(r, "vs_gpw"), _diff(r, "vs_gpw_shuffle")])
    return tabulate(lines, headers=headers, disable_numparse=True)


def plot(payload: dict, path: Path) -> None:
    """Accuracy vs MACs, right after conversion and after fine-tuning (mean ± std over seeds)."""
    from matplotlib.figure import Figure

    styles = {("gpw", 0.0): ("DW+GPW", "s", "tab:red"), ("gpw_shuffle", 0.0): ("DW+GPW+shuffle", "D", "tab:orange")}
    colors = iter(["tab:blue", "tab:green", "tab:purple", "tab:cyan"])
    for r in payload["variants"]:
        key = (r["family"], r["co"])
        if key not in styles:
            styles[key] = (f"DW+SCC co={r['co']:g}", "o", next(colors, "tab:gray"))
    keys = list(styles)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=False)
    base = payload["original"]
    ft = payload["config"]["finetune"]
    titles = ("right after conversion (slice + BN re-estimation)",
              f"after fine-tuning ({ft['epochs']} epoch(s), {ft['kd_alpha']:g} CE/KD mix)")
    for ax, stage, title in zip(axes, ("after_conversion", "after_finetune"), titles):
        for i, key in enumerate(keys):
            name, marker, color = styles[key]
            pts = [r for r in payload["variants"] if (r["family"], r["co"]) == key]
            if not pts:
                continue
            pts.sort(key=lambda r: r["macs"])
            shift = 0.012 * base["macs"] / 1e6 * (i - (len(keys) - 1) / 2)  # spread equal-MAC points apart
            stats = [_mean_std([100 * x[stage] for x in r["runs"]]) for r in pts]
            ax.errorbar([r["macs"] / 1e6 + shift for r in pts], [m for m, _ in stats], yerr=[s for _, s in stats],
                        marker=marker, color=color, label=name, capsize=3, linestyle="-", linewidth=1)
        ax.scatter([base["macs"] / 1e6], [100 * base["val_accuracy"]], marker="*", s=150, color="black",
                   label="Baseline (DW+PW)", zorder=3)
        ax.axhline(100 * base["val_accuracy"], color="black", linestyle=":", linewidth=1)
        size = payload["config"]["image_size"]
        ax.set_xlabel(f"MACs per 1x{size}x{size} image (millions; FLOPs = 2 x MACs)")
        ax.set_ylabel("top-1 validation accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Digits, DW+PW CNN converted at equal MACs; mean ± std over {len(ft['seeds'])} seeds", fontsize=11)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), overwrite=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}; quick: {args.quick}", flush=True)
    payload = study(args)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = dc.write_json(args.out / "accuracy_study.json", payload)
    png_path = args.out / "accuracy_study.png"
    plot(payload, png_path)
    print()
    print(table(payload))
    print(f"\ntotal {payload['seconds'] / 60:.1f} min; wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
