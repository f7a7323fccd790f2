"""The validate stage: GX suite + data-set checks, reports, one-line errors, exit codes."""

import gzip
import hashlib
import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from sasan.cli import main
from sasan.data.config import ValidateConfig
from sasan.data.validate import run_validate
from sasan.errors import DataError, ValidationFailed

MR_IMAGE = "mr/imagesTr/mr_train_000_0000.nii.gz"
MR_LABEL = "mr/labelsTr/mr_train_000.nii.gz"


def _rehash(root):
    """Ingest hashes whatever it copied: keep the manifest in step with edited files."""
    path = root / "manifest.json"
    doc = json.loads(path.read_text())
    for case in doc["cases"]:
        for key in ("image", "label"):
            if case[key]:
                case["sha256"][key] = hashlib.sha256((root / case[key]).read_bytes()).hexdigest()
    path.write_text(json.dumps(doc))


@pytest.fixture(autouse=True)
def _prep_commands(monkeypatch):
    """The lead adds prep_cmds to the CLI registry; make sure it is there either way."""
    import sasan.cli

    if "sasan.cli.prep_cmds" not in sasan.cli.COMMAND_MODULES:
        monkeypatch.setattr(sasan.cli, "COMMAND_MODULES", (*sasan.cli.COMMAND_MODULES, "sasan.cli.prep_cmds"))


