"""Stateless, seeded sampling: the batch of any step is a pure function of (seed, step).

The index stream of a dataset of n items is the concatenation of seeded permutations of
range(n), one per pass. Position p of the stream is item perm_{p // n}[p % n]. Because
nothing depends on history, a resumed run draws exactly the batches an uninterrupted run
would; with ``world_size`` > 1 each rank takes its own slice of the global batch (the
data-parallel split)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Protocol

import torch


class SliceSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    def set_epoch(self, epoch: int) -> None: ...


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


class StreamSampler:
    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("cannot sample from an empty data set")
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.rank, self.world_size = rank, world_size

    def positions(self, step: int) -> range:
        start = (step * self.world_size + self.rank) * self.batch_size
        return range(start, start + self.batch_size)

    def draw(self, step: int) -> list[tuple[int, int]]:
        """(pass, item index) pairs of this rank's batch at ``step``."""
        return [(p // self.n, _permutation(self.n, self.seed, p // self.n)[p % self.n])
                for p in self.positions(step)]


def collate(dataset: SliceSource, draws: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Fetch and stack items; the pass number keys each item's augmentation."""
    items = []
    for epoch, index in draws:
        dataset.set_epoch(epoch)
        items.append(dataset[index])
    return {key: torch.stack([it[key] for it in items]) for key in ("image", "label") if key in items[0]}
