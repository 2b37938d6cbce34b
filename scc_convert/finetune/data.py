"""Training and validation data: batches, sharding across ranks, loader generators."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from .distributed import _Dist


class _ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``range(n)``: every sample exactly once over all
    ranks (unlike ``DistributedSampler``, which pads), so evaluation sums are exact."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _is_sharded(loader: DataLoader) -> bool:
    samplers = (loader.sampler, getattr(loader.batch_sampler, "sampler", None))
    return any(isinstance(s, (DistributedSampler, _ShardSampler)) for s in samplers)


def _reshard(loader: DataLoader, sampler: Sampler[int]) -> DataLoader:
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs)


def _prepare_data(data: Any, name: str, *, train: bool, batch_size: int, ctx: _Dist, seed: int) -> Iterable:
    """Turn ``train_data`` / ``val_data`` into an iterable of batches, sharded across ranks."""
    distributed = ctx.active and ctx.world_size > 1
    if isinstance(data, Tensor):
        raise TypeError(
            f"finetune: {name} is a single Tensor; pass an iterable of batches, e.g. [x] or "
            f"DataLoader(TensorDataset(x, y), batch_size=64)"
        )
    if isinstance(data, DataLoader):
        if not distributed or _is_sharded(data):
            return data
        plain = (
            not isinstance(data.dataset, IterableDataset)
            and data.batch_size is not None
            and type(data.batch_sampler) is BatchSampler
            and type(data.sampler) in (RandomSampler, SequentialSampler)
        )
        if plain:
            if train:
                shuffle = isinstance(data.sampler, RandomSampler)
                sampler: Sampler[int] = DistributedSampler(
                    data.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed
                )
            else:
                sampler = _ShardSampler(len(data.dataset), ctx.rank, ctx.world_size)
            return _reshard(data, sampler)
        warnings.warn(
            f"finetune: {name} is a DataLoader with a custom sampler; it is not sharded, so every "
            f"rank reads all of it (use a DistributedSampler, or pass the Dataset)",
            stacklevel=3,
        )
        return data
    if isinstance(data, IterableDataset):
        if distributed:
            warnings.warn(
                f"finetune: {name} is an IterableDataset, which cannot be sharded by index; every "
                f"rank must yield its own shard, and the same number of batches",
                stacklevel=3,
            )
        return DataLoader(data, batch_size=batch_size)
    if isinstance(data, Dataset):
        n = len(data)  # type: ignore[arg-type]
        if train:
            sampler = DistributedSampler(data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
            drop_last = len(sampler) >= batch_size  # no ragged last batch (BatchNorm) when avoidable
            return DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
        return DataLoader(data, batch_size=batch_size, sampler=_ShardSampler(n, ctx.rank, ctx.world_size))
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(
            f"finetune: {name} must be a DataLoader, a Dataset or an iterable of batches; got "
            f"{type(data).__name__}"
        ) from None
    if iterator is data and train:
        raise TypeError(
            f"finetune: {name} is an iterator ({type(data).__name__}), which can be read only once; "
            f"pass a re-iterable such as a list of batches or a DataLoader"
        )
    if distributed:
        warnings.warn(
            f"finetune: {name} is a plain iterable and is not sharded: every rank must yield its own "
            f"shard and the same number of batches (or pass a Dataset / DataLoader)",
            stacklevel=3,
        )
    return data


def _length(data: Iterable) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def _set_epoch(data: Iterable, epoch: int) -> None:
    seen: set[int] = set()
    candidates = [data, getattr(data, "sampler", None), getattr(data, "batch_sampler", None)]
    candidates.append(getattr(candidates[2], "sampler", None))
    for obj in candidates:
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


def _data_generators(data: Iterable) -> list[torch.Generator]:
    """The private generators a loader shuffles with (their state is part of exact resume)."""
    out: list[torch.Generator] = []
    for obj in (data, getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in out):
            out.append(gen)
    return out


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        if len(batch) == 1:
            return batch[0], None
        if not isinstance(batch[1], Tensor):
            raise TypeError(f"finetune: labels must be a Tensor, got {type(batch[1]).__name__}")
        return batch[0], batch[1]
    raise TypeError(
        f"finetune: a batch must be a Tensor (inputs only) or a tuple/list (inputs, labels, ...); "
        f"got {type(batch).__name__}"
    )
