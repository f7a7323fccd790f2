"""Training slices from a shard (memory-mapped), with seeded augmentation.

Each item's transform is drawn from a generator seeded with (seed, epoch, index), so the
same item in the same epoch is augmented identically whatever the worker, batch or order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from sasan.config import AugmentConfig
from sasan.data.augment import augment_item
from sasan.data.shards import Shard, open_shard


class SliceDataset(Dataset):
    """Items ``{"image": float32 (S, H, W), "label": int64 (H, W), "index": int}``.

    ``label`` is present when ``with_labels`` and the shard has labels. Arrays are opened
    lazily in each process (memory maps are not pickled to DataLoader workers)."""

    def __init__(self, shard_dir: str | Path, augment: Optional[AugmentConfig] = None, with_labels: bool = True,
                 seed: int = 0):
        self.shard_dir = Path(shard_dir)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        shard = open_shard(self.shard_dir)  # validates the shard now, in the parent process
        self.index: dict[str, Any] = shard.index
        self.has_labels = with_labels and shard.labels is not None
        self._shard: Optional[Shard] = shard

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (call before iterating a new epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.index["shape"][0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"slice {i} out of range for {len(self)} slices in {self.shard_dir}")
        shard = self._arrays()
        image = torch.from_numpy(np.array(shard.images[i], dtype=np.float32))
        label = torch.from_numpy(shard.labels[i].astype(np.int64)) if self.has_labels else None
        if self.augment is not None:
            image, label = augment_item(image, label, self.augment, self.seed, self.epoch, i)
        item: dict[str, Any] = {"image": image, "index": i}
        if label is not None:
            item["label"] = label
        return item

    def _arrays(self) -> Shard:
        if self._shard is None:
            self._shard = open_shard(self.shard_dir)
        return self._shard

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shard"] = None
        return state
