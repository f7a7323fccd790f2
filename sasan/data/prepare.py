"""Volume preparation (METHOD.md section 5): volume -> normalised slice stacks in [-1, 1].

Per volume: reorient to RAS, clamp CT below -1024 HU (padding outside the scanner's field
of view, e.g. -3024, is air), optionally resample to ``target_spacing``, crop to the body
box (intensity threshold, never labels), fit every slice plane into ``image_size``
squared (its physical aspect kept: the longer side in mm fills the canvas, pixels are
square in mm whatever the voxel aspect, padded with -1; or, with ``field_of_view_mm``, at a
fixed physical scale: the canvas spans that many millimetres, larger planes are cropped
around the box centre), clip at the volume's percentiles, z-score, map the
z-scores to [-1, 1] with the modality's fixed bounds, and cut ``slices``-channel stacks
(j-1, j, j+1 with edge replication).

The body threshold is Otsu's on the volume's voxels; when that gives a degenerate body (no
slice kept, or a box of under 1% of the volume: a few hot voxels stretch the histogram)
it is taken again on the voxels clipped at ``clip_percentiles``, with a warning.

Paired mode (:func:`prepare_pair`): the modalities of one subject, on one voxel grid, are cut
with one box (the union of their body boxes) so that their slices coincide pixel by pixel;
each keeps its own threshold and intensity normalisation.
:class:`PreparedVolume` keeps the geometry so that predictions are put back on the original
grid (:meth:`PreparedVolume.restore`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import nibabel as nib
import numpy as np

from sasan.data import slice_geometry as geo
from sasan.data.config import PreprocessConfig
from sasan.data.volume import Volume, affines_match, check_pair, load_volume
from sasan.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_SAMPLE = 2_000_000  # voxels used for percentiles and the body threshold (strided, deterministic)
CT_AIR_HU = -1024.0  # CT voxels below this (padding outside the field of view) are clamped to it
_MIN_BOX_FRACTION = 0.01  # a body box smaller than this fraction of the volume is degenerate


@dataclass(frozen=True)
class Geometry:
    """Where the (Z, H, W) prepared slices sit in the original voxel grid."""

    shape: tuple[int, int, int]  # original array shape
    transform: np.ndarray  # nibabel orientation transform original -> RAS
    ras_shape: tuple[int, int, int]
    grid_shape: tuple[int, int, int]  # after optional resampling (RAS order)
    box: tuple[tuple[int, int], ...]  # crop (lo, hi) per RAS axis on the resampled grid
    axis: int  # slicing axis (RAS)
    content: tuple[int, int]  # in-plane size inside the size x size canvas
    size: int

    @property
    def array_axis(self) -> int:
        """The axis of the original array (``shape``) that the slicing axis (RAS ``axis``)
        runs along: the slices are its planes, whatever order the file stores the axes in."""
        return int(np.flatnonzero(np.asarray(self.transform)[:, 0] == self.axis)[0])

    @property
    def plane(self) -> tuple[int, int]:
        """(H, W) of the cropped slices before fitting into the canvas."""
        lens = tuple(hi - lo for lo, hi in self.box)
        return geo.display_plane(lens, self.axis)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PreparedVolume:
    """A volume ready for the networks, and the way back to its grid.

    ``slices`` (Z, H, W) float32 in [-1, 1]; ``body`` (Z,) fraction of body pixels per slice."""

    slices: np.ndarray
    body: np.ndarray
    geometry: Geometry
    affine: np.ndarray
    header: nib.Nifti1Header | nib.Nifti2Header
    stats: dict[str, float]
    n_channels: int
    # the body box found in this volume (RAS, resampled grid, before the field-of-view limit);
    # the crop unless prepare_loaded was given another
    body_box: Optional[tuple[tuple[int, int], ...]] = None

    @property
    def stacks(self) -> np.ndarray:
        """(Z, S, H, W) float32: every slice with its neighbours (edge replication)."""
        return stack_slices(self.slices, np.arange(len(self.slices)), self.n_channels)

    def forward_label(self, label: np.ndarray) -> np.ndarray:
        """A label array on the original grid -> (Z, H, W) uint8 on the prepared slices."""
        g = self.geometry
        if label.shape != g.shape:
            raise DataError(f"label shape {label.shape} differs from image shape {g.shape}")
        if label.size and int(label.max()) > 255:
            raise DataError(f"label value {int(label.max())} does not fit uint8 shards")
        ras = geo.to_ras(label.astype(np.uint8, copy=False), g.transform)
        ras = geo.resample(ras, g.grid_shape, nearest=True)
        cropped = ras[tuple(slice(lo, hi) for lo, hi in g.box)]
        planes = geo.resize_slices(geo.volume_to_slices(cropped, g.axis), g.content, nearest=True)
        return geo.to_canvas(planes, g.size, 0)

    def restore(self, label_slices: np.ndarray) -> nib.Nifti1Image:
        """(Z, H, W) integer labels -> uint8 NIfTI on the original grid, affine and header."""
        return self._back(np.asarray(label_slices).astype(np.uint8), nearest=True, fill=0)

    def restore_intensity(self, slices: np.ndarray) -> nib.Nifti1Image:
        """(Z, H, W) float32 images in [-1, 1] -> float32 NIfTI on the original grid (linear)."""
        return self._back(np.asarray(slices, dtype=np.float32), nearest=False, fill=-1.0)

    def _back(self, slices: np.ndarray, nearest: bool, fill: float) -> nib.Nifti1Image:
        g = self.geometry
        expected = (len(self.slices), g.size, g.size)
        if slices.shape != expected:
            raise DataError(f"restore expects slices of shape {expected}, got {slices.shape}")
        planes = geo.resize_slices(geo.from_canvas(slices, g.content), g.plane, nearest=nearest)
        grid = np.full(g.grid_shape, fill, dtype=planes.dtype)
        grid[tuple(slice(lo, hi) for lo, hi in g.box)] = geo.slices_to_volume(planes, g.axis)
        ras = geo.resample(grid, g.ras_shape, nearest=nearest)
        data = np.ascontiguousarray(geo.from_ras(ras, g.transform))
        header = self.header.copy()
        header.set_data_dtype(np.uint8 if nearest else np.float32)
        img = nib.Nifti1Image(data, self.affine, header=header)
        img.header.set_slope_inter(1.0, 0.0)
        return img


def bounds_for(cfg: PreprocessConfig, modality: str, domain: Optional[str] = None) -> tuple[float, float]:
    """The z-score bounds mapped to [-1, 1], by lowercase modality, then by domain name."""
    for key in (modality.lower(), (domain or "").lower()):
        if key in cfg.bounds:
            lo, hi = cfg.bounds[key]
            if hi <= lo:
                raise ConfigError(f"preprocess.bounds[{key!r}] must have low < high, got {(lo, hi)}")
            return float(lo), float(hi)
    raise ConfigError(f"preprocess.bounds has no entry for modality {modality!r}"
                      f"{'' if domain is None else f' or domain {domain!r}'} (keys: {sorted(cfg.bounds)})")


def prepare_volume(image_path: str | Path, cfg: PreprocessConfig, modality: str,
                   domain: Optional[str] = None) -> PreparedVolume:
    """Load and prepare one image volume (every slice, no skipping) for the networks, with
    the bounds preprocessing uses: ``bounds_for(cfg, modality, domain)``."""
    return prepare_loaded(load_volume(image_path), cfg, bounds_for(cfg, modality, domain), modality)


def is_ct(modality: Optional[str]) -> bool:
    return (modality or "").strip().lower() == "ct"


def prepare_loaded(volume: Volume, cfg: PreprocessConfig, bounds: tuple[float, float],
                   modality: Optional[str] = None,
                   crop_box: Optional[tuple[tuple[int, int], ...]] = None) -> PreparedVolume:
    """:func:`prepare_volume` on an already loaded volume. ``modality`` "CT" clamps the
    intensities at -1024 HU before any statistic. ``crop_box`` ((lo, hi) per RAS axis of the
    resampled grid, before the field-of-view limit): cut this box instead of the body box
    found (the body threshold is still the volume's own; :func:`prepare_pair`)."""
    transform = geo.ras_transform(volume.affine)
    ras = geo.to_ras(volume.array, transform)
    if is_ct(modality) and ras.size and float(ras.min()) < CT_AIR_HU:
        ras = np.maximum(ras, np.asarray(CT_AIR_HU).astype(ras.dtype))  # a copy: the loaded volume is kept
    ras_shape = grid_shape = tuple(ras.shape)
    spacing = geo.ras_spacing(volume.spacing, transform)
    if cfg.target_spacing is not None:
        grid_shape = geo.resampled_shape(ras.shape, spacing, cfg.target_spacing)
        # the spacing the resampled grid really has (rounding of the voxel counts)
        spacing = tuple(n * s / g for n, s, g in zip(ras.shape, spacing, grid_shape))  # type: ignore[assignment]
        ras = geo.resample(ras, grid_shape)
    sample = _sample(ras).astype(np.float32)
    threshold = geo.otsu_threshold(sample)
    found, box, content, planes, body = _cut(ras, spacing, threshold, cfg)
    fallback = _degenerate(found, ras.shape, body, cfg)
    if fallback:
        p_lo, p_hi = np.percentile(sample, cfg.clip_percentiles)
        retry = geo.otsu_threshold(np.clip(sample, p_lo, p_hi))
        log.warning("%s: body threshold %.6g gives %s; using Otsu's threshold of the voxels clipped at "
                    "percentiles %s instead: %.6g", volume.path, threshold, fallback,
                    tuple(cfg.clip_percentiles), retry)
        threshold = retry
        found, box, content, planes, body = _cut(ras, spacing, threshold, cfg)
        still = _degenerate(found, ras.shape, body, cfg)
        if still:
            log.warning("%s: the clipped body threshold %.6g still gives %s", volume.path, threshold, still)
    if crop_box is not None and crop_box != found:
        _, box, content, planes, body = _cut(ras, spacing, threshold, cfg, crop_box)
    normalised, stats = normalise(planes, cfg.clip_percentiles, bounds, volume.path)
    geometry = Geometry(shape=tuple(volume.array.shape), transform=transform, ras_shape=ras_shape,
                        grid_shape=tuple(grid_shape), box=box, axis=cfg.axis, content=content,
                        size=cfg.image_size)
    stats["body_threshold"] = threshold
    if fallback:  # only then: stats.json of volumes that need no fallback is unchanged
        stats["body_threshold_fallback"] = 1.0
    return PreparedVolume(slices=geo.to_canvas(normalised, cfg.image_size, -1.0), body=body, geometry=geometry,
                          affine=volume.affine, header=volume.header, stats=stats, n_channels=cfg.slices,
                          body_box=found)


def _cut(ras: np.ndarray, spacing: tuple[float, float, float], threshold: float, cfg: PreprocessConfig,
         box: Optional[tuple[tuple[int, int], ...]] = None
         ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...], tuple[int, int], np.ndarray, np.ndarray]:
    """The body box found (or ``box``, when given), the box cut (after the field-of-view
    limit), the in-plane content size, the resized (Z, h, w) planes and each plane's body fraction."""
    if box is None:
        box = (geo.body_box(ras, threshold, cfg.body_fraction, cfg.crop_margin) if cfg.crop == "body"
               else tuple((0, n) for n in ras.shape))
    found = box
    if cfg.field_of_view_mm is not None:
        box = geo.limit_box(box, spacing, cfg.axis, cfg.field_of_view_mm)
    cropped = ras[tuple(slice(lo, hi) for lo, hi in box)]
    stack = geo.volume_to_slices(cropped, cfg.axis)  # (Z, H, W), superior/anterior up
    if cfg.field_of_view_mm is not None:  # same mm per pixel for every volume
        content = geo.physical_size(box, spacing, cfg.axis, cfg.field_of_view_mm, cfg.image_size)
    else:  # the plane's physical aspect: square pixels in mm
        content = geo.fit_physical(box, spacing, cfg.axis, cfg.image_size)
    planes = geo.resize_slices(stack, content)
    body = (np.count_nonzero(planes > threshold, axis=(1, 2)) / float(planes[0].size)).astype(np.float32)
    return found, box, content, planes, body


