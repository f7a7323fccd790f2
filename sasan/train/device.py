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


def keep_freed_memory() -> bool:
    """CPU training allocates and frees the same large activations every step. glibc serves
    blocks above 32 MB with mmap and returns them to the kernel on free, so every step pays
    millions of page faults (measured: 20-25% of CPU time at 256x256). Serving them from the
    heap and not trimming it keeps the memory for reuse, like a GPU caching allocator.
    Returns True if applied (Linux/glibc only; a no-op elsewhere)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):   # musl and others have no mallopt
        return False


def fast_cpu_convs(module: nn.Module, runtime: Runtime, enabled: bool) -> int:
    """On CPU, swap convolutions for faster exact implementations (same parameters, results
    within ~1e-5 relative); return how many were swapped:

    * the large zero-padded 3x3 convolutions (>= 32 channels each side and C_in * C_out >=
      2048, at >= 64x64: the SASAN blocks' convs and the norms' gamma/beta convs) run as
      Winograd F(4x4, 3x3) with tile transforms in C (sasan/models/winograd_kernels.py),
      1.3-2x faster forward+backward (bench/results/winograd.json);
    * convolutions with <= 8 input channels get their input gradient from a C kernel
      (sasan/models/few_channel.py), about 2x faster than oneDNN's.

    Used for training; inference keeps the default kernels (the forward pass alone gains
    much less)."""
    if not enabled or runtime.device.type != "cpu":
        return 0
    from sasan.models.few_channel import few_input_convs
    from sasan.models.winograd import winograd_convs

    return winograd_convs(module) + few_input_convs(module)
