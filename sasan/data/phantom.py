"""Embedded default data set: a synthetic 3-D cardiac phantom in an MR-like and a CT-like domain.

Model (details in docs/phantom.md): each subject is an analytic thorax (body ellipse with
subcutaneous fat, chest-wall muscle, ribs, sternum, spine, lungs, liver dome, descending
aorta, trachea) and heart (truncated-ellipsoid LV cavity inside a myocardial shell, RV
crescent, LA, RA, ascending aorta and pulmonary trunk as tubes, epicardial fat) with random
size, position, orientation and a smooth random deformation (phantom_shapes.py). Each tissue
then gets a modality-specific intensity:

* CT: contrast-enhanced Hounsfield units (air -1000, lung ~-830, fat ~-95, muscle ~45,
  myocardium ~90, left-heart blood ~330, bone 220-900), scanner blur and correlated noise;
  0.7-0.8 mm in-plane, 1.0-1.25 mm slices, FOV centred on the heart. Saved as int16.
* MR, one of two contrasts (``mr_contrast``):
  - ``bssfp`` (default): bright-blood balanced SSFP, the whole-heart MR of MM-WHS; signal
    follows T2/T1, so blood is bright (but below fat), myocardium and skeletal muscle dark
    grey, liver grey, lung and cortical bone dark.
  - ``black_blood``: turbo spin echo with flow void (blood dark, myocardium brighter than
    skeletal muscle): blood/myocardium contrast inverted against CT, a harder gap.
  Both get a smooth multiplicative bias field with a surface-coil fall-off and Rician noise;
  1.25-1.5 mm in-plane, 2 mm slices, larger FOV. Saved as float32.

Fat flips from the darkest soft tissue (CT) to the brightest (MR) and bone from brightest to
darkest, on top of different noise, bias, resolution and field of view: a segmenter trained
on one domain transfers poorly, as between real MR and CT. Subjects are unpaired (each domain
draws its own), and every case is deterministic from (seed, domain, case index, contrast),
independent of how many cases are asked for. :func:`generate_paired_phantom` writes the
paired variant instead: one anatomy per case imaged in both modalities on one grid.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from sasan.atomic import atomic_dir
from sasan.data import layout
from sasan.data.phantom_shapes import CARDIAC_LABELS, TISSUES, Grid, rasterise, sample_subject, smooth_field
from sasan.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PHANTOM_DOMAINS: tuple[str, ...] = ("mr", "ct")
# Stream key of the paired subjects (the unpaired ones use their domain's index in
# PHANTOM_DOMAINS): a paired case is never one of the unpaired subjects.
PAIRED_STREAM = 100
PAIRED_GRID = "ct"                      # protocol whose grid both paired modalities share
PAIRED_FILES = frozenset({"ct.nii.gz", "mr.nii.gz", "label.nii.gz"})

# Tissue appearance: (mean, between-subject SD). CT in HU; MR in arbitrary units.
CT_HU: dict[str, tuple[float, float]] = {
    "air": (-1000, 0), "lung": (-830, 30), "fat": (-95, 10), "muscle": (45, 8),
    "myocardium": (90, 20), "blood": (330, 45), "blood_right": (230, 50), "marrow": (220, 40),
    "cortical_bone": (900, 120), "liver": (80, 15), "csf": (10, 5), "disc": (75, 10),
}
# bSSFP: relative T2/T1-weighted signal at 1.5 T (blood T2/T1 ~ 250/1550 ms, myocardium
# ~ 45/1000, fat ~ 80/260).
MR_BSSFP: dict[str, tuple[float, float]] = {
    "air": (0, 0), "lung": (30, 10), "fat": (850, 70), "muscle": (170, 25),
    "myocardium": (210, 30), "blood": (640, 60), "blood_right": (600, 60), "marrow": (560, 60),
    "cortical_bone": (25, 8), "liver": (240, 30), "csf": (900, 70), "disc": (430, 50),
}
MR_BLACK_BLOOD: dict[str, tuple[float, float]] = {
    "air": (0, 0), "lung": (35, 10), "fat": (900, 70), "muscle": (300, 30),
    "myocardium": (420, 40), "blood": (45, 20), "blood_right": (45, 20), "marrow": (620, 60),
    "cortical_bone": (25, 8), "liver": (280, 30), "csf": (780, 60), "disc": (480, 50),
}
MR_CONTRASTS: dict[str, dict[str, tuple[float, float]]] = {"bssfp": MR_BSSFP, "black_blood": MR_BLACK_BLOOD}


@dataclass(frozen=True)
class Protocol:
    """Acquisition of one domain: grid size (voxels at ``size`` = 128) and spacing ranges (mm)."""

    modality: str
    inplane: int
    slices: int
    inplane_mm: tuple[float, float]
    slice_mm: tuple[float, float]


PROTOCOLS: dict[str, Protocol] = {
    "mr": Protocol("MR", 128, 64, (1.25, 1.5), (2.0, 2.0)),
    "ct": Protocol("CT", 176, 96, (0.7, 0.8), (1.0, 1.25)),
}


def _grid(protocol: Protocol, size: int, center: np.ndarray, rng: np.random.Generator) -> Grid:
    factor = size / 128.0
    n_xy, n_z = max(int(round(protocol.inplane * factor)), 8), max(int(round(protocol.slices * factor)), 8)
    # Fewer voxels keep the field of view: spacing grows as the size knob shrinks.
    d_xy = rng.uniform(*protocol.inplane_mm) / factor
    d_z = rng.uniform(*protocol.slice_mm) / factor
    shape = (n_xy, n_xy, n_z)
    spacing = (d_xy, d_xy, d_z)
    origin = tuple(float(center[i] - spacing[i] * (shape[i] - 1) / 2) for i in range(3))
    return Grid(shape, spacing, origin)


def _tissue_values(table: dict[str, tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    return np.array([table[name][0] + table[name][1] * rng.normal() for name in TISSUES], np.float32)


def _check_contrast(mr_contrast: str) -> None:
    if mr_contrast not in MR_CONTRASTS:
        raise ConfigError(f"unknown MR contrast {mr_contrast!r}; choose from {sorted(MR_CONTRASTS)}")


def render_ct(tissue: np.ndarray, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Tissue map -> CT volume in HU (int16): blur, texture and correlated noise."""
    values = _tissue_values(CT_HU, rng)
    values[TISSUES.index("blood_right")] = max(values[TISSUES.index("blood_right")], 120.0)
    img = values[tissue]
    img += smooth_field(rng, grid, wavelength_mm=15.0) * np.float32(12.0)  # parenchymal texture
    sigma_vox = tuple(0.6 * min(grid.spacing) / s for s in grid.spacing)
    img = gaussian_filter(img, sigma_vox)
    noise = gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), 0.6)
    img += noise * np.float32(rng.uniform(12.0, 30.0) / max(float(noise.std()), 1e-6))
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def render_mr(tissue: np.ndarray, grid: Grid, rng: np.random.Generator, contrast: str = "bssfp") -> np.ndarray:
    """Tissue map -> MR magnitude volume (float32) in ``contrast`` (a key of MR_CONTRASTS):
    blur, bias field, Rician noise."""
    values = _tissue_values(MR_CONTRASTS[contrast], rng)
    img = values[tissue]
    img *= 1.0 + np.float32(0.06) * smooth_field(rng, grid, wavelength_mm=20.0)
    sigma_vox = tuple(0.5 * min(grid.spacing) / s for s in grid.spacing)
    img = gaussian_filter(img, sigma_vox)
    _, y, _ = grid.axes()
    coil = 1.0 + np.float32(rng.uniform(0.2, 0.5)) * (y - y.min()) / np.float32(np.ptp(y))  # anterior coil
    bias = np.exp(np.float32(rng.uniform(0.1, 0.25)) * smooth_field(rng, grid, wavelength_mm=150.0)) * coil
    img *= bias
    sigma = np.float32(rng.uniform(12.0, 30.0))
    real = img + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32, copy=False)


