"""The embedded cardiac phantom: determinism, geometry, appearance and the domain gap's cause."""

import json

import nibabel as nib
import numpy as np
import pytest

from sasan.cli import main
from sasan.data import layout, phantom
from sasan.data.phantom import (PROTOCOLS, generate_paired_phantom, generate_phantom, paired_phantom_case,
                                 phantom_anatomy, phantom_case)
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


# ------------------------------------------------------------------------- paired ---

PAIRED_SIZE = 32


def _load(path):
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine, img.get_data_dtype()


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    summary = generate_paired_phantom(root / "two", cases=2, seed=3, size=PAIRED_SIZE)
    return root, summary


def test_paired_cases_share_one_grid_and_one_label(paired):
    root, summary = paired
    assert summary["layout"] == "paired" and summary["grid"] == "ct" and summary["cases"] == 2
    assert sorted(p.name for p in (root / "two").iterdir()) == ["labels.json", "pair_001", "pair_002"]
    cases = ["pair_001", "pair_002"]
    for case in cases:
        ct, ct_aff, ct_dtype = _load(root / "two" / case / "ct.nii.gz")
        mr, mr_aff, mr_dtype = _load(root / "two" / case / "mr.nii.gz")
        lbl, lbl_aff, lbl_dtype = _load(root / "two" / case / "label.nii.gz")
        assert ct.shape == mr.shape == lbl.shape and np.array_equal(ct_aff, mr_aff) and np.array_equal(ct_aff, lbl_aff)
        assert (ct_dtype, mr_dtype, lbl_dtype) == (np.int16, np.float32, np.uint8)
        assert set(np.unique(lbl)) == {0, 1, 2, 3, 4}
        # the CT protocol's grid: its voxel counts and (scaled) spacing
        scale = PAIRED_SIZE / 128.0
        assert ct.shape == (round(176 * scale), round(176 * scale), round(96 * scale))
        assert PROTOCOLS["ct"].inplane_mm[0] - 1e-6 <= ct_aff[0, 0] * scale <= PROTOCOLS["ct"].inplane_mm[1] + 1e-6
        # CT in HU: contrast blood above myocardium, lung/air present; MR magnitude, bright blood
        assert 200 < _median(ct, lbl, 3) < 450 and 40 < _median(ct, lbl, 1) < 160
        assert ct.min() >= -1024 and np.percentile(ct, 1) < -600
        assert mr.min() >= 0 and mr.max() < 3000
        assert _median(mr, lbl, 3) > 1.8 * _median(mr, lbl, 1)


def test_paired_is_deterministic_independent_of_count_and_not_unpaired(paired, tmp_path):
    root, _ = paired
    generate_paired_phantom(tmp_path / "one", cases=1, seed=3, size=PAIRED_SIZE)
    for name in ("ct.nii.gz", "mr.nii.gz", "label.nii.gz"):
        one, one_aff, _ = _load(tmp_path / "one/pair_001" / name)
        two, two_aff, _ = _load(root / "two/pair_001" / name)
        assert np.array_equal(one, two) and np.array_equal(one_aff, two_aff), name
    ct, mr, lbl, aff = paired_phantom_case(0, seed=3, size=PAIRED_SIZE)
    assert np.array_equal(ct, _load(root / "two/pair_001/ct.nii.gz")[0])
    assert np.array_equal(mr, _load(root / "two/pair_001/mr.nii.gz")[0])
    # the same seed twice: byte-identical arrays; another seed: another subject
    again = paired_phantom_case(0, seed=3, size=PAIRED_SIZE)
    assert all(np.array_equal(a, b) and a.tobytes() == b.tobytes() for a, b in zip((ct, mr, lbl, aff), again))
    assert not np.array_equal(paired_phantom_case(0, seed=4, size=PAIRED_SIZE)[2], lbl)
    # a different person from the unpaired subject 0 (same grid protocol, so same shape)
    _, unpaired_lbl, _ = phantom_case("ct", 0, seed=3, size=PAIRED_SIZE)
    assert unpaired_lbl.shape == lbl.shape and not np.array_equal(unpaired_lbl, lbl)
    # the contrast changes the MR intensities only: same anatomy, same CT
    ct_bb, mr_bb, lbl_bb, _ = paired_phantom_case(0, seed=3, size=PAIRED_SIZE, mr_contrast="black_blood")
    assert np.array_equal(ct_bb, ct) and np.array_equal(lbl_bb, lbl)
    assert _median(mr_bb, lbl, 3) < 0.5 * _median(mr_bb, lbl, 1)


