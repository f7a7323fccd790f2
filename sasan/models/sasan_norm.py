"""SASAN normalisation and the SASAN residual block (METHOD.md section 2; paper eq. 1-3).

    h     = ReLU(conv3x3_{K->64}(m))          m: attention maps, nearest-resized to x
    gamma = conv3x3_{64->C}(h)                per pixel, per channel
    beta  = conv3x3_{64->C}(h)
    out   = InstanceNorm(x) * (1 + gamma) + beta
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def modulate(normalized: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """SASAN modulation, eq. (3): normalized * (1 + gamma) + beta (all (B, C, H, W))."""
    return normalized * (1 + gamma) + beta


class SASANNorm(nn.Module):
    """Spatially adaptive instance normalisation driven by K attention maps.

    x: (B, C, H, W); maps: (B, K, H', W') with any H', W' (resized here, nearest).
    """

    def __init__(self, channels: int, k: int, hidden: int = 64):
        super().__init__()
        self.channels = channels
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(k, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, maps: Tensor) -> Tensor:
        normalized = self.norm(x)                                       # eq. (1)
        if maps.shape[-2:] != x.shape[-2:]:
            maps = F.interpolate(maps, size=x.shape[-2:], mode="nearest")
        h = self.shared(maps)                                           # eq. (2)
        return modulate(normalized, self.gamma(h), self.beta(h))        # eq. (3)


class SASANResBlock(nn.Module):
    """SASAN-norm -> LReLU -> conv3x3 (f_in -> min(f_in, f_out)) -> SASAN-norm -> LReLU ->
    conv3x3 (-> f_out); shortcut: identity if f_in == f_out else SASAN-norm -> conv1x1.
    (B, f_in, H, W) -> (B, f_out, H, W).
    """

    def __init__(self, f_in: int, f_out: int, k: int, hidden: int = 64):
        super().__init__()
        f_mid = min(f_in, f_out)
        self.norm_0 = SASANNorm(f_in, k, hidden)
        self.conv_0 = nn.Conv2d(f_in, f_mid, 3, padding=1)
        self.norm_1 = SASANNorm(f_mid, k, hidden)
        self.conv_1 = nn.Conv2d(f_mid, f_out, 3, padding=1)
        self.learned_shortcut = f_in != f_out
        if self.learned_shortcut:
            self.norm_s = SASANNorm(f_in, k, hidden)
            self.conv_s = nn.Conv2d(f_in, f_out, 1, bias=False)

    def forward(self, x: Tensor, maps: Tensor) -> Tensor:
        shortcut = self.conv_s(self.norm_s(x, maps)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, maps), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, maps), 0.2))
        return shortcut + dx
