"""Paired preprocessing (experiment.mode: paired): each subject's CT and MR are cut with one
box and one set of kept slices, so slice i of both domains' shards is one pair; and
:func:`check_paired_shards`, which refuses shards that are not aligned."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from sasan.config import config_from_dict
from sasan.data.manifest import read_manifest
from sasan.data.phantom import generate_paired_phantom
from sasan.data.prepare import prepare_pair, prepare_volume
from sasan.data.shards import PAIRED_KEYS, check_paired_shards, open_shard
from sasan.errors import ConfigError, DataError, ValidationFailed
from sasan.stages import ingest, preprocess, validate
from sasan.tracking.runs import Tracker
SPLITS = ("train", "test")


def _cfg(mode, source="mr", target="ct"):
    return config_from_dict({"ingest": {"layout": "paired", "test_fraction": 0.5, "seed": 0},
                             "experiment": {"source": source, "target": target, "mode": mode},
                             "preprocess": {"image_size": 32}}, "test")


def _preprocess(raw, out, mode, domains=None, **experiment):
    return preprocess.run(preprocess.PreprocessInputs(raw, domains), preprocess.PreprocessOutputs(out),
                          _cfg(mode, **experiment), Tracker.disabled())


def _phantom_with_ct_plate(src, pad, plate):
    """A 2-subject paired phantom at ``src`` (size 32), every volume padded with air by ``pad``
    on one grid, and a bright CT-only plate (a table) at index ``plate``: the CT and MR bodies
    then differ in extent."""
    generate_paired_phantom(src, cases=2, size=32)
    for case in sorted(src.glob("pair_*")):
        for name, air in (("ct", -1024), ("mr", 0), ("label", 0)):
            img = nib.load(case / f"{name}.nii.gz")
            array = np.pad(np.asarray(img.dataobj), pad, constant_values=air)
            if name == "ct":
                array[plate] = 300
            nib.save(nib.Nifti1Image(array, img.affine, img.header), case / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def paired_raw(tmp_path_factory):
    """A 2-subject paired phantom (1 train, 1 test) whose CT and MR bodies differ in extent, as
    on a scanner: every volume padded with air on one grid, and a CT table plate at the
    posterior end that the MR lacks (more CT slices with body, a larger CT body box)."""
    root = tmp_path_factory.mktemp("paired")
    # RAS: posterior coronal planes (the slicing axis, preprocess.axis 1)
    _phantom_with_ct_plate(root / "src", ((0, 8), (8, 0), (0, 0)), (slice(None), slice(None, 5)))
    ingest.run(ingest.IngestInputs(str(root / "src")), ingest.IngestOutputs(root / "raw"), _cfg("paired"),
               Tracker.disabled())
    return root / "raw"


@pytest.fixture(scope="module")
def shards(paired_raw, tmp_path_factory):
    """The paired raw set preprocessed in both modes: {"paired": dir, "unpaired": dir}."""
    root = tmp_path_factory.mktemp("shards")
    for mode in ("paired", "unpaired"):
        _preprocess(paired_raw, root / mode, mode)
    return {mode: root / mode for mode in ("paired", "unpaired")}


def _case(raw, domain, split):
    entry = next(c for c in read_manifest(raw)["cases"] if c["domain"] == domain and c["split"] == split)
    return entry["case_id"], raw / entry["image"], raw / entry["label"]


def _tissue(shard, stats, domain, raw_threshold):
    """Per slice, the pixels above a raw intensity (a function of the volume's stats), found in
    the shard's normalised centre slices through the volume's own clip, z-score and bounds."""
    lo, hi = stats["domains"][domain]["bounds"]
    masks = []
    for row, case in enumerate(shard.index["case_of_slice"]):
        s = stats["domains"][domain]["volumes"][shard.index["cases"][case]]
        z = (np.clip(raw_threshold(s), s["p_low"], s["p_high"]) - s["mean"]) / s["std"]
        masks.append(np.asarray(shard.images[row, 1], np.float32) > 2 * (z - lo) / (hi - lo) - 1)
    return np.array(masks)


def test_paired_shards_hold_the_same_slices_of_each_pair(shards, paired_raw):
    stats = json.loads((shards["paired"] / "stats.json").read_text())
    for split in SPLITS:
        mr, ct = (open_shard(shards["paired"] / d / split) for d in ("mr", "ct"))
        assert {k: mr.index[k] for k in PAIRED_KEYS} == {k: ct.index[k] for k in PAIRED_KEYS}
        assert mr.images.shape == ct.images.shape and len(mr.index["cases"]) == 1
        assert np.array_equal(mr.labels, ct.labels)  # one shared label through one geometry
        # the same anatomy in both: CT tissue (> -500 HU) and MR tissue (> 10% of its p_high) coincide
        a = _tissue(mr, stats, "mr", lambda s: 0.1 * s["p_high"])
        b = _tissue(ct, stats, "ct", lambda s: -500.0)
        assert (a & b).sum() / (a | b).sum() > 0.8
        check_paired_shards(mr.path, ct.path)

        # each shard row is prepare_pair's slice: one crop for both, slices where both have body
        case_id, ct_image, ct_label = _case(paired_raw, "ct", split)
        _, mr_image, mr_label = _case(paired_raw, "mr", split)
        (pm, _), (pc, _) = prepare_pair([mr_image, ct_image], [mr_label, ct_label], _cfg("paired").preprocess,
                                        [(-1.8, 4.4), (-2.8, 3.2)], ["MR", "CT"])
        assert (pm.geometry.box, pm.geometry.content) == (pc.geometry.box, pc.geometry.content)
        assert pm.body_box != pc.body_box  # the table: a larger CT body box
        keep = np.flatnonzero(np.minimum(pm.body, pc.body) >= 0.01)
        assert mr.index["slice_of_case"] == keep.tolist()
        assert np.array_equal(ct.images, pc.stacks[keep].astype(np.float16))
        assert np.array_equal(mr.images, pm.stacks[keep].astype(np.float16))

        # each modality keeps its own normalisation: CT air at -1024 HU, MR in a.u. >= 0, own bounds
        assert stats["domains"]["ct"]["volumes"][case_id]["p_low"] == -1024.0
        assert stats["domains"]["mr"]["volumes"][case_id]["p_low"] >= 0.0
        assert stats["domains"]["ct"]["bounds"] != stats["domains"]["mr"]["bounds"]
        # the CT table's slices have no MR body: dropped, though CT alone keeps them
        unpaired_ct = open_shard(shards["unpaired"] / "ct" / split)
        assert unpaired_ct.images.shape[0] > ct.images.shape[0]


def test_unpaired_mode_prepares_each_volume_alone(shards, paired_raw):
    """A paired layout in unpaired mode: today's per-volume shards (own crop, own kept slices)."""
    cfg = _cfg("unpaired").preprocess
    for domain, modality in (("ct", "CT"), ("mr", "MR")):
        shard = open_shard(shards["unpaired"] / domain / "train")
        prepared = prepare_volume(_case(paired_raw, domain, "train")[1], cfg, modality)
        keep = np.flatnonzero(prepared.body >= cfg.body_fraction)
        assert shard.index["slice_of_case"] == keep.tolist()
        assert np.array_equal(shard.images, prepared.stacks[keep].astype(np.float16))


@pytest.mark.parametrize("change", ["affine", "shape"])
def test_a_pair_on_different_grids_is_refused(paired_raw, tmp_path, change):
    raw = tmp_path / "raw"
    shutil.copytree(paired_raw, raw)
    _, mr_image, _ = _case(raw, "mr", "train")
    _, ct_image, _ = _case(raw, "ct", "train")
    img = nib.load(mr_image)
    array, affine = np.asarray(img.dataobj), img.affine.copy()
    if change == "affine":
        affine[0, 3] += 1.0
    else:
        array = array[:-1]
    nib.save(nib.Nifti1Image(array, affine), mr_image)
    with pytest.raises(DataError) as err:
        _preprocess(raw, tmp_path / "out", "paired")
    message = str(err.value)
    assert "paired cases must share a grid (resample/register them first)" in message
    assert f"the {change} of" in message and str(mr_image) in message and str(ct_image) in message
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_a_subject_in_one_domain_only_is_refused(paired_raw, make_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(paired_raw, raw)
    manifest = json.loads((raw / "manifest.json").read_text())
    lonely, _, _ = _case(raw, "mr", "test")
    manifest["cases"] = [c for c in manifest["cases"] if not (c["domain"] == "ct" and c["split"] == "test")]
    (raw / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"case '{lonely}' \\(test\\) is in domain 'mr' but not in 'ct'") as err:
        _preprocess(raw, tmp_path / "out", "paired")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="give both or neither"):  # one half of the pair alone
        _preprocess(paired_raw, tmp_path / "out", "paired", domains=("mr",))

    # a domain outside the pair is cut volume by volume, as in unpaired mode
    other = make_raw(tmp_path / "three", domains=(("mr", "MR"), ("ct", "CT"), ("t1", "MR")))
    with pytest.raises(DataError, match="is in domain"):  # make_raw's case ids differ per domain
        _preprocess(other, tmp_path / "o1", "paired")
    _preprocess(other, tmp_path / "o2", "paired", domains=("t1",))
    _preprocess(other, tmp_path / "o3", "unpaired", domains=("t1",))
    for split in SPLITS:
        for name in ("images.npy", "labels.npy", "index.json"):
            assert (tmp_path / "o2/t1" / split / name).read_bytes() == (tmp_path / "o3/t1" / split / name).read_bytes()


def test_paired_index_names_the_pair_and_its_boxes(shards, paired_raw):
    """Paired shards record the other domain and each case's crop box (the same in both);
    unpaired index.json holds exactly what it always did."""
    for split in SPLITS:
        mr, ct = (open_shard(shards["paired"] / d / split) for d in ("mr", "ct"))
        assert (mr.index["paired_with"], ct.index["paired_with"]) == ("ct", "mr")
        case_id, ct_image, _ = _case(paired_raw, "ct", split)
        (pm, _), _ = prepare_pair([_case(paired_raw, "mr", split)[1], ct_image], [None, None],
                                  _cfg("paired").preprocess, [(-1.8, 4.4), (-2.8, 3.2)], ["MR", "CT"])
        assert mr.index["boxes"] == ct.index["boxes"] == [[list(axis) for axis in pm.geometry.box]]
        for domain in ("mr", "ct"):
            index = json.loads((shards["unpaired"] / domain / split / "index.json").read_text())
            assert sorted(index) == sorted(["cases", "case_of_slice", "slice_of_case", "shape", "dtype"])


def test_check_paired_shards(shards, tmp_path):
    check_paired_shards(shards["paired"] / "mr" / "train", shards["paired"] / "ct" / "train")
    source, target = shards["unpaired"] / "mr" / "train", shards["unpaired"] / "ct" / "train"
    with pytest.raises(DataError, match="paired mode needs aligned shards") as err:
        check_paired_shards(source, target)
    message = str(err.value)
    assert str(source) in message and str(target) in message and "\n" not in message
    assert "experiment.mode: paired" in message

    edited = tmp_path / "ct"
    shutil.copytree(shards["paired"] / "ct" / "train", edited)
    index = json.loads((edited / "index.json").read_text())
    index["slice_of_case"][0] += 1
    (edited / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="differ in index.json slice_of_case"):
        check_paired_shards(shards["paired"] / "mr" / "train", edited)
    index = json.loads((shards["paired"] / "ct" / "train" / "index.json").read_text())
    index["boxes"][0][0][0] += 1
    (edited / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="differ in index.json boxes"):
        check_paired_shards(shards["paired"] / "mr" / "train", edited)
    # the same shards under another domain's name: not the pair they were prepared as
    shutil.copytree(shards["paired"] / "mr" / "train", tmp_path / "t1" / "train")
    with pytest.raises(DataError, match="were not prepared as one pair: index.json paired_with 'ct' and 'mr'"):
        check_paired_shards(tmp_path / "t1" / "train", shards["paired"] / "ct" / "train")
    with pytest.raises(DataError, match="not a shard folder"):
        check_paired_shards(shards["paired"] / "mr" / "train", tmp_path / "nowhere")


def test_paired_training_refuses_misaligned_shards(shards):
    """The joint step pairs slice i of the source with slice i of the target: training opens
    paired shards, and refuses per-volume (unpaired-mode) shards of the same data."""
    from sasan.train.recipe import open_shards

    cfg = _cfg("paired")
    data = open_shards(shards["paired"], cfg, "sasan")
    assert len(data.source) == len(data.target)
    with pytest.raises(DataError, match="paired mode needs aligned shards"):
        open_shards(shards["unpaired"], cfg, "sasan")
    open_shards(shards["unpaired"], _cfg("unpaired"), "sasan")      # unpaired training does not pair slices


def test_per_volume_shards_with_coinciding_slices_are_refused(tmp_path):
    """Unpaired-mode shards whose kept slices happen to coincide (every slice kept, equal
    extents along the slicing axis) but whose in-plane crops differ (a CT table beside the
    body, in the slice plane) are not pairs: check_paired_shards refuses them."""
    # RAS axis 0: left-right, in the coronal slice plane (preprocess.axis 1)
    _phantom_with_ct_plate(tmp_path / "src", ((8, 0), (0, 0), (0, 0)), (slice(None, 4),))
    ingest.run(ingest.IngestInputs(str(tmp_path / "src")), ingest.IngestOutputs(tmp_path / "raw"), _cfg("paired"),
               Tracker.disabled())
    cfg = config_from_dict({**_cfg("unpaired").to_dict(), "preprocess": {"image_size": 32,
                                                                          "skip_empty_slices": False}})
    preprocess.run(preprocess.PreprocessInputs(tmp_path / "raw"), preprocess.PreprocessOutputs(tmp_path / "u"),
                   cfg, Tracker.disabled())
    mr, ct = (json.loads((tmp_path / "u" / d / "train" / "index.json").read_text()) for d in ("mr", "ct"))
    assert all(mr[k] == ct[k] for k in ("cases", "case_of_slice", "slice_of_case", "shape"))  # the trap
    stats = json.loads((tmp_path / "u" / "stats.json").read_text())["domains"]
    (case_id,) = mr["cases"]
    assert stats["ct"]["volumes"][case_id] != stats["mr"]["volumes"][case_id]
    _, mr_image, _ = _case(tmp_path / "raw", "mr", "train")
    _, ct_image, _ = _case(tmp_path / "raw", "ct", "train")
    crop = {m: prepare_volume(path, cfg.preprocess, m).geometry.box for m, path in (("MR", mr_image), ("CT", ct_image))}
    assert crop["MR"][1] == crop["CT"][1] and crop["MR"][0] != crop["CT"][0]  # one extent along the slices, not across
    with pytest.raises(DataError, match="paired mode needs aligned shards: run `sasan preprocess` with "
                                       "experiment.mode: paired .* lack index.json paired_with, boxes"):
        check_paired_shards(tmp_path / "u" / "mr" / "train", tmp_path / "u" / "ct" / "train")
    paired = config_from_dict({**cfg.to_dict(), "experiment": {"source": "mr", "target": "ct", "mode": "paired"}})
    preprocess.run(preprocess.PreprocessInputs(tmp_path / "raw"), preprocess.PreprocessOutputs(tmp_path / "p"),
                   paired, Tracker.disabled())
    check_paired_shards(tmp_path / "p" / "mr" / "train", tmp_path / "p" / "ct" / "train")


def _three_modalities(root, cases=10, with_pd=3, without_mr=()):
    """An nnU-Net-layout source of co-registered subjects: CT and MR for all (MR missing for
    ``without_mr``), PD for the first ``with_pd``; one case id per subject; each image with the
    subject's label (nnU-Net training images need one)."""
    from sasan.data.layout import DatasetInfo, save_nifti, write_dataset_json

    generate_paired_phantom(root / "pairs", cases=cases, size=32)
    labels = json.loads((root / "pairs" / "labels.json").read_text())
    counts = {"ct": 0, "mr": 0, "pd": 0}
    for i, case in enumerate(sorted((root / "pairs").glob("pair_*"))):
        mr = nib.load(case / "mr.nii.gz")
        images = {"ct": nib.load(case / "ct.nii.gz"), "mr": mr,
                  "pd": nib.Nifti1Image(0.7 * np.asarray(mr.dataobj), mr.affine) if i < with_pd else None}
        for domain, img in images.items():
            if img is None or (domain == "mr" and case.name in without_mr):
                continue
            save_nifti(root / "src" / domain / "imagesTr" / f"{case.name}_0000.nii.gz", np.asarray(img.dataobj),
                       img.affine)
            (root / "src" / domain / "labelsTr").mkdir(exist_ok=True)
            shutil.copyfile(case / "label.nii.gz", root / "src" / domain / "labelsTr" / f"{case.name}.nii.gz")
            counts[domain] += 1
    for domain, n in counts.items():
        write_dataset_json(root / "src" / domain, DatasetInfo(name=f"three_{domain}", modality="CT" if domain == "ct"
                                                              else "MR", labels=labels, num_training=n))
    return root / "src"


def test_three_modalities_paired_ct_mr_end_to_end(tmp_path):
    """CT + MR for every subject, PD for 3 of 10: in paired mode (source CT, target MR) ingest
    draws test subjects among all CT+MR subjects (not only those with every modality), validate passes, preprocess cuts
    the CT/MR pairs; a subject without its MR is refused at validate, naming it."""
    cfg = config_from_dict({"ingest": {"layout": "nnunet", "test_fraction": 0.2, "seed": 0},
                            "experiment": {"source": "ct", "target": "mr", "mode": "paired"},
                            "preprocess": {"image_size": 32}}, "test")
    src = _three_modalities(tmp_path / "a")
    summary = ingest.run(ingest.IngestInputs(str(src)), ingest.IngestOutputs(tmp_path / "raw"), cfg,
                         Tracker.disabled())
    assert summary["domains"]["ct"] == summary["domains"]["mr"] == {"train": 8, "test": 2}
    cases = read_manifest(tmp_path / "raw")["cases"]
    test = {c["case_id"] for c in cases if c["split"] == "test"}
    with_pd = {c["case_id"] for c in cases if c["domain"] == "pd"}
    assert len(test) == 2 and test - with_pd and test & with_pd  # one of each stratum, not only complete ones
    report = validate.run(validate.ValidateInputs(tmp_path / "raw"), validate.ValidateOutputs(tmp_path / "report"),
                          cfg, Tracker.disabled())
    assert report["success"]
    preprocess.run(preprocess.PreprocessInputs(tmp_path / "raw"), preprocess.PreprocessOutputs(tmp_path / "shards"),
                   cfg, Tracker.disabled())
    assert sorted(p.name for p in (tmp_path / "shards").iterdir() if p.is_dir()) == ["ct", "mr"]
    for split in SPLITS:
        check_paired_shards(tmp_path / "shards" / "ct" / split, tmp_path / "shards" / "mr" / split)
        index = open_shard(tmp_path / "shards" / "ct" / split).index
        assert sorted(index["cases"]) == sorted({c["case_id"] for c in cases if c["split"] == split})

    src = _three_modalities(tmp_path / "b", without_mr=("pair_004",))
    ingest.run(ingest.IngestInputs(str(src)), ingest.IngestOutputs(tmp_path / "raw2"), cfg, Tracker.disabled())
    split = next(c["split"] for c in read_manifest(tmp_path / "raw2")["cases"] if c["case_id"] == "pair_004")
    with pytest.raises(ValidationFailed) as err:
        validate.run(validate.ValidateInputs(tmp_path / "raw2"), validate.ValidateOutputs(tmp_path / "report2"),
                     cfg, Tracker.disabled())
    msg = str(err.value)
    assert "\n" not in msg and f"paired mode: subject 'pair_004' has a {split} image in domain 'ct' (source) but " \
        "none in 'mr' (target)" in msg and "[every subject has both images of the pair]" in msg
