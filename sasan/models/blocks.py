"""Small building blocks shared by the networks."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBlock(nn.Sequential):
    """Reflection pad -> conv -> InstanceNorm (no affine) -> LeakyReLU(0.2).

    (B, c_in, H, W) -> (B, c_out, H / stride, W / stride).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1):
        super().__init__(
            nn.ReflectionPad2d(kernel // 2),
            # no conv bias: a non-affine instance norm removes it
            nn.Conv2d(c_in, c_out, kernel, stride=stride, bias=False),
            nn.InstanceNorm2d(c_out, affine=False),
            nn.LeakyReLU(0.2, inplace=True),
        )


def reflect_conv(c_in: int, c_out: int, kernel: int = 3, bias: bool = True) -> nn.Sequential:
    """Reflection-padded 'same' convolution (no norm, no activation)."""
    return nn.Sequential(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c_in, c_out, kernel, bias=bias))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_divisible(x: Tensor, factor: int, name: str) -> None:
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"{name}: input size {h}x{w} must be divisible by {factor}")
