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


def receptive_field(layers: int) -> int:
    """Receptive field (pixels) of ``layers`` 4x4 stride-2 convs and a 4x4 stride-1 head:
    94 for the paper's 4 (37 % of a 256 image), 22 for 2 (34 % of a 64 image)."""
    rf = 4
    for _ in range(layers):
        rf = (rf - 1) * 2 + 4
    return rf


class PatchDiscriminator(nn.Module):
    """D_X: (B, in_ch, H, W) -> patch scores (B, 1, H/2^L - 1, W/2^L - 1), L = ``layers``.
    4x4 stride-2 convs of w, 2w, 4w, 8w (InstanceNorm + LReLU after all but the first),
    then a 4x4 stride-1 conv to one channel. ~2.8M parameters for w = 64, L = 4 (the
    paper). Fewer layers keep the judged patches the same fraction of a smaller image."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 4):
        super().__init__()
        if not 1 <= layers <= 4:
            raise ValueError(f"PatchGAN layers must be 1-4, got {layers}")
        widths = [width * 2 ** i for i in range(layers)]
        self.net = nn.Sequential(*_patch_layers(in_channels, widths))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SegDiscriminator(nn.Module):
    """Light PatchGAN on one softmax channel: (B, 1, H, W) -> (B, 1, H/8 - 1, W/8 - 1).
    1 -> w -> w -> w -> 1 with 4x4 convs (stride 2, 2, 2, 1); ``layers`` stride-2 convs."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        if not 1 <= layers <= 4:
            raise ValueError(f"segmentation PatchGAN layers must be 1-4, got {layers}")
        self.net = nn.Sequential(*_patch_layers(1, [width] * layers))

    def forward(self, prob: Tensor) -> Tensor:
        return self.net(prob)


def seg_discriminators(num_classes: int, width: int = 64, layers: int = 3) -> nn.ModuleList:
    """One SegDiscriminator per foreground class (index c - 1 judges class c)."""
    return nn.ModuleList(SegDiscriminator(width, layers) for _ in range(num_classes - 1))


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
