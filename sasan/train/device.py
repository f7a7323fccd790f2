"""Device selection and precision: one code path for CPU and CUDA."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool            # bf16 autocast (CUDA only)
    channels_last: bool   # channels_last memory format of every phase (CUDA only)
    unet_channels_last: bool = False   # ... of the U-Net segmenters (CPU too)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_module(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def for_unet(self) -> "Runtime":
        """The runtime of the U-Net segmenters: on CPU their batch-16 steps run about 1.3x
        faster in channels_last, where A_s pre-training gains nothing and the joint step
        (batch 2) loses 2-3% (bench/results/memory_format.json)."""
        return replace(self, channels_last=self.channels_last or self.unet_channels_last)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def resolve_runtime(device: str = "auto", bf16: bool = True, channels_last: bool = True) -> Runtime:
    """``device``: auto | cpu | cuda | cuda:N. bf16 applies on CUDA only (on CPU fp32 is both
    faster and what the benchmarks compare); channels_last applies to every phase on CUDA and
    to the U-Nets only on CPU (:meth:`Runtime.for_unet`)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        from sasan.errors import ConfigError

        raise ConfigError(f"train.device={device} but CUDA is not available")
    return Runtime(dev, bf16=bf16 and cuda and torch.cuda.is_bf16_supported(), channels_last=channels_last and cuda,
                   unet_channels_last=channels_last)
