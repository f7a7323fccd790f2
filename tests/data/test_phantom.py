"""The embedded cardiac phantom: determinism, geometry, appearance and the domain gap's cause."""

import json

import nibabel as nib
import numpy as np
import pytest

from sasan.cli import main
from sasan.data import layout, phantom
from sasan.data.phantom import PROTOCOLS, generate_phantom, phantom_anatomy, phantom_case
from sasan.data.phantom_shapes import TISSUES
from sasan.errors import ConfigError, DataError

SIZE = 40  # small grids keep the tests fast; the field of view stays the same


@pytest.fixture(scope="module")
def cases():
    return {d: [phantom_case(d, i, seed=3, size=SIZE) for i in range(2)] for d in ("mr", "ct")}


def test_deterministic_from_seed_and_independent_of_count(cases):
    img, lbl, aff = phantom_case("mr", 1, seed=3, size=SIZE)
    assert np.array_equal(img, cases["mr"][1][0]) and np.array_equal(lbl, cases["mr"][1][1])
    assert np.array_equal(aff, cases["mr"][1][2])
    other, _, _ = phantom_case("mr", 1, seed=4, size=SIZE)
    assert not np.array_equal(other, img)


def test_types_structures_and_geometry(cases):
    for domain, vols in cases.items():
        proto = PROTOCOLS[domain]
        for img, lbl, aff in vols:
            assert img.dtype == (np.int16 if domain == "ct" else np.float32)
            assert lbl.dtype == np.uint8 and lbl.shape == img.shape
            assert set(np.unique(lbl)) == {0, 1, 2, 3, 4}, domain  # all four structures visible
            assert nib.aff2axcodes(aff) == ("R", "A", "S")
            scale = SIZE / 128.0  # spacing grows as the size knob shrinks (same field of view)
            sx, sy, sz = np.diag(aff)[:3] * scale
            assert proto.inplane_mm[0] - 1e-6 <= sx <= proto.inplane_mm[1] + 1e-6 and sx == sy
            assert proto.slice_mm[0] - 1e-6 <= sz <= proto.slice_mm[1] + 1e-6
    # different field of view between domains: CT ~0.75 mm x 176 vs MR ~1.4 mm x 128 in-plane
    fov = {d: vols[0][0].shape[0] * vols[0][2][0, 0] for d, vols in cases.items()}
    assert fov["mr"] > 1.2 * fov["ct"]


def test_subjects_vary_and_domains_are_unpaired(cases):
    volumes = [(lbl == 3).sum() * abs(np.linalg.det(aff[:3, :3])) for d in cases for _, lbl, aff in cases[d]]
    assert len({round(v, -2) for v in volumes}) == len(volumes)  # LV volume (mm^3) differs per subject
    assert all(15_000 < v < 120_000 for v in volumes)  # plausible LV cavity, 15-120 ml


def _median(img, lbl, value):
    return float(np.median(img[lbl == value]))


def test_ct_is_in_hounsfield_units(cases):
    img, lbl, _ = cases["ct"][0]
    assert 200 < _median(img, lbl, 3) < 450        # contrast-filled LV blood
    assert 40 < _median(img, lbl, 1) < 160         # myocardium
    assert img.min() >= -1024 and np.percentile(img, 1) < -600  # lung / air present


def test_blood_is_bright_on_ct_and_on_bssfp_mr(cases):
    """Default (MM-WHS-like): contrast CT and bright-blood bSSFP MR both show the blood pools
    above the myocardium; the gap lies in fat, bone, noise, bias and resolution."""
    for img, lbl, _ in cases["ct"]:
        assert _median(img, lbl, 3) > _median(img, lbl, 1) + 100
        assert _median(img, lbl, 4) > _median(img, lbl, 1) + 100
    for img, lbl, _ in cases["mr"]:
        assert _median(img, lbl, 3) > 1.8 * _median(img, lbl, 1)
        assert _median(img, lbl, 2) > 1.8 * _median(img, lbl, 1)
        assert img.min() >= 0  # magnitude (Rician) data


def test_black_blood_mr_inverts_blood_and_myocardium():
    """The harder option: flowing blood is dark, below the myocardium (inverted against CT).
    Only intensities change: same anatomy and label map as the bSSFP case."""
    for i in range(2):
        img, lbl, aff = phantom_case("mr", i, seed=3, size=SIZE, mr_contrast="black_blood")
        bssfp, lbl_b, _ = phantom_case("mr", i, seed=3, size=SIZE)
        assert np.array_equal(lbl, lbl_b)
        assert _median(img, lbl, 3) < 0.5 * _median(img, lbl, 1)
        assert _median(img, lbl, 2) < 0.5 * _median(img, lbl, 1)
        assert _median(bssfp, lbl, 3) > _median(img, lbl, 3) * 5
    with pytest.raises(ConfigError, match="MR contrast"):
        phantom_case("mr", 0, mr_contrast="t1")


