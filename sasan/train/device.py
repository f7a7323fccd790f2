"""Device selection and precision: one code path for CPU and CUDA."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool            # bf16 autocast (CUDA only)
    channels_last: bool   # channels_last memory format (CUDA only)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_module(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def resolve_runtime(device: str = "auto", bf16: bool = True, channels_last: bool = True) -> Runtime:
    """``device``: auto | cpu | cuda | cuda:N. bf16 and channels_last apply on CUDA only:
    on CPU fp32 is both faster and what the benchmarks compare."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        from sasan.errors import ConfigError

        raise ConfigError(f"train.device={device} but CUDA is not available")
    return Runtime(dev, bf16=bf16 and cuda and torch.cuda.is_bf16_supported(), channels_last=channels_last and cuda)