def test_paired_guards_args_and_foreign_folders(paired, tmp_path):
    root, _ = paired
    generate_paired_phantom(root / "two", cases=2, seed=3, size=PAIRED_SIZE)  # replaces its own output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a paired phantom") as exc:
        generate_paired_phantom(tmp_path / "mine", cases=1, size=20)
    assert "\n" not in str(exc.value)
    assert (tmp_path / "mine/thesis.tex").read_text() == "precious"
    generate_phantom(tmp_path / "unpaired", cases=1, size=16, domains=("mr",))
    with pytest.raises(DataError, match="refusing"):   # a canonical phantom is not a paired one
        generate_paired_phantom(tmp_path / "unpaired", cases=1, size=16)
    for bad in ({"cases": 0}, {"seed": -1}, {"size": 8}, {"mr_contrast": "t1"}):
        with pytest.raises(ConfigError):
            generate_paired_phantom(tmp_path / "x", **bad)
    assert not (tmp_path / "x").exists()


def test_paired_phantom_is_read_by_the_paired_adapter_and_ingested(paired, tmp_path):
    from sasan.config import config_from_dict
    from sasan.data.adapters import adapt_paired
    from sasan.data.layout import read_dataset_json
    from sasan.data.manifest import read_manifest
    from sasan.stages import ingest
    from sasan.tracking.runs import Tracker

    root, _ = paired
    ds = adapt_paired(root / "two")
    assert sorted(ds.domains) == ["ct", "mr"] and len(ds.cases) == 4
    assert all(c.label_shared and c.label.name == "label.nii.gz" for c in ds.cases)
    assert all(spec.labels == {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "AA": 4} for spec in ds.domains.values())
    cfg = config_from_dict({"ingest": {"layout": "paired", "test_fraction": 0.5, "seed": 0}}, "test")
    summary = ingest.run(ingest.IngestInputs(str(root / "two")), ingest.IngestOutputs(tmp_path / "raw"), cfg,
                         Tracker.disabled())
    assert summary["domains"] == {"ct": {"train": 1, "test": 1}, "mr": {"train": 1, "test": 1}}
    split = {}
    for case in read_manifest(tmp_path / "raw")["cases"]:
        split.setdefault(case["case_id"], set()).add(case["split"])
        assert case["label"] is not None
    assert sorted(split) == ["pair_001", "pair_002"] and all(len(s) == 1 for s in split.values())
    for domain in ("ct", "mr"):         # the structures keep their names through ingest
        assert read_dataset_json(tmp_path / "raw" / domain).labels["AA"] == 4


def test_cli_phantom_paired(tmp_path, capsys):
    assert main(["data", "phantom", str(tmp_path / "out"), "--paired", "--cases", "1", "--size", "16",
                 "--mr-contrast", "black_blood"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layout"] == "paired" and summary["mr_contrast"] == "black_blood"
    assert summary["domains"]["mr"] == {"cases": 1, "modality": "MR"}
    assert sorted(p.name for p in (tmp_path / "out/pair_001").iterdir()) == ["ct.nii.gz", "label.nii.gz",
                                                                            "mr.nii.gz"]
    assert json.loads((tmp_path / "out/labels.json").read_text())["MYO"] == 1
    assert main(["data", "phantom", str(tmp_path / "bad"), "--paired", "--domains", "mr"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
