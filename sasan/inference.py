"""Whole-volume inference (METHOD.md 4.5): a target NIfTI in; the translated volume and the
label volume out, on the input's grid with its affine and header.

Every slice j is stacked with (j-1, j+1) (edge replication), translated to the source
modality with G_s(stack, A_t(stack)), segmented by the U-Net and argmax-ed, in batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import torch

from sasan.atomic import atomic_path
from sasan.bundle import ModelBundle
from sasan.data.config import PreprocessConfig
from sasan.data.preprocess import PreparedVolume, prepare_volume
from sasan.train.device import Runtime, resolve_runtime

log = logging.getLogger(__name__)


@dataclass
class VolumeResult:
    labels: nib.Nifti1Image                  # uint8 label volume on the input grid
    translated: Optional[nib.Nifti1Image]    # source-modality rendering in [-1, 1] (None: no translation)
    prepared: PreparedVolume


@torch.no_grad()
def predict_stacks(bundle: ModelBundle, stacks: np.ndarray, runtime: Runtime,
                   batch_size: int = 16) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(Z, S, H, W) float32 in [-1, 1] -> labels (Z, H, W) uint8 and the centre slice of the
    translation (Z, H, W) float32 (None when the bundle does not translate)."""
    labels, translated = [], []
    centre = stacks.shape[1] // 2
    for start in range(0, len(stacks), batch_size):
        x = runtime.batch(torch.from_numpy(np.ascontiguousarray(stacks[start:start + batch_size])))
        with runtime.autocast():
            if bundle.translates:
                maps = bundle.att_t(x)[0] if bundle.att_t is not None else None
                x = bundle.syn_s(x, maps)
                translated.append(x[:, centre].float().cpu().numpy())
            logits = bundle.segmenter(x)
        labels.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(labels), (np.concatenate(translated) if translated else None)


def infer_volume(bundle: ModelBundle, image_path: str | Path, preprocess: PreprocessConfig, modality: str,
                 runtime: Optional[Runtime] = None, batch_size: int = 16) -> VolumeResult:
    runtime = runtime or resolve_runtime("cpu")
    prepared = prepare_volume(image_path, preprocess, modality)
    labels, translated = predict_stacks(bundle, prepared.stacks, runtime, batch_size)
    return VolumeResult(prepared.restore(labels),
                        prepared.restore_intensity(translated) if translated is not None else None,
                        prepared)


def save_nifti(img: nib.Nifti1Image, path: str | Path) -> None:
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
