"""Synthesis module S_Y (METHOD.md section 2): an encoder to 1/4 resolution and a decoder
of three SASAN residual blocks driven by the attention maps of the input's domain."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sasan.models.blocks import ConvBlock, check_divisible, reflect_conv
from sasan.models.sasan_norm import SASANResBlock


class SynthesisModule(nn.Module):
    """S_Y(x, m): image (B, in_ch, H, W) in [-1, 1] and maps (B, K, H, W) -> image in the
    other domain (B, out_ch, H, W) in [-1, 1] (tanh). H, W divisible by 4.

    Encoder: 7x7/w (s1), 3x3/2w (s2), 3x3/4w (s2), 3x3/4w (s1) -> (B, 4w, H/4, W/4).
    Decoder: SASAN blocks 4w->4w at 1/4, 4w->2w at 1/2, 2w->w at full resolution
    (bilinear x2 between them), a 3x3 block to w/2 channels, a 3x3 conv, tanh.
    No encoder-decoder skips: anatomy reaches the decoder only through the maps.

    ``maps=None`` is the CycleGAN ablation: the same network with constant maps, so the
    normalisation cannot vary with anatomy.
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, k: int = 8,
                 width: int = 32, norm_hidden: int = 64):
        super().__init__()
        w = width
        self.k = k
        self.encoder = nn.Sequential(
            ConvBlock(in_channels, w, kernel=7),
            ConvBlock(w, 2 * w, kernel=3, stride=2),
            ConvBlock(2 * w, 4 * w, kernel=3, stride=2),
            ConvBlock(4 * w, 4 * w, kernel=3),
        )
        self.block_quarter = SASANResBlock(4 * w, 4 * w, k, norm_hidden)
        self.block_half = SASANResBlock(4 * w, 2 * w, k, norm_hidden)
        self.block_full = SASANResBlock(2 * w, w, k, norm_hidden)
        self.head = nn.Sequential(
            ConvBlock(w, w // 2, kernel=3),
            reflect_conv(w // 2, out_channels or in_channels, 3),
            nn.Tanh(),
        )

    def encode(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, 4w, H/4, W/4); also what a feature discriminator judges."""
        check_divisible(x, 4, "SynthesisModule")
        return self.encoder(x)

    def decode(self, feat: Tensor, maps: Tensor | None) -> Tensor:
        if maps is None:
            b, _, h, w = feat.shape
            maps = feat.new_ones(b, self.k, h * 4, w * 4)
        y = self.block_quarter(feat, maps)
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        y = self.block_half(y, maps)
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        y = self.block_full(y, maps)
        return self.head(y)

    def forward(self, x: Tensor, maps: Tensor | None) -> Tensor:
        return self.decode(self.encode(x), maps)
