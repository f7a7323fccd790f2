"""Canonical layout: paths, dataset.json checks, NIfTI writing with geometry."""

import json

import nibabel as nib
import numpy as np
import pytest

from sasan.data import layout
from sasan.errors import DataError

CARDIAC = {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "AA": 4}


def test_paths_follow_nnunet_convention(tmp_path):
    assert layout.image_path(tmp_path, "mr", "mr_001") == tmp_path / "mr/imagesTr/mr_001_0000.nii.gz"
    assert layout.label_path(tmp_path, "ct", "ct_007", "test") == tmp_path / "ct/labelsTs/ct_007.nii.gz"


def test_dataset_json_round_trip(tmp_path):
    info = layout.DatasetInfo(name="x_mr", modality="MR", labels=CARDIAC, num_training=7)
    path = layout.write_dataset_json(tmp_path / "mr", info)
    data = json.loads(path.read_text())
    assert data == {"name": "x_mr", "modality": "MR", "channel_names": {"0": "MR"}, "labels": CARDIAC,
                    "numTraining": 7, "file_ending": ".nii.gz"}
    assert layout.read_dataset_json(tmp_path / "mr") == info
    assert layout.domains(tmp_path) == ["mr"]


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.pop("labels"), "labels"),
    (lambda d: d.pop("numTraining"), "numTraining"),
    (lambda d: d.update(labels={"MYO": 1}), "background"),
    (lambda d: d.update(labels={"background": 0, "MYO": 1, "LV": 1}), "distinct"),
    (lambda d: d.update(labels={"background": 0, "MYO": "1"}), "MYO"),
    (lambda d: d.update(file_ending=".mha"), "file_ending"),
    (lambda d: d.update(numTraining=-1), "numTraining"),
    (lambda d: d.update(channel_names={"0": "MR", "1": "CT"}), "channel_names"),
])
def test_bad_dataset_json_is_rejected_naming_the_file(tmp_path, mutate, needle):
    info = layout.DatasetInfo(name="x", modality="MR", labels=CARDIAC, num_training=1)
    data = info.to_json()
    mutate(data)
    (tmp_path / "mr").mkdir()
    (tmp_path / "mr/dataset.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        layout.read_dataset_json(tmp_path / "mr")
    assert needle in str(err.value) and "dataset.json" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_broken_dataset_json(tmp_path):
    with pytest.raises(DataError, match="missing"):
        layout.read_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        layout.read_dataset_json(tmp_path)


def test_bad_domain_and_case_names():
    assert layout.check_domain("t1ce") == "t1ce"
    with pytest.raises(DataError):
        layout.check_domain("MR")
    with pytest.raises(DataError):
        layout.check_case_id("../evil")


def test_save_nifti_keeps_geometry_and_dtype(tmp_path):
    affine = np.diag([0.7, 0.7, 1.25, 1.0])
    affine[:3, 3] = [-50.0, -40.0, 10.0]
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = layout.save_nifti(tmp_path / "a/b.nii.gz", data, affine)
    img = nib.load(path)
    assert np.allclose(img.affine, affine)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.get_data_dtype() == np.int16
    assert np.array_equal(np.asarray(img.dataobj), data)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.nii.gz"]  # no temp file left


def test_iter_cases_pairs_labels(tmp_path):
    aff = np.eye(4)
    for split, case in (("train", "mr_1"), ("test", "mr_2")):
        layout.save_nifti(layout.image_path(tmp_path, "mr", case, split), np.zeros((2, 2, 2), np.float32), aff)
    layout.save_nifti(layout.label_path(tmp_path, "mr", "mr_1"), np.zeros((2, 2, 2), np.uint8), aff)
    cases = list(layout.iter_cases(tmp_path, "mr"))
    assert [(c.case_id, c.split, c.label is not None) for c in cases] == [("mr_1", "train", True),
                                                                          ("mr_2", "test", False)]


def test_case_id_message_names_the_real_problem(tmp_path):
    with pytest.raises(DataError, match=r"case id '\._sub2' must start with a letter or digit$"):
        layout.check_case_id("._sub2")
    with pytest.raises(DataError, match=r"must start with a letter or digit and use only \[A-Za-z0-9_.-\]"):
        layout.check_case_id("sub 2")
    assert layout.is_hidden(tmp_path / "._x_0000.nii.gz")
    assert layout.is_hidden(tmp_path / ".git/x.nii.gz", tmp_path) and not layout.is_hidden(tmp_path / "a/x", tmp_path)
