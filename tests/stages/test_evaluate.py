"""The evaluate stage on a tiny raw set: inputs are checked before any inference (labels on
the image grid, label maps, classes, metric names, intensity bounds), ground truth is read
with the project's label loader, and identity.json records what register must match."""

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sasan.bundle import ModelBundle, save_bundle
from sasan.config import config_from_dict
from sasan.errors import ConfigError, DataError
from sasan.models import build_networks, build_segmenter
from sasan.stages import evaluate
from sasan.stages import register as register_stage
from sasan.tracking.runs import Tracker

LABELS = {"background": 0, "MYO": 1, "LV": 2}
MODEL = {"k": 4, "num_classes": 3, "attention_width": 8, "synth_width": 8, "norm_hidden": 8,
         "disc_width": 8, "seg_disc_width": 8, "unet_width": 4}
SHAPE = (20, 16, 12)
AFFINE = np.diag([1.5, 1.2, 2.0, 1.0])


def _config(evaluate_=None, **preprocess):
    return config_from_dict({"experiment": {"source": "mr", "target": "ct"}, "train": {"device": "cpu"},
                             "evaluate": {"batch_size": 8, **(evaluate_ or {})},
                             "preprocess": {"image_size": 32, **preprocess}, "model": MODEL})


def _bundle(path, variant="sasan", seed=0, segmenter=None, **preprocess):
    """``segmenter``: a function that sets the U-Net's weights (in place) before saving."""
    torch.manual_seed(seed)
    cfg = _config(**preprocess)
    nets = build_networks(cfg.model)
    att_t = nets.att_t if variant == "sasan" else None
    syn_s = nets.syn_s if variant in ("sasan", "cyclegan") else None
    unet = build_segmenter(cfg.model).eval()
    if segmenter is not None:
        with torch.no_grad():
            segmenter(unet)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_bundle(path, ModelBundle(cfg, variant, unet, att_t, syn_s))
    return path


def _background_only(unet):
    """Every pixel's logits are (10, 0, 0): the U-Net predicts background everywhere."""
    torch.nn.init.zeros_(unet.head.weight)
    unet.head.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))


def _threshold_unet(t1=0.3, t2=0.49, gain=100.0):
    """A U-Net that thresholds the centre slice's normalised intensity f (in [-1, 1]): class 0
    below t1, 1 between t1 and t2, 2 above t2 (for the default CT bounds: air, body, LV; see
    ``_volumes``). Only one path carries anything: centre input channel -> inc (channel 0)
    -> the skip into the last decoder block (channel 0) -> head; BatchNorm in eval mode with
    its initial statistics is the identity (up to 1 / sqrt(1 + eps)), ReLU keeps f >= 0."""
    def set_weights(unet):
        centre = unet.inc[0].weight.shape[1] // 2
        for conv, channel in ((unet.inc[0], centre), (unet.inc[3], 0), (unet.ups[-1][0], 0), (unet.ups[-1][3], 0)):
            torch.nn.init.zeros_(conv.weight)
            conv.weight[0, channel, 1, 1] = 1.0          # the skip is the first half of the last block's input
        torch.nn.init.zeros_(unet.head.weight)
        unet.head.weight[1, 0] = gain                     # logit 1: gain (f - t1)
        unet.head.weight[2, 0] = 2 * gain                 # logit 2: gain (f - t1) + gain (f - t2)
        unet.head.bias.copy_(torch.tensor([0.0, -gain * t1, -gain * (t1 + t2)]))
    return set_weights


def _save(path, data, affine=AFFINE, slope=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)


def _volumes(seed):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    label = np.zeros(SHAPE, np.uint8)
    label[r < 0.7] = 1
    label[r < 0.4] = 2
    image = (np.where(r < 0.9, 40.0, -1000.0) + 150.0 * (label == 2) + rng.normal(0, 20, SHAPE)).astype(np.int16)
    return image, label


def make_raw(root, source_labels=None, target_labels=None, modality="CT", n_test=2, label_writer=None):
    """manifest.json and target test cases ``ct/ct_00N{_0000,}.nii.gz``."""
    cases = []
    for i in range(1, n_test + 1):
        image, label = _volumes(i)
        cid = f"ct_{i:03d}"
        _save(root / "ct" / f"{cid}_0000.nii.gz", image)
        (label_writer or (lambda p, a: _save(p, a)))(root / "ct" / f"{cid}.nii.gz", label)
        cases.append({"case_id": cid, "domain": "ct", "split": "test", "image": f"ct/{cid}_0000.nii.gz",
                      "label": f"ct/{cid}.nii.gz", "sha256": {"image": cid, "label": cid}})
    cases.append({"case_id": "mr_001", "domain": "mr", "split": "train", "image": "mr/x.nii.gz",
                  "label": "mr/y.nii.gz", "sha256": {"image": "m", "label": "n"}})
    domains = {"mr": {"labels": source_labels or LABELS, "modality": "MR"},
               "ct": {"labels": target_labels or LABELS, "modality": modality}}
    (root / "manifest.json").write_text(json.dumps({"version": 1, "dataset": "tiny", "domains": domains,
                                                    "cases": cases}))
    return root


@pytest.fixture
def no_inference(monkeypatch):
    """Fail the test if inference starts: the checks must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("inference ran before the inputs were checked")
    monkeypatch.setattr(evaluate, "infer_volume", boom)


def _run(raw, models, out, cfg=None, save_predictions=False):
    return evaluate.run(evaluate.EvaluateInputs(raw, models),
                        evaluate.EvaluateOutputs(out / "evaluation.json", out / "report"),
                        cfg or _config(), Tracker.disabled(), save_predictions=save_predictions, progress=False)


def test_identity_records_the_bundles_and_the_metrics(tmp_path):
    raw = make_raw(tmp_path / "raw")
    models = {"sasan": _bundle(tmp_path / "m" / "sasan" / "model.pt"),
              "cyclegan": _bundle(tmp_path / "m" / "cyclegan" / "model.pt", "cyclegan", seed=1)}
    results = _run(raw, models, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert sorted(metrics) == ["cyclegan", "sasan"] == sorted(results)            # no extra top-level keys
    assert set(metrics["sasan"]) == {"per_structure", "mean", "n_subjects"}
    assert list(metrics["sasan"]["per_structure"]) == ["LV", "MYO"] and metrics["sasan"]["n_subjects"] == 2
    identity = json.loads((tmp_path / "out" / "report" / "identity.json").read_text())
    assert identity["metrics_sha256"] == evaluate.file_sha256(tmp_path / "out" / "evaluation.json")
    assert identity["bundles"] == {m: {"sha256": evaluate.file_sha256(p), "variant": m} for m, p in models.items()}
    assert identity["image_size"] == {"sasan": 32, "cyclegan": 32} and identity["test_cases"] == ["ct_001", "ct_002"]
    # what register accepts: this bundle, these metrics
    inputs = register_stage.RegisterInputs(models["sasan"], tmp_path / "out" / "evaluation.json",
                                           tmp_path / "out" / "report" / "identity.json")
    assert register_stage.check_inputs(inputs, "sasan") == metrics
    with pytest.raises(ConfigError, match="'cyclegan' model but the gated method is 'sasan'"):
        register_stage.check_inputs(register_stage.RegisterInputs(models["cyclegan"], inputs.metrics,
                                                                  inputs.identity), "sasan")


def _label_spacing():
    """The label files' voxel size as NIfTI stores it (pixdim is float32: 1.2 is 1.2000000476...)."""
    return tuple(float(np.float32(AFFINE[i, i])) for i in range(3))


