"""Whole-volume inference (METHOD.md 4.5): a target NIfTI in; the translated volume and the
label volume out, on the input's grid with its affine and header.

Every slice j is stacked with (j-1, j+1) (edge replication), translated to the source
modality with G_s(stack, A_t(stack)), segmented by the U-Net and argmax-ed, in batches
(:func:`sasan.bundle.predict_stacks`, which the served MLflow model runs too). A bundle
without a U-Net (paired mode) gives the translation only; one without S_s the labels only."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np

from sasan.atomic import atomic_path
from sasan.bundle import ModelBundle, predict_stacks
from sasan.data.config import PreprocessConfig
from sasan.data.preprocess import PreparedVolume, prepare_volume
from sasan.errors import ConfigError, SasanError
from sasan.train.device import Runtime, resolve_runtime


NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class VolumeResult:
    labels: Optional[nib.Nifti1Image]        # uint8 label volume on the input grid (None: no segmenter)
    translated: Optional[nib.Nifti1Image]    # source-modality rendering in [-1, 1] (None: no translation)
    prepared: PreparedVolume


def infer_volume(bundle: ModelBundle, image_path: str | Path, preprocess: PreprocessConfig, modality: str,
                 runtime: Optional[Runtime] = None, batch_size: int = 16, *,
                 domain: Optional[str] = None) -> VolumeResult:
    """Prepare the volume as ``sasan preprocess`` does and run the bundle on it.

    The intensity bounds are those preprocessing used for the domain's volumes:
    ``bounds_for(preprocess, modality, domain)``, by modality first, then by domain name
    (``domain=None``: by modality only)."""
    runtime = runtime or resolve_runtime("cpu")
    prepared = prepare_volume(image_path, preprocess, modality, domain)
    labels, translated = predict_stacks(bundle, prepared.stacks, runtime, batch_size)
    return VolumeResult(prepared.restore(labels) if labels is not None else None,
                        prepared.restore_intensity(translated) if translated is not None else None,
                        prepared)


def nifti_suffix(path: str | Path) -> str:
    """``.nii.gz`` or ``.nii``: the format nibabel writes for ``path`` (gzip or not)."""
    name = Path(path).name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise ConfigError("output name must end in .nii or .nii.gz", path)


def check_output_path(path: str | Path) -> Path:
    """Refuse, before any work, an output path that cannot take a NIfTI file: a name
    without .nii/.nii.gz, an existing directory, a parent that is not a directory."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("is a directory, expected a NIfTI file name", path)
    nifti_suffix(path)
    return check_creatable(path)


def check_creatable(path: str | Path, kind: str = "file") -> Path:
    """Refuse, before any work, a path that cannot be created as a ``kind`` (file or
    directory): an existing one of the other kind, or an existing ancestor that is not a
    directory."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ConfigError("is a directory, expected a file name", path)
    if kind == "directory" and path.exists() and not path.is_dir():
        raise ConfigError("exists and is not a directory", path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot create the {kind}: {parent} is not a directory", path)
            break
    return path


def save_nifti(img: nib.Nifti1Image, path: str | Path) -> None:
    """Write ``img`` atomically; gzip-compressed when ``path`` ends in .nii.gz, not for .nii."""
    save_niftis([(img, path)])


def save_niftis(items: Sequence[tuple[nib.Nifti1Image, str | Path]]) -> None:
    """Write every image to a temporary file next to its target, then rename them all: when
    any write fails, no target is touched (the temporaries are removed). A bad target is a
    :class:`ConfigError`, a write error a :class:`SasanError`, each one line naming the file."""
    paths = [check_output_path(path) for _, path in items]
    tmp_of: dict[str, Path] = {}
    current: Optional[Path] = None
    try:
        with contextlib.ExitStack() as stack:
            tmps = []
            for path in paths:
                current = path
                tmps.append(stack.enter_context(atomic_path(path, suffix=nifti_suffix(path))))
                tmp_of[str(tmps[-1])] = path
            for (img, _), path, tmp in zip(items, paths, tmps):
                current = path
                nib.save(img, tmp)
            current = None   # the fsyncs and renames run as the stack unwinds, innermost first
    except OSError as err:
        where = current or tmp_of.get(str(getattr(err, "filename", None))) or getattr(err, "filename2", None)
        raise SasanError(f"cannot write: {err.strerror or err}", where or paths[-1]) from None
