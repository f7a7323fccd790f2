"""Image reconstruction losses (METHOD.md section 3: "cycle", "identity", "voxel L1").
Images are (B, C, H, W) in [-1, 1]."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from sasan.losses.ssim import ssim


def l1_ssim_loss(x: Tensor, y: Tensor) -> Tensor:
    """mean|x - y| + (1 - SSIM((x + 1) / 2, (y + 1) / 2)): SSIM on images mapped from
    [-1, 1] to [0, 1] (data range 1, 7x7 Gaussian window, sigma 1.5). x, y (B, C, H, W).
    Scalar; 0 for identical images."""
    return F.l1_loss(x, y) + (1.0 - ssim((x + 1) * 0.5, (y + 1) * 0.5, data_range=1.0))


def cycle_loss(rec: Tensor, real: Tensor) -> Tensor:
    """Cycle term: l1_ssim_loss(rec, real), e.g. rec_x = G_s(fake_t, A_t(fake_t)) vs x."""
    return l1_ssim_loss(rec, real)


def identity_loss(same: Tensor, real: Tensor) -> Tensor:
    """Identity term: l1_ssim_loss(same, real), e.g. same = G_s(x, A_s(x)) vs x."""
    return l1_ssim_loss(same, real)


def voxel_l1_loss(fake: Tensor, real: Tensor) -> Tensor:
    """Voxel L1 (paired mode only): mean|fake - real|, e.g. fake_t = G_t(x) vs the paired t."""
    if fake.shape != real.shape:
        raise ValueError(f"image shapes differ: {tuple(fake.shape)} vs {tuple(real.shape)}")
    return F.l1_loss(fake, real)
