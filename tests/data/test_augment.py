"""Augmentation: exact flips and quarter turns, parameter ranges, image/label alignment."""

import numpy as np
import pytest
import torch

from sasan.config import AugmentConfig
from sasan.data.augment import Transform, apply_transform, sample_transform


def _pair(size=32):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label = ((yy - 10) ** 2 + (xx - 20) ** 2 < 36).long() + 2 * ((yy > 22) & (xx < 8)).long()
    image = torch.stack([label.float() * 0.5 - 0.5, (yy.float() / size), (xx.float() / size)])
    return image, label


def test_identity_returns_inputs():
    image, label = _pair()
    out, lab = apply_transform(image, label, Transform(False, 0.0, 1.0))
    assert out is image and lab is label


def test_flip_is_exact_mirror():
    image, label = _pair()
    out, lab = apply_transform(image, label, Transform(True, 0.0, 1.0))
    assert torch.equal(out, image.flip(-1)) and torch.equal(lab, label.flip(-1))


def test_quarter_turn_is_exact_rotation_counter_clockwise():
    image, label = _pair()
    out, lab = apply_transform(image, label, Transform(False, 90.0, 1.0))
    assert torch.allclose(out, torch.rot90(image, 1, dims=(-2, -1)), atol=1e-5)
    assert torch.equal(lab, torch.rot90(label, 1, dims=(-2, -1)))
    out, lab = apply_transform(image, label, Transform(True, 90.0, 1.0))  # flip first, then rotate
    assert torch.equal(lab, torch.rot90(label.flip(-1), 1, dims=(-2, -1)))


def test_shrinking_pads_with_background():
    image, label = _pair()
    out, lab = apply_transform(image, label, Transform(False, 0.0, 0.5))
    assert torch.allclose(out[:, 0, :], torch.full((3, 32), -1.0)) and int(lab[0].abs().sum()) == 0
    assert out.dtype == torch.float32 and lab.dtype == torch.int64 and out.shape == image.shape


def test_label_stays_aligned_with_image():
    image, label = _pair(64)
    rng = np.random.default_rng(0)
    for _ in range(10):
        t = sample_transform(rng, AugmentConfig(rotate_deg=15.0, scale=(0.75, 1.0)))
        out, lab = apply_transform(image, label, t)
        # channel 0 is the label drawn as intensity (0 -> -0.5, 1 -> 0, 2 -> 0.5)
        from_image = torch.round((out[0] + 0.5) * 2).clamp(0, 2).long()
        inside = out[0] > -0.9  # ignore the padded border
        agree = (from_image[inside] == lab[inside]).float().mean()
        assert agree > 0.97, t


def test_sample_ranges_and_seed():
    cfg = AugmentConfig(flip=True, rotate_deg=10.0, scale=(0.75, 1.0))
    draws = [sample_transform(np.random.default_rng(i), cfg) for i in range(200)]
    assert all(-10 <= t.angle_deg <= 10 and 0.75 <= t.scale <= 1.0 for t in draws)
    assert 60 < sum(t.flip for t in draws) < 140
    assert sample_transform(np.random.default_rng(7), cfg) == sample_transform(np.random.default_rng(7), cfg)
    none = sample_transform(np.random.default_rng(0), AugmentConfig(flip=False, rotate_deg=0.0, scale=(1.0, 1.0)))
    assert none.is_identity


def test_image_only():
    image, _ = _pair()
    out, lab = apply_transform(image, None, Transform(False, 30.0, 0.9))
    assert lab is None and out.shape == image.shape
    # (H, W) without the stack axis, or a label of another size: refused whatever the transform
    for t in (Transform(False, 30.0, 0.9), Transform(True, 0.0, 1.0), Transform(False, 0.0, 1.0)):
        with pytest.raises(ValueError, match=r"expected image \(S, H, W\) and label \(H, W\)"):
            apply_transform(image[0], None, t)
    with pytest.raises(ValueError, match=r"got \(3, 32, 32\) and \(16, 16\)"):
        apply_transform(image, torch.zeros(16, 16, dtype=torch.long), Transform(True, 0.0, 1.0))