def test_a_model_that_predicts_only_background_scores_the_configured_cap(tmp_path):
    """Every structure is missing from every prediction: Dice 0, ASSD the configured cap
    (evaluate.assd_cap_vox, not the default 50) in voxels and cap x mean(label spacing) in mm
    (sasan.metrics.segmentation.assd), n_missing = every subject; no spread."""
    cap = 30.0
    cfg = _config({"assd_cap_vox": cap})
    assert cfg.evaluate.assd_cap_vox == cap != _config().evaluate.assd_cap_vox
    raw = make_raw(tmp_path / "raw")
    model = _bundle(tmp_path / "m.pt", segmenter=_background_only)
    results = _run(raw, {"sasan": model}, tmp_path / "out", cfg, save_predictions=True)
    sx, sy, sz = _label_spacing()
    cap_mm = cap * (sx + sy + sz) / 3                    # 30 x (1.5 + 1.2 + 2.0) / 3 = 47.0 mm
    assert cap_mm == pytest.approx(47.0, rel=1e-6)
    expected = {"dice": 0.0, "dice_std": 0.0, "assd_vox": cap, "assd_vox_std": 0.0,
                "assd_mm": cap_mm, "assd_mm_std": 0.0}
    r = results["sasan"]
    assert r["n_subjects"] == 2 and sorted(r["per_structure"]) == ["LV", "MYO"]
    for name, s in r["per_structure"].items():
        assert s == pytest.approx({**expected, "n_missing": 2}, rel=1e-12, abs=1e-12), name
    assert r["mean"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text()) == json.loads(json.dumps(results))
    per_subject = json.loads((tmp_path / "out" / "report" / "per_subject.json").read_text())["sasan"]
    assert sorted(per_subject) == ["ct_001", "ct_002"]
    for cid, mean in per_subject.items():
        assert mean == pytest.approx({"dice": 0.0, "assd_vox": cap, "assd_mm": cap_mm}, rel=1e-12, abs=1e-12), cid
        assert not np.asarray(nib.load(tmp_path / "out" / "report" / "predictions" / "sasan" / f"{cid}.nii.gz")
                              .dataobj).any()


def test_reported_scores_are_those_of_the_saved_predictions(tmp_path):
    """save_predictions: the per-subject and per-structure numbers are the metrics of the
    saved label volumes against the ground truth, on the label's grid and spacing, recomputed
    here with sasan.metrics.segmentation and aggregated by hand (population sd)."""
    from sasan.metrics.segmentation import segmentation_scores

    raw = make_raw(tmp_path / "raw")
    cap = _config().evaluate.assd_cap_vox
    results = _run(raw, {"sasan": _bundle(tmp_path / "m.pt", "no_adaptation", segmenter=_threshold_unet())},
                   tmp_path / "out", save_predictions=True)
    report = tmp_path / "out" / "report"
    per_subject = json.loads((report / "per_subject.json").read_text())["sasan"]
    rows = []
    for cid in ("ct_001", "ct_002"):
        gt_img = nib.load(raw / "ct" / f"{cid}.nii.gz")
        pred_img = nib.load(report / "predictions" / "sasan" / f"{cid}.nii.gz")
        gt = np.asarray(gt_img.dataobj).astype(np.int64)
        pred = np.asarray(pred_img.dataobj).astype(np.int64)
        assert pred.shape == gt.shape and np.allclose(pred_img.affine, gt_img.affine)
        assert set(np.unique(pred)) == {0, 1, 2}                # a real segmentation, not a constant
        s = segmentation_scores(pred, gt, LABELS, _label_spacing(), cap)
        assert 0 < s["per_structure"]["LV"]["dice"] < 1 and 0 < s["per_structure"]["MYO"]["dice"] < 1
        assert per_subject[cid] == pytest.approx(s["mean"], rel=1e-9), cid
        rows.append(s)
    for name in ("MYO", "LV"):
        got = results["sasan"]["per_structure"][name]
        for key in ("dice", "assd_vox", "assd_mm"):
            values = [row["per_structure"][name][key] for row in rows]
            assert got[key] == pytest.approx(sum(values) / 2, rel=1e-9), (name, key)
            assert got[f"{key}_std"] == pytest.approx(abs(values[0] - values[1]) / 2, rel=1e-9, abs=1e-12)
        assert got["n_missing"] == 0
    assert results["sasan"]["mean"]["dice"] == pytest.approx(sum(r["mean"]["dice"] for r in rows) / 2, rel=1e-9)


@pytest.mark.parametrize("paired", [False, True])
def test_each_bundle_file_is_read_once(tmp_path, monkeypatch, request, paired):
    """evaluate runs the networks it inspected (and digested), not a second read of the file."""
    import sasan.bundle

    reads = []
    real_load = sasan.bundle.load_checkpoint

    def counting_load(path, map_location="cpu"):
        reads.append(Path(path).parent.name)
        return real_load(path, map_location)

    monkeypatch.setattr(sasan.bundle, "load_checkpoint", counting_load)
    if paired:
        raw = request.getfixturevalue("paired_raw")
        models = {"sasan": _paired_bundle(tmp_path / "m" / "sasan" / "model.pt"),
                  "cyclegan": _paired_bundle(tmp_path / "m" / "cyclegan" / "model.pt", "cyclegan", seed=1)}
        _run_paired(raw, models, tmp_path / "out", save_predictions=False)
    else:
        raw = make_raw(tmp_path / "raw")
        models = {"sasan": _bundle(tmp_path / "m" / "sasan" / "model.pt"),
                  "cyclegan": _bundle(tmp_path / "m" / "cyclegan" / "model.pt", "cyclegan", seed=1)}
        _run(raw, models, tmp_path / "out")
    assert sorted(reads) == ["cyclegan", "sasan"]


