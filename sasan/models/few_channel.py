"""Convolutions with few input channels (<= 8), whose input gradient oneDNN computes slowly.

oneDNN vectorises its kernels over channels. For the input gradient of a convolution with
C <= 8 input channels, the channel direction that ends up in the register lanes is C, so
most of an AVX-512 register stays empty: the norms' K -> 64 map convolutions (the attention
maps' gradient, K = 8), the attention module's first 5x5 conv and its segmentation read-out,
and the synthesis encoders' first 7x7 conv (the gradient that reaches a translated image)
spend 2-6x longer on it than the multiply-adds need. ``FewInputConv2d`` computes that
gradient with a C kernel vectorised along image rows (``winograd_kernels.correlate_few``);
the forward pass and the weight and bias gradients stay with oneDNN.

Measured on this 2-core AVX-512 CPU (batch 4, oneDNN -> C kernel, ``bench/few_channel.py``):
the 8 -> 64 map conv at 256x256 35.8 -> 27.1 ms, at 128x128 9.0 -> 5.5 ms; the 3 -> 32 5x5
conv 34.2 -> 21.6 ms; the 8 -> 5 read-out 10.2 -> 4.0 ms. Without an AVX-512 build of the
kernels the modules behave exactly like nn.Conv2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sasan.models import winograd_kernels as _kernels
from sasan.models.blocks import as_subclass

MAX_IN_CHANNELS = 8


class _FewInputConvFn(torch.autograd.Function):
    """F.conv2d(x, weight, bias, padding=padding), stride 1: oneDNN forward and parameter
    gradients, the C kernel for the gradient of x."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = dw = db = None
        dy = dy.contiguous()
        if need_w or (need_b and ctx.has_bias):
            p = ctx.padding
            _, dw, db = torch.ops.aten.convolution_backward(
                dy, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [p, p], [1, 1],
                False, [0, 0], 1, [False, need_w, need_b and ctx.has_bias])
        if need_x:
            dx = _kernels.conv_input_grad(dy, weight, ctx.padding)
        return dx, dw, db, None


def _eligible(conv: nn.Conv2d) -> bool:
    k = conv.kernel_size
    return (conv.in_channels <= MAX_IN_CHANNELS and k[0] == k[1] and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and conv.padding[0] == conv.padding[1] < k[0])


class FewInputConv2d(nn.Conv2d):
    """nn.Conv2d (square kernel, stride 1, symmetric zero padding, <= 8 input channels) whose
    input gradient comes from the C kernel when the input needs one (fp32 CPU). Same
    parameters and state dict as nn.Conv2d; otherwise it is nn.Conv2d."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (x.requires_grad and torch.is_grad_enabled() and x.dim() == 4 and x.is_cpu
                and x.dtype == torch.float32 and weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and _kernels.correlation_available()):
            return _FewInputConvFn.apply(x, weight, bias, self.padding[0])
        return super()._conv_forward(x, weight, bias)


def few_input_convs(module: nn.Module) -> int:
    """Replace, in place, every eligible nn.Conv2d below ``module`` by a FewInputConv2d sharing
    its Parameter objects (optimizers and state dicts are unaffected); return how many.
    Nothing is replaced where the C kernel is unavailable."""
    if not _kernels.correlation_available():
        return 0
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d and _eligible(child):
            setattr(module, name, as_subclass(child, FewInputConv2d))
            count += 1
        else:
            count += few_input_convs(child)
    return count
