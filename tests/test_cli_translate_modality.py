"""`sasan translate --modality`: a key of the bundle's preprocess.bounds (looked up as
preprocessing looks a manifest's modality up, lower-cased: MR is mr), else refused with one
line listing the keys, before anything is written."""

import nibabel as nib
import numpy as np
import pytest

from sasan.cli import main
from tests.test_inference import bundle_path  # noqa: F401  (the tiny bundle fixture)


@pytest.fixture
def image(tmp_path):
    data = np.random.default_rng(0).normal(40, 30, (24, 20, 10)).astype(np.int16)
    data[:, :, :2] = -1000
    path = tmp_path / "ct_001_0000.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.5, 1.0])), path)
    return path


def _translate(image, out, bundle, *extra):
    return main(["translate", str(image), str(out), "--bundle", str(bundle), "--device", "cpu", *extra])


@pytest.mark.parametrize("modality", ["foo", "CT-scan", "ctt", ""])
def test_an_unknown_modality_is_refused_with_the_known_keys(tmp_path, capsys, bundle_path, image, modality):
    out, labels = tmp_path / "t.nii.gz", tmp_path / "l.nii.gz"
    code = main(["translate", str(image), str(out), "--labels", str(labels), "--bundle", str(bundle_path),
                 "--device", "cpu", "--modality", modality])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert f"--modality {modality!r}" in err[0] and "ct, mr, t1, t2" in err[0], err[0]
    assert "leave --modality out for the target domain's ('ct')" in err[0]
    assert not out.exists() and not labels.exists()


def test_a_known_modality_in_any_case_is_the_same_key(tmp_path, bundle_path, image):
    """The manifests spell modalities MR, CT, T2; preprocessing lower-cases them, so does translate."""
    outs = {}
    for modality in ("ct", "CT", None, "mr"):
        out = tmp_path / f"{modality}.nii.gz"
        assert _translate(image, out, bundle_path, *(["--modality", modality] if modality else [])) == 0
        outs[modality] = nib.load(out).get_fdata()
    assert np.array_equal(outs["ct"], outs["CT"]) and np.array_equal(outs["ct"], outs[None])
    assert not np.array_equal(outs["ct"], outs["mr"])        # another key: other bounds
