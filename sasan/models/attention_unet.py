"""Attention module A_X (METHOD.md section 2): a light U-Net that predicts K attention maps
and, through one linear 3x3 read-out conv, a C-class segmentation from those maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sasan.models.blocks import ConvBlock, check_divisible

# Sub-pixel form of a 3x3 conv on a nearest-2x up-sampled image: output row 2i + d reads
# up-sampled rows 2i+d-1 .. 2i+d+1 = low-res rows {i-1, i} (d = 0) or {i, i+1} (d = 1), so
# its 3 kernel rows collapse to 2 taps: _PHASE_TAPS[d] (2 x 3) sums the rows that share one.
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


class _AddPhases(torch.autograd.Function):
    """out[:, :, 2i + dy, 2j + dx] += lo[:, dy, dx, :, i + dy, j + dx] for the four output
    phases (dy, dx), in place on ``out`` (N, Co, 2h, 2w); lo is (N, 2, 2, Co, h + 1, w + 1).
    Autograd's slice-and-stack form zero-fills a full-size gradient of ``lo`` once per
    phase; this backward writes each element of it once."""

    @staticmethod
    def forward(ctx, out: Tensor, lo: Tensor) -> Tensor:
        n, co, h2, w2 = out.shape
        h, w = h2 // 2, w2 // 2
        ctx.hw = h, w
        grid = out.view(n, co, h, 2, w, 2)
        for dy in (0, 1):
            for dx in (0, 1):
                grid[:, :, :, dy, :, dx].add_(lo[:, dy, dx, :, dy:dy + h, dx:dx + w])
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        h, w = ctx.hw
        n, co = g.shape[:2]
        grid = g.view(n, co, h, 2, w, 2)
        d_lo = g.new_empty(n, 2, 2, co, h + 1, w + 1)
        for dy in (0, 1):
            for dx in (0, 1):
                d = d_lo[:, dy, dx]
                d[:, :, dy:dy + h, dx:dx + w].copy_(grid[:, :, :, dy, :, dx])
                d[:, :, h if dy == 0 else 0].zero_()           # the row this phase never reads
                d[:, :, :, w if dx == 0 else 0].zero_()        # the column
        return g, d_lo


def up_concat_conv3x3(low: Tensor, skip: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """conv3x3(reflect_pad_1(cat([nearest_up_2x(low), skip]))) without building the
    up-sampled input: the low half of ``weight`` becomes four 2x2 kernels (one per output
    phase) applied at low resolution, 2.25x fewer multiply-adds for that half. Reflection
    padding of the up-sampled image is replicate padding of ``low``. Exact up to float
    rounding. low (N, Cl, h, w), skip (N, Cs, 2h, 2w), weight (Co, Cl + Cs, 3, 3)."""
    n, cl, h, w = low.shape
    co = weight.shape[0]
    taps = weight.new_tensor(_PHASE_TAPS)                                   # (2, 2, 3)
    w_low = torch.einsum("yak,ockl,xbl->yxocab", taps, weight[:, :cl], taps).reshape(4 * co, cl, 2, 2)
    out = F.conv2d(F.pad(skip, (1, 1, 1, 1), mode="reflect"), weight[:, cl:], bias)
    # phase (dy, dx) of the output, at low-res position (i, j), is lo[dy, dx][i + dy, j + dx]
    lo = F.conv2d(F.pad(low, (1, 1, 1, 1), mode="replicate"), w_low).view(n, 2, 2, co, h + 1, w + 1)
    return _AddPhases.apply(out, lo)


class AttentionModule(nn.Module):
    """A_X: image (B, in_ch, H, W) in [-1, 1] -> attention maps (B, K, H, W) and
    segmentation logits (B, C, H, W). H and W must be divisible by 16.

    Encoder: 5x5 conv blocks of width w, 2w, 2w, 4w, 8w (w = 32), the first at full
    resolution and each of the others halving it; a 3x3 bottleneck block at 1/16;
    decoder: nearest x2 up-sampling, concatenation with the encoder feature of the same
    size, 3x3 conv block, back to full resolution; a final w-channel 3x3 block.
    The maps are raw (no activation); the segmentation is a linear read-out of them, so
    every class must be expressible from the K maps.
    """

    def __init__(self, in_channels: int = 3, k: int = 8, num_classes: int = 5, width: int = 32):
        super().__init__()
        w = width
        enc = [w, 2 * w, 2 * w, 4 * w, 8 * w]
        self.k, self.num_classes = k, num_classes
        self.enc = nn.ModuleList()
        c_prev = in_channels
        for i, c in enumerate(enc):
            self.enc.append(ConvBlock(c_prev, c, kernel=5, stride=1 if i == 0 else 2))
            c_prev = c
        self.bottleneck = ConvBlock(enc[-1], enc[-1], kernel=3)
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

    def reference_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The module as written above, layer by layer (for tests and reading)."""
        x, skips = self._encode(x)
        for block in self.dec:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1))
        maps = self.to_maps(self.final(x))
        return maps, self.to_seg(maps)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``reference_forward`` with each decoder conv in sub-pixel form
        (``up_concat_conv3x3``): same parameters, same results up to float rounding, about
        a fifth fewer multiply-adds for the whole module."""
        x, skips = self._encode(x)
        for block in self.dec:
            _pad, conv, *rest = block
            x = up_concat_conv3x3(x, skips.pop(), conv.weight, conv.bias)
            for layer in rest:                         # instance norm, leaky ReLU
                x = layer(x)
        maps = self.to_maps(self.final(x))
        return maps, self.to_seg(maps)
