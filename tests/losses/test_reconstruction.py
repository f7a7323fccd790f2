import pytest
import torch

from sasan.losses import cycle_loss, identity_loss, l1_ssim_loss, ssim, voxel_l1_loss


def test_identical_images_cost_nothing():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert l1_ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)


def test_l1_ssim_is_l1_plus_one_minus_ssim_on_unit_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 20, 20, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 1, 20, 20, generator=g)).clamp(-1, 1)
    expected = (x - y).abs().mean() + 1 - ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0)
    assert l1_ssim_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert cycle_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert identity_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_shift_of_constant_images_hand_computed():
    # x = 0, y = 0.5 in [-1, 1] -> 0.5 and 0.75 in [0, 1]; SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    y = torch.full_like(x, 0.5)
    a, b, c1 = 0.5, 0.75, 1e-4
    expected = 0.5 + 1 - (2 * a * b + c1) / (a * a + b * b + c1)
    assert l1_ssim_loss(x, y).item() == pytest.approx(expected, rel=1e-10)


def test_voxel_l1():
    fake = torch.tensor([0.0, 0.5, -1.0, 1.0])
    real = torch.tensor([0.0, -0.5, -1.0, 0.0])
    assert voxel_l1_loss(fake, real).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        voxel_l1_loss(fake, real[:3])


def test_gradients_flow_and_are_finite():
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = cycle_loss(x, y) + identity_loss(x, y) + voxel_l1_loss(x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
