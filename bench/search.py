"""Design-space search on the pretrained MobileNetV2 (issue 13): per-layer cg/co against
uniform settings at the same MACs.

Model: torchvision's ImageNet MobileNetV2 (``scc_convert.models.pretrained_mobilenet_v2``,
offline weights). Data: real photo crops (``scc_convert.data.photo_crops``) at 224: 64
calibration crops (seed 0), 32 crops the search measures its candidates on (seed 2), and
``--judge`` held-out crops (seed 1, default 256) on which every model here is judged: top-1
agreement with the original and mean KL(original || converted). Every model is converted
with the same init (``lsq`` on the same 64 crops).

1. The uniform grid: cg in {2, 4, 8} x co in {0.25, 0.5} (MACs at 1x3x224x224).
2. ``scc_convert.search(model, calib, target_macs=<MACs of uniform cg=4 co=0.5>)``, and again
   at the MACs of uniform cg=2 co=0.5, each timed end to end (wall seconds, everything
   included: statistics, allocation, the final conversion, the end-to-end check and the
   uniform comparison).

Targets (issue 13): at the MACs of uniform cg=4 co=0.5 the searched model's agreement is at
least 10 points above uniform cg=4 co=0.5; at the MACs of uniform cg=2 co=0.5 at least 3
points above it; each search within 300 s on this 2-core CPU. The machine's load average is
recorded before and after (the project's machine is shared; a loaded machine is slower).

Every model a search measured on its 32 crops (its per-layer allocation, and the uniform
setting it compares itself with) is judged on the held-out crops too.

Writes ``bench/results/search.json`` and the chart ``bench/results/search_mobilenet_v2.png``.
Run time: about 30 minutes on the shared 2-core machine.

    python bench/search.py [--judge 256] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

import scc_convert  # noqa: E402
from scc_convert import convert, profile, search  # noqa: E402
from scc_convert.data import photo_crops  # noqa: E402
from scc_convert.models import pretrained_mobilenet_v2  # noqa: E402
from scc_convert.quality import agreement  # noqa: E402
from scc_convert.search import Point  # noqa: E402
from scc_convert.search.plot import pareto_plot  # noqa: E402

EXAMPLE = torch.zeros(1, 3, 224, 224)


def _macs(model) -> int:
    return profile(model, example_input=EXAMPLE, latency=False).before.macs


def _judge(model, small, held) -> dict:
    a = agreement(model, small, held)
    return {"top1": a.top1, "kl": a.kl}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", type=int, default=256, help="held-out crops every model is judged on (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="only the two searches and their two uniform baselines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {**machine(), "load_before": os.getloadavg()}
    print(f"machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}, {env['threads']} threads, "
          f"load average {env['load_before'][0]:.2f}")

    model = pretrained_mobilenet_v2()
    calib, search_eval, held = photo_crops(64, seed=0), photo_crops(32, seed=2), photo_crops(args.judge, seed=1)
    full = _macs(model)
    grid = [(2, 0.5), (4, 0.5)] if args.quick else [(cg, co) for cg in (2, 4, 8) for co in (0.25, 0.5)]
    uniform: dict[str, dict] = {}
    points: list[Point] = []
    for cg, co in grid:
        t0 = time.perf_counter()
        small, _ = convert(model, cg=cg, co=co, calib_data=calib, example_inputs=EXAMPLE)
        row = {"cg": cg, "co": co, "macs": _macs(small), "params": sum(p.numel() for p in small.parameters()),
               "convert_s": time.perf_counter() - t0, **_judge(model, small, held)}
        uniform[f"cg={cg} co={co:g}"] = row
        points.append(Point(f"uniform cg={cg} co={co:g}", "uniform", row["macs"], row["params"], None, row["top1"], row["kl"], {}))
        print(f"uniform cg={cg} co={co}: MACs {row['macs'] / 1e6:.1f}M, agreement {row['top1']:.3f}, KL {row['kl']:.3f}", flush=True)

    searches = {}
    for cg in (4, 2):
        base = uniform[f"cg={cg} co=0.5"]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = search(model, calib, target_macs=base["macs"], eval_data=search_eval, example_inputs=EXAMPLE)
        seconds = time.perf_counter() - t0
        judged = _judge(model, result.model, held)
        # every model the search measured on its 32 crops, judged here too (re-converted from its overrides)
        explored = []
        for p in result.points:
            same = p.overrides == result.overrides
            small = result.model if same else convert(model, overrides=p.overrides, calib_data=calib, example_inputs=EXAMPLE)[0]
            explored.append({"label": p.label, "kind": p.kind, "macs": p.macs, "chosen": same,
                             "search_eval": {"top1": p.top1, "kl": p.kl}, "judged": _judge(model, small, held)})
            if p.kind == "searched":
                points.append(Point(f"per-layer @ cg={cg} MACs", "searched", p.macs, p.params, None,
                                    explored[-1]["judged"]["top1"], explored[-1]["judged"]["kl"], p.overrides))
        searches[f"macs of cg={cg} co=0.5"] = {
            "target_macs": base["macs"], "macs": result.measured["macs"], "params": result.measured["params"],
            "seconds": seconds, "load_at_start": load, **judged, "search_eval": {"top1": result.measured["top1"], "kl": result.measured["kl"]},
            "gain_points": 100 * (judged["top1"] - base["top1"]), "overrides": result.overrides,
            "corrections": result.corrections, "explored": explored,
        }
        print(f"search at the MACs of cg={cg} co=0.5: MACs {result.measured['macs'] / 1e6:.1f}M, agreement "
              f"{judged['top1']:.3f} (uniform {base['top1']:.3f}), KL {judged['kl']:.3f}, {seconds:.0f} s", flush=True)
        for e in explored:
            print(f"  explored {e['label']}: agreement {e['judged']['top1']:.3f}, KL {e['judged']['kl']:.3f} "
                  f"(on the search's 32 crops {e['search_eval']['top1']:.3f}, {e['search_eval']['kl']:.3f})"
                  + (" <- the result" if e["chosen"] else ""), flush=True)

    targets = {
        "cg=4 MACs: +10 points": searches["macs of cg=4 co=0.5"]["gain_points"] >= 10,
        "cg=2 MACs: +3 points": searches["macs of cg=2 co=0.5"]["gain_points"] >= 3,
        "each search <= 300 s": all(s["seconds"] <= 300 for s in searches.values()),
    }
    env["load_after"] = os.getloadavg()
    rows = [[k, f"{v['macs'] / 1e6:.1f}M", f"{v['top1']:.3f}", f"{v['kl']:.3f}"] for k, v in uniform.items()]
    rows += [[f"searched @ {k}", f"{v['macs'] / 1e6:.1f}M", f"{v['top1']:.3f}", f"{v['kl']:.3f}"] for k, v in searches.items()]
    print(tabulate(rows, headers=["model", "MACs", "top-1 agreement", "KL"]))
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    print(f"load average after: {env['load_after'][0]:.2f}")
    payload = {"machine": env, "scc_convert": scc_convert.__version__, "judge_images": args.judge, "original_macs": full,
               "uniform": uniform, "search": searches, "targets": targets}
    path = write_json("search.json", payload)
    chart = RESULTS / "search_mobilenet_v2.png"
    pareto_plot(points, chart, title=f"pretrained MobileNetV2, {args.judge} held-out crops", original=full)
    print(f"wrote {path} and {chart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
