"""The detached segmenter (METHOD.md section 2): a standard 2-D U-Net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sasan.models.blocks import check_divisible


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BatchNorm -> ReLU) x 2."""

    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None):
        c_mid = c_mid or c_out
        super().__init__(
            nn.Conv2d(c_in, c_mid, 3, padding=1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
            nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """(B, in_ch, H, W) -> logits (B, C, H, W); H, W divisible by 16.

    Encoder widths w, 2w, 4w, 8w, 8w (w = 64) with 2x2 max-pooling; decoder with bilinear
    x2 up-sampling, skip concatenation and double convs back to w; 1x1 conv head.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 5, width: int = 64):
        super().__init__()
        w = width
        self.inc = DoubleConv(in_channels, w)
        self.downs = nn.ModuleList([DoubleConv(w, 2 * w), DoubleConv(2 * w, 4 * w),
                                    DoubleConv(4 * w, 8 * w), DoubleConv(8 * w, 8 * w)])
        # (up-sampled channels + skip channels) -> out, mid width = half the input
        self.ups = nn.ModuleList([DoubleConv(16 * w, 4 * w, 8 * w), DoubleConv(8 * w, 2 * w, 4 * w),
                                  DoubleConv(4 * w, w, 2 * w), DoubleConv(2 * w, w, w)])
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_divisible(x, 16, "UNet")
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            x = down(F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up in self.ups:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = up(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)
