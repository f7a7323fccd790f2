"""Second embedded data set: unpaired T1 and T2 brain MR subjects with CSF/GM/WM labels
(the paper's T2 -> T1 setting), made from the MNI ICBM152 templates (brain_templates.py).

Each subject (details and numbers in docs/brain.md) is the template of its own modality seen
through a random spatial transform, pulled back from a fixed RAS output grid:

    p(x) = c + S^-1 R^T (x - c - t) + d(x)

(x output world point in mm, c the template's brain centre, R a rotation of a few degrees,
S = diag of a 0.9-1.1 scale, t a translation, d a smooth random displacement). The T1 or T2
template, the brain mask and the GM/WM probability maps are sampled at p(x) (trilinear).
Labels: 0 background (outside the mask), 1 CSF, 2 GM, 3 WM = 1 + argmax(p_csf, p_gm, p_wm)
inside the mask, with p_csf = max(0, 1 - p_gm - p_wm). Appearance per subject: tissue-wise
contrast jitter, a gamma curve, a global gain, a smooth multiplicative bias field, Rician noise,
then skull stripping (zero outside the mask, as in BraTS).

T1 and T2 subjects are unpaired: every case draws its own transform and appearance from the
stream (seed, domain, case index), so no T1 subject shares a deformation with a T2 subject,
and a case never depends on how many cases are asked for.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates
from tqdm import tqdm

from sasan.atomic import atomic_dir
from sasan.data import layout
from sasan.data.brain_templates import BrainTemplates, Volume1mm, load_templates
from sasan.data.phantom_shapes import Grid, smooth_field
from sasan.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BRAIN_DOMAINS: tuple[str, ...] = ("t2", "t1")  # index = the domain's place in each case's seed
MODALITIES: dict[str, str] = {"t2": "T2", "t1": "T1"}
BRAIN_LABELS: dict[str, int] = {"background": 0, "csf": 1, "gm": 2, "wm": 3}
SPACING_RANGE_MM = (1.0, 6.0)

# Spatial variation (per subject).
ROTATION_DEG = 6.0             # each Euler angle uniform in +-this
SCALE = (0.9, 1.1)             # isotropic brain size factor
ANISOTROPY = 0.03              # extra per-axis scale, uniform in +-this
TRANSLATION_MM = 5.0           # per axis, uniform in +-this
WARP_RMS_MM = (1.0, 2.5)       # smooth displacement, RMS per axis
WARP_WAVELENGTH_MM = 50.0      # shortest wavelength of the displacement
GRID_MARGIN_MM = 18.0          # room around the largest brain for rotation, shift and warp

# Appearance (per subject).
TISSUE_JITTER = 0.04           # SD of the relative contrast change of CSF, GM, WM each
GAMMA = (0.85, 1.15)           # intensity curve (I / I_ref) ** gamma
GAIN = (5.0, 15.0)             # scanner units per template unit
BIAS_AMPLITUDE = (0.05, 0.2)   # bias = exp(a * unit-RMS smooth field)
BIAS_WAVELENGTH_MM = 120.0
NOISE = (0.015, 0.04)          # Rician noise SD relative to the median brain signal


def output_grid(templates: BrainTemplates, spacing_mm: float) -> Grid:
    """The fixed RAS acquisition grid (isotropic ``spacing_mm``) centred on the template brain,
    large enough for the biggest, most rotated and shifted subject."""
    lo, hi = templates.brain_box_mm
    centre = (lo + hi) / 2.0
    half = (hi - lo) / 2.0 * SCALE[1] * (1.0 + ANISOTROPY) + GRID_MARGIN_MM
    shape = tuple(int(np.ceil(2.0 * h / spacing_mm)) + 1 for h in half)
    origin = tuple(float(centre[i] - spacing_mm * (shape[i] - 1) / 2.0) for i in range(3))
    return Grid(shape, (spacing_mm,) * 3, origin)  # type: ignore[arg-type]


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """3x3 rotation R = Rz @ Ry @ Rx for Euler angles (x, y, z) in radians."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles_rad), np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def pull_points(rng: np.random.Generator, grid: Grid, centre: np.ndarray) -> np.ndarray:
    """Template-space points p(x) (3, X, Y, Z) float32, mm, for every output voxel x: the
    inverse of a random affine (rotation, scale, translation) plus a smooth displacement."""
    rotation = rotation_matrix(np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3)))
    scales = rng.uniform(*SCALE) * (1.0 + rng.uniform(-ANISOTROPY, ANISOTROPY, 3))
    shift = rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, 3)
    inverse = (np.diag(1.0 / scales) @ rotation.T).astype(np.float32)
    x, y, z = grid.axes()
    rel = [x - np.float32(centre[0] + shift[0]), y - np.float32(centre[1] + shift[1]),
           z - np.float32(centre[2] + shift[2])]
    warp_rms = np.float32(rng.uniform(*WARP_RMS_MM))
    points = np.empty((3, *grid.shape), np.float32)
    for i in range(3):
        points[i] = (np.float32(centre[i]) + inverse[i, 0] * rel[0] + inverse[i, 1] * rel[1]
                     + inverse[i, 2] * rel[2])
        points[i] += warp_rms * smooth_field(rng, grid, WARP_WAVELENGTH_MM)
    return points


def sample(volume: Volume1mm, points: np.ndarray) -> np.ndarray:
    """Trilinear value of ``volume`` at world points (3, X, Y, Z) mm; 0 outside its grid."""
    w2v = volume.world_to_voxel.astype(np.float32)
    flat = points.reshape(3, -1)
    voxel = w2v[:3, :3] @ flat + w2v[:3, 3:4]
    out = map_coordinates(volume.data, voxel, order=1, mode="constant", cval=0.0, prefilter=False)
    return out.reshape(points.shape[1:]).astype(np.float32, copy=False)


