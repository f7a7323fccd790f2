"""Whole-volume inference (METHOD.md 4.5): a target NIfTI in; the translated volume and the
label volume out, on the input's grid with its affine and header.

Every slice j is stacked with (j-1, j+1) (edge replication), translated to the source
modality with G_s(stack, A_t(stack)), segmented by the U-Net and argmax-ed, in batches
(:func:`sasan.bundle.predict_stacks`, which the served MLflow model runs too)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from sasan.atomic import atomic_path
from sasan.bundle import ModelBundle, predict_stacks
from sasan.data.config import PreprocessConfig
from sasan.data.preprocess import PreparedVolume, prepare_volume
from sasan.train.device import Runtime, resolve_runtime

log = logging.getLogger(__name__)


@dataclass
class VolumeResult:
    labels: nib.Nifti1Image                  # uint8 label volume on the input grid
    translated: Optional[nib.Nifti1Image]    # source-modality rendering in [-1, 1] (None: no translation)
    prepared: PreparedVolume


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
