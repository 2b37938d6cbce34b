"""Fine-tuning with its defaults: the digits run of issue 15.

A DW+PW CNN is trained on scikit-learn's digits (the original), converted at cg=4 co=0.5 with
``init="slice"``, then fine-tuned by ``scc-convert finetune --data digits --epochs 4`` under
``torchrun`` (2 CPU ranks, batch 64 each: 48 optimizer steps) with every other argument at its
default, against the same run with the former default ``--lr 0.01``. Target: the default run
within 2 points of the original's validation accuracy. Writes ``results/finetune_defaults.json``.

    python bench/finetune_defaults.py [--epochs-original 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _common import machine, write_json  # noqa: E402
from digits_cnn import digits_mobilenet  # noqa: E402

import scc_convert  # noqa: E402
from scc_convert.data import digits_loaders  # noqa: E402


def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def torchrun_finetune(converted: Path, teacher: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
           "scc_convert", "finetune", str(converted), "--teacher", str(teacher), "--trust-pickle",
           "--data", "digits", "--epochs", "4", "--device", "cpu", "--json", "--force",
           "-o", str(converted.with_name(converted.stem + "_ft.pt")), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed ({done.returncode}): {done.stderr[-2000:]}")
    start = done.stdout.index("{")
    result, end = json.JSONDecoder().raw_decode(done.stdout[start:])
    if done.stdout[start + end:].strip():
        raise RuntimeError(f"more than one rank reported: {done.stdout[start + end:][:200]!r}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs-original", type=int, default=8)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    train, val = digits_loaders(batch_size=64, channels=1)  # at the CLI's default size
    original = digits_mobilenet()
    scc_convert.finetune(original, train, val_data=val, epochs=args.epochs_original, lr=0.1, progress=False, device="cpu")
    original.eval()
    base = accuracy(original, val)
    converted, _ = scc_convert.convert(original, cg=4, co=0.5, init="slice")
    sliced = accuracy(converted, val)
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        orig_path, conv_path = Path(tmp) / "original.pt", Path(tmp) / "converted.pt"
        torch.save(original, orig_path)
        torch.save(converted, conv_path)
        for label, extra in (("defaults (lr auto)", []), ("--lr 0.01 (the former default)", ["--lr", "0.01"])):
            result = torchrun_finetune(conv_path, orig_path, extra)
            runs[label] = {k: result[k] for k in ("steps", "final", "lr", "lr_test", "world_size", "wall_time_s")}
            rows.append((label, result["steps"], f"{result['lr']:.3g}", f"{result['final']['val_accuracy']:.4f}",
                         f"{base - result['final']['val_accuracy']:+.4f}"))
    info = machine()
    target = runs["defaults (lr auto)"]["final"]["val_accuracy"] >= base - 0.02
    print(f"# {info['cpu']} | torch {info['torch']} | original val accuracy {base:.4f}, sliced cg=4 {sliced:.4f}")
    print(tabulate(rows, headers=("fine-tune (torchrun, 2 ranks, 4 epochs)", "steps", "lr", "val accuracy", "original - it")))
    print(f"target: defaults within 2 points of the original: {'met' if target else 'not met'}")
    write_json("finetune_defaults.json", {**info, "original_val_accuracy": base, "sliced_val_accuracy": sliced,
                                          "runs": runs, "target_met": target})
    return 0


if __name__ == "__main__":
    sys.exit(main())