def _degenerate(box: tuple[tuple[int, int], ...], shape: tuple[int, ...], body: np.ndarray,
                cfg: PreprocessConfig) -> str:
    """Why the body found with a threshold (``box`` before any field-of-view limit) is
    implausible ("" if it is not)."""
    if len(body) and not np.any(body >= cfg.body_fraction):
        return f"no slice with body (of {len(body)})"
    if cfg.crop == "body":
        fraction = float(np.prod([hi - lo for lo, hi in box])) / float(np.prod(shape))
        if fraction < _MIN_BOX_FRACTION:
            return f"a body box of {100 * fraction:.2g}% of the volume"
    return ""


def normalise(planes: np.ndarray, percentiles: tuple[float, float], bounds: tuple[float, float],
              path: Optional[Path] = None) -> tuple[np.ndarray, dict[str, float]]:
    """Clip at the volume's percentiles, z-score, map [low, high] z-scores to [-1, 1]."""
    p_lo, p_hi = (float(v) for v in np.percentile(_sample(planes), percentiles))
    clipped = np.clip(planes, p_lo, p_hi, out=np.empty_like(planes, dtype=np.float32))
    mean, std = _mean_std(clipped)
    if not std > 1e-8:
        raise DataError(f"constant intensity after clipping at percentiles {percentiles}: cannot z-score", path)
    lo, hi = bounds
    # one fused affine map: 2 * ((x - mean) / std - lo) / (hi - lo) - 1
    scale = 2.0 / (std * (hi - lo))
    offset = -2.0 * (mean / std + lo) / (hi - lo) - 1.0
    clipped *= np.float32(scale)
    clipped += np.float32(offset)
    np.clip(clipped, -1.0, 1.0, out=clipped)
    return clipped, {"p_low": p_lo, "p_high": p_hi, "mean": mean, "std": std}