def test_labels_are_read_with_the_label_loader(tmp_path):
    """(X, Y, Z, 1) labels and scaled float labels score as their integer 3-D volume."""
    plain = _run(make_raw(tmp_path / "a"), {"sasan": _bundle(tmp_path / "m.pt")}, tmp_path / "o1")

    def four_d_scaled(path, label):
        _save(path, (label[..., None] * 2).astype(np.float32), slope=0.5)
    other = _run(make_raw(tmp_path / "b", label_writer=four_d_scaled), {"sasan": tmp_path / "m.pt"}, tmp_path / "o2")
    assert other == plain


def test_a_label_off_the_image_grid_fails_before_inference(tmp_path, no_inference):
    raw = make_raw(tmp_path / "raw", label_writer=lambda p, a: _save(p, a[:, :, :-1]))
    with pytest.raises(DataError, match=r"ct_001\.nii\.gz: label shape \(20, 16, 11\) differs from image shape"):
        _run(raw, {"sasan": _bundle(tmp_path / "m.pt")}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_integer_labels_fail_before_inference(tmp_path, no_inference):
    raw = make_raw(tmp_path / "raw", label_writer=lambda p, a: _save(p, a.astype(np.float32) + 0.25))
    with pytest.raises(DataError, match="ct_001.nii.gz: label image has non-integer values"):
        _run(raw, {"sasan": _bundle(tmp_path / "m.pt")}, tmp_path / "out")


def test_source_and_target_label_maps_must_agree(tmp_path, no_inference):
    raw = make_raw(tmp_path / "raw", source_labels={"background": 0, "MYO": 2, "LV": 1})
    with pytest.raises(DataError, match=r"manifest.json: label maps of source 'mr' and target 'ct' differ .*"
                                        r"LV: 1 vs 2, MYO: 2 vs 1"):
        _run(raw, {"sasan": _bundle(tmp_path / "m.pt")}, tmp_path / "out")


def test_a_label_value_beyond_the_bundles_classes_is_refused(tmp_path, no_inference):
    def with_extra_class(path, label):
        label = label.copy()
        label[0, 0, 0] = 3                                         # num_classes 3: values 0..2
        _save(path, label)
    raw = make_raw(tmp_path / "raw", label_writer=with_extra_class)
    with pytest.raises(DataError, match=r"ct_001.nii.gz: ground-truth label value 3 does not fit the sasan "
                                        r"bundle's model.num_classes 3"):
        _run(raw, {"sasan": _bundle(tmp_path / "m.pt")}, tmp_path / "out")
    big = {**LABELS, "AA": 3}
    raw = make_raw(tmp_path / "raw2", source_labels=big, target_labels=big)
    with pytest.raises(DataError, match=r"label values \{'AA': 3\} of target 'ct' do not fit"):
        _run(raw, {"sasan": tmp_path / "m.pt"}, tmp_path / "out")


@pytest.mark.parametrize("labels, message", [
    ({"background": 0, "mean": 1, "LV": 2}, "structure name 'mean' is reserved"),
    ({"background": 0, "LV(x)": 1, "LV_x_": 2}, "structure names 'LV(x)' and 'LV_x_' both become the metric name"),
    ({"background": 0, "LV/": 1, "LV": 2}, "structure names 'LV/' and 'LV' both become"),
])
def test_structure_names_must_stay_distinct_metric_names(tmp_path, no_inference, labels, message):
    raw = make_raw(tmp_path / "raw", source_labels=labels, target_labels=labels)
    with pytest.raises(DataError, match=re.escape(message)):
        _run(raw, {"sasan": _bundle(tmp_path / "m.pt")}, tmp_path / "out")


def test_bounds_fall_back_to_the_domain_name_as_in_preprocessing(tmp_path):
    """An nnU-Net set whose channel is "CTscan" in folder ct/: bounds keyed by the domain."""
    bounds = {"mr": (-1.8, 4.4), "ct": (-2.8, 3.2)}
    raw = make_raw(tmp_path / "raw", modality="CTscan")
    model = _bundle(tmp_path / "m.pt", "no_adaptation", bounds=bounds, segmenter=_threshold_unet())
    results = _run(raw, {"sasan": model}, tmp_path / "out")
    assert results["sasan"]["n_subjects"] == 2 and results["sasan"]["per_structure"]["LV"]["dice"] > 0.9
    # the same bounds found by the modality name score the same (the modality string stays
    # "CTscan": "CT" would also clamp below -1024 HU, which moves these intensities by ~0.015)
    by_modality = _bundle(tmp_path / "c.pt", "no_adaptation", bounds={"mr": bounds["mr"], "ctscan": bounds["ct"]},
                          segmenter=_threshold_unet())
    assert results == _run(raw, {"sasan": by_modality}, tmp_path / "out_c")
    # and they are used: the other modality's bounds (swapped) move the intensities, so the scores
    swapped = _bundle(tmp_path / "s.pt", "no_adaptation", bounds={"mr": bounds["ct"], "ct": bounds["mr"]},
                      segmenter=_threshold_unet())
    other = _run(raw, {"sasan": swapped}, tmp_path / "out_s")
    assert other["sasan"]["mean"]["dice"] != pytest.approx(results["sasan"]["mean"]["dice"], abs=0.05)


def test_no_bounds_for_the_target_is_one_line_naming_the_bundle(tmp_path, no_inference):
    raw = make_raw(tmp_path / "raw", modality="CTscan")
    bundle = _bundle(tmp_path / "m.pt", bounds={"mr": (-1.8, 4.4)})
    with pytest.raises(ConfigError, match=re.escape(f"{bundle}: preprocess.bounds has no entry for modality "
                                                    "'CTscan' or domain 'ct'")):
        _run(raw, {"sasan": bundle}, tmp_path / "out")


# --- paired mode: translations scored by image metrics against the real source image -----------

PAIRED_SHAPE = (32, 12, 32)         # axis 1 slices: 12 planes of 32 x 32 = the canvas (no resizing)


def _paired_config(**preprocess):
    return config_from_dict({"experiment": {"source": "mr", "target": "ct", "mode": "paired"},
                             "train": {"device": "cpu"}, "evaluate": {"batch_size": 8},
                             "ingest": {"layout": "paired", "test_fraction": 0.5},
                             "preprocess": {"image_size": 32, "crop": "none", **preprocess}, "model": MODEL})


def _paired_bundle(path, variant="sasan", seed=0, constant=False, **preprocess):
    """A paired-mode model (no U-Net); ``constant``: its S_s ends in a zero convolution, so
    every translation is exactly 0. ``preprocess``: its own preprocessing config's changes."""
    torch.manual_seed(seed)
    cfg = _paired_config(**preprocess)
    nets = build_networks(cfg.model, seg_adversary=False)
    if constant:
        for p in nets.syn_s.head[1].parameters():
            torch.nn.init.zeros_(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_bundle(path, ModelBundle(cfg, variant, None, nets.att_t if variant == "sasan" else None, nets.syn_s))
    return path


def _body(seed):
    """A body ellipse (background 0 outside) and random intensities inside it."""
    x, _, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in PAIRED_SHAPE], indexing="ij")
    body = (x / 0.8) ** 2 + (z / 0.7) ** 2 < 1
    return body, np.random.default_rng(seed)


