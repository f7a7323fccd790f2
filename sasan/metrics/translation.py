"""Paired-translation metrics (METHOD.md section 6: MAE, RMSE, PSNR, SSIM, Pearson
correlation on body-masked images) and the body mask they use."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from sasan.errors import DataError
from sasan.losses.ssim import ssim_map


def otsu_threshold(image: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the histogram split maximising the between-class variance
    w0 w1 (mu0 - mu1)^2. Returns the upper edge of the last bin of the low class, so
    ``image > threshold`` is the high class. A constant image returns its value."""
    values = np.asarray(image, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise DataError("cannot threshold an image without finite values")
    if values.min() == values.max():
        return float(values.min())
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    w1 = hist.sum() - w0
    s0 = np.cumsum(hist * centres)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (s0 / w0 - ((hist * centres).sum() - s0) / w1) ** 2
    between = np.where((w0 > 0) & (w1 > 0), between, -1.0)
    return float(edges[int(np.argmax(between)) + 1])


def body_mask(image: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Body mask of a 2-D or 3-D image: voxels above ``threshold`` (Otsu's when None),
    reduced to the largest face-connected component, with enclosed holes filled (in the
    image's full dimension). Bool array of the image's shape; empty when nothing is above
    the threshold."""
    image = np.asarray(image)
    thr = otsu_threshold(image) if threshold is None else float(threshold)
    components, n = ndimage.label(image > thr)
    if n == 0:
        return np.zeros(image.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(components == int(np.argmax(sizes)))


def _as_batch(volume: np.ndarray, slices: list[int]) -> torch.Tensor:
    """Slices (last axis) of an (H, W, D) volume as a float64 (n, 1, H, W) batch; float64 so
    the metric does not depend on rounding."""
    batch = np.moveaxis(volume[..., slices], -1, 0)
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float64))[:, None]


def masked_ssim(
    fake: np.ndarray,
    real: np.ndarray,
    mask: np.ndarray,
    data_range: float,
    window_size: int = 7,
    sigma: float = 1.5,
    chunk: int = 16,
    axis: int = -1,
) -> float:
    """SSIM of two volumes (or images (H, W)) slice by slice along ``axis`` (of a volume;
    default the last: (H, W, D)): each slice's local SSIM map (Gaussian window, valid padding)
    is averaged over the window centres inside ``mask``; slices without such centres are
    skipped; the result is the mean over the remaining slices (nan if none). Slice along the
    axis the images were made along (a model that translates slice by slice: its slicing
    axis), so that no window straddles separately made slices."""
    mask = np.asarray(mask, dtype=bool)
    if fake.ndim == 2:
        fake, real, mask = fake[..., None], real[..., None], mask[..., None]
    else:
        fake, real, mask = (np.moveaxis(np.asarray(a), axis, -1) for a in (fake, real, mask))
    half = window_size // 2
    h, w = fake.shape[:2]
    centres = mask[half : h - window_size + 1 + half, half : w - window_size + 1 + half]
    slice_means: list[float] = []
    for start in range(0, fake.shape[-1], chunk):
        keep = [k for k in range(start, min(start + chunk, fake.shape[-1])) if centres[..., k].any()]
        if not keep:
            continue
        maps = ssim_map(_as_batch(fake, keep), _as_batch(real, keep), data_range, window_size, sigma)[:, 0].numpy()
        for i, k in enumerate(keep):
            slice_means.append(float(maps[i][centres[..., k]].mean()))
    return float(np.mean(slice_means)) if slice_means else float("nan")


def translation_scores(
    fake: np.ndarray,
    real: np.ndarray,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
    axis: int = -1,
) -> dict[str, float]:
    """Image agreement of a translated volume ``fake`` with its paired ``real`` one
    (same shape, 2-D or 3-D, same intensity scale), on the voxels of ``mask``
    (default: body_mask(real)). With e = fake - real over the masked voxels:
      mae = mean|e|, rmse = sqrt(mean e^2), psnr = 10 log10(L^2 / mean e^2) in dB
      (inf when e = 0), pearson = corr(fake, real) (nan when either is constant),
      ssim = masked_ssim (7x7 Gaussian window, sigma 1.5, slices along ``axis`` of a volume:
      default the last; the other scores do not depend on it).
    L = data_range, default max - min of real over the mask."""
    fake = np.asarray(fake, dtype=np.float64)
    real = np.asarray(real, dtype=np.float64)
    if fake.shape != real.shape or fake.ndim not in (2, 3):
        raise DataError(f"expected two 2-D or 3-D images of one shape, got {fake.shape} and {real.shape}")
    mask = body_mask(real) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != real.shape:
        raise DataError(f"mask shape {mask.shape} differs from image shape {real.shape}")
    if not mask.any():
        raise DataError("the body mask is empty: nothing to score")
    f, r = fake[mask], real[mask]
    if data_range is None:
        data_range = float(r.max() - r.min())
    if data_range <= 0:
        raise DataError(f"data range must be positive, got {data_range}")
    err = f - r
    mse = float(np.mean(err**2))
    psnr = float(10.0 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")
    pearson = float(np.corrcoef(f, r)[0, 1]) if f.std() > 0 and r.std() > 0 else float("nan")
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(mse)),
        "psnr": psnr,
        "ssim": masked_ssim(fake, real, mask, data_range, axis=axis),
        "pearson": pearson,
    }
