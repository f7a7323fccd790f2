"""Training augmentation (METHOD.md section 5): random left-right flip, small rotation and
scaling, one transform shared by an image stack and its label.

Functional core: :func:`sample_transform` draws the parameters from a numpy Generator (so
a seed fixes them); :func:`apply_transform` warps with ``grid_sample`` (bilinear for the
image, nearest for the label). Outside the field of view the image is -1 (background in
[-1, 1]) and the label is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from sasan.config import AugmentConfig


@dataclass(frozen=True)
class Transform:
    flip: bool  # mirror the last (width) axis
    angle_deg: float  # counter-clockwise in (row, col) display
    scale: float  # content magnification; < 1 shrinks

    @property
    def is_identity(self) -> bool:
        return not self.flip and self.angle_deg == 0.0 and self.scale == 1.0


def sample_transform(rng: np.random.Generator, cfg: AugmentConfig) -> Transform:
    """Draw flip (p = 0.5 if enabled), angle in [-rotate_deg, rotate_deg], scale in cfg.scale.

    Only left-right flips: an upside-down slice is anatomy the discriminators never see
    in real data, whereas left-right mirroring keeps slices plausible."""
    flip = bool(rng.random() < 0.5) if cfg.flip else False
    angle = float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if cfg.rotate_deg > 0 else 0.0
    lo, hi = cfg.scale
    scale = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    return Transform(flip=flip, angle_deg=angle, scale=scale)


def sampling_matrix(t: Transform) -> torch.Tensor:
    """(1, 2, 3) ``affine_grid`` matrix: output coordinates -> input coordinates.

    Forward map on normalised (x, y): flip, rotate, scale; the grid needs its inverse."""
    a = math.radians(t.angle_deg)
    c, s = math.cos(a), math.sin(a)
    # inverse rotation; y grows downwards in image coordinates, hence the sign of s
    inv = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) / t.scale
    if t.flip:
        inv = torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64)) @ inv
    theta = torch.zeros(1, 2, 3, dtype=torch.float64)
    theta[0, :, :2] = inv
    return theta.float()


def apply_transform(image: torch.Tensor, label: Optional[torch.Tensor], t: Transform
                    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Warp ``image`` (S, H, W) float32 and ``label`` (H, W) int64 with the same transform."""
    if image.dim() != 3 or (label is not None and label.shape != image.shape[-2:]):
        raise ValueError(f"expected image (S, H, W) and label (H, W), got {tuple(image.shape)} and "
                         f"{None if label is None else tuple(label.shape)}")
    if t.is_identity:
        return image, label
    if not t.angle_deg and t.scale == 1.0:  # a pure flip is exact without resampling
        return image.flip(-1), None if label is None else label.flip(-1)
    grid = F.affine_grid(sampling_matrix(t), [1, 1, *image.shape[-2:]], align_corners=False)
    # shift so that zero padding means background (-1), then shift back
    warped = F.grid_sample((image + 1.0)[None], grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)[0] - 1.0
    if label is None:
        return warped, None
    warped_label = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False)[0, 0].long()
    return warped, warped_label


def augment_item(image: torch.Tensor, label: Optional[torch.Tensor], cfg: AugmentConfig, seed: int, epoch: int,
                 index: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Item ``index``'s transform in ``epoch``, drawn from a generator seeded with (seed, epoch,
    index): the same item in the same epoch is augmented identically whatever the worker,
    batch or order."""
    rng = np.random.default_rng([seed, epoch, index])
    return apply_transform(image, label, sample_transform(rng, cfg))
