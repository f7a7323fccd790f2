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
    translation (Z, H, W) float32 (None when the bundle does not translate).

    Memory formats as in training: the U-Net in channels_last (on CPU too: its batch-16
    forward at 256 px takes about 0.48 s a slice instead of 0.65 s, bench/results/inference.json),
    A_t and S_s in channels_last on CUDA only."""
    labels, translated = [], []
    centre = stacks.shape[1] // 2
    unet_rt = runtime.for_unet()
    segmenter = unet_rt.prepare_module(bundle.segmenter)
    att_t, syn_s = (runtime.prepare_module(m) if m is not None else None for m in (bundle.att_t, bundle.syn_s))
    for start in range(0, len(stacks), batch_size):
        x = runtime.batch(torch.from_numpy(np.ascontiguousarray(stacks[start:start + batch_size])))
        with runtime.autocast():
            if syn_s is not None:
                x = syn_s(x, att_t(x)[0] if att_t is not None else None)
                translated.append(x[:, centre].float().cpu().numpy())
            logits = segmenter(unet_rt.batch(x))
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
