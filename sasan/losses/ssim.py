"""Structural similarity (SSIM) with a Gaussian window, as used by the cycle and identity
losses (METHOD.md section 3: 7x7 window, sigma 1.5, images mapped to [0, 1]).

Wang et al. 2004: for local Gaussian-weighted means mu, variances sigma^2 and covariance
sigma_xy,
    SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
    C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01, K2 = 0.03, L = data range.
Conventions follow MONAI's ``SSIMMetric``: per channel, valid padding (the map is
(H - w + 1) x (W - w + 1)), biased local variances, map averaged over channels and pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

K1 = 0.01
K2 = 0.03


def gaussian_window(
    window_size: int = 7,
    sigma: float = 1.5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Normalised 2-D Gaussian window (window_size, window_size), sum 1; the outer product
    of the 1-D window g_i = exp(-d_i^2 / (2 sigma^2)) / Z, d_i = i - (window_size - 1) / 2."""
    d = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2
    g = torch.exp(-0.5 * (d / sigma) ** 2)
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def ssim_map(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    window_size: int = 7,
    sigma: float = 1.5,
) -> Tensor:
    """Local SSIM map. x, y: (B, C, H, W) -> (B, C, H - w + 1, W - w + 1), w = window_size."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"ssim expects two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"image {tuple(x.shape[-2:])} is smaller than the {window_size}x{window_size} SSIM window")
    # In float32 whatever autocast says: the variances are differences of moments
    # (E[x^2] - mu^2), and bf16's rounding step near 0.25 (~1e-3) exceeds C2 = 9e-4, which
    # turns 1 - SSIM into noise (measured: 0.045 in fp32, -0.016 under bf16 autocast).
    # A no-op for float32 (or float64) inputs outside autocast (the CPU runs).
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _ssim_map_fp32(x.to(dtype), y.to(dtype), data_range, window_size, sigma)


def _ssim_map_fp32(x: Tensor, y: Tensor, data_range: float, window_size: int, sigma: float) -> Tensor:
    c = x.shape[1]
    # One grouped conv computes all five local moments at once. A full 7x7 depthwise
    # kernel measured faster on CPU than the separable 7x1 + 1x7 pair (one pass, not two).
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    window = gaussian_window(window_size, sigma, stats.dtype, stats.device)
    window = window.expand(5 * c, 1, window_size, window_size)
    mu_x, mu_y, e_xx, e_yy, e_xy = F.conv2d(stats, window, groups=5 * c).chunk(5, dim=1)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    mu_xy = mu_x * mu_y
    mu_sq = mu_x * mu_x + mu_y * mu_y
    var_sum = e_xx + e_yy - mu_sq
    cov = e_xy - mu_xy
    return ((2 * mu_xy + c1) * (2 * cov + c2)) / ((mu_sq + c1) * (var_sum + c2))


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    window_size: int = 7,
    sigma: float = 1.5,
    reduction: str = "mean",
) -> Tensor:
    """SSIM of x and y, both (B, C, H, W) with values in a range of width ``data_range``.

    reduction "none": per-sample SSIM (B,), the map averaged over channels and pixels;
    "mean": the mean over the batch (scalar). Identical images give exactly 1.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    per_sample = ssim_map(x, y, data_range, window_size, sigma).flatten(1).mean(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample
