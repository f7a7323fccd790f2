"""WinogradConv2d against F.conv2d: outputs, gradients, state dicts, swap helper, fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sasan.models.winograd import (WinogradConv2d, winograd_conv3x3, winograd_convs,
                                   winograd_matrices)

torch.set_num_threads(1)

SHAPES = [  # (N, C_in, H, W, C_out)
    (1, 3, 8, 8, 5),
    (2, 4, 9, 13, 3),
    (2, 6, 7, 6, 4),
    (1, 5, 17, 16, 4),
    (2, 8, 20, 21, 16),
    (1, 2, 1, 5, 3),     # smaller than one tile
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("m", [2, 4, 6])
def test_matrices_give_1d_correlation(m):
    bt, g, at = (t.double() for t in winograd_matrices(m))
    gen = torch.Generator().manual_seed(0)
    filt = torch.randn(3, dtype=torch.float64, generator=gen)
    d = torch.randn(m + 2, dtype=torch.float64, generator=gen)
    y = at @ ((g @ filt) * (bt @ d))
    ref = torch.stack([filt @ d[i:i + 3] for i in range(m)])
    assert torch.allclose(y, ref, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_conv2d(shape, bias, m):
    n, c, h, w, k = shape
    gen = torch.Generator().manual_seed(sum(shape) + m)
    x = torch.randn(n, c, h, w, generator=gen, requires_grad=True)
    weight = torch.randn(k, c, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(k, generator=gen, requires_grad=True) if bias else None
    y = winograd_conv3x3(x, weight, b, m)
    ref = F.conv2d(x, weight, b, padding=1)
    assert y.shape == ref.shape and y.is_contiguous()
    assert _rel(y, ref) < 1e-4
    g = torch.randn(ref.shape, generator=gen)
    inputs = (x, weight, b) if bias else (x, weight)
    got = torch.autograd.grad(y, inputs, g)
    want = torch.autograd.grad(ref, inputs, g)
    for a, e in zip(got, want):
        assert a.shape == e.shape
        assert _rel(a, e) < 1e-4


def test_only_input_gradient_or_only_weight_gradient():
    x = torch.randn(1, 4, 10, 10)
    weight = torch.randn(5, 4, 3, 3, requires_grad=True)
    (gw,) = torch.autograd.grad(winograd_conv3x3(x, weight).square().sum(), weight)
    (rw,) = torch.autograd.grad(F.conv2d(x, weight, padding=1).square().sum(), weight)
    assert _rel(gw, rw) < 1e-4
    x.requires_grad_(True)
    weight.requires_grad_(False)
    (gx,) = torch.autograd.grad(winograd_conv3x3(x, weight).square().sum(), x)
    (rx,) = torch.autograd.grad(F.conv2d(x, weight, padding=1).square().sum(), x)
    assert _rel(gx, rx) < 1e-4


def _module(min_channels: int = 1, min_size: int = 1) -> WinogradConv2d:
    torch.manual_seed(0)
    return WinogradConv2d(6, 7, 3, padding=1, min_channels=min_channels, min_product=1,
                          min_size=min_size)


def test_module_matches_conv2d_and_state_dict_round_trip():
    wino = _module()
    conv = nn.Conv2d(6, 7, 3, padding=1)
    assert set(wino.state_dict()) == set(conv.state_dict()) == {"weight", "bias"}
    conv.load_state_dict(wino.state_dict())
    x = torch.randn(2, 6, 12, 11, requires_grad=True)
    assert _rel(wino(x), conv(x)) < 1e-4
    conv2 = nn.Conv2d(6, 7, 3, padding=1)
    wino.load_state_dict(conv2.state_dict())
    assert _rel(wino(x), conv2(x)) < 1e-4
    wino(x).sum().backward()
    assert wino.weight.grad is not None and wino.bias.grad is not None


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=0),
    dict(kernel_size=3, padding=1, stride=2),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=5, padding=2),
    dict(kernel_size=1),
])
def test_unsupported_configurations_fall_back(kwargs):
    torch.manual_seed(0)
    wino = WinogradConv2d(4, 4, min_channels=1, min_product=1, min_size=1, **kwargs)
    assert not wino.winograd_ok
    conv = nn.Conv2d(4, 4, **kwargs)
    conv.load_state_dict(wino.state_dict())
    x = torch.randn(1, 4, 9, 9)
    assert torch.equal(wino(x), conv(x))


def test_small_inputs_and_few_channels_fall_back(monkeypatch):
    calls = []
    monkeypatch.setattr("sasan.models.winograd.winograd_conv3x3",
                        lambda *a: calls.append(a) or F.conv2d(a[0], a[1], a[2], padding=1))
    _module(min_channels=8)(torch.randn(1, 6, 32, 32))          # 6 channels < 8
    _module(min_size=16)(torch.randn(1, 6, 8, 32))              # too small
    _module()(torch.randn(6, 16, 16))                           # unbatched
    _module().double()(torch.randn(1, 6, 16, 16, dtype=torch.float64))  # not float32
    assert calls == []
    _module()(torch.randn(1, 6, 16, 16))
    assert len(calls) == 1


def test_swap_helper_shares_parameters_and_outputs(monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1),                      # swapped
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1),       # swapped (nested)
                      nn.Conv2d(16, 16, 3, padding=1, stride=2),   # stride: kept
                      nn.Conv2d(16, 16, 1)),                # 1x1: kept
        nn.Conv2d(16, 2, 3, padding=1),                     # too few channels: kept
    )
    x = torch.randn(2, 8, 16, 16)
    ref = net(x)
    params = {name: p for name, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    calls = []
    monkeypatch.setattr("sasan.models.winograd.winograd_conv3x3",
                        lambda *a: calls.append(a) or winograd_conv3x3(*a))
    assert winograd_convs(net, min_channels=4, min_size=8, min_product=64) == 2
    assert type(net[0]) is WinogradConv2d and type(net[2][0]) is WinogradConv2d
    assert type(net[2][1]) is nn.Conv2d and type(net[3]) is nn.Conv2d
    assert all(p is params[name] for name, p in net.named_parameters())
    assert net.state_dict().keys() == state.keys()
    assert _rel(net(x), ref) < 1e-4
    assert len(calls) == 2
    net.zero_grad()
    net(x).square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert winograd_convs(net, min_channels=4, min_product=64) == 0   # idempotent
    defaults = nn.Sequential(nn.Conv2d(16, 256, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1),
                             nn.Conv2d(64, 32, 3, padding=1), nn.Conv2d(64, 128, 3, padding=1))
    assert winograd_convs(defaults) == 2      # 64 -> 32 and 64 -> 128 by default
    assert type(defaults[0]) is nn.Conv2d     # 16 in-channels: too few
    assert type(defaults[1]) is nn.Conv2d     # 32 x 32: too small a product
    assert type(defaults[2]) is WinogradConv2d and type(defaults[3]) is WinogradConv2d


def test_conv_forward_accepts_another_weight():
    """Callers that fold linear maps into a conv's weight (SASANResBlock) pass their own
    weight and bias through _conv_forward and still get the Winograd path."""
    torch.manual_seed(0)
    conv = WinogradConv2d(64, 128, 3, padding=1)
    assert conv.winograd_ok
    x = torch.randn(1, 64, 64, 64)
    w, b = torch.randn(96, 64, 3, 3) * 0.05, torch.randn(96)
    out = conv._conv_forward(x, w, b)
    ref = F.conv2d(x, w, b, padding=1)
    assert out.shape == (1, 96, 64, 64)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
