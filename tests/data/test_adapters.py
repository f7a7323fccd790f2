"""Adapters: fake trees of each public layout are listed into the right domains and cases."""

import json

import numpy as np
import pytest

from sasan.data.adapters import ADAPTERS, adapt_brats, adapt_mmwhs, adapt_nnunet, adapt_paired, domain_key
from sasan.data.layout import save_nifti
from sasan.errors import DataError

AFF = np.diag([1.0, 1.0, 2.0, 1.0])


def _vol(path, value=0, dtype=np.float32, shape=(4, 4, 3)):
    return save_nifti(path, np.full(shape, value, dtype), AFF)


def make_mmwhs(root, test_case=True):
    for mod in ("mr", "ct"):
        for n in (1001, 1002):
            _vol(root / f"{mod}_train/{mod}_train_{n}_image.nii.gz")
            _vol(root / f"{mod}_train/{mod}_train_{n}_label.nii.gz", 205, np.uint16)
    if test_case:
        _vol(root / "mr_test/mr_test_2001_image.nii.gz")
    (root / "readme.txt").write_text("not an image")
    return root


def make_brats(root):
    for case in ("BraTS20_Training_001", "BraTS20_Training_002"):
        for mod in ("t1", "t1ce", "t2", "flair", "seg"):
            _vol(root / case / f"{case}_{mod}.nii.gz", 0)
    case = "BraTS-GLI-00003-000"  # BraTS 2023 naming
    for mod in ("t1n", "t2w", "seg"):
        _vol(root / case / f"{case}-{mod}.nii.gz")
    return root


def make_paired(root, cases=("p01", "p02", "p03")):
    for case in cases:
        _vol(root / case / "ct.nii.gz")
        _vol(root / case / "mr.nii.gz")
    return root


def _nnunet_json(path, **fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))


def test_registry_has_every_layout():
    assert set(ADAPTERS) == {"nnunet", "mmwhs", "brats", "paired"}


def test_domain_key_aliases():
    assert [domain_key(n) for n in ("MRI", "CT", "T1ce", "t1n", "T2W", "FLAIR", "t2f")] == \
        ["mr", "ct", "t1ce", "t1", "t2", "flair", "flair"]


def test_mmwhs(tmp_path):
    ds = adapt_mmwhs(make_mmwhs(tmp_path))
    assert sorted(ds.domains) == ["ct", "mr"]
    assert ds.domains["mr"].label_map == {205: 1, 420: 2, 500: 3, 820: 4}
    assert ds.domains["ct"].labels == {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "AA": 4}
    ids = sorted((c.domain, c.case_id, c.split, c.label is not None) for c in ds.cases)
    assert ids == [("ct", "ct_1001", None, True), ("ct", "ct_1002", None, True), ("mr", "mr_1001", None, True),
                   ("mr", "mr_1002", None, True), ("mr", "mr_2001", "test", False)]


def test_mmwhs_training_image_without_label(tmp_path):
    make_mmwhs(tmp_path)
    (tmp_path / "ct_train/ct_train_1002_label.nii.gz").unlink()
    with pytest.raises(DataError, match="ct_train_1002_image"):
        adapt_mmwhs(tmp_path)