@pytest.fixture
def paired_raw(tmp_path):
    """Four subjects <case>/{ct,mr,label}.nii.gz on one grid, ingested with `--layout paired`
    (the real ingest stage): two subjects in test."""
    from sasan.stages import ingest

    src = tmp_path / "src"
    for i in range(1, 5):
        body, rng = _body(i)
        mr = np.where(body, rng.uniform(100, 200, PAIRED_SHAPE), 0.0).astype(np.float32)
        ct = np.where(body, 40 + 0.5 * mr + rng.normal(0, 10, PAIRED_SHAPE), -1000).astype(np.int16)
        _save(src / f"s{i}" / "mr.nii.gz", mr, np.eye(4))
        _save(src / f"s{i}" / "ct.nii.gz", ct, np.eye(4))
        _save(src / f"s{i}" / "label.nii.gz", body.astype(np.uint8), np.eye(4))
    raw = tmp_path / "raw"
    ingest.run(ingest.IngestInputs(str(src)), ingest.IngestOutputs(raw), _paired_config(), Tracker.disabled())
    return raw


def _paired_tests(raw):
    manifest = json.loads((raw / "manifest.json").read_text())
    by = {(c["domain"], c["case_id"]): c for c in manifest["cases"]}
    return [(cid, raw / by[("ct", cid)]["image"], raw / by[("mr", cid)]["image"])
            for (d, cid), c in by.items() if d == "ct" and c["split"] == "test"]


def _normalised_by_hand(path, bounds=(-1.8, 4.4), percentiles=(2.0, 98.0)):
    """METHOD.md 5 on the whole volume (crop none, 32 x 32 planes: no resizing): clip at the
    percentiles, z-score, bounds -> [-1, 1], clip."""
    v = nib.load(path).get_fdata().astype(np.float64)
    lo, hi = np.percentile(v.astype(np.float32), percentiles)
    c = np.clip(v, lo, hi)
    z = (c - c.mean()) / c.std()
    return np.clip(2 * (z - bounds[0]) / (bounds[1] - bounds[0]) - 1, -1, 1)


def _run_paired(raw, models, out, cfg=None, save_predictions=True):
    return evaluate.run(evaluate.EvaluateInputs(raw, models),
                        evaluate.EvaluateOutputs(out / "evaluation.json", out / "report"),
                        cfg or _paired_config(), Tracker.disabled(), save_predictions=save_predictions,
                        progress=False)


