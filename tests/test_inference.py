"""Whole-volume inference: a NIfTI in, translated and label volumes out on the input grid."""

import nibabel as nib
import numpy as np
import pytest
import torch

from sasan.bundle import ModelBundle, load_bundle, save_bundle
from sasan.cli import main
from sasan.config import config_from_dict
from sasan.inference import infer_volume, predict_stacks
from sasan.models import build_networks, build_segmenter
from sasan.train.device import resolve_runtime

torch.set_num_threads(1)

TINY = {"preprocess": {"image_size": 32},
        "model": {"k": 4, "num_classes": 5, "attention_width": 8, "synth_width": 8, "norm_hidden": 8,
                  "disc_width": 8, "seg_disc_width": 8, "unet_width": 4}}


@pytest.fixture
def bundle_path(tmp_path):
    torch.manual_seed(0)
    cfg = config_from_dict(TINY)
    nets = build_networks(cfg.model)
    path = tmp_path / "model.pt"
    save_bundle(path, ModelBundle(cfg, "sasan", build_segmenter(cfg.model).eval(), nets.att_t, nets.syn_s))
    return path


@pytest.fixture
def ct_volume(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(40, 30, (40, 36, 28)).astype(np.int16)
    data[:, :, :3] = -1000                         # air above the body
    affine = np.array([[-0.8, 0, 0, 90.0], [0, 0.7, 0, -40.0], [0, 0, 1.25, 12.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = b"test volume"
    path = tmp_path / "ct_001_0000.nii.gz"
    nib.save(img, path)
    return path, img


def test_volume_in_volumes_out_on_the_input_grid(bundle_path, ct_volume):
    path, img = ct_volume
    bundle = load_bundle(bundle_path)
    res = infer_volume(bundle, path, bundle.cfg.preprocess, "ct", batch_size=7)
    for out, dtype in ((res.labels, np.uint8), (res.translated, np.float32)):
        assert out.shape == img.shape
        assert np.allclose(out.affine, img.affine)
        assert out.get_data_dtype() == dtype
        assert out.header["descrip"] == img.header["descrip"]
    labels = np.asarray(res.labels.dataobj)
    assert labels.max() < 5
    translated = np.asarray(res.translated.dataobj)
    assert translated.min() >= -1.0 - 1e-5 and translated.max() <= 1.0 + 1e-5


def test_batching_does_not_change_the_result(bundle_path):
    bundle = load_bundle(bundle_path)
    stacks = np.random.default_rng(1).uniform(-1, 1, (10, 3, 32, 32)).astype(np.float32)
    rt = resolve_runtime("cpu")
    a, ta = predict_stacks(bundle, stacks, rt, batch_size=3)
    b, tb = predict_stacks(bundle, stacks, rt, batch_size=10)
    assert np.array_equal(a, b) and np.allclose(ta, tb, atol=1e-5)
    # stack j is translated from (j-1, j, j+1): the centre channel of the translation is kept
    assert ta.shape == (10, 32, 32)


def test_prediction_is_the_plain_forward_of_the_three_networks(bundle_path):
    """The U-Net runs in channels_last on CPU (as in training): same labels and translation as
    the networks called one after the other in the default memory format."""
    stacks = np.random.default_rng(2).uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32)
    labels, translated = predict_stacks(load_bundle(bundle_path), stacks, resolve_runtime("cpu"), batch_size=4)
    plain = load_bundle(bundle_path)
    with torch.no_grad():
        x = torch.from_numpy(stacks)
        fake = plain.syn_s(x, plain.att_t(x)[0])
        logits = plain.segmenter(fake)
    assert np.allclose(translated, fake[:, 1].numpy(), atol=1e-6)
    margin = logits.topk(2, dim=1).values.diff(dim=1).abs().squeeze(1)
    clear = (margin > 1e-4).numpy()                  # ties may break either way between formats
    assert clear.mean() > 0.99
    assert np.array_equal(labels[clear], logits.argmax(1).numpy()[clear])


def test_translate_cli_writes_both_volumes(bundle_path, ct_volume, tmp_path, capsys):
    path, img = ct_volume
    out, labels = tmp_path / "out" / "fake_mr.nii.gz", tmp_path / "out" / "labels.nii.gz"
    assert main(["translate", str(path), str(out), "--bundle", str(bundle_path), "--labels", str(labels),
                 "--device", "cpu"]) == 0
    assert nib.load(out).shape == img.shape and nib.load(labels).shape == img.shape


def test_bad_bundle_is_a_one_line_error(tmp_path, ct_volume, capsys):
    path, _ = ct_volume
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["translate", str(path), str(tmp_path / "o.nii.gz"), "--bundle", str(bad)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt" in err[0]
    assert not (tmp_path / "o.nii.gz").exists()
