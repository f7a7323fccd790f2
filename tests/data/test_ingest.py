"""Ingest: canonical output, manifest, seeded subject-level splits, atomicity, sources."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sasan.cli import main
from sasan.data.adapters import SourceCase
from sasan.data.ingest import assign_splits, run_ingest
from sasan.data.layout import read_dataset_json, save_nifti
from sasan.data.manifest import read_manifest
from sasan.data.phantom import generate_phantom
from sasan.data.sources import parse_source
from sasan.errors import ConfigError, DataError

AFF = np.diag([1.5, 1.5, 2.0, 1.0])
MMWHS_RAW = np.array([0, 205, 420, 500, 550, 600, 820, 850], np.uint16)


def _mmwhs_tree(root, n=5):
    rng = np.random.default_rng(0)
    for mod in ("mr", "ct"):
        for k in range(n):
            num = 1001 + k
            img = rng.normal(size=(6, 5, 4)).astype(np.float32)
            lab = MMWHS_RAW[np.arange(6 * 5 * 4) % len(MMWHS_RAW)].reshape(6, 5, 4)
            save_nifti(root / f"{mod}_train/{mod}_train_{num}_image.nii.gz", img, AFF)
            save_nifti(root / f"{mod}_train/{mod}_train_{num}_label.nii.gz", lab, AFF)
    return root


@pytest.fixture(scope="module")
def phantom_src(tmp_path_factory):
    return Path(generate_phantom(tmp_path_factory.mktemp("src") / "phantom", cases=5, seed=1, size=16)["out_dir"])


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ splits ---

def _cases(ids, domain="mr", test=(), unlabelled=(), subject=None):
    return [SourceCase(domain, i, Path(f"{i}.nii.gz"), None if i in unlabelled else Path(f"{i}_label.nii.gz"),
                       "test" if i in test else None, subject=subject(i) if subject else None) for i in ids]


def test_splits_are_seeded_and_keep_fraction():
    ids = [f"s{i:02d}" for i in range(20)]
    a = assign_splits(_cases(ids), 0.2, seed=0)
    assert a == assign_splits(_cases(list(reversed(ids))), 0.2, seed=0)  # order does not matter
    assert sum(v == "test" for v in a.values()) == 4
    assert any(assign_splits(_cases(ids), 0.2, seed=s) != a for s in range(1, 5))


def test_held_out_cases_stay_test_and_count():
    ids = [f"s{i}" for i in range(10)]
    sp = assign_splits(_cases(ids, test=("s3", "s7")), 0.3, seed=0)
    assert sp["s3"] == sp["s7"] == "test"
    assert sum(v == "test" for v in sp.values()) == 3  # 2 forced + 1 drawn
    sp = assign_splits(_cases(ids, test=("s0", "s1", "s2", "s3", "s4")), 0.2, seed=0)
    assert sum(v == "test" for v in sp.values()) == 5  # never moves a held-out case to train


def test_each_domain_gets_a_test_set_and_pairs_stay_together():
    cases = _cases(["mr_1", "mr_2", "mr_3"]) + _cases(["ct_1", "ct_2", "ct_3"], "ct")
    sp = assign_splits(cases, 0.2, seed=0)
    assert sum(sp[c] == "test" for c in ("mr_1", "mr_2", "mr_3")) == 1
    assert sum(sp[c] == "test" for c in ("ct_1", "ct_2", "ct_3")) == 1
    paired = _cases(["p1", "p2", "p3", "p4"], "ct") + _cases(["p1", "p2", "p3", "p4"], "mr")
    sp = assign_splits(paired, 0.25, seed=3)
    assert list(sp) and sum(v == "test" for v in sp.values()) == 1  # one subject, both its scans


def test_paired_quota_counts_complete_subjects_labelled_or_not():
    ids = [f"p{i:02d}" for i in range(10)]
    unlabelled = _cases(ids, "ct", unlabelled=ids) + _cases(ids, "mr", unlabelled=ids)
    assert set(assign_splits(unlabelled, 0.2, seed=0).values()) == {"train"}  # unpaired rule: labelled only
    sp = assign_splits(unlabelled, 0.2, seed=0, paired=True)
    assert sum(v == "test" for v in sp.values()) == 2  # round(0.2 x 10) subjects, both their scans
    labelled = _cases(ids, "ct") + _cases(ids, "mr")
    assert assign_splits(labelled, 0.2, seed=0, paired=True) == assign_splits(labelled, 0.2, seed=0) == sp
    # a subject lacking a modality is never drawn (nothing to score its translation against)
    lonely = [f"m{i}" for i in range(4)]
    mixed = unlabelled + _cases(lonely, "mr")
    sp = assign_splits(mixed, 0.2, seed=0, paired=True)
    assert all(sp[i] == "train" for i in lonely) and sum(v == "test" for v in sp.values()) == 2
    assert sum(assign_splits(mixed, 0.2, seed=0)[i] == "test" for i in lonely) == 1  # unpaired: labelled count


def test_paired_quota_counts_subjects_with_the_experiments_pair():
    """With the experiment's pair known, a complete pair is a subject with both its images, not
    one with every modality of the data set (3 of 10 subjects also have a PD scan; RIRE-like
    data where nobody has every scan)."""
    ids = [f"p{i:02d}" for i in range(10)]
    three = _cases(ids, "ct", unlabelled=ids) + _cases(ids, "mr", unlabelled=ids) + \
        _cases(ids[:3], "pd", unlabelled=ids)
    sp = assign_splits(three, 0.2, seed=0, paired=True, pair=("ct", "mr"))
    test = {i for i in ids if sp[i] == "test"}
    assert len(test) == 2 and test - set(ids[:3])  # 1 of the 7 CT+MR, 1 of the 3 CT+MR+PD subjects
    everyone = assign_splits(three, 0.2, seed=0, paired=True)  # no pair known: every modality, as before
    assert {i for i in ids if everyone[i] == "test"} <= set(ids[:3])
    # nobody has CT, MR and PD: the pair still fills the test quota
    rire = _cases(ids[:6], "ct", unlabelled=ids) + _cases(ids, "mr", unlabelled=ids) + \
        _cases(ids[6:], "pd", unlabelled=ids)
    assert set(assign_splits(rire, 0.2, seed=0, paired=True).values()) == {"train"}
    sp = assign_splits(rire, 0.2, seed=0, paired=True, pair=("mr", "ct"))
    assert [i for i in ids if sp[i] == "test"] and all(sp[i] == "train" for i in ids[6:])
    # a fully labelled set splits as ever
    labelled = _cases(ids, "ct") + _cases(ids, "mr")
    assert assign_splits(labelled, 0.2, seed=0, paired=True, pair=("ct", "mr")) == assign_splits(labelled, 0.2, 0)


def _partly_labelled_pairs(root, cases=8, labelled=3):
    """A paired-layout source (CT + MR per subject) with labels for the first ``labelled``
    subjects only: the labelled quota (unpaired) draws 1 test subject, the paired one 2."""
    from sasan.data.phantom import generate_paired_phantom

    generate_paired_phantom(root, cases=cases, size=32)
    for label in sorted(root.glob("*/label.nii.gz"))[labelled:]:
        label.unlink()
    return root


def _test_subjects(out):
    return sorted({c["case_id"] for c in read_manifest(out)["cases"] if c["split"] == "test"})


def test_the_experiments_mode_decides_paired_splitting_not_the_layout(tmp_path):
    """A partly labelled paired-layout set: an unpaired experiment (which segments) splits by the
    labelled quota; layout paired means paired mode only where no experiment is known."""
    from sasan.config import config_from_dict
    from sasan.stages import ingest
    from sasan.tracking.runs import Tracker

    src = _partly_labelled_pairs(tmp_path / "src")
    run_ingest(src, tmp_path / "unpaired", layout="paired", test_fraction=0.2, paired=False)
    run_ingest(src, tmp_path / "paired", layout="paired", test_fraction=0.2, paired=True)
    unpaired, paired = _test_subjects(tmp_path / "unpaired"), _test_subjects(tmp_path / "paired")
    assert len(unpaired) == 1 and len(paired) == 2
    run_ingest(src, tmp_path / "layout", layout="paired", test_fraction=0.2)  # no experiment: the layout
    assert _test_subjects(tmp_path / "layout") == paired

    def stage(out, mode):
        cfg = config_from_dict({"experiment": {"mode": mode, "source": "ct", "target": "mr"},
                                "ingest": {"layout": "paired", "test_fraction": 0.2}})
        ingest.run(ingest.IngestInputs(str(src)), ingest.IngestOutputs(out), cfg, Tracker.disabled())
        return _test_subjects(out)

    assert stage(tmp_path / "s_unpaired", "unpaired") == unpaired
    assert stage(tmp_path / "s_paired", "paired") == paired


def test_cli_ingest_reads_the_experiment_from_params(tmp_path, capsys):
    """`sasan ingest --params/--set` splits as the Kubeflow stage does; without them no
    experiment is known (./params.yaml is not read) and the layout decides."""
    import yaml

    src = _partly_labelled_pairs(tmp_path / "src")
    run_ingest(src, tmp_path / "unpaired", layout="paired", test_fraction=0.2, paired=False)
    run_ingest(src, tmp_path / "paired", layout="paired", test_fraction=0.2, paired=True)
    unpaired, paired = _test_subjects(tmp_path / "unpaired"), _test_subjects(tmp_path / "paired")
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"experiment": {"source": "ct", "target": "mr", "mode": "unpaired"},
                                      "ingest": {"layout": "paired", "test_fraction": 0.2}}))
    assert main(["ingest", str(src), str(tmp_path / "a"), "--layout", "paired"]) == 0
    assert _test_subjects(tmp_path / "a") == paired
    assert main(["ingest", str(src), str(tmp_path / "b"), "--params", str(params)]) == 0  # layout from params
    assert _test_subjects(tmp_path / "b") == unpaired and read_manifest(tmp_path / "b")["layout"] == "paired"
    assert main(["ingest", str(src), str(tmp_path / "c"), "--params", str(params),
                 "--set", "experiment.mode=paired"]) == 0
    assert _test_subjects(tmp_path / "c") == paired
    # flags override the parameters' ingest.*
    assert main(["ingest", str(src), str(tmp_path / "d"), "--params", str(params), "--test-fraction", "0.4",
                 "--seed", "3"]) == 0
    assert read_manifest(tmp_path / "d")["test_fraction"] == 0.4 and read_manifest(tmp_path / "d")["seed"] == 3
    capsys.readouterr()
    # a paired experiment whose domains the data lacks: refused before anything is written
    assert main(["ingest", str(src), str(tmp_path / "e"), "--params", str(params),
                 "--set", "experiment.mode=paired", "--set", "experiment.source=t1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment source/target 't1' is not among the data set's domains (ct, mr)" in err[0]
    assert not (tmp_path / "e").exists()


def test_dvc_ingest_stage_passes_the_experiment(tmp_path, monkeypatch, capsys):
    """dvc.yaml's ingest command, run with a params.yaml in paired mode, makes the paired split
    (as Kubeflow's stage does); its params list the experiment keys it reads."""
    import re
    import shlex

    import yaml

    root = Path(__file__).resolve().parents[2]
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["ingest"]
    assert {"ingest", "experiment.mode", "experiment.source", "experiment.target"} <= set(stage["params"])
    src = _partly_labelled_pairs(tmp_path / "src")
    run_ingest(src, tmp_path / "paired", layout="paired", test_fraction=0.2, paired=True)
    run_ingest(src, tmp_path / "unpaired", layout="paired", test_fraction=0.2, paired=False)
    monkeypatch.chdir(tmp_path)
    for mode in ("paired", "unpaired"):
        params = {"experiment": {"source": "ct", "target": "mr", "mode": mode},
                  "ingest": {"source": str(src), "layout": "paired", "test_fraction": 0.2, "seed": 0},
                  "validate": {"affine_atol_mm": 0.001}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

        def value(match):
            node = params
            for key in match.group(1).split("."):
                node = node[key]
            return str(node)

        words = shlex.split(re.sub(r"\$\{([^}]+)\}", value, stage["cmd"]))
        assert words[:2] == ["sasan", "ingest"] and "--params" in words
        assert main(words[1:]) == 0
        assert _test_subjects(tmp_path / "data" / "raw") == _test_subjects(tmp_path / mode)
    capsys.readouterr()


# ------------------------------------------------------------------------ end to end ---

def test_ingest_phantom_writes_manifest(tmp_path, phantom_src):
    out = tmp_path / "raw"
    summary = run_ingest(phantom_src, out, layout="nnunet", test_fraction=0.2, seed=0)
    assert summary["domains"] == {"ct": {"train": 4, "test": 1}, "mr": {"train": 4, "test": 1}}
    doc = read_manifest(out)
    assert doc["version"] == 1 and doc["seed"] == 0 and doc["test_fraction"] == 0.2
    assert doc["domains"]["mr"] == {"modality": "MR", "labels": {"background": 0, "MYO": 1, "LA": 2, "LV": 3,
                                                                "AA": 4}}
    for case in doc["cases"]:
        sub = "Tr" if case["split"] == "train" else "Ts"
        assert case["image"] == f"{case['domain']}/images{sub}/{case['case_id']}_0000.nii.gz"
        assert case["label"] == f"{case['domain']}/labels{sub}/{case['case_id']}.nii.gz"
        assert case["sha256"] == {"image": _sha(out / case["image"]), "label": _sha(out / case["label"])}
        img = nib.load(out / case["image"])
        assert case["shape"] == list(img.shape) and case["orientation"] == "RAS"
        assert np.allclose(case["spacing"], img.header.get_zooms())
        # images are copied byte for byte: geometry and values untouched
        src = phantom_src / case["domain"] / "imagesTr" / Path(case["image"]).name
        assert _sha(src) == case["sha256"]["image"]
    assert read_dataset_json(out / "ct").num_training == 4
    again = run_ingest(phantom_src, out, test_fraction=0.2, seed=0)  # re-ingest replaces OUT
    assert again["cases"] == 10 and read_manifest(out)["cases"] == doc["cases"]


def test_mmwhs_labels_are_remapped(tmp_path):
    src = _mmwhs_tree(tmp_path / "mmwhs")
    run_ingest(src, tmp_path / "out", layout="mmwhs", test_fraction=0.4, seed=0)
    doc = read_manifest(tmp_path / "out")
    case = next(c for c in doc["cases"] if c["case_id"] == "mr_1003")
    lab = nib.load(tmp_path / "out" / case["label"])
    assert lab.get_data_dtype() == np.uint8 and np.allclose(lab.affine, AFF)
    expected = np.array([0, 1, 2, 3, 0, 0, 4, 0], np.uint8)[np.arange(120) % 8].reshape(6, 5, 4)
    assert np.array_equal(np.asarray(lab.dataobj), expected)
    assert sum(c["split"] == "test" for c in doc["cases"] if c["domain"] == "ct") == 2


def test_brats_pairs_never_straddle_splits(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        case = f"BraTS20_Training_{i:03d}"
        for mod in ("t1", "t2"):
            save_nifti(tmp_path / "src" / case / f"{case}_{mod}.nii.gz", rng.normal(size=(4, 4, 4)).astype(np.float32),
                       AFF)
        save_nifti(tmp_path / "src" / case / f"{case}_seg.nii.gz",
                   np.array([0, 1, 2, 4], np.uint8)[np.arange(64) % 4].reshape(4, 4, 4), AFF)
    run_ingest(tmp_path / "src", tmp_path / "out", layout="brats", test_fraction=0.34, seed=2)
    doc = read_manifest(tmp_path / "out")
    split_of = {}
    for c in doc["cases"]:
        assert split_of.setdefault(c["case_id"], c["split"]) == c["split"]
    assert sum(v == "test" for v in split_of.values()) == 2
    assert doc["domains"]["t2"]["labels"] == {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
    lab = np.asarray(nib.load(tmp_path / "out" / doc["cases"][0]["label"]).dataobj)
    assert set(np.unique(lab)) == {0, 1, 2, 3}


def test_paired_without_labels_and_non_ras_orientation(tmp_path):
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    for case in ("a", "b", "c"):
        save_nifti(tmp_path / "src" / case / "ct.nii.gz", np.zeros((3, 3, 3), np.int16), lps)
        save_nifti(tmp_path / "src" / case / "mr.nii.gz", np.zeros((3, 3, 3), np.float32), AFF)
    run_ingest(tmp_path / "src", tmp_path / "out", layout="paired", test_fraction=0.3)
    doc = read_manifest(tmp_path / "out")
    assert {c["label"] for c in doc["cases"]} == {None}
    assert {c["orientation"] for c in doc["cases"] if c["domain"] == "ct"} == {"LPS"}
    assert doc["domains"]["ct"]["labels"] == {"background": 0}


def _splits(out):
    return {(c["domain"], c["case_id"]): c["split"] for c in read_manifest(out)["cases"]}


def test_unlabelled_paired_subjects_fill_the_test_quota(tmp_path):
    from sasan.data.phantom import generate_paired_phantom

    generate_paired_phantom(tmp_path / "src", cases=5, size=32)
    run_ingest(tmp_path / "src", tmp_path / "labelled", layout="paired", test_fraction=0.2, seed=0)
    for label in (tmp_path / "src").glob("*/label.nii.gz"):
        label.unlink()  # RIRE: no segmentation labels
    summary = run_ingest(tmp_path / "src", tmp_path / "out", layout="paired", test_fraction=0.2, seed=0)
    assert summary["domains"] == {"ct": {"train": 4, "test": 1}, "mr": {"train": 4, "test": 1}}
    splits = _splits(tmp_path / "out")
    test = {case for (_, case), split in splits.items() if split == "test"}
    assert len(test) == 1 and all(splits[(d, c)] == "test" for d in ("ct", "mr") for c in test)
    assert splits == _splits(tmp_path / "labelled")  # labelled or not: one draw
    assert {c["label"] for c in read_manifest(tmp_path / "out")["cases"]} == {None}


def test_paired_experiment_mode_reaches_the_split(tmp_path, phantom_src):
    from sasan.config import config_from_dict
    from sasan.stages import ingest
    from sasan.tracking.runs import Tracker

    def stage(out, mode):  # the phantom's MR and CT cases are different subjects: no complete pair
        cfg = config_from_dict({"experiment": {"mode": mode}, "ingest": {"test_fraction": 0.2}})
        return ingest.run(ingest.IngestInputs(str(phantom_src)), ingest.IngestOutputs(out), cfg, Tracker.disabled())

    one_each = {"train": 4, "test": 1}
    assert stage(tmp_path / "u", "unpaired")["domains"] == {"ct": one_each, "mr": one_each}
    assert stage(tmp_path / "p", "paired")["domains"] == {"ct": {"train": 5, "test": 0}, "mr": {"train": 5, "test": 0}}


# ------------------------------------------------------------------------- bad input ---

def test_bad_label_fails_and_leaves_previous_output(tmp_path, phantom_src):
    out = tmp_path / "raw"
    run_ingest(phantom_src, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    src = tmp_path / "src"
    shutil.copytree(phantom_src, src)
    bad = src / "ct/labelsTr/ct_003.nii.gz"
    img = nib.load(bad)
    save_nifti(bad, np.asarray(img.dataobj)[:-1], img.affine)  # shape differs from the image
    with pytest.raises(DataError) as err:
        run_ingest(src, out)
    assert "ct_003.nii.gz" in str(err.value) and "shape" in str(err.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    with pytest.raises(DataError):
        run_ingest(src, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_unknown_label_value_is_rejected(tmp_path, phantom_src):
    src = tmp_path / "src"
    shutil.copytree(phantom_src, src)
    lab = src / "mr/labelsTr/mr_002.nii.gz"
    img = nib.load(lab)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 9
    save_nifti(lab, data, img.affine)
    with pytest.raises(DataError, match=r"mr_002.nii.gz: label values \[9\]"):
        run_ingest(src, tmp_path / "out")


def test_refuses_to_replace_a_foreign_folder(tmp_path, phantom_src):
    (tmp_path / "home").mkdir()
    (tmp_path / "home/notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        run_ingest(phantom_src, tmp_path / "home")
    assert (tmp_path / "home/notes.txt").exists()
    with pytest.raises(ConfigError):
        run_ingest(phantom_src, tmp_path / "o", layout="dicom")
    with pytest.raises(ConfigError):
        run_ingest(phantom_src, tmp_path / "o", test_fraction=1.0)
    with pytest.raises(ConfigError):
        run_ingest(phantom_src, tmp_path / "o", seed=-1)


def test_duplicate_case_ids_are_rejected(tmp_path):
    src = _mmwhs_tree(tmp_path / "mmwhs", n=2)
    save_nifti(src / "mr_test/mr_test_1001_image.nii.gz", np.zeros((6, 5, 4), np.float32), AFF)
    with pytest.raises(DataError, match="mr_1001"):
        run_ingest(src, tmp_path / "out", layout="mmwhs")


def test_archive_source(tmp_path):
    src = _mmwhs_tree(tmp_path / "MMWHS")
    arc = tmp_path / "mmwhs.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(src, arcname="MMWHS")
    summary = run_ingest(arc, tmp_path / "out", layout="mmwhs")
    assert summary["cases"] == 10 and read_manifest(tmp_path / "out")["source"] == str(arc)


def test_parse_source():
    assert parse_source("s3://bkt/a/b/").path == "a/b"
    s = parse_source("dvc://git@github.com:org/repo.git@v1.0/data/raw")
    assert (s.kind, s.location, s.rev, s.path) == ("dvc", "git@github.com:org/repo.git", "v1.0", "data/raw")
    assert parse_source("dvc:///srv/repo@abc123/x").location == "/srv/repo"
    for bad in ("dvc:///srv/repo/data", "dvc://repo@v1", "ftp://host/x", "s3:///x"):
        with pytest.raises(DataError):
            parse_source(bad)


def test_cli_ingest_error_is_one_line(tmp_path, capsys):
    rc = main(["ingest", str(tmp_path / "nope"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "nope" in err[0] and "not found" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_ingest(tmp_path, phantom_src, capsys):
    rc = main(["ingest", str(phantom_src), str(tmp_path / "out"), "--test-fraction", "0.4", "--seed", "7"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["domains"]["mr"] == {"train": 3, "test": 2}
    assert read_manifest(tmp_path / "out")["seed"] == 7


# ------------------------------------------------------------------------ DVC source ---

def _run(cmd, cwd):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


@pytest.mark.slow
def test_dvc_source_at_a_revision(tmp_path, phantom_src, monkeypatch):
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))  # keep DVC's index in tmp
    dvc = [sys.executable, "-m", "dvc"]
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q", "-b", "main"], repo)
    _run(dvc + ["init", "-q"], repo)
    _run(dvc + ["config", "core.analytics", "false"], repo)
    _run(dvc + ["remote", "add", "-d", "store", str(tmp_path / "remote")], repo)
    shutil.copytree(phantom_src, repo / "data/phantom")
    _run(dvc + ["add", "-q", "data/phantom"], repo)
    _run(dvc + ["push", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", "v1 data"], repo)
    _run(["git", "tag", "v1"], repo)
    # A later revision drops one case; v1 must still give all of them.
    shutil.rmtree(repo / "data/phantom/mr")
    _run(dvc + ["add", "-q", "data/phantom"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", "v2 data"], repo)
    shutil.rmtree(repo / ".dvc/cache")  # v1's files now exist only in the DVC remote

    summary = run_ingest(f"dvc://{repo}@v1/data/phantom", tmp_path / "out", seed=0)
    assert summary["domains"] == {"ct": {"train": 4, "test": 1}, "mr": {"train": 4, "test": 1}}
    local = run_ingest(phantom_src, tmp_path / "local", seed=0)
    assert local["domains"] == summary["domains"]
    assert [c["sha256"] for c in read_manifest(tmp_path / "out")["cases"]] == \
        [c["sha256"] for c in read_manifest(tmp_path / "local")["cases"]]
    with pytest.raises(DataError, match="does not exist"):
        run_ingest(f"dvc://{repo}@v1/data/nothing", tmp_path / "o2")


# ------------------------------------------------------- labels, subjects, safety ---

def test_unlabelled_cases_never_fill_the_test_quota():
    ids = [f"s{i:02d}" for i in range(10)]
    labelled = assign_splits(_cases(ids), 0.2, seed=0)
    extra_test = [f"t{i:02d}" for i in range(12)]
    extra_free = ["u1", "u2"]
    mixed = assign_splits(_cases(ids + extra_test + extra_free, test=extra_test, unlabelled=extra_test + extra_free),
                          0.2, seed=0)
    assert {i: mixed[i] for i in ids} == labelled  # same draw as without the unlabelled cases
    assert sum(labelled[i] == "test" for i in ids) == 2
    assert all(mixed[i] == "test" for i in extra_test) and mixed["u1"] == mixed["u2"] == "train"
    # a labelled held-out case still counts toward the quota
    sp = assign_splits(_cases(ids + ["t1"], test=("s00", "t1"), unlabelled=("t1",)), 0.2, seed=0)
    assert sp["s00"] == sp["t1"] == "test" and sum(sp[i] == "test" for i in ids) == 2


def test_time_points_of_one_subject_share_a_split():
    ids = [f"BraTS-GLI-{i // 2:05d}-{i % 2:03d}" for i in range(20)]
    for seed in range(5):
        sp = assign_splits(_cases(ids, subject=lambda c: c[:-4]), 0.3, seed=seed)
        for i in range(0, 20, 2):
            assert sp[ids[i]] == sp[ids[i + 1]]
        assert sum(v == "test" for v in sp.values()) == 6  # 3 of 10 subjects, both time points


def test_mmwhs_official_test_images_leave_labelled_test_cases(tmp_path):
    from sasan.config import ExperimentConfig
    from sasan.data.config import ValidateConfig
    from sasan.data.validate import run_validate

    src = _mmwhs_tree(tmp_path / "mmwhs")
    rng = np.random.default_rng(1)
    for mod in ("mr", "ct"):
        for num in range(2001, 2011):
            save_nifti(src / f"{mod}_test/{mod}_test_{num}_image.nii.gz", rng.normal(size=(6, 5, 4)).astype(np.float32),
                       AFF)
    run_ingest(src, tmp_path / "out", layout="mmwhs", test_fraction=0.2, seed=0)
    doc = read_manifest(tmp_path / "out")
    for mod in ("mr", "ct"):
        cases = [c for c in doc["cases"] if c["domain"] == mod]
        assert sum(c["split"] == "test" and c["label"] is not None for c in cases) == 1
        assert sum(c["split"] == "train" for c in cases) == 4
        assert all(c["split"] == "test" for c in cases if c["label"] is None)
    report = run_validate(tmp_path / "out", tmp_path / "report", ValidateConfig(), ExperimentConfig())
    assert report["labelled_counts"]["ct"] == {"test": 1, "train": 4}
    assert report["counts"]["ct"] == {"test": 11, "train": 4}


def test_brats_time_points_stay_together_and_record_the_subject(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        case = f"BraTS-GLI-{i // 2:05d}-{i % 2:03d}"
        for mod in ("t1n", "t2w", "seg"):
            data = (np.array([0, 1, 2, 3], np.uint8)[np.arange(64) % 4].reshape(4, 4, 4) if mod == "seg"
                    else rng.normal(size=(4, 4, 4)).astype(np.float32))
            save_nifti(tmp_path / "src" / case / f"{case}-{mod}.nii.gz", data, AFF)
    run_ingest(tmp_path / "src", tmp_path / "out", layout="brats", test_fraction=0.5, seed=1)
    doc = read_manifest(tmp_path / "out")
    split_of = {}
    for c in doc["cases"]:
        assert c["subject"] == c["case_id"][:-4]
        assert split_of.setdefault(c["subject"], c["split"]) == c["split"]
    assert sorted(split_of.values()) == ["test", "test", "train", "train"]


def test_brats_seg_with_both_3_and_4_is_refused(tmp_path):
    for i in range(3):
        case = f"BraTS-GLI-{i:05d}-100"
        for mod in ("t1n", "t2w"):
            save_nifti(tmp_path / "src" / case / f"{case}-{mod}.nii.gz", np.ones((4, 4, 4), np.float32), AFF)
        seg = np.array([0, 1, 2, 3, 4] if i == 1 else [0, 1, 2, 4], np.uint8)
        save_nifti(tmp_path / "src" / case / f"{case}-seg.nii.gz", seg[np.arange(64) % len(seg)].reshape(4, 4, 4),
                   AFF)
    with pytest.raises(DataError) as err:
        run_ingest(tmp_path / "src", tmp_path / "out", layout="brats")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "src/BraTS-GLI-00001-100/BraTS-GLI-00001-100-seg"))
    assert "3 and 4 both occur" in msg and "ET" in msg
    assert not (tmp_path / "out").exists()


def test_unknown_mmwhs_codes_are_recorded_and_reported(tmp_path):
    from sasan.data.config import ValidateConfig
    from sasan.data.validate import run_validate

    src = _mmwhs_tree(tmp_path / "mmwhs", n=3)
    lab = src / "ct_train/ct_train_1002_label.nii.gz"
    data = np.asarray(nib.load(lab).dataobj).copy()
    data[0, 0, :2] = [421, 999]
    save_nifti(lab, data, AFF)
    run_ingest(src, tmp_path / "out", layout="mmwhs", test_fraction=0.4)
    doc = read_manifest(tmp_path / "out")
    flagged = {c["case_id"]: c["unknown_label_values"] for c in doc["cases"] if "unknown_label_values" in c}
    assert flagged == {"ct_1002": [421, 999]}  # known codes (550, 600, 850) are not flagged
    report = run_validate(tmp_path / "out", tmp_path / "r", ValidateConfig())
    check = next(c for c in report["checks"] if c["check"].startswith("no unknown raw label values"))
    assert report["success"] and check["severity"] == "warning" and not check["success"]
    assert check["failures"][0]["case_id"] == "ct_1002" and "[421, 999]" in check["failures"][0]["reason"]


def test_source_inside_out_is_refused_before_anything_happens(tmp_path, phantom_src, capsys):
    out = tmp_path / "out"
    run_ingest(phantom_src, out)
    shutil.copytree(phantom_src, out / "incoming")
    arc = out / "incoming.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(phantom_src, arcname="phantom")
    for source in (out / "incoming", arc, out):
        with pytest.raises(DataError, match="source lies inside the output folder") as err:
            run_ingest(source, out)
        assert "\n" not in str(err.value) and str(err.value).startswith(str(source))
    assert (out / "incoming/mr/dataset.json").is_file() and arc.is_file()
    capsys.readouterr()
    rc = main(["ingest", str(out / "incoming"), str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and "inside the output folder" in lines[0]
    assert (out / "incoming/mr/dataset.json").is_file()


def test_affine_tolerance_comes_from_the_validate_setting(tmp_path, phantom_src, capsys):
    from sasan.config import config_from_dict
    from sasan.stages import ingest
    from sasan.tracking.runs import Tracker

    src = tmp_path / "src"
    shutil.copytree(phantom_src, src)
    lab = src / "mr/labelsTr/mr_002.nii.gz"
    img = nib.load(lab)
    affine = img.affine.copy()
    affine[0, 3] += 0.01  # 0.01 mm: beyond the default 1e-3
    save_nifti(lab, np.asarray(img.dataobj), affine)
    with pytest.raises(DataError, match="affine differs"):
        run_ingest(src, tmp_path / "a")
    assert run_ingest(src, tmp_path / "b", affine_atol_mm=0.05)["cases"] == 10
    cfg = config_from_dict({"validate": {"affine_atol_mm": 0.05}})
    ingest.run(ingest.IngestInputs(str(src)), ingest.IngestOutputs(tmp_path / "c"), cfg, Tracker.disabled())
    assert read_manifest(tmp_path / "c")["cases"] == read_manifest(tmp_path / "b")["cases"]
    assert main(["ingest", str(src), str(tmp_path / "d"), "--affine-atol-mm", "0.05"]) == 0
    assert main(["ingest", str(src), str(tmp_path / "e")]) != 0
    capsys.readouterr()


def test_apple_double_files_are_skipped(tmp_path, phantom_src):
    src = tmp_path / "src"
    shutil.copytree(phantom_src, src)
    (src / "mr/imagesTr/._mr_001_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (src / "mr/labelsTr/._mr_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert run_ingest(src, tmp_path / "out")["cases"] == 10
    brats = tmp_path / "brats"
    for i in range(3):
        case = f"BraTS20_Training_{i:03d}"
        for mod in ("t1", "t2", "seg"):
            save_nifti(brats / case / f"{case}_{mod}.nii.gz", np.ones((4, 4, 4), np.uint8), AFF)
        (brats / case / f"._{case}_t1.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (brats / "__MACOSX").mkdir()
    (brats / "__MACOSX/._BraTS20_Training_000_t2.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    assert run_ingest(brats, tmp_path / "bout", layout="brats")["cases"] == 6


def test_paired_shared_label_mask_and_unknown_names(tmp_path, caplog):
    for case in ("a", "b", "c"):
        save_nifti(tmp_path / "src" / case / "ct.nii.gz", np.zeros((3, 3, 3), np.int16), AFF)
        save_nifti(tmp_path / "src" / case / "mr.nii.gz", np.ones((3, 3, 3), np.float32), AFF)
        save_nifti(tmp_path / "src" / case / "label.nii.gz", np.eye(3, dtype=np.uint8)[None].repeat(3, 0), AFF)
        save_nifti(tmp_path / "src" / case / "mask.nii.gz", np.ones((3, 3, 3), np.uint8), AFF)
    with caplog.at_level("INFO", logger="sasan.data.adapters"):
        run_ingest(tmp_path / "src", tmp_path / "out", layout="paired", test_fraction=0.3)
    doc = read_manifest(tmp_path / "out")
    assert sorted(doc["domains"]) == ["ct", "mr"]
    assert all(c["label"] is not None for c in doc["cases"])
    assert doc["domains"]["mr"]["labels"] == {"background": 0, "label_1": 1}
    assert "mask.nii.gz: a mask" in caplog.text
    save_nifti(tmp_path / "src/a/pet.nii.gz", np.zeros((3, 3, 3), np.float32), AFF)
    for case in ("b", "c"):
        save_nifti(tmp_path / "src" / case / "pet.nii.gz", np.zeros((3, 3, 3), np.float32), AFF)
    caplog.clear()
    with caplog.at_level("WARNING", logger="sasan.data.adapters"):
        run_ingest(tmp_path / "src", tmp_path / "out2", layout="paired", test_fraction=0.3)
    assert "'pet' is not a known modality name" in caplog.text
    save_nifti(tmp_path / "src/b/mr.nii.gz", np.ones((4, 3, 3), np.float32), AFF)  # another grid
    with pytest.raises(DataError, match="shared label.nii.gz must lie on the grid of every modality") as err:
        run_ingest(tmp_path / "src", tmp_path / "out3", layout="paired")
    assert str(err.value).startswith(str(tmp_path / "src/b/label.nii.gz"))
