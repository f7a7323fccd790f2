"""Runtime: where channels_last applies, and that it changes layout, not results."""

import torch

from sasan.models.unet import UNet
from sasan.train.device import resolve_runtime


def test_cpu_runtime_uses_channels_last_for_the_unets_only():
    rt = resolve_runtime("cpu", bf16=True, channels_last=True)
    assert not rt.bf16 and not rt.channels_last          # the joint step: fp32, contiguous
    unet_rt = rt.for_unet()
    assert unet_rt.channels_last and unet_rt.device == rt.device
    assert not resolve_runtime("cpu", channels_last=False).for_unet().channels_last   # the knob turns it off


def test_channels_last_unet_matches_contiguous_forward_and_gradients():
    torch.manual_seed(0)
    plain = UNet(3, 5, width=4)
    fast = UNet(3, 5, width=4)
    fast.load_state_dict(plain.state_dict())
    rt = resolve_runtime("cpu").for_unet()
    fast = rt.prepare_module(fast)
    x = torch.randn(2, 3, 32, 32)
    xb = rt.batch(x)
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert fast.inc[0].weight.is_contiguous(memory_format=torch.channels_last)
    y_plain, y_fast = plain(x), fast(xb)
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-4, atol=1e-5)
    y_plain.square().mean().backward()
    y_fast.square().mean().backward()
    torch.testing.assert_close(fast.inc[0].weight.grad, plain.inc[0].weight.grad, rtol=1e-4, atol=1e-5)
    # a bundle saved from the channels_last U-Net loads into a plain one
    again = UNet(3, 5, width=4)
    again.load_state_dict(fast.state_dict())
    torch.testing.assert_close(again(x), y_plain, rtol=1e-4, atol=1e-5)