def _mean_std(x: np.ndarray, chunk: int = 1 << 21) -> tuple[float, float]:
    """Mean and standard deviation with float64 accumulation, in chunks (no volume-sized temporaries)."""
    flat = x.reshape(-1)
    mean = float(np.add.reduce(flat, dtype=np.float64)) / flat.size
    sq = 0.0
    for start in range(0, flat.size, chunk):
        d = flat[start:start + chunk].astype(np.float64) - mean
        sq += float(np.dot(d, d))
    return mean, (sq / flat.size) ** 0.5


def stack_slices(slices: np.ndarray, index: np.ndarray, channels: int) -> np.ndarray:
    """(N, S, H, W) stacks (j - S//2 .. j + S//2) around each ``index``, edges replicated."""
    offsets = np.arange(channels) - channels // 2
    picks = np.clip(np.asarray(index)[:, None] + offsets[None, :], 0, len(slices) - 1)
    return slices[picks]


def _sample(array: np.ndarray) -> np.ndarray:
    """About ``_SAMPLE`` voxels on a regular 3-D lattice (works on views without copying them)."""
    step = max(1, int(np.ceil((array.size / _SAMPLE) ** (1.0 / 3.0))))
    return array[::step, ::step, ::step].ravel()


def prepare_case(image_path: Path, label_path: Optional[Path], cfg: PreprocessConfig,
                 bounds: tuple[float, float], modality: Optional[str] = None,
                 affine_atol_mm: float = 1e-3) -> tuple[PreparedVolume, Optional[np.ndarray]]:
    """Prepare an image and (if given) its label, checking they share one grid (affines
    within ``affine_atol_mm``: the validate stage's ``validate.affine_atol_mm``)."""
    image = load_volume(image_path)
    prepared = prepare_loaded(image, cfg, bounds, modality)
    return prepared, _label_slices(image, prepared, label_path, affine_atol_mm)