def tissue_probabilities(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """(csf, gm, wm) probabilities (3, X, Y, Z), with p_csf = max(0, 1 - p_gm - p_wm): inside the
    brain mask, what is neither grey nor white matter is cerebrospinal fluid."""
    gm, wm = np.clip(gm, 0.0, 1.0), np.clip(wm, 0.0, 1.0)
    return np.stack([np.clip(1.0 - gm - wm, 0.0, 1.0), gm, wm])


def tissue_labels(probs: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Label map uint8: 0 outside the brain, else 1 + argmax over (csf, gm, wm)."""
    return np.where(inside, 1 + np.argmax(probs, axis=0), 0).astype(np.uint8)


def render(template: np.ndarray, probs: np.ndarray, inside: np.ndarray, grid: Grid,
           rng: np.random.Generator) -> np.ndarray:
    """Warped template intensities -> one subject's skull-stripped MR magnitude (float32):
    tissue contrast jitter, gamma, gain, bias field, Rician noise, zero outside ``inside``."""
    jitter = rng.normal(0.0, TISSUE_JITTER, 3).astype(np.float32)
    img = template * (1.0 + np.tensordot(jitter, probs, axes=1))
    reference = np.float32(np.percentile(img[inside], 99.0)) if inside.any() else np.float32(1.0)
    img = reference * np.power(np.maximum(img, 0.0) / reference, np.float32(rng.uniform(*GAMMA)))
    img *= np.float32(rng.uniform(*GAIN))
    img *= np.exp(np.float32(rng.uniform(*BIAS_AMPLITUDE)) * smooth_field(rng, grid, BIAS_WAVELENGTH_MM))
    level = np.float32(np.median(img[inside])) if inside.any() else np.float32(1.0)
    sigma = np.float32(rng.uniform(*NOISE)) * level
    real = img + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    img = np.sqrt(real * real + imag * imag)
    img[~inside] = 0.0
    return img.astype(np.float32, copy=False)


def check_domain(domain: str) -> str:
    if domain not in BRAIN_DOMAINS:
        raise ConfigError(f"unknown brain domain {domain!r}; choose from {sorted(BRAIN_DOMAINS)}")
    return domain


def check_spacing(spacing_mm: float) -> float:
    lo, hi = SPACING_RANGE_MM
    if not lo <= spacing_mm <= hi:
        raise ConfigError(f"spacing must be in [{lo}, {hi}] mm, got {spacing_mm}")
    return float(spacing_mm)


def brain_case(templates: BrainTemplates, domain: str, index: int, seed: int = 0, spacing_mm: float = 2.0):
    """One subject of ``domain`` ("t1" or "t2"): (image float32, label uint8, affine 4x4 RAS mm).

    Deterministic from (seed, domain, index); image and label share the output grid."""
    check_domain(domain)
    grid = output_grid(templates, check_spacing(spacing_mm))
    lo, hi = templates.brain_box_mm
    rng = np.random.default_rng([seed, BRAIN_DOMAINS.index(domain), index])
    points = pull_points(rng, grid, (lo + hi) / 2.0)
    inside = sample(templates.mask, points) > 0.5
    probs = tissue_probabilities(sample(templates.gm, points), sample(templates.wm, points))
    label = tissue_labels(probs, inside)
    image = render(sample(templates.modality(domain), points), probs, inside, grid, rng)
    return image, label, grid.affine


def _check_args(cases: int, seed: int, domains: tuple[str, ...], spacing_mm: float) -> None:
    if cases < 1:
        raise ConfigError(f"cases must be >= 1, got {cases}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    check_spacing(spacing_mm)
    if not domains or len(set(domains)) != len(domains):
        raise ConfigError(f"brain domains must be distinct values of {sorted(BRAIN_DOMAINS)}, got {list(domains)}")
    for domain in domains:
        check_domain(domain)


def generate_brain(out_dir: str | Path, cases: int = 20, seed: int = 0,
                   domains: tuple[str, ...] = BRAIN_DOMAINS, *, spacing_mm: float = 2.0) -> dict:
    """Write the brain data set (all cases in imagesTr/labelsTr; ``sasan ingest`` splits) to
    ``out_dir`` in the canonical layout, atomically: on failure ``out_dir`` is left as it was."""
    _check_args(cases, seed, domains, spacing_mm)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not layout.domains(out_dir))):
        raise DataError("output exists and is not a canonical data set; refusing to replace it", out_dir)
    start = time.perf_counter()
    templates = load_templates()
    summary: dict = {"dataset": "brain", "seed": seed, "cases": cases, "spacing_mm": spacing_mm, "domains": {}}
    with atomic_dir(out_dir) as tmp:
        for domain in domains:
            shape = None
            for i in tqdm(range(cases), desc=f"brain {domain}", unit="vol", leave=False):
                image, label, affine = brain_case(templates, domain, i, seed=seed, spacing_mm=spacing_mm)
                case_id = f"{domain}_{i + 1:03d}"
                layout.save_nifti(layout.image_path(tmp, domain, case_id, "train"), image, affine)
                layout.save_nifti(layout.label_path(tmp, domain, case_id, "train"), label, affine)
                shape = list(image.shape)
            layout.write_dataset_json(tmp / domain, layout.DatasetInfo(
                name=f"icbm152_{domain}", modality=MODALITIES[domain], labels=dict(BRAIN_LABELS),
                num_training=cases))
            summary["domains"][domain] = {"modality": MODALITIES[domain], "cases": cases, "shape": shape}
            log.info("brain %s: %d volumes of %s voxels", domain, cases, shape)
    summary["out_dir"] = str(out_dir)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary
