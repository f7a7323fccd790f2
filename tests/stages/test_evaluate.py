"""The evaluate stage on a tiny raw set: inputs are checked before any inference (labels on
the image grid, label maps, classes, metric names, intensity bounds), ground truth is read
with the project's label loader, and identity.json records what register must match."""

import json
import re

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

torch.set_num_threads(1)

LABELS = {"background": 0, "MYO": 1, "LV": 2}
MODEL = {"k": 4, "num_classes": 3, "attention_width": 8, "synth_width": 8, "norm_hidden": 8,
         "disc_width": 8, "seg_disc_width": 8, "unet_width": 4}
SHAPE = (20, 16, 12)
AFFINE = np.diag([1.5, 1.2, 2.0, 1.0])


def _config(**preprocess):
    return config_from_dict({"experiment": {"source": "mr", "target": "ct"}, "train": {"device": "cpu"},
                             "evaluate": {"batch_size": 8},
                             "preprocess": {"image_size": 32, **preprocess}, "model": MODEL})


def _bundle(path, variant="sasan", seed=0, **preprocess):
    torch.manual_seed(seed)
    cfg = _config(**preprocess)
    nets = build_networks(cfg.model)
    att_t = nets.att_t if variant == "sasan" else None
    syn_s = nets.syn_s if variant in ("sasan", "cyclegan") else None
    path.parent.mkdir(parents=True, exist_ok=True)
    save_bundle(path, ModelBundle(cfg, variant, build_segmenter(cfg.model).eval(), att_t, syn_s))
    return path


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


def _run(raw, models, out, cfg=None):
    return evaluate.run(evaluate.EvaluateInputs(raw, models),
                        evaluate.EvaluateOutputs(out / "evaluation.json", out / "report"),
                        cfg or _config(), Tracker.disabled(), save_predictions=False, progress=False)


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
    results = _run(raw, {"sasan": _bundle(tmp_path / "m.pt", bounds=bounds)}, tmp_path / "out")
    assert results["sasan"]["n_subjects"] == 2


def test_no_bounds_for_the_target_is_one_line_naming_the_bundle(tmp_path, no_inference):
    raw = make_raw(tmp_path / "raw", modality="CTscan")
    bundle = _bundle(tmp_path / "m.pt", bounds={"mr": (-1.8, 4.4)})
    with pytest.raises(ConfigError, match=re.escape(f"{bundle}: preprocess.bounds has no entry for modality "
                                                    "'CTscan' or domain 'ct'")):
        _run(raw, {"sasan": bundle}, tmp_path / "out")