def _cli(root, tmp_path, capsys, *extra):
    code = main(["validate", str(root), "--report", str(tmp_path / "report"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_clean_tree_passes_and_writes_reports(raw_tree, tmp_path, capsys):
    code, _ = _cli(raw_tree, tmp_path, capsys)
    assert code == 0
    report = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert report["success"] and report["n_cases"] == 6
    assert report["counts"] == {"ct": {"test": 1, "train": 2}, "mr": {"test": 1, "train": 2}}
    sources = {c["source"] for c in report["checks"]}
    assert sources == {"great_expectations", "dataset"}
    assert all(c["severity"] in ("error", "warning") for c in report["checks"])
    row = next(r for r in report["table"] if r["image"] == MR_IMAGE)
    assert row["shape"] == "(24, 20, 16)" and row["orientation"] == "RAS" and row["dtype"] == "int16"
    assert row["spacing_z"] == pytest.approx(2.0) and row["label_values"] == "[0, 1, 2, 3]"
    assert row["shape_match"] is True and row["affine_match"] is True and row["sha256_ok"] is True
    page = (tmp_path / "report" / "validation.html").read_text()
    assert "PASSED" in page and "<script" not in page and MR_IMAGE in page
    assert not list(tmp_path.glob("**/gx")) and not list(tmp_path.glob("**/great_expectations*"))


def _corrupt_gzip(root):
    raw = bytearray((root / MR_IMAGE).read_bytes())
    raw[150:300] = bytes(150)
    (root / MR_IMAGE).write_bytes(bytes(raw))
    return MR_IMAGE


def _truncate(root):
    (root / MR_IMAGE).write_bytes((root / MR_IMAGE).read_bytes()[:-200])
    return MR_IMAGE


def _not_nifti(root):
    (root / MR_IMAGE).write_bytes(gzip.compress(b"<html>not an image</html>" * 30))
    return MR_IMAGE


def _save_image(root, rel, array, affine=None):
    old = nib.load(root / rel)
    nib.save(nib.Nifti1Image(array, old.affine if affine is None else affine), root / rel)
    return rel


def _two_d(root):
    return _save_image(root, MR_IMAGE, np.ones((24, 20), np.int16))


def _four_d(root):
    return _save_image(root, MR_IMAGE, np.ones((24, 20, 16, 3), np.int16))


def _nan_inf(root):
    data = np.asarray(nib.load(root / MR_IMAGE).dataobj, dtype=np.float32)
    data[3, 3, 3] = np.nan
    data[4, 4, 4] = np.inf
    return _save_image(root, MR_IMAGE, data)


def _label_shape(root):
    return _save_image(root, MR_LABEL, np.zeros((24, 20, 15), np.uint8))


def _label_affine(root):
    label = nib.load(root / MR_LABEL)
    affine = label.affine.copy()
    affine[1, 3] += 3.0
    return _save_image(root, MR_LABEL, np.asarray(label.dataobj), affine)


def _unknown_label(root):
    data = np.asarray(nib.load(root / MR_LABEL).dataobj).copy()
    data[0, 0, 0] = 9
    return _save_image(root, MR_LABEL, data)


def _constant(root):
    return _save_image(root, MR_IMAGE, np.full((24, 20, 16), 7, np.int16))


def _coarse_spacing(root):
    """x spacing 25 mm (> max_spacing_mm = 20) in image and label alike: only the spacing is wrong."""
    affine = nib.load(root / MR_IMAGE).affine.copy()
    affine[0, 0] = 25.0
    _save_image(root, MR_LABEL, np.asarray(nib.load(root / MR_LABEL).dataobj), affine)
    return _save_image(root, MR_IMAGE, np.asarray(nib.load(root / MR_IMAGE).dataobj), affine)


def _complex_voxels(root):
    return _save_image(root, MR_IMAGE, np.asarray(nib.load(root / MR_IMAGE).dataobj).astype(np.complex64))


BAD_FILES = {
    "corrupt gzip": (_corrupt_gzip, "corrupt gzip"),
    "truncated file": (_truncate, "truncated"),
    "not nifti": (_not_nifti, "not a NIfTI"),
    "2-D image": (_two_d, "2-D image"),
    "4-D image": (_four_d, "4-D image"),
    "NaN/Inf voxels": (_nan_inf, "1 NaN and 1 Inf"),
    "label shape": (_label_shape, r"label shape \(24, 20, 15\) differs from image shape \(24, 20, 16\)"),
    "label affine": (_label_affine, "label affine differs .* by up to 3 mm"),
    "unknown label": (_unknown_label, r"unknown label values \[9\]"),
    "constant image": (_constant, re.escape("constant image (min = max = 7.0) [non-constant intensity]")),
    "spacing > 20 mm": (_coarse_spacing, re.escape("voxel spacing (25, 1.2, 2) mm outside (0, 20] "
                                                   "[spacing x in (0, 20.0] mm]")),
    "complex voxels": (_complex_voxels, re.escape("unsupported voxel type complex64 (complex or RGB) "
                                                  "[readable 3-D NIfTI]")),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_fails_with_one_line_naming_it(name, raw_tree, tmp_path, capsys):
    mutate, reason = BAD_FILES[name]
    rel = mutate(raw_tree)
    _rehash(raw_tree)
    code, line = _cli(raw_tree, tmp_path, capsys)
    assert code == ValidationFailed.exit_code != 0
    assert line.startswith(f"sasan validate: error: {raw_tree / rel}: ")
    assert re.search(reason, line), line
    report = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert not report["success"]
    failed = [f for c in report["checks"] if not c["success"] and c["severity"] == "error" for f in c["failures"]]
    assert [f["file"] for f in failed] == [str(raw_tree / rel)]  # only the broken case is blamed
    assert "FAILED" in (tmp_path / "report" / "validation.html").read_text()


def test_changed_file_fails_hash_check(raw_tree, tmp_path, capsys):
    _save_image(raw_tree, MR_IMAGE, np.ones((24, 20, 16), np.int16) * np.arange(16, dtype=np.int16))
    code, line = _cli(raw_tree, tmp_path, capsys)
    assert code != 0 and str(raw_tree / MR_IMAGE) in line and "sha256 differs" in line


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, line = _cli(tmp_path / "empty", tmp_path, capsys)
    assert code != 0 and line == f"sasan validate: error: {tmp_path / 'empty'}: " \
                                 "empty data set: no manifest.json and no <domain>/dataset.json"
    assert not (tmp_path / "report").exists()


def test_missing_dataset_json_fields(raw_tree, tmp_path, capsys):
    path = raw_tree / "ct" / "dataset.json"
    meta = json.loads(path.read_text())
    del meta["labels"], meta["modality"]
    path.write_text(json.dumps(meta))
    code, line = _cli(raw_tree, tmp_path, capsys)
    assert code != 0 and line.startswith(f"sasan validate: error: {path}: ")
    assert "labels" in line and "modality" in line


def test_leakage_same_case_in_both_splits(raw_tree, tmp_path):
    doc = json.loads((raw_tree / "manifest.json").read_text())
    test_case = next(c for c in doc["cases"] if c["domain"] == "ct" and c["split"] == "test")
    test_case["case_id"] = "ct_train_000"
    (raw_tree / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValidationFailed):
        run_validate(raw_tree, tmp_path / "r", ValidateConfig())
    report = json.loads((tmp_path / "r" / "validation.json").read_text())
    check = next(c for c in report["checks"] if c["check"] == "no case in two splits (leakage)")
    assert not check["success"] and check["severity"] == "error"
    assert check["failures"][0]["file"] == str(raw_tree / "ct/imagesTs/ct_test_000_0000.nii.gz")
    assert "both train and test" in check["failures"][0]["reason"]


def test_leakage_identical_file_across_splits(raw_tree, tmp_path):
    shutil.copy(raw_tree / "ct/imagesTr/ct_train_001_0000.nii.gz", raw_tree / "ct/imagesTs/ct_test_000_0000.nii.gz")
    _rehash(raw_tree)
    with pytest.raises(ValidationFailed, match="identical image file in 2 cases") as info:
        run_validate(raw_tree, tmp_path / "r", ValidateConfig())
    assert "ct/imagesTs/ct_test_000_0000.nii.gz" in str(info.value)


def test_minimum_cases_per_split(raw_tree, tmp_path):
    with pytest.raises(ValidationFailed, match="has 2 train case.*at least 3 required"):
        run_validate(raw_tree, tmp_path / "r", ValidateConfig(min_cases_train=3))
    report = json.loads((tmp_path / "r" / "validation.json").read_text())
    check = next(c for c in report["checks"] if c["check"] == "minimum cases per domain and split")
    assert {f["domain"] for f in check["failures"]} == {"mr", "ct"}


def test_warnings_do_not_fail(raw_tree, tmp_path):
    path = raw_tree / "mr" / "dataset.json"
    meta = json.loads(path.read_text())
    meta["numTraining"] = 7
    path.write_text(json.dumps(meta))
    report = run_validate(raw_tree, tmp_path / "r", ValidateConfig())
    assert report["success"] and report["n_warnings"] == 1


def test_a_case_listed_twice_fails_naming_its_file(raw_tree, tmp_path):
    def list_twice(doc):
        doc["cases"].append(dict(next(c for c in doc["cases"] if c["case_id"] == "mr_test_000")))

    _edit_manifest(raw_tree, list_twice)
    image = raw_tree / "mr/imagesTs/mr_test_000_0000.nii.gz"
    with pytest.raises(ValidationFailed, match=re.escape(
            f"{image}: case id 'mr_test_000' appears more than once in domain 'mr' [unique case id per domain] "
            "(2 error-level failure(s)")):
        run_validate(raw_tree, tmp_path / "r", ValidateConfig())
    check = _check_named(tmp_path / "r", "unique case id per domain")
    assert check["severity"] == "error" and [f["file"] for f in check["failures"]] == [str(image)] * 2
    # the one file, twice in one split, is also the within-split duplicate (a warning)
    dup = _check_named(tmp_path / "r", "no duplicate image within a split")
    assert [f["reason"] for f in dup["failures"]] == [
        "identical image file in 2 cases (mr/imagesTs/mr_test_000_0000.nii.gz, mr/imagesTs/mr_test_000_0000.nii.gz)"]


def test_a_voxel_type_outside_the_numeric_list_fails_the_suite(raw_tree):
    """NIfTI files nibabel reads hold numeric types only (complex/RGB: "readable 3-D NIfTI"),
    so the suite's voxel-type expectation is checked on the table itself."""
    from sasan.data.gx_suite import run_suite
    from sasan.data.raw_cases import load_raw_dataset
    from sasan.data.validate import _gx_check, build_table

    cfg = ValidateConfig()
    table = build_table(load_raw_dataset(raw_tree), cfg)
    row = int(table.index[table["image"] == MR_IMAGE][0])
    table.loc[row, "dtype"] = "float16"
    check = _gx_check(next(c for c in run_suite(table, cfg) if c["check"] == "numeric voxel type"), table, raw_tree)
    assert check["severity"] == "error" and not check["success"]
    assert [(f["file"], f["reason"]) for f in check["failures"]] == [
        (str(raw_tree / MR_IMAGE), "unsupported voxel type float16")]


def _background_only_label(root):
    _save_image(root, MR_LABEL, np.zeros((24, 20, 16), np.uint8))
    return ("label has foreground", MR_LABEL, "label image contains background only")


def _six_slices(root):
    """z cut to 6 voxels (< min_size 8) in image and label alike."""
    _save_image(root, MR_LABEL, np.asarray(nib.load(root / MR_LABEL).dataobj)[:, :, 5:11])
    _save_image(root, MR_IMAGE, np.asarray(nib.load(root / MR_IMAGE).dataobj)[:, :, 5:11])
    return ("size z >= 8", MR_IMAGE, "image shape (24, 20, 6) has an axis shorter than 8 voxels")


def _duplicate_within_split(root):
    shutil.copy(root / "ct/imagesTr/ct_train_001_0000.nii.gz", root / "ct/imagesTr/ct_train_000_0000.nii.gz")
    return ("no duplicate image within a split", "ct/imagesTr/ct_train_001_0000.nii.gz",
            "identical image file in 2 cases (ct/imagesTr/ct_train_000_0000.nii.gz, "
            "ct/imagesTr/ct_train_001_0000.nii.gz)")


def _labels_differ_from_manifest(root):
    _edit_manifest(root, lambda d: d["domains"]["ct"]["labels"].pop("AA"))
    return ("dataset.json agrees with the cases and manifest", "ct/dataset.json",
            "labels {'background': 0, 'MYO': 1, 'LA': 2, 'LV': 3, 'AA': 4} differ from manifest.json "
            "{'background': 0, 'MYO': 1, 'LA': 2, 'LV': 3}")


def _no_labelled_case(root):
    def drop_ct_labels(doc):
        for case in doc["cases"]:
            if case["domain"] == "ct":
                case["label"] = case["sha256"]["label"] = None

    _edit_manifest(root, drop_ct_labels)
    return ("labels present per domain", "ct", "domain 'ct' has no labelled case (it can only be a target)")


WARNINGS = {
    "background-only label": _background_only_label,
    "axis shorter than 8": _six_slices,
    "identical image within a split": _duplicate_within_split,
    "labels differ from manifest.json": _labels_differ_from_manifest,
    "no labelled case": _no_labelled_case,
}


@pytest.mark.parametrize("name", list(WARNINGS))
def test_warning_is_reported_and_does_not_fail(name, raw_tree, tmp_path):
    check_name, rel, reason = WARNINGS[name](raw_tree)
    _rehash(raw_tree)
    report = run_validate(raw_tree, tmp_path / "r", ValidateConfig())
    assert report["success"] and report["n_errors"] == 0 and report["n_warnings"] == 1
    [check] = [c for c in report["checks"] if not c["success"]]
    assert (check["check"], check["severity"]) == (check_name, "warning")
    assert [(f["file"], f["reason"]) for f in check["failures"]] == [(str(raw_tree / rel), reason)]


def test_folder_without_manifest_is_read_from_layout(make_raw, tmp_path):
    root = make_raw(tmp_path / "raw", manifest=False)
    report = run_validate(root, tmp_path / "r", ValidateConfig())
    assert report["success"] and report["n_cases"] == 6
    assert all(r["sha256_ok"] is None for r in report["table"])


def test_unreadable_manifest_is_a_data_error(raw_tree, tmp_path):
    (raw_tree / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        run_validate(raw_tree, tmp_path / "r", ValidateConfig())


# ------------------------------------------------------- subjects and experiment labels ---

def _edit_manifest(root, fn):
    path = root / "manifest.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _set_subject(doc, pairs):
    for case in doc["cases"]:
        if case["case_id"] in pairs:
            case["subject"] = pairs[case["case_id"]]


def _check_named(report_dir, name):
    report = json.loads((report_dir / "validation.json").read_text())
    return next(c for c in report["checks"] if c["check"] == name)


CROSS = "no subject in train in one domain and test in another (leakage)"


def test_subject_across_domains_warns_unpaired_and_fails_paired(raw_tree, tmp_path):
    from sasan.config import ExperimentConfig

    _edit_manifest(raw_tree, lambda d: _set_subject(d, {"mr_train_000": "p1", "ct_test_000": "p1"}))
    report = run_validate(raw_tree, tmp_path / "r", ValidateConfig(), ExperimentConfig())
    check = _check_named(tmp_path / "r", CROSS)
    assert report["success"] and check["severity"] == "warning" and not check["success"]
    assert "subject 'p1' is in train in domain 'mr' and in test in domain 'ct'" in check["failures"][0]["reason"]
    with pytest.raises(ValidationFailed, match=r"ct_test_000_0000.nii.gz: subject 'p1' is in train") as err:
        run_validate(raw_tree, tmp_path / "p", ValidateConfig(), ExperimentConfig(mode="paired"))
    assert "\n" not in str(err.value)
    _edit_manifest(raw_tree, lambda d: d.update(layout="paired"))  # a paired ingest: error without experiment
    with pytest.raises(ValidationFailed, match=re.escape(f"[{CROSS}]")):
        run_validate(raw_tree, tmp_path / "q", ValidateConfig())


def test_subject_in_two_splits_within_a_domain(raw_tree, tmp_path):
    _edit_manifest(raw_tree, lambda d: _set_subject(d, {"mr_train_001": "BraTS-GLI-00007",
                                                        "mr_test_000": "BraTS-GLI-00007"}))
    with pytest.raises(ValidationFailed, match="subject 'BraTS-GLI-00007' of domain 'mr' is in both train and test"):
        run_validate(raw_tree, tmp_path / "r", ValidateConfig())


def test_target_without_labelled_test_case_fails(make_raw, tmp_path):
    from sasan.config import ExperimentConfig

    root = make_raw(tmp_path / "raw", test_labels=False)
    report = run_validate(root, tmp_path / "a", ValidateConfig())  # no experiment: nothing to say
    assert report["labelled_counts"] == {"ct": {"test": 0, "train": 2}, "mr": {"test": 0, "train": 2}}
    assert "<th>labelled</th>" in (tmp_path / "a/validation.html").read_text()
    with pytest.raises(ValidationFailed) as err:
        run_validate(root, tmp_path / "b", ValidateConfig(), ExperimentConfig(source="mr", target="ct"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{root / 'ct'}: domain 'ct' is the evaluation target")
    assert "no labelled case (1 unlabelled)" in msg


def test_unlabelled_source_train_case_fails_unpaired_only(raw_tree, tmp_path):
    from sasan.config import ExperimentConfig

    def drop(doc):
        case = next(c for c in doc["cases"] if c["case_id"] == "mr_train_001")
        case["label"] = None
        case["sha256"]["label"] = None

    _edit_manifest(raw_tree, drop)
    with pytest.raises(ValidationFailed, match="'mr' is the labelled source .* 1 of its 2 train case"):
        run_validate(raw_tree, tmp_path / "a", ValidateConfig(), ExperimentConfig(source="mr", target="ct"))
    assert run_validate(raw_tree, tmp_path / "b", ValidateConfig(),
                        ExperimentConfig(source="ct", target="mr"))["success"]
    _edit_manifest(raw_tree, _pair_case_ids)  # paired mode needs paired subjects
    assert run_validate(raw_tree, tmp_path / "c", ValidateConfig(), ExperimentConfig(mode="paired"))["success"]


def _pair_case_ids(doc):
    """raw_tree's ct cases renamed after the mr ones: each mr case and its ct namesake one subject,
    as paired preprocessing matches them (by case id)."""
    for case in doc["cases"]:
        if case["domain"] == "ct":
            case["case_id"] = case["case_id"].replace("ct_", "mr_", 1)


# --------------------------------------------------------------- paired mode (RIRE) ---

PAIRED_CHECK = "minimum paired subjects per split"


@pytest.fixture
def unlabelled_pairs(tmp_path):
    """A paired phantom without labels (RIRE-like), ingested with layout paired: 4 + 1 subjects."""
    from sasan.data.ingest import run_ingest
    from sasan.data.phantom import generate_paired_phantom

    generate_paired_phantom(tmp_path / "src", cases=5, size=32)
    for label in (tmp_path / "src").glob("*/label.nii.gz"):
        label.unlink()
    run_ingest(tmp_path / "src", tmp_path / "raw", layout="paired", test_fraction=0.2, seed=0)
    return tmp_path / "raw"


def test_unlabelled_pairs_pass_in_paired_mode(unlabelled_pairs, tmp_path):
    from sasan.config import ExperimentConfig

    report = run_validate(unlabelled_pairs, tmp_path / "a", ValidateConfig(), ExperimentConfig(mode="paired"))
    assert report["success"] and report["n_warnings"] == 0  # no "labels present" warning either
    assert report["counts"] == {"ct": {"test": 1, "train": 4}, "mr": {"test": 1, "train": 4}}
    assert report["labelled_counts"] == {"ct": {"test": 0, "train": 0}, "mr": {"test": 0, "train": 0}}
    assert _check_named(tmp_path / "a", PAIRED_CHECK)["success"]
    assert run_validate(unlabelled_pairs, tmp_path / "b", ValidateConfig())["success"]  # layout paired, no experiment
    with pytest.raises(ValidationFailed, match="evaluation target"):  # an unpaired run segments: labels needed
        run_validate(unlabelled_pairs, tmp_path / "c", ValidateConfig(), ExperimentConfig())


def test_paired_mode_fails_without_a_complete_test_pair(unlabelled_pairs, tmp_path):
    from sasan.config import ExperimentConfig

    def split_test_pair(doc):  # the MR test image now belongs to another subject: no test pair left
        next(c for c in doc["cases"] if c["domain"] == "mr" and c["split"] == "test")["subject"] = "elsewhere"

    _edit_manifest(unlabelled_pairs, split_test_pair)
    with pytest.raises(ValidationFailed) as err:
        run_validate(unlabelled_pairs, tmp_path / "a", ValidateConfig(), ExperimentConfig(mode="paired"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{unlabelled_pairs / 'ct'}: paired mode: 0 subject(s) have a test "
                                              "image in each of 'ct' (target) and 'mr' (source), at least 1 required")
    assert f"[{PAIRED_CHECK}]" in msg
    check = _check_named(tmp_path / "a", PAIRED_CHECK)
    assert check["severity"] == "error" and [f["split"] for f in check["failures"]] == ["test"]
    with pytest.raises(ValidationFailed, match="0 subject.* test image in each of 'ct' and 'mr'"):
        run_validate(unlabelled_pairs, tmp_path / "b", ValidateConfig())  # layout paired: every domain
    # evaluation needs a pair even where the per-domain minimum is 0
    with pytest.raises(ValidationFailed, match=re.escape("at least 1 required: paired evaluation")):
        run_validate(unlabelled_pairs, tmp_path / "c", ValidateConfig(min_cases_test=0),
                     ExperimentConfig(mode="paired"))


def test_paired_mode_counts_train_pairs_and_still_checks_labels(unlabelled_pairs, tmp_path):
    from sasan.config import ExperimentConfig

    assert run_validate(unlabelled_pairs, tmp_path / "a", ValidateConfig(min_cases_train=4),
                        ExperimentConfig(mode="paired"))["success"]

    def split_train_pair(doc):  # 4 MR train images still, but 3 train pairs
        next(c for c in doc["cases"] if c["domain"] == "mr" and c["split"] == "train")["subject"] = "elsewhere"

    _edit_manifest(unlabelled_pairs, split_train_pair)
    with pytest.raises(ValidationFailed, match=r"paired mode: 3 subject\(s\) have a train image .* at least 4"):
        run_validate(unlabelled_pairs, tmp_path / "b", ValidateConfig(min_cases_train=4),
                     ExperimentConfig(mode="paired"))
    _edit_manifest(unlabelled_pairs, lambda d: [c.pop("subject", None) for c in d["cases"]])
    case = next(c for c in json.loads((unlabelled_pairs / "manifest.json").read_text())["cases"]
                if c["domain"] == "ct")
    image = nib.load(unlabelled_pairs / case["image"])
    label = np.zeros(image.shape, np.uint8)
    label[0, 0, 0] = 9  # a label, where there is one, is checked as ever
    rel = case["image"].replace("images", "labels").replace("_0000.nii.gz", ".nii.gz")
    (unlabelled_pairs / rel).parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(label, image.affine), unlabelled_pairs / rel)
    _edit_manifest(unlabelled_pairs, lambda d: next(c for c in d["cases"] if c["image"] == case["image"])
                   .update(label=rel, sha256={**case["sha256"], "label": None}))
    _rehash(unlabelled_pairs)
    with pytest.raises(ValidationFailed, match=r"unknown label values \[9\]"):
        run_validate(unlabelled_pairs, tmp_path / "c", ValidateConfig(), ExperimentConfig(mode="paired"))


def test_an_unpaired_experiment_on_paired_layout_data_is_checked_as_unpaired(raw_tree, tmp_path):
    """The experiment's mode decides: paired-layout data used for segmentation (unpaired) needs
    no complete pairs; only without an experiment does the layout mean paired mode. Leakage
    across domains stays an error on a paired layout (its modalities image one anatomy)."""
    from sasan.config import ExperimentConfig

    _edit_manifest(raw_tree, lambda d: d.update(layout="paired"))  # raw_tree's mr and ct cases: no pairs
    report = run_validate(raw_tree, tmp_path / "u", ValidateConfig(), ExperimentConfig())
    assert report["success"] and PAIRED_CHECK not in {c["check"] for c in report["checks"]}
    with pytest.raises(ValidationFailed, match=re.escape(f"[{PAIRED_CHECK}]")):
        run_validate(raw_tree, tmp_path / "n", ValidateConfig())  # no experiment: the layout decides
    _edit_manifest(raw_tree, lambda d: _set_subject(d, {"mr_train_000": "p1", "ct_test_000": "p1"}))
    with pytest.raises(ValidationFailed, match=re.escape("subject 'p1' is in train in domain 'mr'")):
        run_validate(raw_tree, tmp_path / "l", ValidateConfig(), ExperimentConfig())


def test_paired_mode_refuses_a_subject_lacking_an_image_of_the_pair(raw_tree, tmp_path):
    """Paired preprocessing cuts each subject's two images together: a subject with one of them
    only fails validate (one message naming it and the missing domain), not preprocess later."""
    from sasan.config import ExperimentConfig

    _edit_manifest(raw_tree, _pair_case_ids)
    paired = ExperimentConfig(source="ct", target="mr", mode="paired")
    assert run_validate(raw_tree, tmp_path / "a", ValidateConfig(), paired)["success"]
    _edit_manifest(raw_tree, lambda d: d.update(cases=[c for c in d["cases"] if not (
        c["domain"] == "mr" and c["case_id"] == "mr_train_001")]))
    with pytest.raises(ValidationFailed) as err:
        run_validate(raw_tree, tmp_path / "b", ValidateConfig(min_cases_train=1), paired)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(
        f"{raw_tree / 'ct/imagesTr/ct_train_001_0000.nii.gz'}: paired mode: subject 'mr_train_001' has a train "
        "image in domain 'ct' (source) but none in 'mr' (target)")
    assert "[every subject has both images of the pair] (1 error-level failure(s)" in msg
    check = _check_named(tmp_path / "b", "every subject has both images of the pair")
    assert check["severity"] == "error" and [(f["case_id"], f["domain"], f["split"]) for f in check["failures"]] == [
        ("mr_train_001", "mr", "train")]
    # unpaired experiments never pair images: no such check
    report = run_validate(raw_tree, tmp_path / "c", ValidateConfig(min_cases_train=1),
                          ExperimentConfig(source="ct", target="mr"))
    assert report["success"] and "every subject has both images of the pair" not in {
        c["check"] for c in report["checks"]}


def test_labels_without_a_network_output_fail_before_preprocessing(raw_tree, tmp_path):
    # the data declares labels 0..4: five outputs are needed; three would fail in training
    report = run_validate(raw_tree, tmp_path / "ok", ValidateConfig(), num_classes=5)
    assert _check_named(tmp_path / "ok", "every label value has a network output (model.num_classes)")["success"]
    assert report["success"]
    with pytest.raises(ValidationFailed, match=re.escape(
            f"{raw_tree / 'ct' / 'dataset.json'}: labels {{'LV': 3, 'AA': 4}} of domain 'ct' have no network "
            "output: model.num_classes is 3 (values 0..2)")):
        run_validate(raw_tree, tmp_path / "r", ValidateConfig(), num_classes=3)
    failures = _check_named(tmp_path / "r", "every label value has a network output (model.num_classes)")["failures"]
    assert sorted(f["domain"] for f in failures) == ["ct", "mr"]
