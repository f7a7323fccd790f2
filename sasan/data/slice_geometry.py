"""Invertible array geometry used by preprocessing: RAS reorientation, resampling, body box,
and the per-slice fit into a square ``size x size`` canvas.

Every forward step has an inverse here so predictions go back onto the original grid.
Resizing uses torch (one vectorised call for all slices; bilinear with antialiasing for
intensities, nearest for labels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

RAS = axcodes2ornt("RAS")


# ----------------------------------------------------------------------------- orientation
def ras_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform (3, 2) taking the array axes of ``affine`` to RAS."""
    return ornt_transform(io_orientation(affine), RAS)


def to_ras(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Flip/transpose into RAS order (a view where numpy allows)."""
    return apply_orientation(array, transform)


def from_ras(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras` for the same ``transform``."""
    inverse = np.empty_like(transform)
    for src, (dst, flip) in enumerate(transform):
        inverse[int(dst)] = (src, flip)
    return apply_orientation(array, inverse)


def ras_spacing(spacing: tuple[float, float, float], transform: np.ndarray) -> tuple[float, float, float]:
    out = [0.0, 0.0, 0.0]
    for src, (dst, _) in enumerate(transform):
        out[int(dst)] = float(spacing[src])
    return out[0], out[1], out[2]


# ----------------------------------------------------------------------------- resampling
def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    """Grid size covering the same extent (mm) at ``target`` spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(array: np.ndarray, shape: tuple[int, int, int], nearest: bool = False) -> np.ndarray:
    """Trilinear (or nearest for labels) resampling of a 3-D array to ``shape``; float32/uint8 out."""
    if tuple(array.shape) == tuple(shape):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    mode = "nearest-exact" if nearest else "trilinear"
    out = F.interpolate(t, size=tuple(shape), mode=mode, **({} if nearest else {"align_corners": False}))
    out_np = out[0, 0].numpy()
    return out_np.astype(np.uint8) if nearest else out_np


# ----------------------------------------------------------------------------- body box
def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximises between-class variance)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def body_box(array: np.ndarray, threshold: float, fraction: float, margin: int) -> tuple[tuple[int, int], ...]:
    """Bounding box (lo, hi) per axis of the planes in which at least ``fraction`` of the
    voxels are above ``threshold``, widened by ``margin`` voxels.

    Large volumes are scanned on every 2nd voxel (8x less work); the box is then widened
    by the one voxel the lattice can miss on each side."""
    step = 2 if min(array.shape) >= 64 else 1
    mask = array[::step, ::step, ::step] > threshold
    box = []
    for axis in range(3):
        counts = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis))
        area = mask.size // mask.shape[axis]
        planes = np.flatnonzero(counts >= max(1.0, fraction * area))
        n = array.shape[axis]
        if planes.size == 0:  # no body at all: keep everything rather than guess
            box.append((0, n))
            continue
        lo = int(planes[0]) * step - (step - 1) - margin
        hi = int(planes[-1]) * step + step + margin
        box.append((max(0, lo), min(n, hi)))
    return tuple(box)


# ----------------------------------------------------------------------------- slice display order
def volume_to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """RAS (X, Y, Z) volume -> (N, H, W) slices along ``axis`` in display order (a view).

    Rows run along the later remaining RAS axis, reversed (superior, or anterior for axial
    slices, at the top); columns along the earlier one (towards the patient's right: the
    neurological convention). So a left-right flip of a slice mirrors the patient."""
    return np.moveaxis(volume, axis, 0).transpose(0, 2, 1)[:, ::-1, :]


def slices_to_volume(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`volume_to_slices` (a view)."""
    return np.moveaxis(slices[:, ::-1, :].transpose(0, 2, 1), 0, axis)


def display_plane(shape: tuple[int, int, int], axis: int) -> tuple[int, int]:
    """(H, W) of the slices :func:`volume_to_slices` makes from a volume of ``shape``."""
    first, second = (n for a, n in enumerate(shape) if a != axis)
    return second, first


# ----------------------------------------------------------------------------- square canvas
def fit_size(plane: tuple[float, float], size: int) -> tuple[int, int]:
    """In-plane content size after scaling the longer side of ``plane`` to ``size``, the
    ratio of the two sides kept (pass millimetres for square pixels: :func:`fit_physical`)."""
    scale = size / max(plane)
    return max(1, int(round(plane[0] * scale))), max(1, int(round(plane[1] * scale)))


def fit_physical(box: tuple[tuple[int, int], ...], spacing: tuple[float, float, float], axis: int,
                 size: int) -> tuple[int, int]:
    """In-plane content size (H, W) when the box's longer in-plane side (in mm) fills ``size``:
    the pixels are square in millimetres, whatever the voxels' aspect (0.5 x 1.5 mm voxels
    are not squashed 3:1). Each side is its voxel count times its spacing over the finer
    in-plane spacing, so isotropic in-plane voxels give exactly the voxel-count fit."""
    in_plane = [a for a in range(3) if a != axis]
    finest = min(spacing[a] for a in in_plane)
    lens = tuple(float(hi - lo) * (spacing[a] / finest if a != axis else 1.0) for a, (lo, hi) in enumerate(box))
    return fit_size(display_plane(lens, axis), size)  # type: ignore[arg-type]


def limit_box(box: tuple[tuple[int, int], ...], spacing: tuple[float, float, float], axis: int,
              extent_mm: float) -> tuple[tuple[int, int], ...]:
    """Shrink the in-plane sides of ``box`` (lo, hi per RAS axis, voxels of ``spacing`` mm)
    longer than ``extent_mm`` to that length, centred on the box's centre. The slicing
    axis is left alone."""
    out = []
    for a, (lo, hi) in enumerate(box):
        n = max(1, int(extent_mm / spacing[a] + 1e-6))
        if a != axis and hi - lo > n:
            lo = lo + (hi - lo - n) // 2
            hi = lo + n
        out.append((lo, hi))
    return tuple(out)


def physical_size(box: tuple[tuple[int, int], ...], spacing: tuple[float, float, float], axis: int,
                  extent_mm: float, size: int) -> tuple[int, int]:
    """In-plane content size (H, W) in pixels when the ``size`` canvas spans ``extent_mm``:
    the same millimetres per pixel for every volume, whatever its field of view."""
    lens = tuple((hi - lo) * spacing[a] for a, (lo, hi) in enumerate(box))
    h_mm, w_mm = display_plane(lens, axis)  # type: ignore[arg-type]
    return tuple(min(size, max(1, int(round(mm * size / extent_mm)))) for mm in (h_mm, w_mm))  # type: ignore[return-value]


def resize_slices(stack: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize each slice of a (Z, a, b) stack to (Z, *size): bilinear+antialias, or nearest."""
    if tuple(stack.shape[1:]) == tuple(size):
        return np.ascontiguousarray(stack, dtype=np.uint8 if nearest else np.float32)
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if nearest:
        out = F.interpolate(t, size=size, mode="nearest-exact")
        return out[:, 0].numpy().astype(np.uint8)
    down = size[0] < stack.shape[1] or size[1] < stack.shape[2]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=down)
    return out[:, 0].numpy()


def pad_offsets(content: tuple[int, int], size: int) -> tuple[int, int]:
    """Top-left corner of centred content in a ``size x size`` canvas."""
    return (size - content[0]) // 2, (size - content[1]) // 2


def to_canvas(stack: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Centre a (Z, h, w) stack on a (Z, size, size) canvas filled with ``fill``."""
    z, h, w = stack.shape
    top, left = pad_offsets((h, w), size)
    canvas = np.empty((z, size, size), dtype=stack.dtype)  # write each byte once: borders, then content
    canvas[:, :top] = fill
    canvas[:, top + h:] = fill
    canvas[:, top:top + h, :left] = fill
    canvas[:, top:top + h, left + w:] = fill
    canvas[:, top:top + h, left:left + w] = stack
    return canvas


def from_canvas(canvas: np.ndarray, content: tuple[int, int]) -> np.ndarray:
    top, left = pad_offsets(content, canvas.shape[-1])
    return canvas[:, top:top + content[0], left:left + content[1]]
