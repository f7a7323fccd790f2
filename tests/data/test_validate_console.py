"""``sasan validate`` names each failed warning-level check on the console (the check, the
first offenders), not only in the HTML report; a few lines at most."""

import shutil

import nibabel as nib
import numpy as np
import pytest

from sasan.cli import main
from sasan.stages.validate import warning_lines
from tests.data.test_validate import _rehash


@pytest.fixture(autouse=True)
def _prep_commands(monkeypatch):
    import sasan.cli

    if "sasan.cli.prep_cmds" not in sasan.cli.COMMAND_MODULES:
        monkeypatch.setattr(sasan.cli, "COMMAND_MODULES", (*sasan.cli.COMMAND_MODULES, "sasan.cli.prep_cmds"))


def _validate(root, tmp_path, capsys):
    code = main(["validate", str(root), "--report", str(tmp_path / "report")])
    return code, [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_a_failed_warning_check_is_named_with_its_file(raw_tree, tmp_path, capsys):
    shutil.copy(raw_tree / "ct/imagesTr/ct_train_001_0000.nii.gz", raw_tree / "ct/imagesTr/ct_train_000_0000.nii.gz")
    _rehash(raw_tree)
    code, out = _validate(raw_tree, tmp_path, capsys)
    assert code == 0 and len(out) == 2, out
    assert out[0] == ("warning [no duplicate image within a split]: ct/imagesTr/ct_train_001_0000.nii.gz: identical "
                      "image file in 2 cases (ct/imagesTr/ct_train_000_0000.nii.gz, "
                      "ct/imagesTr/ct_train_001_0000.nii.gz)"), out
    assert out[1].startswith("validation passed: 6 case(s), 1 warning check(s) failed"), out


def test_many_offenders_of_one_check_are_cut_to_a_few(raw_tree, tmp_path, capsys):
    labels = sorted(raw_tree.glob("*/labels*/*.nii.gz"))
    for path in labels:                                          # every label background only
        old = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros(old.shape, np.uint8), old.affine), path)
    _rehash(raw_tree)
    code, out = _validate(raw_tree, tmp_path, capsys)
    line = next(line for line in out if line.startswith("warning [label has foreground]"))
    assert ": label image contains background only; also " in line, line
    assert line.endswith(f" and {len(labels) - 3} more"), line
    assert out[-1].startswith("validation passed"), out


def _check(name, n):
    return {"check": name, "severity": "warning", "success": False,
            "failures": [{"file": f"/data/raw/mr/imagesTr/c{i}.nii.gz", "case_id": f"c{i}", "domain": "mr",
                          "split": "train", "reason": "x" * 500} for i in range(n)]}


def test_the_console_lines_stay_few():
    report = {"raw_dir": "/data/raw",
              "checks": [_check(f"check {i}", 1) for i in range(8)] + [
                  {"check": "passing", "severity": "warning", "success": True, "failures": []},
                  {"check": "an error", "severity": "error", "success": False, "failures": []}]}
    lines = warning_lines(report)
    assert len(lines) == 5 and lines[-1] == "... and 4 more warning check(s) in the report", lines
    assert lines[0].startswith("warning [check 0]: mr/imagesTr/c0.nii.gz: xxx") and len(lines[0]) < 220, lines


def test_an_offender_without_a_file_is_named_by_its_case():
    report = {"raw_dir": "/data/raw", "checks": [{"check": "c", "severity": "warning", "success": False, "failures": [
        {"file": None, "case_id": "ct_001", "domain": "ct", "split": "test", "reason": "odd"}]}]}
    assert warning_lines(report) == ["warning [c]: ct/test/ct_001: odd"]


def test_no_failed_warning_no_lines():
    assert warning_lines({"checks": [{"check": "c", "severity": "warning", "success": True, "failures": []}]}) == []
