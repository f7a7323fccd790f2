"""Batches prepared ahead by worker processes, in step order.

The batch of a step is a pure function of the step (see :mod:`sasan.train.sampling`), so
workers can compute them in any process without changing what the loop sees: the result is
identical with 0 or N workers, and a resumed loop simply restarts the stream at its step."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset


class _StepBatches(Dataset):
    def __init__(self, batch_at: Callable[[int], Any], start: int, stop: int):
        self.batch_at, self.start, self.stop = batch_at, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Any:
        return self.batch_at(self.start + i)


class Prefetcher:
    """``get(step)`` returns ``batch_at(step)``; with workers, later steps are prepared ahead."""

    def __init__(self, batch_at: Callable[[int], Any], total_steps: int, num_workers: int = 0):
        self.batch_at, self.total, self.num_workers = batch_at, total_steps, num_workers
        self._iter: Optional[Iterator[Any]] = None
        self._next = -1

    def get(self, step: int) -> Any:
        if self.num_workers == 0:
            return self.batch_at(step)
        if self._iter is None or step != self._next:
            # its own generator: a loader's iterator draws the workers' base seed from it, which
            # from the global RNG would make a resumed run (a new iterator) differ from an
            # uninterrupted one in everything seeded after (the U-Net's initial weights)
            loader = DataLoader(_StepBatches(self.batch_at, step, self.total), batch_size=None, shuffle=False,
                                num_workers=self.num_workers, prefetch_factor=2,
                                pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0))
            self._iter = iter(loader)
        self._next = step + 1
        return next(self._iter)
