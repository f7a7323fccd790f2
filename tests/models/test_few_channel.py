"""The few-input-channel convolution (sasan/models/few_channel.py) and its C correlation
kernel: values against a float64 reference (every channel count, odd sizes that leave a
partial 32-pixel block), gradients against nn.Conv2d, thread splitting, which convolutions
are swapped, and the plain nn.Conv2d path where the kernel is unavailable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sasan.models import SASANNetworks
from sasan.models import winograd_kernels as K
from sasan.models.few_channel import FewInputConv2d, few_input_convs

needs_corr = pytest.mark.skipif(not K.correlation_available(),
                                reason="no AVX-512 build of the C kernels here")


def _reference(g: torch.Tensor, w: torch.Tensor, pad: int) -> torch.Tensor:
    """out[n, c] = sum_{o,a,b} w[o, a, b, c] g[n, o, y + a - pad, x + b - pad], in float64."""
    return F.conv2d(F.pad(g.double(), [pad] * 4), w.double().permute(3, 0, 1, 2))


@needs_corr
@pytest.mark.parametrize("c", range(1, 9))
@pytest.mark.parametrize("shape, k, pad", [((2, 5, 9, 37), 3, 1), ((1, 3, 17, 64), 5, 4),
                                           ((2, 4, 6, 33), 7, 2), ((1, 2, 3, 5), 3, 0),
                                           ((1, 6, 12, 70), 1, 0)])
def test_correlation_against_float64(c, shape, k, pad):
    gen = torch.Generator().manual_seed(c * 100 + k)
    g = torch.randn(*shape, generator=gen)
    w = torch.randn(shape[1], k, k, c, generator=gen)
    got = K.correlate_few(g, w, pad)
    want = _reference(g, w, pad)
    assert got.shape == want.shape
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()


@needs_corr
def test_correlation_rejects_unsupported_shapes():
    with pytest.raises(ValueError, match="correlate_few"):
        K.correlate_few(torch.randn(1, 4, 8, 8), torch.randn(4, 3, 3, 9), 1)    # 9 outputs
    with pytest.raises(ValueError, match="correlate_few"):
        K.correlate_few(torch.randn(1, 4, 8, 8), torch.randn(5, 3, 3, 2), 1)    # channel mismatch


@needs_corr
def test_one_and_two_threads_give_identical_results():
    gen = torch.Generator().manual_seed(3)
    g, w = torch.randn(3, 16, 21, 40, generator=gen), torch.randn(16, 3, 3, 8, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = K.correlate_few(g, w, 1)
        torch.set_num_threads(2)
        two = K.correlate_few(g, w, 1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@needs_corr
@pytest.mark.parametrize("c_in, c_out, k, pad, bias", [(8, 64, 3, 1, True), (3, 32, 5, 0, False),
                                                        (8, 5, 3, 0, True), (3, 32, 7, 3, False)])
def test_few_input_conv_equals_conv2d_values_and_gradients(c_in, c_out, k, pad, bias):
    torch.manual_seed(c_in + k)
    plain = nn.Conv2d(c_in, c_out, k, padding=pad, bias=bias)
    swapped = nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=pad, bias=bias))
    swapped[0].load_state_dict(plain.state_dict())
    assert few_input_convs(swapped) == 1 and type(swapped[0]) is FewInputConv2d
    x = torch.randn(2, c_in, 23, 41, requires_grad=True)
    y_ref, y = plain(x), swapped(x)
    assert torch.allclose(y, y_ref)
    g = torch.randn_like(y_ref)
    want = torch.autograd.grad(y_ref, [x, *plain.parameters()], g)
    got = torch.autograd.grad(y, [x, *swapped.parameters()], g)
    for a, e in zip(got, want):
        assert (a - e).abs().max() <= 1e-5 * e.abs().max()


def test_only_eligible_convs_are_swapped_and_parameters_are_kept():
    torch.manual_seed(0)
    nets = SASANNetworks(3, 5, 8)
    before = {k: v for k, v in nets.state_dict(keep_vars=True).items()}
    swapped = few_input_convs(nets)
    if not K.correlation_available():
        assert swapped == 0
        return
    names = [n for n, m in nets.named_modules() if isinstance(m, FewInputConv2d)]
    # per synthesis module: the 7x7 input conv and 8 norms' K -> 64 convs; per attention
    # module: the 5x5 input conv and the K -> classes read-out. Strided discriminator convs
    # and wide convs stay.
    assert swapped == len(names) == 2 * 9 + 2 * 2
    assert "att_t.enc.0.1" in names and "att_t.to_seg.1" in names and "syn_s.encoder.0.1" in names
    assert not any(n.startswith(("disc", "seg_discs")) for n in names)
    after = nets.state_dict(keep_vars=True)
    assert set(after) == set(before) and all(after[k] is before[k] for k in before)


def test_without_the_kernel_it_is_conv2d(monkeypatch):
    conv = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    if K.correlation_available():
        few_input_convs(conv)
    monkeypatch.setattr(K, "correlation_available", lambda: False)
    assert few_input_convs(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))) == 0
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    y = conv(x)
    assert torch.allclose(y, F.conv2d(x, conv[0].weight, conv[0].bias, padding=1))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