def phantom_anatomy(domain: str, index: int, seed: int = 0, size: int = 128):
    """The anatomy of one subject of ``domain`` before imaging: (tissue map uint8 indexing
    ``TISSUES``, label uint8, grid, the case's random stream, positioned where rendering
    continues). :func:`phantom_case` renders it; diagnostics read the tissue map."""
    if domain not in PROTOCOLS:
        raise ConfigError(f"unknown phantom domain {domain!r}; choose from {sorted(PROTOCOLS)}")
    rng = np.random.default_rng([seed, PHANTOM_DOMAINS.index(domain), index])
    tissue, label, grid = _anatomy(rng, PROTOCOLS[domain], size)
    return tissue, label, grid, rng


def _anatomy(rng: np.random.Generator, protocol: Protocol, size: int):
    """Draw a subject from ``rng`` and rasterise it on a ``protocol`` grid around its heart:
    (tissue map uint8, label uint8, grid)."""
    subject = sample_subject(rng)
    # Volume centred just above the LV centre, with a random offset (position variation).
    center = np.asarray(subject.heart_center) + np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), 14 + rng.uniform(-6, 6)])
    grid = _grid(protocol, size, center, rng)
    tissue, label = rasterise(subject, grid, rng)
    return tissue, label, grid


def phantom_case(domain: str, index: int, seed: int = 0, size: int = 128, mr_contrast: str = "bssfp"):
    """One subject of ``domain``: (image, label uint8, affine 4x4 RAS mm).

    Deterministic from (seed, domain, index); the MR contrast changes intensities only."""
    _check_contrast(mr_contrast)
    tissue, label, grid, rng = phantom_anatomy(domain, index, seed, size)
    image = render_ct(tissue, grid, rng) if domain == "ct" else render_mr(tissue, grid, rng, mr_contrast)
    return image, label, grid.affine


