"""Attention module A_X (METHOD.md section 2): a light U-Net that predicts K attention maps
and, through one linear 3x3 read-out conv, a C-class segmentation from those maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sasan.models.blocks import ConvBlock, check_divisible

class AttentionModule(nn.Module):
    """A_X: image (B, in_ch, H, W) in [-1, 1] -> attention maps (B, K, H, W) and
    segmentation logits (B, C, H, W). H and W must be divisible by 16.

    Encoder: 5x5 conv blocks of width w, 2w, 2w, 4w, 8w (w = 32), the first at full
    resolution and each of the others halving it; decoder: nearest x2 up-sampling,
    concatenation with the encoder feature of the same size, 3x3 conv block, back to full
    resolution; a final w-channel 3x3 block. The maps are raw (no activation); the
    segmentation is a linear read-out of them, so every class must be expressible from the
    K maps.

    ``bottleneck``: one more 3x3 block at 1/16 (8w -> 8w; 589,824 of A_X's 2.4M parameters
    at w = 32), which METHOD.md section 2 does not have. ``False`` is the network as
    METHOD.md reads; ``model.attention_bottleneck`` in params.yaml says which one runs and why.
    """

    def __init__(self, in_channels: int = 3, k: int = 8, num_classes: int = 5, width: int = 32,
                 bottleneck: bool = True):
        super().__init__()
        w = width
        enc = [w, 2 * w, 2 * w, 4 * w, 8 * w]
        self.k, self.num_classes = k, num_classes
        self.enc = nn.ModuleList()
        c_prev = in_channels
        for i, c in enumerate(enc):
            self.enc.append(ConvBlock(c_prev, c, kernel=5, stride=1 if i == 0 else 2))
            c_prev = c
        self.bottleneck = ConvBlock(enc[-1], enc[-1], kernel=3) if bottleneck else nn.Identity()
        # decoder level i fuses the up-sampled feature with encoder feature enc[3 - i]
        self.dec = nn.ModuleList()
        c_prev = enc[-1]
        for skip in reversed(enc[:-1]):
            self.dec.append(ConvBlock(c_prev + skip, skip, kernel=3))
            c_prev = skip
        self.final = ConvBlock(c_prev, w, kernel=3)
        self.to_maps = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(w, k, 3))
        self.to_seg = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(k, num_classes, 3))

    def _encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        check_divisible(x, 16, "AttentionModule")
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        return self.bottleneck(skips.pop()), skips

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, skips = self._encode(x)
        for block in self.dec:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1))
        maps = self.to_maps(self.final(x))
        return maps, self.to_seg(maps)
