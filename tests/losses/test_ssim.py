import math

import pytest
import torch
from monai.metrics import SSIMMetric

from sasan.losses import gaussian_window, ssim, ssim_map


def test_window_is_normalised_symmetric_gaussian():
    w = gaussian_window(7, 1.5, dtype=torch.float64)
    assert w.shape == (7, 7)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0))
    # ratio of the centre to one step away is exp(1 / (2 sigma^2)) along an axis
    assert (w[3, 3] / w[3, 4]).item() == pytest.approx(math.exp(1 / 4.5), rel=1e-12)


def test_identical_images_give_one():
    x = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(ssim(x, x, reduction="none"), torch.ones(2), atol=1e-6)


def test_noise_lowers_ssim_monotonically():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 48, 48, generator=g)
    noise = torch.randn(1, 1, 48, 48, generator=g)
    values = [ssim(x, (x + s * noise).clamp(0, 1)).item() for s in (0.0, 0.05, 0.2, 0.5)]
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert values[0] > values[1] > values[2] > values[3]
    assert values[1] < 0.99


def test_constant_images_hand_computed():
    # constant images a and b: sigma terms vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.7, (0.01 * 1.0) ** 2
    x = torch.full((1, 1, 9, 9), a, dtype=torch.float64)
    y = torch.full((1, 1, 9, 9), b, dtype=torch.float64)
    m = ssim_map(x, y)
    assert m.shape == (1, 1, 3, 3)  # valid padding: 9 - 7 + 1
    assert torch.allclose(m, torch.full_like(m, (2 * a * b + c1) / (a * a + b * b + c1)), atol=1e-12)


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_matches_monai_ssim_metric(data_range):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 40, 33, generator=g) * data_range
    y = (x + 0.3 * data_range * torch.randn(3, 2, 40, 33, generator=g)).clamp(0, data_range)
    ref = SSIMMetric(spatial_dims=2, data_range=data_range, kernel_type="gaussian", win_size=7, kernel_sigma=1.5)(x, y)
    ours = ssim(x, y, data_range=data_range, reduction="none")
    assert ours.shape == (3,)
    assert torch.allclose(ours, ref.view(-1), atol=1e-4)
    assert ssim(x, y, data_range=data_range).item() == pytest.approx(ref.mean().item(), abs=1e-4)


def test_differentiable_and_finite():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 16, generator=g, requires_grad=True)
    y = torch.rand(2, 3, 16, 16, generator=g)
    s = ssim(x, y)
    s.backward()
    assert torch.isfinite(s) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5))  # smaller than the window
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), reduction="sum")


def test_ssim_is_computed_in_float32_under_bf16_autocast():
    """The moments' differences (E[x^2] - mu^2) drown in bf16 rounding next to C2 = 9e-4:
    under autocast (bf16 training on a GPU) SSIM must still be the float32 value."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    xb, yb = x.bfloat16().requires_grad_(), y.bfloat16()
    expected = ssim(xb.detach().float(), yb.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim(xb, yb)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(expected), abs=1e-6)
    got.backward()
    assert xb.grad is not None and torch.isfinite(xb.grad.float()).all()
