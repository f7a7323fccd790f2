"""In-memory slice data sets with the same interface as :class:`sasan.data.dataset.SliceDataset`
(``len``, ``[i] -> {"image", "label"?}``, ``set_epoch``), for fake-source slices and tests,
and a concatenation of several such sources."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from sasan.config import AugmentConfig
from sasan.data.augment import augment_item


class ArraySliceDataset:
    """images (N, S, H, W) float in [-1, 1]; labels (N, H, W) int or None. ``augment``: the
    seeded augmentation of :class:`sasan.data.dataset.SliceDataset` (None: items as stored)."""

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray] = None,
                 augment: Optional[AugmentConfig] = None, seed: int = 0):
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.augment, self.seed, self.epoch = augment, int(seed), 0

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = torch.from_numpy(np.asarray(self.images[index], dtype=np.float32))
        label = (torch.from_numpy(np.asarray(self.labels[index], dtype=np.int64))
                 if self.labels is not None else None)
        if self.augment is not None:
            image, label = augment_item(image, label, self.augment, self.seed, self.epoch, index)
        item = {"image": image, "index": index}
        if label is not None:
            item["label"] = label
        return item


class ConcatSlices:
    def __init__(self, parts: Sequence[Any]):
        self.parts = [p for p in parts if len(p) > 0]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[part][index - int(self.offsets[part])]
