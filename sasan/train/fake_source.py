"""Fake-source augmentation (METHOD.md 4.3): translate target training slices into the
source modality with G_s(t, A_t(t)); pseudo-labels are the argmax of A_t's segmentation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sasan.models.networks import SASANNetworks
from sasan.train.device import Runtime


@torch.no_grad()
def translate_to_source(nets: SASANNetworks, target: Any, runtime: Runtime, batch_size: int = 16,
                        progress: bool = True, label: str = "fake-source") -> tuple[np.ndarray, np.ndarray | None]:
    """All slices of ``target`` (no augmentation) -> fake-source images (N, S, H, W) float16 and
    pseudo-labels (N, H, W) uint8 (None for the CycleGAN ablation, which has no A_t)."""
    nets.eval()
    target.set_epoch(0)
    images, labels = [], []
    for start in tqdm(range(0, len(target), batch_size), desc=label, disable=not progress):
        t = torch.stack([target[i]["image"] for i in range(start, min(start + batch_size, len(target)))])
        t = runtime.batch(t)
        with runtime.autocast():
            if nets.att_t is not None:
                att_t, seg_t = nets.att_t(t)
                fake_s = nets.syn_s(t, att_t)
                labels.append(seg_t.argmax(1).to(torch.uint8).cpu().numpy())
            else:
                fake_s = nets.syn_s(t, None)
        images.append(fake_s.float().cpu().numpy().astype(np.float16))
    nets.train()
    return np.concatenate(images), (np.concatenate(labels) if labels else None)
