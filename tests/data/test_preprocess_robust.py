"""Preprocessing on awkward inputs: anisotropic voxels (square pixels in mm when the plane
is fitted to the canvas), hot voxels and CT padding (body threshold), the image/label
affine tolerance."""

import logging

import nibabel as nib
import numpy as np
import pytest

from sasan.data import slice_geometry as geo
from sasan.data.config import PreprocessConfig
from sasan.data.prepare import prepare_case, prepare_loaded, prepare_volume
from sasan.data.volume import load_volume
from sasan.errors import DataError


def _save(path, array, spacing):
    img = nib.Nifti1Image(np.asarray(array), np.diag([*spacing, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, path)
    return path


# ----------------------------------------------------------------------------- square pixels in mm
def test_fit_physical_by_hand():
    box = ((0, 96), (10, 20), (0, 58))  # 96 x 58 voxels in the coronal plane (R, S)
    assert geo.fit_physical(box, (0.5, 3.0, 1.5), 1, 64) == (64, 35)  # 87 mm (S) x 48 mm (R) -> 64 x 35
    # in-plane isotropic: exactly the voxel-count fit, whatever the slice spacing
    assert geo.fit_physical(box, (0.7, 3.0, 0.7), 1, 64) == geo.fit_size((58, 96), 64) == (39, 64)
    assert geo.fit_physical(box, (1.0, 1.0, 1.0), 0, 32) == geo.fit_size((58, 10), 32)


def test_anisotropic_voxels_give_square_pixels(tmp_path):
    """0.5 x 0.5 x 1.5 mm voxels sliced coronally: the plane is 48 mm (R) x 87 mm (S); without
    field_of_view_mm the pixels are square in mm (was: 0.19 x 0.56 mm, anatomy squashed 3x)."""
    a = np.zeros((128, 128, 60), np.float32)
    a[20:108, 20:108, 5:55] = np.random.default_rng(0).normal(300, 30, (88, 88, 50))
    path = _save(tmp_path / "aniso.nii.gz", a, (0.5, 0.5, 1.5))
    prepared = prepare_volume(path, PreprocessConfig(axis=1, image_size=64), "MR")
    g = prepared.geometry
    mm = [(hi - lo) * s for (lo, hi), s in zip(g.box, (0.5, 0.5, 1.5))]
    h_mm, w_mm = mm[2] / g.content[0], mm[0] / g.content[1]
    assert max(g.content) == 64 and h_mm == pytest.approx(w_mm, rel=0.03)
    # the way back still lands on the original grid
    label = (a > 0).astype(np.uint8)
    back = np.asarray(prepared.restore(prepared.forward_label(label)).dataobj)
    assert back.shape == label.shape
    assert 2 * np.logical_and(back, label).sum() / (back.sum() + label.sum()) > 0.95


# ----------------------------------------------------------------------------- body threshold
def _ellipse_volume(rng, n=96, depth=40, background=0.0, body=500.0):
    x, y = np.mgrid[:n, :n] - n / 2 + 0.5
    inside = (x / 34) ** 2 + (y / 26) ** 2 < 1
    a = np.abs(rng.normal(background, 10, (n, n, depth)))
    a[inside] = body + rng.normal(0, 50, (int(inside.sum()), depth))
    return a, x, y


def test_hot_voxels_do_not_drop_every_slice(tmp_path, caplog):
    """5 voxels at 60000 in an MR stretch the histogram: Otsu's threshold (~940) leaves no
    slice with body. The retry on percentile-clipped voxels finds the body again."""
    rng = np.random.default_rng(0)
    a, _, _ = _ellipse_volume(rng)
    cfg = PreprocessConfig(axis=2, image_size=96)
    clean = prepare_volume(_save(tmp_path / "clean.nii.gz", a.astype(np.float32), (1, 1, 2)), cfg, "MR")
    a.flat[rng.choice(a.size, 5, replace=False)] = 60000
    path = _save(tmp_path / "spikes.nii.gz", a.astype(np.float32), (1, 1, 2))
    with caplog.at_level(logging.WARNING, logger="sasan.data.prepare"):
        spiky = prepare_volume(path, cfg, "MR")
    assert "body_threshold_fallback" not in clean.stats
    assert spiky.stats["body_threshold_fallback"] == 1.0 and str(path) in caplog.text
    assert spiky.stats["body_threshold"] == pytest.approx(clean.stats["body_threshold"], abs=20)
    assert spiky.geometry.box == clean.geometry.box
    assert int((spiky.body >= cfg.body_fraction).sum()) == len(spiky.body) == 40


def test_tiny_body_box_falls_back(tmp_path, caplog):
    """A hot block of 0.3% of the volume takes Otsu's threshold; its box (< 1% of the volume)
    is not the body."""
    rng = np.random.default_rng(1)
    a, _, _ = _ellipse_volume(rng, n=128, depth=64)
    a[56:72, 56:72, 30:36] = 60000
    cfg = PreprocessConfig(axis=2, image_size=64)
    with caplog.at_level(logging.WARNING, logger="sasan.data.prepare"):
        prepared = prepare_volume(_save(tmp_path / "block.nii.gz", a.astype(np.float32), (1, 1, 1)), cfg, "MR")
    assert "% of the volume" in caplog.text and prepared.stats["body_threshold_fallback"] == 1.0
    box = prepared.geometry.box
    # the ellipse (68 x 52 voxels) plus the 4-voxel margin (and the one voxel the step-2 lattice may add)
    assert 25 <= box[0][0] <= 26 and 102 <= box[0][1] <= 103
    assert 33 <= box[1][0] <= 34 and 94 <= box[1][1] <= 95


def _ct(rng, pad):
    n = 96
    x, y = np.mgrid[:n, :n] - n / 2 + 0.5
    a = np.full((n, n, 40), -1000.0) + rng.normal(0, 5, (n, n, 40))
    inside = (x / 34) ** 2 + (y / 26) ** 2 < 1
    a[inside] = 40 + rng.normal(0, 20, (int(inside.sum()), 40))
    a[(x / 12) ** 2 + ((y - 4) / 10) ** 2 < 1] = 330
    a = np.maximum(a, -1024)
    if pad:
        a[(x ** 2 + y ** 2) > (n / 2) ** 2] = -3024  # outside the scanner's circular field of view
    return a.astype(np.int16)


def test_ct_padding_is_air(tmp_path):
    """-3024 outside the field of view put Otsu's threshold at ~-3011 (no body crop) and moved
    the percentiles; clamped at -1024 HU, the padded scan prepares like the unpadded one."""
    cfg = PreprocessConfig(axis=2, image_size=96)
    plain = prepare_volume(_save(tmp_path / "plain.nii.gz", _ct(np.random.default_rng(0), False), (1, 1, 2)), cfg,
                           "CT")
    padded_path = _save(tmp_path / "padded.nii.gz", _ct(np.random.default_rng(0), True), (1, 1, 2))
    padded = prepare_volume(padded_path, cfg, "CT")
    assert padded.geometry.box == plain.geometry.box == ((10, 86), (18, 78), (0, 40))
    assert abs(padded.stats.pop("body_threshold") - plain.stats.pop("body_threshold")) < 10  # was ~2000 off
    assert padded.stats == pytest.approx(plain.stats, rel=1e-3)
    assert float(np.abs(padded.slices - plain.slices).max()) < 1e-3
    # not CT: no clamp (an MR has no HU)
    assert prepare_volume(padded_path, cfg, "MR").stats["p_low"] == -3024


def test_ct_clamp_is_a_no_op_at_or_above_minus_1024_and_copies_below(tmp_path):
    cfg = PreprocessConfig(axis=2, image_size=96)
    volume = load_volume(_save(tmp_path / "ct.nii.gz", _ct(np.random.default_rng(2), False), (1, 1, 2)))
    assert int(volume.array.min()) == -1024  # the phantom's CT floor: recorded shards stay as they were
    a, b = prepare_loaded(volume, cfg, (-2.8, 3.2), "CT"), prepare_loaded(volume, cfg, (-2.8, 3.2))
    assert a.stats == b.stats and np.array_equal(a.slices, b.slices)
    padded = load_volume(_save(tmp_path / "padded.nii.gz", _ct(np.random.default_rng(2), True), (1, 1, 2)))
    clamped = prepare_loaded(padded, cfg, (-2.8, 3.2), "CT")
    assert clamped.stats["p_low"] >= -1024
    assert int(padded.array.min()) == -3024  # clamped on a copy: the loaded volume is not modified


# ----------------------------------------------------------------------------- affine tolerance
def test_label_affine_tolerance_is_configurable(tmp_path):
    image = np.zeros((16, 16, 8), np.float32)
    image[4:12, 4:12, 2:6] = 100.0
    ip = _save(tmp_path / "img.nii.gz", image, (1, 1, 1))
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[0, 3] = 0.005  # the label 5 micrometres off
    lp = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image((image > 0).astype(np.uint8), aff), lp)
    cfg = PreprocessConfig(image_size=16)
    with pytest.raises(DataError, match="label affine differs"):
        prepare_case(ip, lp, cfg, (-1.8, 4.4))
    _, labels = prepare_case(ip, lp, cfg, (-1.8, 4.4), "MR", affine_atol_mm=0.01)
    assert labels is not None and labels.max() == 1