def test_paired_evaluation_scores_translations_against_the_real_source(tmp_path, paired_raw):
    from sasan.bundle import load_bundle
    from sasan.data.preprocess import prepare_volume
    from sasan.inference import infer_volume
    from sasan.metrics import body_mask, translation_scores

    models = {"sasan": _paired_bundle(tmp_path / "m" / "sasan" / "model.pt", constant=True),
              "cyclegan": _paired_bundle(tmp_path / "m" / "cyclegan" / "model.pt", "cyclegan", seed=1)}
    out = tmp_path / "out"
    results = _run_paired(paired_raw, models, out)
    metrics = json.loads((out / "evaluation.json").read_text())
    assert sorted(metrics) == ["cyclegan", "sasan"] and metrics == json.loads(json.dumps(results))
    tests = _paired_tests(paired_raw)
    assert len(tests) == 2
    keys = {"mae", "rmse", "psnr", "ssim", "pearson"}
    for method in metrics:
        m = metrics[method]
        assert set(m) == {"mode", "mask", "n_subjects", "mean", "sd", "per_subject"} and m["mode"] == "paired"
        assert m["mask"] == "body"
        assert m["n_subjects"] == 2 and set(m["mean"]) == set(m["sd"]) == keys
        assert [r["case_id"] for r in m["per_subject"]] == [cid for cid, _, _ in tests]
        for k in keys:
            values = [r[k] for r in m["per_subject"]]
            assert m["mean"][k] == pytest.approx(np.mean(values), nan_ok=True)
            assert m["sd"][k] == pytest.approx(np.std(values), nan_ok=True)
    assert all(np.isfinite(v) for v in [*metrics["cyclegan"]["mean"].values(), *metrics["cyclegan"]["sd"].values()])
    # the constant model translates every voxel to 0: its scores follow from the real image alone
    for row, (cid, _, mr) in zip(metrics["sasan"]["per_subject"], tests):
        real = _normalised_by_hand(mr)
        body = nib.load(mr).get_fdata() > 0
        err = real[body]
        assert row["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
        assert row["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-5)
        assert row["psnr"] == pytest.approx(10 * np.log10(4.0 / (err ** 2).mean()), rel=1e-5)
        assert np.isnan(row["pearson"])                  # a constant translation correlates with nothing
        zero = np.zeros_like(real)                       # SSIM by hand too, in the model's (coronal) plane
        assert row["ssim"] == pytest.approx(np.mean([_ssim_by_hand(zero[:, j], real[:, j], body[:, j])
                                                     for j in range(real.shape[1])]), rel=1e-5)
    # the trained-shape model: translation_scores on the arrays inference and preprocessing give
    bundle = load_bundle(models["cyclegan"])
    prep = bundle.cfg.preprocess
    for row, (cid, ct, mr) in zip(metrics["cyclegan"]["per_subject"], tests):
        fake = np.asarray(infer_volume(bundle, ct, prep, "CT", domain="ct").translated.dataobj)
        prepared = prepare_volume(mr, prep, "MR", "mr")
        real = np.asarray(prepared.restore_intensity(prepared.slices).dataobj)
        assert np.allclose(real, _normalised_by_hand(mr), atol=1e-5)
        # SSIM in the model's (coronal) plane: array axis 1 of these RAS-stored volumes
        assert {k: row[k] for k in keys} == pytest.approx(translation_scores(fake, real, body_mask(real), 2.0, axis=1))
    # the report: per-subject rows, translated volumes, the picture; no segmentation files
    report = out / "report"
    per_subject = json.loads((report / "per_subject.json").read_text())
    assert per_subject["cyclegan"][tests[0][0]] == {k: metrics["cyclegan"]["per_subject"][0][k] for k in keys}
    for method in models:
        for cid, ct, _ in tests:
            assert nib.load(report / "translations" / method / f"{cid}.nii.gz").shape == nib.load(ct).shape
    assert (report / "translations.png").stat().st_size > 0
    assert not (report / "per_structure.json").exists() and not (report / "segmentations.png").exists()
    identity = json.loads((report / "identity.json").read_text())
    assert identity["mode"] == "paired" and identity["metrics_sha256"] == evaluate.file_sha256(out / "evaluation.json")
    assert identity["translation_mask"] == "body"
    table = evaluate.summary_table(results, ["sasan", "cyclegan"])
    assert table.splitlines()[0].split() == ["method", "MAE", "PSNR", "(dB)", "SSIM"]
    assert "mean +- sd over 2 test subject(s)" in table
    assert evaluate.loggable_scores(results["sasan"]) == {
        "mean": {k: v for k, v in results["sasan"]["mean"].items() if k != "pearson"}}
    md = evaluate.markdown_report(results, ["sasan", "cyclegan"], "paired", report, embed_images=False)
    assert "| method | MAE | RMSE | PSNR | SSIM | Pearson |" in md and "translations.png" in md


class _IdentityTranslator(torch.nn.Module):
    """Stands in for S_s: returns its input stack, so the translation is the normalised target slice."""

    def forward(self, x, maps=None):
        return x


def _ssim_by_hand(x, y, mask, data_range=2.0, size=7, sigma=1.5):
    """Wang et al. 2004 in numpy, for 2-D slices: a normalised size x size Gaussian window
    (valid positions only), biased local moments, C1 = (0.01 L)^2, C2 = (0.03 L)^2; the map
    averaged over the window centres inside ``mask``; None without such centres."""
    from numpy.lib.stride_tricks import sliding_window_view

    d = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (d / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()

    def local(a):
        return np.einsum("ijkl,kl->ij", sliding_window_view(a, (size, size)), w)

    mx, my = local(x), local(y)
    vx, vy, cxy = local(x * x) - mx ** 2, local(y * y) - my ** 2, local(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    h = size // 2
    centres = mask[h:mask.shape[0] - h, h:mask.shape[1] - h]
    return m[centres].mean() if centres.any() else None


def test_paired_scores_of_an_identity_translator_by_hand(tmp_path, paired_raw, monkeypatch):
    """S_s replaced by the identity: the translation is the target (CT) image normalised with
    the CT bounds, so every score follows by hand from the two normalised images, on the real
    image's body, with data range 2; SSIM by a numpy SSIM in the model's (coronal, array axis
    1) plane, Pearson and PSNR by their formulas."""
    real_inspect = evaluate.inspect_bundles

    def with_identity(models):
        infos = real_inspect(models)
        for info in infos.values():
            info.bundle.syn_s = _IdentityTranslator()
        return infos

    monkeypatch.setattr(evaluate, "inspect_bundles", with_identity)
    results = _run_paired(paired_raw, {"cyclegan": _paired_bundle(tmp_path / "m.pt", "cyclegan")}, tmp_path / "out",
                          save_predictions=False)
    rows = results["cyclegan"]["per_subject"]
    tests = _paired_tests(paired_raw)
    assert [r["case_id"] for r in rows] == [cid for cid, _, _ in tests]
    for row, (cid, ct, mr) in zip(rows, tests):
        fake = _normalised_by_hand(ct, bounds=(-2.8, 3.2))       # CT: no voxel below -1024 HU to clamp
        real = _normalised_by_hand(mr)
        body = nib.load(mr).get_fdata() > 0
        f, r = fake[body], real[body]
        e = f - r
        assert row["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-5), cid
        assert row["rmse"] == pytest.approx(np.sqrt((e ** 2).mean()), rel=1e-5), cid
        assert row["psnr"] == pytest.approx(10 * np.log10(2.0 ** 2 / (e ** 2).mean()), rel=1e-5), cid
        fc, rc = f - f.mean(), r - r.mean()
        assert row["pearson"] == pytest.approx((fc * rc).sum() / np.sqrt((fc ** 2).sum() * (rc ** 2).sum()),
                                               rel=1e-5), cid
        assert 0.3 < row["pearson"] < 1                       # CT = 40 + MR / 2 + noise inside the body
        per_slice = [_ssim_by_hand(fake[:, j], real[:, j], body[:, j]) for j in range(fake.shape[1])]
        per_slice = [v for v in per_slice if v is not None]
        assert len(per_slice) == PAIRED_SHAPE[1]
        assert row["ssim"] == pytest.approx(np.mean(per_slice), rel=1e-5), cid
    mean = results["cyclegan"]["mean"]
    assert mean["mae"] == pytest.approx(np.mean([r["mae"] for r in rows]), rel=1e-12)


def test_field_of_view_mask_scores_every_voxel_the_model_saw(tmp_path, paired_raw):
    """evaluate.translation_mask: field_of_view scores the whole crop (here, crop none: the
    whole grid), body air included; body (the default) only the real image's body."""
    models = {"sasan": _paired_bundle(tmp_path / "m" / "sasan" / "model.pt", constant=True)}
    cfg = config_from_dict({**_paired_config().to_dict(), "evaluate": {"batch_size": 8,
                                                                        "translation_mask": "field_of_view"}}, "test")
    results = _run_paired(paired_raw, models, tmp_path / "fov", cfg)
    body = _run_paired(paired_raw, models, tmp_path / "body")
    assert results["sasan"]["mask"] == "field_of_view" and body["sasan"]["mask"] == "body"
    for row, (cid, _, mr) in zip(results["sasan"]["per_subject"], _paired_tests(paired_raw)):
        real = _normalised_by_hand(mr)                    # the constant model translates to 0 everywhere
        assert row["mae"] == pytest.approx(np.abs(real).mean(), rel=1e-5)
    # the air around the body is -1 in the real image and 0 in the translation: an error the body mask leaves out
    assert results["sasan"]["mean"]["mae"] != pytest.approx(body["sasan"]["mean"]["mae"], rel=1e-3)
    identity = json.loads((tmp_path / "fov" / "report" / "identity.json").read_text())
    assert identity["translation_mask"] == "field_of_view"
    assert "field_of_view mask" in evaluate.summary_table(results)


def test_unpaired_identity_has_no_mode(tmp_path):
    raw = make_raw(tmp_path / "raw")
    _run(raw, {"sasan": _bundle(tmp_path / "m.pt")}, tmp_path / "out")
    identity = json.loads((tmp_path / "out" / "report" / "identity.json").read_text())
    assert set(identity) == {"dataset", "data_digest", "source", "target", "test_split", "test_cases", "image_size",
                             "profile", "bundles", "metrics_sha256", "assd_cap_vox"}
    assert identity["assd_cap_vox"] == 50.0                         # what a capped ASSD in its tables is
    from sasan.tracking.registry import gate_identity

    assert "assd_cap_vox" not in gate_identity(identity)            # the gate compares what it always did


def test_translate_only_bundles_are_evaluated_paired_whatever_the_config(tmp_path, paired_raw):
    """The bundles' kind decides too: an unpaired config evaluating translate-only bundles."""
    unpaired_cfg = config_from_dict({**_paired_config().to_dict(), "experiment": {"source": "mr", "target": "ct"}})
    results = _run_paired(paired_raw, {"sasan": _paired_bundle(tmp_path / "m.pt")}, tmp_path / "out", unpaired_cfg,
                          save_predictions=False)
    assert results["sasan"]["mode"] == "paired" and not (tmp_path / "out" / "report" / "translations").exists()


def test_subjects_without_a_source_image_are_skipped_with_one_warning(tmp_path, paired_raw, caplog):
    tests = _paired_tests(paired_raw)
    manifest = json.loads((paired_raw / "manifest.json").read_text())
    manifest["cases"] = [c for c in manifest["cases"] if (c["domain"], c["case_id"]) != ("mr", tests[0][0])]
    (paired_raw / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="sasan.stages.evaluate_paired"):
        results = _run_paired(paired_raw, {"sasan": _paired_bundle(tmp_path / "m.pt")}, tmp_path / "out",
                              save_predictions=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and tests[0][0] in warnings[0] and tests[1][0] not in warnings[0]
    assert results["sasan"]["n_subjects"] == 1
    assert [r["case_id"] for r in results["sasan"]["per_subject"]] == [tests[1][0]]


def test_no_paired_subject_left_is_one_line_before_inference(tmp_path, paired_raw, no_inference):
    manifest = json.loads((paired_raw / "manifest.json").read_text())
    manifest["cases"] = [c for c in manifest["cases"] if not (c["domain"] == "mr" and c["split"] == "test")]
    (paired_raw / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest.json: none of the 2 'ct' test case\(s\) has a 'mr' test image"):
        _run_paired(paired_raw, {"sasan": _paired_bundle(tmp_path / "m.pt")}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_source_image_off_the_target_grid_is_refused_before_inference(tmp_path, paired_raw, no_inference):
    """With the check paired preprocessing makes (sasan.data.prepare.check_same_grid), up front."""
    _, ct, mr = _paired_tests(paired_raw)[1]
    _save(mr, np.zeros((32, 12, 30), np.float32), np.eye(4))
    with pytest.raises(DataError, match=re.escape(f"paired cases must share a grid (resample/register them first): "
                                                  f"the shape of {mr}, (32, 12, 30), differs from that of {ct}, "
                                                  "(32, 12, 32)")):
        _run_paired(paired_raw, {"sasan": _paired_bundle(tmp_path / "m.pt")}, tmp_path / "out")
    _save(mr, np.zeros(PAIRED_SHAPE, np.float32), np.diag([1.0, 1.0, 1.5, 1.0]))
    with pytest.raises(DataError, match=re.escape(f"the affine of {mr} differs from that of {ct} by up to 0.5 mm "
                                                  "(tolerance 0.001 mm)")) as err:
        _run_paired(paired_raw, {"sasan": _paired_bundle(tmp_path / "m.pt")}, tmp_path / "out")
    assert "\n" not in str(err.value)


def test_segmenting_and_translate_only_bundles_are_not_evaluated_together(tmp_path, paired_raw, no_inference):
    paired = _paired_bundle(tmp_path / "paired.pt")
    segmenting = _bundle(tmp_path / "unpaired.pt")
    for cfg in (_paired_config(), _config()):
        with pytest.raises(ConfigError, match=re.escape(f"{paired}: the sasan bundle(s) translate only (paired mode) "
                                                        "but no_adaptation segment")):
            _run_paired(paired_raw, {"sasan": paired, "no_adaptation": segmenting}, tmp_path / "out", cfg)
    # a paired evaluation of a bundle that does not translate
    no_adaptation = _bundle(tmp_path / "na.pt", "no_adaptation")
    with pytest.raises(ConfigError, match=re.escape(f"{no_adaptation}: paired evaluation scores translations, but "
                                                    "the no_adaptation bundle does not translate")):
        _run_paired(paired_raw, {"no_adaptation": no_adaptation}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_paired_bounds_are_checked_for_both_modalities(tmp_path, paired_raw, no_inference):
    cfg = _paired_config(bounds={"ct": (-2.8, 3.2)})
    torch.manual_seed(0)
    nets = build_networks(cfg.model, seg_adversary=False)
    path = tmp_path / "m.pt"
    save_bundle(path, ModelBundle(cfg, "sasan", None, nets.att_t, nets.syn_s))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: preprocess.bounds has no entry for modality 'MR' or "
                                                    "domain 'mr'")):
        _run_paired(paired_raw, {"sasan": path}, tmp_path / "out", cfg)


# --- paired mode: pairing by case id, the plane SSIM is taken in, the pair's crop, the identity --------------


def _manifest(root, cases):
    """A manifest of test cases only: (domain, case_id, subject or None)."""
    entries = [{"case_id": cid, "domain": d, "split": "test", "image": f"{d}/{cid}.nii.gz", "sha256": {"image": cid},
                **({"subject": subject} if subject else {})} for d, cid, subject in cases]
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"version": 1, "dataset": "tiny", "cases": entries,
                                                    "domains": {"mr": {"modality": "MR"}, "ct": {"modality": "CT"}}}))
    return root


def test_time_points_of_one_subject_pair_by_case_id(tmp_path):
    """BraTS 2023: ``subject`` is the patient, case_id the time point; each target time point is
    scored against the source image of the same time point, never the subject's last one."""
    from sasan.stages.evaluate_paired import paired_test_cases

    raw = _manifest(tmp_path / "raw", [("ct", "X-000", "X"), ("ct", "X-001", "X"), ("mr", "X-000", "X"),
                                       ("mr", "X-001", "X"), ("ct", "ct_y", "Y"), ("mr", "mr_y", "Y")])
    pairs, target, source = paired_test_cases(raw, "mr", "ct")
    assert (target, source) == ("CT", "MR")
    assert [(p.case_id, p.subject, p.target_image.name, p.source_image.name) for p in pairs] == [
        ("X-000", "X", "X-000.nii.gz", "X-000.nii.gz"), ("X-001", "X", "X-001.nii.gz", "X-001.nii.gz"),
        ("ct_y", "Y", "ct_y.nii.gz", "mr_y.nii.gz")]        # no case-id match: the subject's one source case
    # a time point without a source case of its id, its subject having several: refused, not guessed
    for extra in ([("ct", "X-002", "X")], [("ct", "ct_z", "Z"), ("ct", "ct_z2", "Z"), ("mr", "mr_z", "Z")]):
        raw = _manifest(tmp_path / f"raw{len(extra)}", [("ct", "X-000", "X"), ("mr", "X-000", "X"),
                                                        ("mr", "X-001", "X"), *extra])
        with pytest.raises(DataError, match=re.escape(f"{raw / 'manifest.json'}: 'ct' test case "
                                                      f"{extra[0][1]!r} has no 'mr' test case of the same id")) as err:
            paired_test_cases(raw, "mr", "ct")
        assert "ambiguous" in str(err.value) and "\n" not in str(err.value)


def test_two_time_points_of_one_subject_are_each_scored_against_their_own_source(tmp_path, paired_raw):
    """The two test subjects of the fixture made two time points of one patient (manifest
    ``subject``): each case's scores are those against its own MR image."""
    tests = _paired_tests(paired_raw)
    manifest = json.loads((paired_raw / "manifest.json").read_text())
    for case in manifest["cases"]:
        if case["split"] == "test":
            case["subject"] = "patient"
    (paired_raw / "manifest.json").write_text(json.dumps(manifest))
    results = _run_paired(paired_raw, {"sasan": _paired_bundle(tmp_path / "m.pt", constant=True)}, tmp_path / "out",
                          save_predictions=False)
    rows = results["sasan"]["per_subject"]
    assert [(r["case_id"], r["subject"]) for r in rows] == [(cid, "patient") for cid, _, _ in tests]
    for row, (_, _, mr) in zip(rows, tests):
        real = _normalised_by_hand(mr)                    # the constant model translates to 0 everywhere
        assert row["mae"] == pytest.approx(np.abs(real[nib.load(mr).get_fdata() > 0]).mean(), rel=1e-5)


def _store_transposed(path):
    """Rewrite a NIfTI with its 2nd and 3rd array axes swapped (the affine's columns with them):
    the same image in world space, another voxel order."""
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.swapaxes(np.asarray(img.dataobj), 1, 2)),
                             img.affine[:, [0, 2, 1, 3]]), path)


def test_paired_ssim_is_taken_in_the_models_plane_whatever_the_array_order(tmp_path, paired_raw):
    """The model translates coronal planes (preprocess.axis 1, array axis 1 of the fixture); a
    copy of the data stored with that axis last scores the same, SSIM included."""
    import shutil

    model = {"cyclegan": _paired_bundle(tmp_path / "m.pt", "cyclegan", seed=1)}
    stored = _run_paired(paired_raw, model, tmp_path / "a", save_predictions=False)
    raw = tmp_path / "transposed"
    shutil.copytree(paired_raw, raw)
    for _, ct, mr in _paired_tests(raw):
        _store_transposed(ct)
        _store_transposed(mr)
    transposed = _run_paired(raw, model, tmp_path / "b", save_predictions=False)
    for a, b in zip(stored["cyclegan"]["per_subject"], transposed["cyclegan"]["per_subject"]):
        assert a["case_id"] == b["case_id"] and np.isfinite(a["ssim"])
        assert {k: b[k] for k in ("mae", "rmse", "psnr", "ssim", "pearson")} == pytest.approx(
            {k: a[k] for k in ("mae", "rmse", "psnr", "ssim", "pearson")}, rel=1e-9)


def test_paired_evaluation_cuts_the_pair_with_one_box(tmp_path, monkeypatch):
    """crop: body, and a CT whose body reaches further than the MR's (a CT-only table plate
    below the body): the real MR image scored against is the one paired preprocessing makes
    (prepare_pair: the union of both body boxes), not the MR cut with its own box."""
    from sasan.data.prepare import bounds_for, prepare_pair, prepare_volume
    from sasan.stages import evaluate_paired, ingest

    src = tmp_path / "src"
    for i in range(1, 5):
        body, rng = _body(i)
        mr = np.where(body, rng.uniform(100, 200, PAIRED_SHAPE), 0.0).astype(np.float32)
        ct = np.where(body, 40 + 0.5 * mr + rng.normal(0, 10, PAIRED_SHAPE), -1000).astype(np.int16)
        ct[:, :, :2] = 300                                 # RAS: the two most inferior axial planes
        _save(src / f"s{i}" / "mr.nii.gz", mr, np.eye(4))
        _save(src / f"s{i}" / "ct.nii.gz", ct, np.eye(4))
    raw = tmp_path / "raw"
    ingest.run(ingest.IngestInputs(str(src)), ingest.IngestOutputs(raw), _paired_config(), Tracker.disabled())
    bundle = _paired_bundle(tmp_path / "m.pt", constant=True, crop="body", crop_margin=1)
    used = []
    scores = evaluate_paired.translation_scores
    monkeypatch.setattr(evaluate_paired, "translation_scores",
                        lambda fake, real, mask, **kw: used.append(real) or scores(fake, real, mask, **kw))
    _run_paired(raw, {"sasan": bundle}, tmp_path / "out", save_predictions=False)
    prep = _paired_config(crop="body", crop_margin=1).preprocess
    tests = _paired_tests(raw)
    assert len(used) == len(tests) == 2
    for real, (_, ct, mr) in zip(used, tests):
        (_, _), (pair, _) = prepare_pair([ct, mr], [None, None], prep, [bounds_for(prep, "CT"), bounds_for(prep, "MR")],
                                         ["CT", "MR"])
        alone = prepare_volume(mr, prep, "MR", "mr")
        assert pair.geometry.box != alone.geometry.box      # the CT plate widens the pair's box
        np.testing.assert_array_equal(real, np.asarray(pair.restore_intensity(pair.slices).dataobj))
        assert not np.allclose(real, np.asarray(alone.restore_intensity(alone.slices).dataobj), atol=1e-3)


def test_a_paired_identity_records_each_bundles_preprocessing(tmp_path, paired_raw):
    """The real image is normalised with each bundle's own preprocessing: the identity records
    its digest per method (what shapes the reference image only), so the gate compares only
    bundles scored against the same image."""
    from sasan.stages.evaluate_paired import preprocess_digest
    from sasan.tracking.registry import gate_identity

    models = {"sasan": _paired_bundle(tmp_path / "a" / "model.pt", constant=True),
              "cyclegan": _paired_bundle(tmp_path / "b" / "model.pt", "cyclegan", bounds={"mr": (-2.0, 4.0),
                                                                                           "ct": (-2.8, 3.2)})}
    _run_paired(paired_raw, models, tmp_path / "out", save_predictions=False)
    identity = json.loads((tmp_path / "out" / "report" / "identity.json").read_text())
    digests = identity["preprocess_digest"]
    assert set(digests) == {"sasan", "cyclegan"} and digests["sasan"] != digests["cyclegan"]
    assert digests["sasan"] == preprocess_digest(_paired_config().preprocess, ("MR", "mr"))
    assert gate_identity(identity, "cyclegan")["preprocess_digest"] == digests["cyclegan"]
    assert gate_identity(identity, "sasan") != gate_identity(identity, "cyclegan")
    # only what shapes the reference image counts: the shards' dtype, the stack depth or the
    # target's bounds do not; the source's bounds, the clip percentiles, the crop do
    base = preprocess_digest(_paired_config().preprocess, ("MR", "mr"))
    for same in ({"dtype": "float32"}, {"slices": 1}, {"bounds": {"mr": (-1.8, 4.4), "ct": (-3.0, 3.0)}}):
        assert preprocess_digest(_paired_config(**same).preprocess, ("MR", "mr")) == base, same
    for other in ({"bounds": {"mr": (-1.5, 4.4), "ct": (-2.8, 3.2)}}, {"clip_percentiles": (1.0, 99.0)},
                  {"crop": "body"}, {"field_of_view_mm": 300.0}, {"image_size": 64}):
        assert preprocess_digest(_paired_config(**other).preprocess, ("MR", "mr")) != base, other


# --- outputs: checked before the work, all or nothing -------------------------------------

def _leftovers(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize("metrics, report, message", [
    ("afile/e.json", "report", "afile/e.json: cannot create the file: .*afile is not a directory"),
    ("adir", "report", "adir: is a directory"),
    ("out/e.json", "afile", "afile: exists and is not a directory"),
    ("out/report/e.json", "out/report", "e.json: lies in the report folder"),
])
def test_unwritable_outputs_are_refused_before_inference(tmp_path, no_inference, metrics, report, message):
    raw = make_raw(tmp_path / "raw")
    models = {"sasan": _bundle(tmp_path / "m" / "sasan" / "model.pt")}
    work = tmp_path / "work"
    (work / "adir").mkdir(parents=True)
    (work / "afile").write_text("not a folder")
    with pytest.raises(ConfigError, match=message):
        evaluate.run(evaluate.EvaluateInputs(raw, models), evaluate.EvaluateOutputs(work / metrics, work / report),
                     _config(), Tracker.disabled(), progress=False)
    assert _leftovers(work) == ["adir", "afile"]


def test_a_failure_part_way_leaves_no_partial_report_or_metrics(tmp_path, monkeypatch):
    """Predictions are written case by case; a failure after them (the last picture) leaves
    neither metrics nor a report folder, and a previous report as it was."""
    raw = make_raw(tmp_path / "raw")
    models = {"sasan": _bundle(tmp_path / "m" / "sasan" / "model.pt")}
    out = tmp_path / "out"

    def broken(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(evaluate, "segmentation_montage", broken)
    with pytest.raises(OSError, match="No space left"):
        _run(raw, models, out, save_predictions=True)
    assert not out.exists()
    (out / "report").mkdir(parents=True)                    # an earlier report
    (out / "report" / "identity.json").write_text("{}")
    (out / "report" / "old.txt").write_text("previous report")
    with pytest.raises(OSError, match="No space left"):
        _run(raw, models, out, save_predictions=True)
    assert _leftovers(out) == ["report", "report/identity.json", "report/old.txt"]
    monkeypatch.undo()
    _run(raw, models, out, save_predictions=True)          # a rerun replaces the report as a whole
    files = _leftovers(out)
    assert "evaluation.json" in files and "report/identity.json" in files and "report/old.txt" not in files
    assert "report/predictions/sasan/ct_001.nii.gz" in files and not [f for f in files if "/." in f or f[0] == "."]


@pytest.mark.parametrize("report", ["models", ".", "data"])
def test_a_folder_evaluate_did_not_write_is_never_replaced(tmp_path, no_inference, monkeypatch, report):
    """The report folder is replaced as a whole: one holding models, data or anything evaluate
    did not write (the working folder too) is refused before any work, and left as it was."""
    raw = make_raw(tmp_path / "data" / "raw")
    models = {"sasan": _bundle(tmp_path / "models" / "sasan" / "model.pt")}
    monkeypatch.chdir(tmp_path)
    before = _leftovers(tmp_path)
    with pytest.raises(ConfigError, match="holds files that evaluate did not write"):
        evaluate.run(evaluate.EvaluateInputs(raw, models),
                     evaluate.EvaluateOutputs(tmp_path.parent / f"{tmp_path.name}-e.json", Path(report)),
                     _config(), Tracker.disabled(), progress=False)
    assert _leftovers(tmp_path) == before
