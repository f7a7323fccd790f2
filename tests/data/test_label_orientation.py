"""A label stored in another orientation than its image (the same voxels in world space) is
accepted and written in the image's orientation; a real geometry mismatch is still refused."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sasan.cli import main
from sasan.data.ingest import run_ingest
from sasan.data.layout import save_nifti
from sasan.data.manifest import read_manifest
from sasan.data.phantom import generate_phantom
from sasan.data.shards import open_shard
from sasan.data.volume import check_pair, label_on_image_grid, load_volume
from sasan.errors import DataError

RAS = np.array([[1.5, 0, 0, -20.0], [0, 1.2, 0, 10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
LPS_FLIP = [[0, -1], [1, -1], [2, 1]]   # x and y reversed: RAS -> LPS
PERMUTE = [[1, 1], [0, 1], [2, 1]]      # x and y swapped: RAS -> ARS


def _stored_as(array, affine, ornt):
    """The same voxels in world space, stored with the array axes reordered by ``ornt``."""
    return (np.ascontiguousarray(nib.orientations.apply_orientation(array, ornt)),
            affine @ nib.orientations.inv_ornt_aff(ornt, array.shape))


def _restore(path, ornt):
    """Rewrite a NIfTI file with its axes reordered by ``ornt`` (same world geometry)."""
    img = nib.load(path)
    array, affine = _stored_as(np.asarray(img.dataobj), img.affine, ornt)
    save_nifti(path, array, affine)
    return path


@pytest.fixture()
def pair(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(6, 5, 4)).astype(np.uint8)
    image = save_nifti(tmp_path / "image.nii.gz", rng.normal(size=(6, 5, 4)).astype(np.float32), RAS)
    return load_volume(image), label


@pytest.mark.parametrize("ornt", [LPS_FLIP, PERMUTE], ids=["flipped", "permuted"])
def test_a_label_in_another_orientation_lands_on_the_image_grid(pair, tmp_path, ornt):
    image, label = pair
    stored, affine = _stored_as(label, RAS, ornt)
    lab = load_volume(save_nifti(tmp_path / "label.nii.gz", stored, affine), kind="label")
    assert lab.orientation != image.orientation
    on_grid = label_on_image_grid(image, lab)
    check_pair(image, on_grid)
    assert np.array_equal(on_grid.array, label) and np.array_equal(on_grid.affine, image.affine)
    assert on_grid.header.get_data_dtype() == lab.array.dtype


def test_a_label_on_the_image_grid_is_returned_as_is(pair, tmp_path):
    image, label = pair
    lab = load_volume(save_nifti(tmp_path / "label.nii.gz", label, RAS), kind="label")
    assert label_on_image_grid(image, lab) is lab


def test_a_real_mismatch_is_still_refused(pair, tmp_path):
    image, label = pair
    shifted = RAS.copy()
    shifted[0, 3] += 3.0
    lab = load_volume(save_nifti(tmp_path / "same.nii.gz", label, shifted), kind="label")
    with pytest.raises(DataError, match=r"^.*label affine differs from the image's \(image.nii.gz\) by up to 3 mm$"):
        label_on_image_grid(image, lab)
    # flipped and shifted: the distance is the shift, measured in the image's orientation
    lab = load_volume(save_nifti(tmp_path / "moved.nii.gz", *_stored_as(label, shifted, LPS_FLIP)), kind="label")
    with pytest.raises(DataError, match=r"label affine differs from the image's \(image.nii.gz\) by up to 3 mm, "
                                        r"compared in the image's orientation RAS \(the label is stored LPS\)"):
        label_on_image_grid(image, lab)
    # another grid: flipped, with one slice too few
    lab = load_volume(save_nifti(tmp_path / "short.nii.gz", *_stored_as(label[:, :, :-1], RAS, LPS_FLIP)),
                      kind="label")
    with pytest.raises(DataError, match=r"label shape \(6, 5, 3\) differs from image shape \(6, 5, 4\)"):
        label_on_image_grid(image, lab)


def test_ingest_remaps_a_flipped_label_in_the_image_orientation(tmp_path):
    """The label_map path (MM-WHS codes) writes the remapped label on the image grid too."""
    raw = np.array([0, 205, 420, 500, 550, 600, 820, 850], np.uint16)[np.arange(120) % 8].reshape(6, 5, 4)
    for mod in ("mr", "ct"):
        for num in (1001, 1002, 1003):
            save_nifti(tmp_path / f"src/{mod}_train/{mod}_train_{num}_image.nii.gz",
                       np.zeros((6, 5, 4), np.float32), RAS)
            save_nifti(tmp_path / f"src/{mod}_train/{mod}_train_{num}_label.nii.gz", *_stored_as(raw, RAS, LPS_FLIP))
    run_ingest(tmp_path / "src", tmp_path / "out", layout="mmwhs", test_fraction=0.4)
    case = next(c for c in read_manifest(tmp_path / "out")["cases"] if c["case_id"] == "mr_1002")
    lab = nib.load(tmp_path / "out" / case["label"])
    assert nib.aff2axcodes(lab.affine) == ("R", "A", "S") and np.allclose(lab.affine, RAS)
    expected = np.array([0, 1, 2, 3, 0, 0, 4, 0], np.uint8)[np.arange(120) % 8].reshape(6, 5, 4)
    assert np.array_equal(np.asarray(lab.dataobj), expected)


def _shard_labels(shards):
    return {f"{d}/{s}": np.asarray(open_shard(shards / d / s).labels)
            for d in ("mr", "ct") for s in ("train", "test")}


@pytest.mark.slow
def test_ingest_validate_preprocess_with_labels_stored_flipped_and_permuted(tmp_path, capsys):
    plain = Path(generate_phantom(tmp_path / "plain", cases=4, seed=0, size=16)["out_dir"])
    src = tmp_path / "src"
    shutil.copytree(plain, src)
    _restore(src / "ct/labelsTr/ct_002.nii.gz", LPS_FLIP)
    _restore(src / "mr/labelsTr/mr_003.nii.gz", PERMUTE)
    for name, data in (("plain", plain), ("src", src)):
        raw, shards = tmp_path / f"raw-{name}", tmp_path / f"shards-{name}"
        assert main(["ingest", str(data), str(raw)]) == 0
        assert main(["validate", str(raw), "--report", str(tmp_path / f"report-{name}"),
                     "--set", "preprocess.image_size=32"]) == 0
        assert main(["preprocess", str(raw), str(shards), "--set", "preprocess.image_size=32"]) == 0
    capsys.readouterr()
    label_of = {c["case_id"]: c["label"] for c in read_manifest(tmp_path / "raw-src")["cases"]}
    for domain, case in (("ct", "ct_002"), ("mr", "mr_003")):
        original = nib.load(plain / domain / "labelsTr" / f"{case}.nii.gz")
        written = nib.load(tmp_path / "raw-src" / label_of[case])
        assert np.array_equal(written.affine, original.affine)
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))
    reference, result = _shard_labels(tmp_path / "shards-plain"), _shard_labels(tmp_path / "shards-src")
    assert reference.keys() == result.keys()
    for key in reference:
        assert np.array_equal(reference[key], result[key]), key
