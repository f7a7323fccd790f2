"""The embedded brain data set: geometry, labels, contrasts, unpaired subjects, determinism."""

import json
import time

import nibabel as nib
import numpy as np
import pytest

from sasan.cli import main
from sasan.data import brain_templates, layout
from sasan.data.brain import BRAIN_LABELS, brain_case, generate_brain, output_grid
from sasan.data.brain_templates import load_templates
from sasan.data.ingest import run_ingest
from sasan.errors import ConfigError, DataError

SPACING = 4.0  # coarse voxels keep the tests fast; the anatomy and contrasts are the same


@pytest.fixture(scope="module")
def templates():
    return load_templates()


@pytest.fixture(scope="module")
def cases(templates):
    return {d: [brain_case(templates, d, i, seed=3, spacing_mm=SPACING) for i in range(2)] for d in ("t1", "t2")}


def _median(img, lbl, value):
    return float(np.median(img[lbl == value]))


def test_templates_share_the_mni_space(templates):
    """Both wheels' images are 1 mm RAS; the brain box is a plausible adult brain in MNI mm."""
    for vol in (templates.t1, templates.t2, templates.mask, templates.gm, templates.wm):
        assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
        assert np.allclose(np.abs(np.diag(vol.affine)[:3]), 1.0)
    lo, hi = templates.brain_box_mm
    assert np.all(hi - lo > [130, 160, 120]) and np.all(hi - lo < [160, 200, 170])
    assert 0.0 <= templates.gm.data.min() and templates.wm.data.max() <= 1.0


def test_geometry_types_and_labels(cases, templates):
    grid = output_grid(templates, SPACING)
    for domain, vols in cases.items():
        for img, lbl, aff in vols:
            assert img.dtype == np.float32 and lbl.dtype == np.uint8
            assert img.shape == lbl.shape == grid.shape
            assert np.allclose(aff, grid.affine) and nib.aff2axcodes(aff) == ("R", "A", "S")
            assert np.allclose(np.diag(aff)[:3], SPACING)
            assert set(np.unique(lbl)) == {0, 1, 2, 3}, domain
            assert img.min() >= 0 and np.all(img[lbl == 0] == 0)   # skull-stripped magnitude image
            brain = lbl > 0
            assert not (brain[0].any() or brain[-1].any() or brain[:, 0].any() or brain[:, -1].any()
                        or brain[:, :, 0].any() or brain[:, :, -1].any()), "brain cut by the field of view"
            ml = brain.sum() * SPACING ** 3 / 1000.0
            assert 1000 < ml < 2600, ml  # intracranial volume of an adult, +-10% scale


def test_contrasts_are_inverted_between_t1_and_t2(cases):
    """T1: WM > GM > CSF; T2: CSF > GM > WM, in every subject (the domain gap to close)."""
    csf, gm, wm = BRAIN_LABELS["csf"], BRAIN_LABELS["gm"], BRAIN_LABELS["wm"]
    for img, lbl, _ in cases["t1"]:
        assert _median(img, lbl, wm) > 1.1 * _median(img, lbl, gm) > 1.1 * _median(img, lbl, csf)
    for img, lbl, _ in cases["t2"]:
        assert _median(img, lbl, csf) > 1.05 * _median(img, lbl, gm) > 1.05 * _median(img, lbl, wm)


def test_subjects_differ_and_domains_are_unpaired(cases):
    """Every case has its own deformation: label maps differ between subjects of one domain and
    between the T1 and T2 subject of the same index."""
    labels = [lbl for d in ("t1", "t2") for _, lbl, _ in cases[d]]
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            disagree = np.mean(labels[i] != labels[j])
            assert disagree > 0.02, (i, j, disagree)
    gm_volumes = {int((lbl == 2).sum()) for lbl in labels}
    assert len(gm_volumes) == len(labels)


