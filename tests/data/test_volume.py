"""Safe NIfTI loading: each bad input gives one DataError line naming the file."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from sasan.data.volume import Volume, check_pair, label_values, load_volume
from sasan.errors import DataError


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def _raises(path, match, **kw):
    with pytest.raises(DataError, match=match) as info:
        load_volume(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


def test_loads_native_dtype_and_geometry(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([-0.5, 0.7, 2.0, 1.0])
    for name in ("v.nii.gz", "v.nii"):
        vol = load_volume(_save(tmp_path / name, data, affine))
        assert vol.array.dtype == np.int16 and np.array_equal(vol.array, data)
        assert vol.spacing == pytest.approx((0.5, 0.7, 2.0))
        assert vol.orientation == "LAS"
        assert np.allclose(vol.affine, affine)


def test_scaled_ints_become_float32(tmp_path):
    img = nib.Nifti1Image(np.array([[[0, 1], [2, 3]]], np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "s.nii.gz")
    vol = load_volume(tmp_path / "s.nii.gz")
    assert vol.array.dtype == np.float32
    assert vol.array.ravel().tolist() == [-1024.0, -1022.0, -1020.0, -1018.0]


def test_trailing_singleton_4d_is_3d(tmp_path):
    vol = load_volume(_save(tmp_path / "v.nii.gz", np.zeros((3, 4, 5, 1), np.float32)))
    assert vol.array.shape == (3, 4, 5)


def test_corrupt_gzip(tmp_path):
    good = _save(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    raw = bytearray(good.read_bytes())
    raw[200:400] = bytes(200)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    _raises(bad, "corrupt gzip")


def test_truncated_gzip(tmp_path):
    good = _save(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(good.read_bytes()[:-300])
    _raises(bad, "truncated")


def test_truncated_uncompressed(tmp_path):
    good = _save(tmp_path / "good.nii", np.zeros((16, 16, 16), np.float32))
    bad = tmp_path / "cut.nii"
    bad.write_bytes(good.read_bytes()[:1000])
    msg = _raises(bad, "truncated file")
    assert "16736" in msg  # 352 header bytes + 16**3 * 4 voxel bytes


def test_not_nifti(tmp_path):
    text = tmp_path / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"this is not an image\n" * 40))
    _raises(text, "not a NIfTI")
    plain = tmp_path / "plain.nii.gz"
    plain.write_text("hello")
    _raises(plain, "not a gzip")
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    _raises(empty, "empty file")


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.nii.gz", "not found")


@pytest.mark.parametrize("shape,dims", [((8, 8), "2-D"), ((8, 8, 8, 2), "4-D")])
def test_wrong_dimensionality(tmp_path, shape, dims):
    _raises(_save(tmp_path / "v.nii.gz", np.zeros(shape, np.float32)), dims)


def test_nan_and_inf(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    data[2, 2, 2] = -np.inf
    path = _save(tmp_path / "v.nii.gz", data)
    _raises(path, "1 NaN and 2 Inf")
    assert not np.isfinite(load_volume(path, check_finite=False).array).all()


def test_label_must_be_integer_and_nonnegative(tmp_path):
    _raises(_save(tmp_path / "f.nii.gz", np.full((2, 2, 2), 0.5, np.float32)), "non-integer", kind="label")
    _raises(_save(tmp_path / "n.nii.gz", np.full((2, 2, 2), -1, np.int16)), "negative", kind="label")
    vol = load_volume(_save(tmp_path / "ok.nii.gz", np.full((2, 2, 2), 3.0, np.float32)), kind="label")
    assert vol.array.dtype == np.int32 and label_values(vol.array) == [3]


def _vol(tmp_path, name, shape=(4, 4, 4), affine=None):
    return load_volume(_save(tmp_path / name, np.zeros(shape, np.uint8), affine))


def test_check_pair_shape_and_affine(tmp_path):
    image = _vol(tmp_path, "img.nii.gz")
    check_pair(image, _vol(tmp_path, "same.nii.gz"))
    with pytest.raises(DataError, match=r"label shape \(4, 4, 5\) differs") as info:
        check_pair(image, _vol(tmp_path, "lab.nii.gz", shape=(4, 4, 5)))
    assert str(info.value).startswith(str(tmp_path / "lab.nii.gz"))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    with pytest.raises(DataError, match="affine differs .* 0.5 mm"):
        check_pair(image, _vol(tmp_path, "moved.nii.gz", affine=shifted))


def test_label_values():
    assert label_values(np.array([[[0, 4, 4, 1]]], np.uint8)) == [0, 1, 4]
    assert label_values(np.array([[[70000, 2]]], np.int32)) == [2, 70000]
    assert isinstance(load_volume, object) and Volume  # public names exist


@pytest.mark.parametrize("codec", ["installed", "stdlib"])
def test_gzip_codecs_agree_and_fail_alike(tmp_path, monkeypatch, codec):
    import sasan.data.volume as volume

    if codec == "stdlib":
        monkeypatch.setattr(volume, "gzip_codec", lambda: (gzip.decompress, ()))
    data = np.random.default_rng(1).integers(-1000, 1000, size=(20, 18, 16)).astype(np.int16)
    path = _save(tmp_path / "v.nii.gz", data)
    assert np.array_equal(load_volume(path).array, data)
    raw = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[:-100])
    _raises(tmp_path / "cut.nii.gz", "truncated")
    bad = bytearray(raw)
    bad[-8:-4] = bytes(4)  # wrong CRC32 in the trailer
    (tmp_path / "crc.nii.gz").write_bytes(bytes(bad))
    _raises(tmp_path / "crc.nii.gz", "corrupt gzip")


def test_spacing_follows_the_affine_when_pixdim_is_stale(tmp_path, caplog):
    """An sform-only file with 2 x 2 x 3 mm columns and a stale pixdim of 1 x 1 x 1: the
    spacing describes the affine's grid, with a warning naming the file."""
    img = nib.Nifti1Image(np.ones((6, 6, 4), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_qform(None, code=0)
    img.header["pixdim"][1:4] = [1.0, 1.0, 1.0]
    path = tmp_path / "stale.nii.gz"
    nib.save(img, path)
    with caplog.at_level("WARNING", logger="sasan.data.volume"):
        vol = load_volume(path)
    assert vol.spacing == (2.0, 2.0, 3.0)
    assert str(path) in caplog.text and "pixdim" in caplog.text


def test_spacing_keeps_pixdim_when_it_agrees(tmp_path, caplog):
    """Consistent headers (also oblique ones, whose column norms carry rounding) give the
    header's pixdim values exactly, and no warning."""
    angle = 0.5
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.7, 2.5])
    with caplog.at_level("WARNING", logger="sasan.data.volume"):
        for name, aff in (("oblique.nii.gz", affine), ("diag.nii.gz", np.diag([0.5, 0.7, 2.0, 1.0]))):
            vol = load_volume(_save(tmp_path / name, np.zeros((4, 4, 4), np.float32), aff))
            assert vol.spacing == tuple(float(z) for z in vol.header.get_zooms()[:3])
    assert caplog.text == ""
