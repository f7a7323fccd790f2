import pytest
import torch

from sasan.losses import attention_consistency_loss, orthogonality_loss


def test_disjoint_maps_are_orthogonal():
    maps = torch.zeros(2, 4, 8, 8)
    for k in range(4):
        maps[:, k, 2 * k : 2 * k + 2] = torch.rand(2, 2, 8) + 0.1  # disjoint row bands
    assert orthogonality_loss(maps).item() == pytest.approx(0.0, abs=1e-7)


def test_identical_maps_give_twice_the_batch_size():
    """The authors' normalisation: 2 / (K (K - 1)) x the sum over the batch, so K identical
    maps give 2 per sample."""
    m = torch.rand(3, 1, 8, 8) + 0.1
    assert orthogonality_loss(m.expand(3, 5, 8, 8) * 3.0).item() == pytest.approx(6.0, abs=1e-5)


def test_hand_computed_partial_overlap():
    # two maps on 4 pixels: [1, 1, 0, 0] and [0, 1, 1, 0]; cosine = 1/2, so G_01 = G_10 = 1/2;
    # 2 / (2 * 1) x (1/4 + 1/4) = 1/2 per sample, summed over a batch of two
    maps = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]).view(1, 2, 2, 2)
    assert orthogonality_loss(maps).item() == pytest.approx(0.5)
    assert orthogonality_loss(maps.expand(2, 2, 2, 2)).item() == pytest.approx(1.0)


def test_orthogonality_is_differentiable_and_zero_maps_finite():
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0] = 1.0
    maps.requires_grad_()
    loss = orthogonality_loss(maps)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(maps.grad).all()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    orthogonality_loss(x).backward()
    assert x.grad.abs().sum() > 0


def test_orthogonality_needs_two_maps():
    """K = 1 has no pair of maps: the 2 / (K (K - 1)) normalisation would divide by zero."""
    with pytest.raises(ValueError, match=r"maps must be \(B, K, H, W\) with K >= 2, got \(2, 1, 4, 4\)"):
        orthogonality_loss(torch.rand(2, 1, 4, 4))


def test_attention_consistency_is_mean_abs_difference():
    a = torch.tensor([1.0, -2.0, 3.0, 0.0]).view(1, 1, 2, 2)
    b = torch.tensor([0.0, 2.0, 3.0, 0.5]).view(1, 1, 2, 2)
    assert attention_consistency_loss(a, b).item() == pytest.approx((1 + 4 + 0 + 0.5) / 4)
    with pytest.raises(ValueError):
        attention_consistency_loss(a, b.view(1, 4, 1, 1))