def test_deterministic_from_seed_and_independent_of_count(cases, templates):
    img, lbl, aff = brain_case(templates, "t2", 1, seed=3, spacing_mm=SPACING)
    ref_img, ref_lbl, ref_aff = cases["t2"][1]
    assert np.array_equal(img, ref_img) and np.array_equal(lbl, ref_lbl) and np.array_equal(aff, ref_aff)
    other, _, _ = brain_case(templates, "t2", 1, seed=4, spacing_mm=SPACING)
    assert not np.array_equal(other, img)


def test_generate_writes_the_canonical_layout_fast_and_ingest_splits_it(tmp_path, cases):
    out = tmp_path / "brain"
    start = time.perf_counter()
    summary = generate_brain(out, cases=2, seed=3, spacing_mm=SPACING)
    assert time.perf_counter() - start < 15.0
    assert layout.domains(out) == ["t1", "t2"] and summary["cases"] == 2
    for domain, modality in (("t1", "T1"), ("t2", "T2")):
        info = layout.read_dataset_json(out / domain)
        assert info.modality == modality and info.labels == BRAIN_LABELS and info.num_training == 2
        img = nib.load(layout.image_path(out, domain, f"{domain}_002"))
        lbl = nib.load(layout.label_path(out, domain, f"{domain}_002"))
        assert np.allclose(img.affine, lbl.affine) and np.allclose(img.affine, cases[domain][1][2])
        assert np.array_equal(np.asarray(img.dataobj), cases[domain][1][0])   # same as brain_case
        assert np.array_equal(np.asarray(lbl.dataobj), cases[domain][1][1])
    raw = run_ingest(out, tmp_path / "raw", layout="nnunet", test_fraction=0.5, seed=0)
    assert raw is not None
    for domain in ("t1", "t2"):
        splits = [c.split for c in layout.iter_cases(tmp_path / "raw", domain)]
        assert sorted(splits) == ["test", "train"]


def test_bad_arguments_are_rejected_with_a_reason(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cases"):
        generate_brain(tmp_path / "a", cases=0)
    with pytest.raises(ConfigError, match="spacing"):
        generate_brain(tmp_path / "a", spacing_mm=0.5)
    with pytest.raises(ConfigError, match="domain"):
        generate_brain(tmp_path / "a", domains=("t2", "flair"))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        generate_brain(tmp_path / "foreign", cases=1, spacing_mm=SPACING)
    assert main(["data", "brain", str(tmp_path / "b"), "--spacing", "0.5"]) == ConfigError.exit_code
    assert "spacing must be in [1.0, 6.0] mm" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_template_wheel_names_the_fix(monkeypatch):
    monkeypatch.setitem(brain_templates.TEMPLATE_FILES, "t1", ("no-such-template-wheel", "x/t1.nii"))
    with pytest.raises(DataError, match="requirements/templates.txt"):
        load_templates()


def test_cli_brain(tmp_path, capsys):
    assert main(["data", "brain", str(tmp_path / "out"), "--cases", "1", "--seed", "2", "--spacing", "5",
                 "--domains", "t1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 2 and summary["spacing_mm"] == 5.0 and list(summary["domains"]) == ["t1"]
    assert len(list((tmp_path / "out/t1/imagesTr").iterdir())) == 1


def test_report_measures_the_inverted_contrast_and_draws_it(tmp_path):
    from sasan.data.brain_report import relative_class_intensities, slices_figure

    generate_brain(tmp_path / "b", cases=1, seed=0, spacing_mm=SPACING)
    t1, t2 = (relative_class_intensities(tmp_path / "b", d) for d in ("t1", "t2"))
    assert t1["wm"][0] > t1["gm"][0] > t1["csf"][0] and t2["csf"][0] > t2["gm"][0] > t2["wm"][0]
    slices_figure(tmp_path / "b", ["t2", "t1"], tmp_path / "brain.png", subjects=1)
    assert (tmp_path / "brain.png").read_bytes()[:4] == b"\x89PNG"
