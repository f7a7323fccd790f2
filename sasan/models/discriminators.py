"""Discriminators (METHOD.md section 2): image PatchGAN, per-class segmentation
discriminators, and the optional (small) feature discriminator. LSGAN outputs (no sigmoid)."""

from __future__ import annotations

from torch import Tensor, nn


def _patch_layers(c_in: int, widths: list[int], norm_from: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, c in enumerate(widths):
        layers.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=i < norm_from))
        if i >= norm_from:
            layers.append(nn.InstanceNorm2d(c, affine=False))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        c_in = c
    layers.append(nn.Conv2d(c_in, 1, 4, stride=1, padding=1))
    return layers


class PatchDiscriminator(nn.Module):
    """D_X: (B, in_ch, H, W) -> patch scores (B, 1, H/16 - 1, W/16 - 1).
    4x4 stride-2 convs of w, 2w, 4w, 8w (InstanceNorm + LReLU after all but the first),
    then a 4x4 stride-1 conv to one channel. ~2.8M parameters for w = 64."""

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        w = width
        self.net = nn.Sequential(*_patch_layers(in_channels, [w, 2 * w, 4 * w, 8 * w]))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SegDiscriminator(nn.Module):
    """Light PatchGAN on one softmax channel: (B, 1, H, W) -> (B, 1, H/8 - 1, W/8 - 1).
    1 -> w -> w -> w -> 1 with 4x4 convs (stride 2, 2, 2, 1)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(*_patch_layers(1, [width, width, width]))

    def forward(self, prob: Tensor) -> Tensor:
        return self.net(prob)


def seg_discriminators(num_classes: int, width: int = 64) -> nn.ModuleList:
    """One SegDiscriminator per foreground class (index c - 1 judges class c)."""
    return nn.ModuleList(SegDiscriminator(width) for _ in range(num_classes - 1))


class FeatureDiscriminator(nn.Module):
    """Optional ablation: does an encoder feature (B, C, H/4, W/4) come from this domain?
    A small conv head with global pooling (~0.4M parameters for C = 128), not a big MLP.
    Output (B, 1)."""

    def __init__(self, channels: int = 128, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.InstanceNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, 1),
        )

    def forward(self, feat: Tensor) -> Tensor:
        return self.net(feat)