def check_same_grid(volumes: Sequence[Volume], atol_mm: float = 1e-3) -> None:
    """The images of one paired subject share one voxel grid: the same array shape, and
    affines within ``atol_mm``; else a one-line :class:`DataError` naming both files (paired
    preprocessing and paired evaluation compare them voxel by voxel)."""
    first = volumes[0]
    for other in volumes[1:]:
        if other.array.shape != first.array.shape:
            detail = (f"the shape of {other.path}, {tuple(other.array.shape)}, differs from that of {first.path}, "
                      f"{tuple(first.array.shape)}")
        elif not affines_match(first.affine, other.affine, atol_mm):
            diff = float(np.abs(other.affine - first.affine).max())
            detail = (f"the affine of {other.path} differs from that of {first.path} by up to {diff:.4g} mm "
                      f"(tolerance {atol_mm:g} mm)")
        else:
            continue
        raise DataError(f"paired cases must share a grid (resample/register them first): {detail}")


def prepare_pair(image_paths: Sequence[Path], label_paths: Sequence[Optional[Path]], cfg: PreprocessConfig,
                 bounds: Sequence[tuple[float, float]], modalities: Sequence[Optional[str]],
                 affine_atol_mm: float = 1e-3) -> list[tuple[PreparedVolume, Optional[np.ndarray]]]:
    """:func:`prepare_case` for the images of ONE subject in several modalities (paired mode),
    onto identical slices: the images must share one grid (:func:`check_same_grid`: shape, and
    affines within ``affine_atol_mm``), and all are cut with the union of their body boxes, so
    geometry, slice count and canvas coincide. Thresholds and normalisation stay per image."""
    images = [load_volume(path) for path in image_paths]
    check_same_grid(images, affine_atol_mm)
    alone = [prepare_loaded(image, cfg, b, m) for image, b, m in zip(images, bounds, modalities)]
    box = tuple((min(lo for lo, _ in axis), max(hi for _, hi in axis))
                for axis in zip(*(p.body_box for p in alone)))
    prepared = [p if p.body_box == box else prepare_loaded(image, cfg, b, m, crop_box=box)
                for p, image, b, m in zip(alone, images, bounds, modalities)]
    return [(p, _label_slices(image, p, label_path, affine_atol_mm))
            for p, image, label_path in zip(prepared, images, label_paths)]


def _label_slices(image: Volume, prepared: PreparedVolume, label_path: Optional[Path],
                  affine_atol_mm: float) -> Optional[np.ndarray]:
    """The label at ``label_path`` (if any) on ``prepared``'s slices, checked against ``image``'s grid."""
    if label_path is None:
        return None
    label = load_volume(label_path, kind="label")
    check_pair(image, label, affine_atol_mm)
    if label.array.size and int(label.array.max()) > 255:
        raise DataError(f"label value {int(label.array.max())} does not fit uint8 shards", label_path)
    return prepared.forward_label(label.array)