def _check_args(cases: int, seed: int, size: int, mr_contrast: str) -> None:
    if cases < 1:
        raise ConfigError(f"cases must be >= 1, got {cases}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    _check_contrast(mr_contrast)
    if size < 16:
        raise ConfigError(f"size must be >= 16, got {size}")


def generate_phantom(out_dir: str | Path, cases: int = 10, seed: int = 0,
                     domains: tuple[str, ...] = ("mr", "ct"), *, size: int = 128,
                     mr_contrast: str = "bssfp") -> dict:
    """Write a canonical-layout phantom data set (all cases in imagesTr/labelsTr) to ``out_dir``.

    ``size`` scales the voxel counts (128 = MR 128x128x64, CT 176x176x96) at a fixed field
    of view; ``mr_contrast`` picks the MR appearance (MR_CONTRASTS). Written atomically: on
    failure ``out_dir`` is left as it was."""
    _check_args(cases, seed, size, mr_contrast)
    bad = [d for d in domains if d not in PROTOCOLS]
    if bad or len(set(domains)) != len(domains) or not domains:
        raise ConfigError(f"phantom domains must be distinct values of {sorted(PROTOCOLS)}, got {list(domains)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not layout.domains(out_dir))):
        raise DataError("output exists and is not a canonical data set; refusing to replace it", out_dir)
    start = time.perf_counter()
    summary = {"dataset": "phantom", "seed": seed, "cases": cases, "size": size, "mr_contrast": mr_contrast,
               "domains": {}}
    with atomic_dir(out_dir) as tmp:
        for domain in domains:
            modality = PROTOCOLS[domain].modality
            shapes = []
            for i in tqdm(range(cases), desc=f"phantom {domain}", unit="vol", leave=False):
                image, label, affine = phantom_case(domain, i, seed=seed, size=size, mr_contrast=mr_contrast)
                case_id = f"{domain}_{i + 1:03d}"
                layout.save_nifti(layout.image_path(tmp, domain, case_id, "train"), image, affine)
                layout.save_nifti(layout.label_path(tmp, domain, case_id, "train"), label, affine)
                shapes.append(list(image.shape))
            layout.write_dataset_json(tmp / domain, layout.DatasetInfo(
                name=f"phantom_{domain}", modality=modality, labels=dict(CARDIAC_LABELS), num_training=cases))
            summary["domains"][domain] = {"modality": modality, "cases": cases, "shapes": shapes}
            log.info("phantom %s: %d volumes", domain, cases)
    summary["out_dir"] = str(out_dir)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def paired_phantom_case(index: int, seed: int = 0, size: int = 128, mr_contrast: str = "bssfp"):
    """One paired subject: (ct int16 HU, mr float32 a.u., label uint8, affine 4x4 RAS mm), all
    three of one shape on one grid (the CT protocol's, see :func:`generate_paired_phantom`).

    Streams: ``SeedSequence([seed, PAIRED_STREAM, index])`` spawns three, for the anatomy, the
    CT rendering and the MR rendering, so each modality has its own noise and bias, the case
    does not depend on how many are generated, and the MR contrast changes intensities only."""
    _check_contrast(mr_contrast)
    anatomy_ss, ct_ss, mr_ss = np.random.SeedSequence([seed, PAIRED_STREAM, index]).spawn(3)
    tissue, label, grid = _anatomy(np.random.default_rng(anatomy_ss), PROTOCOLS[PAIRED_GRID], size)
    ct = render_ct(tissue, grid, np.random.default_rng(ct_ss))
    mr = render_mr(tissue, grid, np.random.default_rng(mr_ss), mr_contrast)
    return ct, mr, label, grid.affine


def _is_paired_phantom(path: Path) -> bool:
    entries = [e for e in path.iterdir() if e.name != layout.PAIRED_LABEL_NAMES]
    return bool(entries) and all(e.is_dir() and {f.name for f in e.iterdir()} == PAIRED_FILES for e in entries)


def generate_paired_phantom(out_dir: str | Path, cases: int = 10, seed: int = 0, *, size: int = 128,
                            mr_contrast: str = "bssfp") -> dict:
    """Write a paired (RIRE-style) phantom to ``out_dir``: per case ``pair_NNN/`` holds
    ``ct.nii.gz`` (int16, HU), ``mr.nii.gz`` (float32, a.u., ``mr_contrast``) and the shared
    ``label.nii.gz`` (uint8, 0 background, 1 MYO, 2 LA, 3 LV, 4 AA) of ONE subject; the
    label names in ``labels.json`` at the top.

    Grid: all three lie on the CT protocol's grid (at ``size`` = 128: 176 x 176 x 96 voxels of
    0.7-0.8 mm in-plane and 1.0-1.25 mm slices, ~130 mm field of view on the heart), with one
    affine: perfectly co-registered, as RIRE pairs are after registration; the MR is thus
    rendered at CT resolution. ``size`` scales the voxel counts at a fixed field of view.
    Every case is deterministic from (seed, case index, contrast) and independent of
    ``cases``; its anatomy differs from the unpaired subjects' (:func:`paired_phantom_case`).
    Read by ``sasan ingest OUT RAW --layout paired`` (``experiment.mode: paired``). Written
    atomically; an existing non-empty ``out_dir`` is replaced only if it is a paired phantom."""
    _check_args(cases, seed, size, mr_contrast)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not _is_paired_phantom(out_dir))):
        raise DataError("output exists and is not a paired phantom; refusing to replace it", out_dir)
    start = time.perf_counter()
    shapes = []
    with atomic_dir(out_dir) as tmp:
        for i in tqdm(range(cases), desc="paired phantom", unit="case", leave=False):
            ct, mr, label, affine = paired_phantom_case(i, seed=seed, size=size, mr_contrast=mr_contrast)
            case_dir = tmp / f"pair_{i + 1:03d}"
            layout.save_nifti(case_dir / "ct.nii.gz", ct, affine)
            layout.save_nifti(case_dir / "mr.nii.gz", mr, affine)
            layout.save_nifti(case_dir / "label.nii.gz", label, affine)
            shapes.append(list(ct.shape))
        (tmp / layout.PAIRED_LABEL_NAMES).write_text(json.dumps(dict(CARDIAC_LABELS), indent=2) + "\n")
        log.info("paired phantom: %d cases", cases)
    return {"dataset": "phantom_paired", "layout": "paired", "grid": PAIRED_GRID, "seed": seed, "cases": cases,
            "size": size, "mr_contrast": mr_contrast,
            "domains": {d: {"modality": PROTOCOLS[d].modality, "cases": cases, "shapes": shapes} for d in ("ct", "mr")},
            "out_dir": str(out_dir), "seconds": round(time.perf_counter() - start, 2)}
