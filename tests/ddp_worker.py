"""One rank of the torchrun test in tests/test_finetune.py (CPU, gloo).

Usage: ``python -m torch.distributed.run --nproc_per_node=2 --standalone tests/ddp_worker.py OUT``.
Each rank fine-tunes its own (differently initialised) copy of a tiny SCC model on a Dataset
that records which samples the rank read, then writes ``OUT/rank{R}.pt`` (its final
state_dict) and ``OUT/rank{R}.json`` (history, samples read, and what it measured itself).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from finetune_helpers import scc_net, synthetic  # noqa: E402
from scc_convert.finetune import finetune  # noqa: E402

TRAIN_SAMPLES = 96
BATCH_SIZE = 16
EPOCHS = 3


class RecordingDataset(Dataset):
    """A TensorDataset that remembers the indices it served, in order."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(int(index))
        return self.images[index], self.labels[index]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    model = scc_net(seed=100 + rank)  # different on each rank: DDP must start them from rank 0's
    train = RecordingDataset(*synthetic(TRAIN_SAMPLES, seed=0))
    val_images, val_labels = synthetic(40, seed=1)
    val = DataLoader(TensorDataset(val_images, val_labels), batch_size=8)  # plain loader: resharded
    result = finetune(
        model, train, val_data=val, epochs=EPOCHS, batch_size=BATCH_SIZE, lr=0.2,
        checkpoint_dir=out / "ckpt", progress=False, log_every=1,
    )
    model.eval()
    with torch.no_grad():
        local_accuracy = (model(val_images).argmax(1) == val_labels).float().mean().item()
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    model.train()
    model(val_images).sum().backward()  # a plain module again: no DDP hooks left on it
    unwrapped = all(p.grad is not None for p in model.parameters())
    report = {
        "rank": rank,
        "result_is_model": result.model is model and unwrapped,
        "group_destroyed": not dist.is_initialized(),
        "seen": train.seen,
        "local_val_accuracy": local_accuracy,
        **result.to_dict(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