def test_brats_both_namings_and_shared_seg(tmp_path):
    ds = adapt_brats(make_brats(tmp_path))
    assert sorted(ds.domains) == ["flair", "t1", "t1ce", "t2"]
    assert ds.domains["t1"].labels == {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
    assert ds.domains["t2"].label_map[4] == 3
    t1 = sorted(c.case_id for c in ds.cases if c.domain == "t1")
    assert t1 == ["BraTS-GLI-00003-000", "BraTS20_Training_001", "BraTS20_Training_002"]
    c = next(c for c in ds.cases if c.case_id == "BraTS20_Training_002" and c.domain == "t1ce")
    assert c.image.name == "BraTS20_Training_002_t1ce.nii.gz" and c.label.name == "BraTS20_Training_002_seg.nii.gz"


def test_brats_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no BraTS"):
        adapt_brats(tmp_path)


def test_paired(tmp_path):
    make_paired(tmp_path)
    _vol(tmp_path / "p04/CT.nii.gz")
    _vol(tmp_path / "p04/MRI.nii.gz")  # aliases
    _vol(tmp_path / "p04/ct_label.nii.gz")
    ds = adapt_paired(tmp_path)
    assert sorted(ds.domains) == ["ct", "mr"] and ds.domains["ct"].labels is None
    assert sorted(c.case_id for c in ds.cases if c.domain == "mr") == ["p01", "p02", "p03", "p04"]
    assert next(c for c in ds.cases if c.case_id == "p04" and c.domain == "ct").label.name == "ct_label.nii.gz"


def test_paired_label_table(tmp_path):
    make_paired(tmp_path)
    (tmp_path / "labels.json").write_text('{"background": 0, "bone": 1}')
    assert all(d.labels == {"background": 0, "bone": 1} for d in adapt_paired(tmp_path).domains.values())
    (tmp_path / "labels.json").write_text('{"bone": 1}')
    with pytest.raises(DataError, match="background") as err:
        adapt_paired(tmp_path)
    assert "labels.json" in str(err.value)
    (tmp_path / "labels.json").write_text('{"background": 0,')
    with pytest.raises(DataError, match="cannot read the label table"):
        adapt_paired(tmp_path)


def test_paired_incomplete_pair_names_the_case(tmp_path):
    make_paired(tmp_path)
    (tmp_path / "p02/mr.nii.gz").unlink()
    with pytest.raises(DataError) as err:
        adapt_paired(tmp_path)
    assert "p02" in str(err.value) and "mr.nii.gz" in str(err.value)


def test_nnunet_canonical_multi_domain(tmp_path):
    labels = {"background": 0, "MYO": 1}
    for d, m in (("mr", "MR"), ("ct", "CT")):
        _nnunet_json(tmp_path / d / "dataset.json", name=f"x_{d}", modality=m, channel_names={"0": m},
                     labels=labels, numTraining=1, file_ending=".nii.gz")
        _vol(tmp_path / d / f"imagesTr/{d}_1_0000.nii.gz")
        _vol(tmp_path / d / f"labelsTr/{d}_1.nii.gz", 1, np.uint8)
        _vol(tmp_path / d / f"imagesTs/{d}_9_0000.nii.gz")
    ds = adapt_nnunet(tmp_path)
    assert sorted(ds.domains) == ["ct", "mr"] and ds.domains["mr"].labels == labels
    got = sorted((c.domain, c.case_id, c.split, c.label is None) for c in ds.cases)
    assert got == [("ct", "ct_1", None, False), ("ct", "ct_9", "test", True),
                   ("mr", "mr_1", None, False), ("mr", "mr_9", "test", True)]


def test_nnunet_single_folder_channels_become_domains_and_v1_labels(tmp_path):
    _nnunet_json(tmp_path / "dataset.json", name="Brain", modality={"0": "T1", "1": "T2"},
                 labels={"0": "background", "1": "tumour"}, numTraining=1, file_ending=".nii.gz")
    for k in (0, 1):
        _vol(tmp_path / f"imagesTr/b1_000{k}.nii.gz")
    _vol(tmp_path / "labelsTr/b1.nii.gz", 1, np.uint8)
    ds = adapt_nnunet(tmp_path)
    assert ds.name == "Brain" and sorted(ds.domains) == ["t1", "t2"]
    assert ds.domains["t2"].labels == {"background": 0, "tumour": 1}
    assert {(c.domain, c.image.name) for c in ds.cases} == {("t1", "b1_0000.nii.gz"), ("t2", "b1_0001.nii.gz")}


def test_nnunet_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="no dataset.json"):
        adapt_nnunet(tmp_path)
    _nnunet_json(tmp_path / "mr/dataset.json", name="x", channel_names={"0": "MR"}, file_ending=".nii.gz")
    with pytest.raises(DataError, match="labels"):
        adapt_nnunet(tmp_path)
    _nnunet_json(tmp_path / "mr/dataset.json", name="x", channel_names={"0": "MR"}, labels={"background": 0})
    with pytest.raises(DataError, match="empty"):
        adapt_nnunet(tmp_path)
    _vol(tmp_path / "mr/imagesTr/a_0000.nii.gz")
    with pytest.raises(DataError, match="no label"):
        adapt_nnunet(tmp_path)


def test_brats_2023_time_points_share_a_subject(tmp_path):
    ds = adapt_brats(make_brats(tmp_path))
    subjects = {c.case_id: c.subject_id for c in ds.cases}
    assert subjects["BraTS-GLI-00003-000"] == "BraTS-GLI-00003"
    assert subjects["BraTS20_Training_001"] == "BraTS20_Training_001"  # one case per patient


def test_dot_files_are_not_cases(tmp_path):
    make_brats(tmp_path)
    (tmp_path / "BraTS20_Training_001/._BraTS20_Training_001_t1.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    assert len([c for c in adapt_brats(tmp_path).cases if c.domain == "t1"]) == 3


def test_paired_label_seg_and_mask_names(tmp_path):
    make_paired(tmp_path)
    _vol(tmp_path / "p01/label.nii.gz", 1, np.uint8)
    _vol(tmp_path / "p02/seg.nii.gz", 1, np.uint8)
    _vol(tmp_path / "p02/mr_label.nii.gz", 2, np.uint8)  # its own label wins over the shared one
    _vol(tmp_path / "p03/mask.nii.gz", 1, np.uint8)
    _vol(tmp_path / "p03/ct_mask.nii.gz", 1, np.uint8)
    (tmp_path / "p03/._mr.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    ds = adapt_paired(tmp_path)
    assert sorted(ds.domains) == ["ct", "mr"]
    got = {(c.case_id, c.domain): (c.label.name if c.label else None, c.label_shared) for c in ds.cases}
    assert got == {("p01", "ct"): ("label.nii.gz", True), ("p01", "mr"): ("label.nii.gz", True),
                   ("p02", "ct"): ("seg.nii.gz", True), ("p02", "mr"): ("mr_label.nii.gz", False),
                   ("p03", "ct"): (None, False), ("p03", "mr"): (None, False)}
    (tmp_path / "p01/seg.nii.gz").write_bytes((tmp_path / "p01/label.nii.gz").read_bytes())
    with pytest.raises(DataError, match="two shared label files"):
        adapt_paired(tmp_path)