def test_anatomy_is_the_imaged_subject_with_its_tissue_map():
    """phantom_anatomy is the step before imaging: the same labels as the rendered case, and a
    tissue map whose labelled structures lie on the tissues they are made of."""
    tissue, label, grid, _ = phantom_anatomy("ct", 1, seed=2, size=SIZE)
    img, lbl, aff = phantom_case("ct", 1, seed=2, size=SIZE)
    assert np.array_equal(label, lbl) and np.allclose(grid.affine, aff)
    assert tissue.shape == img.shape and tissue.max() < len(TISSUES)
    assert np.all(tissue[label == 1] == TISSUES.index("myocardium"))
    assert np.all(tissue[label == 3] == TISSUES.index("blood"))
    with pytest.raises(ConfigError, match="phantom domain"):
        phantom_anatomy("pet", 0)


def test_atria_have_walls_between_their_blood_and_the_epicardial_fat():
    """The LA cavity (label 2) and the RA are wrapped in a thin unlabelled muscle wall: at full
    resolution the voxels just outside the LA are myocardium, not fat (bSSFP renders fat about
    as bright as blood, so without the wall the cavity's edge would not be in the image)."""
    from scipy.ndimage import binary_dilation

    tissue, label, _, _ = phantom_anatomy("mr", 0, seed=2, size=128)
    la = label == 2
    ring = tissue[binary_dilation(la) & ~la]
    assert ring.size > 500
    assert np.mean(ring == TISSUES.index("myocardium")) > 0.9
    assert np.mean(ring == TISSUES.index("fat")) < 0.05
    ra = (tissue == TISSUES.index("blood_right")) & (label == 0)
    ra_ring = tissue[binary_dilation(ra) & ~ra & (label == 0)]
    assert np.mean(ra_ring == TISSUES.index("myocardium")) > np.mean(ra_ring == TISSUES.index("fat"))


def test_generate_writes_canonical_layout(tmp_path):
    summary = generate_phantom(tmp_path / "ph", cases=2, seed=0, size=24)
    assert summary["domains"]["mr"]["cases"] == 2 and summary["dataset"] == "phantom"
    assert layout.domains(tmp_path / "ph") == ["ct", "mr"]
    info = layout.read_dataset_json(tmp_path / "ph/ct")
    assert info.modality == "CT" and info.labels == {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "AA": 4}
    assert info.num_training == 2
    img = nib.load(tmp_path / "ph/ct/imagesTr/ct_002_0000.nii.gz")
    lbl = nib.load(tmp_path / "ph/ct/labelsTr/ct_002.nii.gz")
    assert img.get_data_dtype() == np.int16 and lbl.get_data_dtype() == np.uint8
    assert np.allclose(img.affine, lbl.affine)
    assert not (tmp_path / "ph/mr/imagesTs").exists()  # ingest fixes the split, not the phantom


def test_generate_is_atomic_and_guards_foreign_folders(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = phantom.phantom_case

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom, "phantom_case", flaky)
    with pytest.raises(RuntimeError):
        generate_phantom(tmp_path / "ph", cases=2, size=20)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="refusing"):
        generate_phantom(tmp_path / "mine", cases=1, size=20)
    assert (tmp_path / "mine/thesis.tex").read_text() == "precious"
    with pytest.raises(ConfigError):
        generate_phantom(tmp_path / "x", domains=("mr", "pet"))
    with pytest.raises(ConfigError):
        generate_phantom(tmp_path / "x", seed=-1)


def test_cli_phantom(tmp_path, capsys):
    assert main(["data", "phantom", str(tmp_path / "out"), "--cases", "2", "--seed", "5", "--size", "20"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 5 and summary["domains"]["ct"] == {"cases": 2, "modality": "CT"}
    assert len(list((tmp_path / "out/mr/imagesTr").iterdir())) == 2
    assert summary["mr_contrast"] == "bssfp"
    assert main(["data", "phantom", str(tmp_path / "bb"), "--cases", "2", "--size", "20",
                 "--mr-contrast", "black_blood", "--domains", "mr"]) == 0
    assert json.loads(capsys.readouterr().out)["mr_contrast"] == "black_blood"
    with pytest.raises(SystemExit) as exc:   # argparse: one-line usage error, exit 2
        main(["data", "phantom", str(tmp_path / "bad"), "--mr-contrast", "flair"])
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
