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
from sasan.models.blocks import ConvBlock
from sasan.train.device import resolve_runtime

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


# --- output formats, bundle kinds, up-front refusals, all-or-nothing outputs -----------------

def _no_adaptation_bundle(tmp_path):
    torch.manual_seed(0)
    cfg = config_from_dict(TINY)
    path = tmp_path / "no_adaptation.pt"
    save_bundle(path, ModelBundle(cfg, "no_adaptation", build_segmenter(cfg.model).eval()))
    return path


def _one_line_error(capsys, *names):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    for name in names:
        assert str(name) in err[0], err[0]
    return err[0]


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_translate_writes_the_format_its_output_names(bundle_path, ct_volume, tmp_path, suffix):
    path, img = ct_volume
    out, labels = tmp_path / "o" / f"fake_mr{suffix}", tmp_path / "o" / f"labels{suffix}"
    assert main(["translate", str(path), str(out), "--bundle", str(bundle_path), "--labels", str(labels),
                 "--device", "cpu"]) == 0
    for written in (out, labels):
        gzipped = written.read_bytes()[:2] == b"\x1f\x8b"
        assert gzipped == (suffix == ".nii.gz"), written
        assert nib.load(written).shape == img.shape
    assert _files(tmp_path / "o") == sorted([out.name, labels.name])   # no temporaries left
    # the two formats hold the same volumes
    bundle = load_bundle(bundle_path)
    res = infer_volume(bundle, path, bundle.cfg.preprocess, "ct", resolve_runtime("cpu"))
    assert np.array_equal(np.asarray(nib.load(labels).dataobj), np.asarray(res.labels.dataobj))
    assert np.array_equal(nib.load(out).get_fdata(), res.translated.get_fdata())


def test_save_nifti_takes_the_format_from_the_name(tmp_path):
    from sasan.inference import save_nifti

    img = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    for name, gz in (("a.nii", False), ("b.nii.gz", True), ("C.NII.GZ", True), ("x.y.nii", False)):
        save_nifti(img, tmp_path / name)
        assert ((tmp_path / name).read_bytes()[:2] == b"\x1f\x8b") == gz
        assert np.array_equal(nib.load(tmp_path / name).get_fdata(), img.get_fdata())


def test_a_bundle_that_does_not_translate_writes_labels_without_out(tmp_path, ct_volume, capsys):
    path, img = ct_volume
    bundle = _no_adaptation_bundle(tmp_path)
    labels = tmp_path / "labels.nii.gz"
    assert main(["translate", str(path), "--bundle", str(bundle), "--labels", str(labels), "--device", "cpu"]) == 0
    assert nib.load(labels).shape == img.shape
    assert "labels:" in capsys.readouterr().out


def test_out_for_a_bundle_that_does_not_translate_is_refused_before_inference(tmp_path, ct_volume, capsys,
                                                                               monkeypatch):
    import sasan.inference

    def never(*a, **k):
        raise AssertionError("inference ran")

    monkeypatch.setattr(sasan.inference, "infer_volume", never)
    path, _ = ct_volume
    bundle = _no_adaptation_bundle(tmp_path)
    out, labels = tmp_path / "o" / "t.nii.gz", tmp_path / "o" / "l.nii.gz"
    assert main(["translate", str(path), str(out), "--bundle", str(bundle), "--labels", str(labels)]) == 2
    line = _one_line_error(capsys, bundle.name, "does not translate")
    assert "--labels" in line
    assert not (tmp_path / "o").exists()


def test_translate_needs_out_or_labels(bundle_path, ct_volume, capsys):
    path, _ = ct_volume
    assert main(["translate", str(path), "--bundle", str(bundle_path)]) == 2
    _one_line_error(capsys, "--labels")


@pytest.mark.parametrize("case", ["labels_dir", "out_dir", "device", "suffix", "parent_file", "same"])
def test_bad_outputs_and_device_are_refused_up_front(bundle_path, ct_volume, tmp_path, capsys, monkeypatch, case):
    import sasan.inference

    def never(*a, **k):
        raise AssertionError("inference ran")

    monkeypatch.setattr(sasan.inference, "infer_volume", never)
    path, _ = ct_volume
    work = tmp_path / "work"
    (work / "adir").mkdir(parents=True)
    (work / "afile").write_text("x")
    out, labels, device, named = work / "t.nii.gz", work / "l.nii.gz", "cpu", None
    if case == "labels_dir":
        labels = named = work / "adir"
    elif case == "out_dir":
        out = named = work / "adir"
    elif case == "device":
        device, named = "gpu", "gpu"
    elif case == "suffix":
        labels = named = work / "l.img"
    elif case == "parent_file":
        labels = named = work / "afile" / "l.nii.gz"
    else:
        labels = named = work / "." / "t.nii.gz"
    before = _files(work)
    assert main(["translate", str(path), str(out), "--bundle", str(bundle_path), "--labels", str(labels),
                 "--device", device]) == 2
    _one_line_error(capsys, named)
    assert _files(work) == before


def test_a_failed_write_leaves_neither_output(bundle_path, ct_volume, tmp_path, capsys, monkeypatch):
    import sasan.inference

    real_save = nib.save

    def save(img, filename):
        if ".l.nii.gz." in str(filename):     # the labels' temporary: disk full
            raise OSError(28, "No space left on device", str(filename))
        real_save(img, filename)

    monkeypatch.setattr(sasan.inference.nib, "save", save)
    path, _ = ct_volume
    work = tmp_path / "work"
    out, labels = work / "t.nii.gz", work / "l.nii.gz"
    assert main(["translate", str(path), str(out), "--bundle", str(bundle_path), "--labels", str(labels),
                 "--device", "cpu"]) == 1
    line = _one_line_error(capsys, labels, "No space left on device")
    assert "t.nii.gz" not in line.replace(str(labels), "")
    assert _files(work) == []                  # no translation alone, no temporaries


def test_an_inference_error_is_one_line_naming_the_image(bundle_path, ct_volume, capsys, monkeypatch, tmp_path):
    import sasan.inference

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr(sasan.inference, "predict_stacks", oom)
    path, _ = ct_volume
    assert main(["translate", str(path), str(tmp_path / "t.nii.gz"), "--bundle", str(bundle_path)]) == 1
    _one_line_error(capsys, path.name, "out of memory")
    assert not (tmp_path / "t.nii.gz").exists()


# --- intensity bounds: modality first, then domain, as preprocessing ------------------------

def test_bounds_fall_back_to_the_domain_as_preprocessing_does(bundle_path, ct_volume):
    from sasan.data.preprocess import prepare_volume
    from sasan.errors import ConfigError

    path, _ = ct_volume
    bundle = load_bundle(bundle_path)
    prep, rt = bundle.cfg.preprocess, resolve_runtime("cpu")
    # the modality's own bounds: exactly the former path (prepare_volume, then the networks)
    plain = prepare_volume(path, prep, "ct")
    labels, translated = predict_stacks(bundle, plain.stacks, rt, 16)
    for kwargs in ({}, {"domain": "ct"}, {"domain": "mr"}, {"domain": None}):
        res = infer_volume(bundle, path, prep, "CT", rt, **kwargs)
        assert np.array_equal(res.prepared.slices, plain.slices)
        assert np.array_equal(np.asarray(res.labels.dataobj), np.asarray(plain.restore(labels).dataobj))
        assert np.array_equal(res.translated.get_fdata(), plain.restore_intensity(translated).get_fdata())
    # a modality without bounds takes the domain's (it was an error before)
    by_domain = infer_volume(bundle, path, prep, "Computed tomography", rt, domain="ct")
    assert np.array_equal(by_domain.prepared.slices, plain.slices)
    assert np.array_equal(np.asarray(by_domain.labels.dataobj), np.asarray(plain.restore(labels).dataobj))
    mr = prepare_volume(path, prep, "mr")
    assert np.array_equal(infer_volume(bundle, path, prep, "t2w", rt, domain="mr").prepared.slices, mr.slices)
    with pytest.raises(ConfigError, match="pet"):
        infer_volume(bundle, path, prep, "pet")
    with pytest.raises(ConfigError, match="domain 'petdomain'"):
        infer_volume(bundle, path, prep, "pet", domain="petdomain")


# --- paired mode: a bundle that translates only ------------------------------------------------

def _paired_bundle(tmp_path, with_untrained_unet=False, name="paired.pt"):
    """A paired-mode model (experiment.mode: paired): A_t and S_s, no U-Net; or as the code
    before that rule wrote it, with an untrained U-Net beside them."""
    torch.manual_seed(0)
    cfg = config_from_dict({**TINY, "experiment": {"mode": "paired"}})
    nets = build_networks(cfg.model, seg_adversary=False)
    unet = build_segmenter(cfg.model).eval() if with_untrained_unet else None
    path = tmp_path / name
    save_bundle(path, ModelBundle(cfg, "sasan", unet, nets.att_t, nets.syn_s))
    return path


def test_a_paired_bundle_has_no_segmenter_and_saves_and_loads_as_such(tmp_path):
    path = _paired_bundle(tmp_path)
    assert torch.load(path, weights_only=True)["segmenter"] is None
    bundle = load_bundle(path)
    assert bundle.segmenter is None and not bundle.segments and bundle.translates
    stacks = np.random.default_rng(3).uniform(-1, 1, (5, 3, 32, 32)).astype(np.float32)
    labels, translated = predict_stacks(bundle, stacks, resolve_runtime("cpu"), batch_size=2)
    assert labels is None and translated.shape == (5, 32, 32) and translated.dtype == np.float32
    with torch.no_grad():
        x = torch.from_numpy(stacks)
        fake = bundle.syn_s(x, bundle.att_t(x)[0])[:, 1].numpy()
    assert np.allclose(translated, fake, atol=1e-6)
    labels, translated = predict_stacks(bundle, stacks[:0], resolve_runtime("cpu"))
    assert labels is None and translated.shape == (0, 32, 32)
    with pytest.raises(ValueError, match="segmenter, a translator"):
        ModelBundle(bundle.cfg, "sasan", None)


def test_an_old_paired_bundle_loads_without_its_untrained_unet(tmp_path):
    old = _paired_bundle(tmp_path, with_untrained_unet=True)
    assert torch.load(old, weights_only=True)["segmenter"] is not None      # written as before
    bundle = load_bundle(old)
    assert bundle.segmenter is None and bundle.translates
    new = load_bundle(_paired_bundle(tmp_path, name="new.pt"))
    for a, b in zip(bundle.syn_s.state_dict().values(), new.syn_s.state_dict().values()):
        assert torch.equal(a, b)
    # a segmenter-only model of a paired configuration (upper_bound) trained its U-Net: kept
    cfg = config_from_dict({**TINY, "experiment": {"mode": "paired"}})
    save_bundle(tmp_path / "ub.pt", ModelBundle(cfg, "upper_bound", build_segmenter(cfg.model).eval()))
    assert load_bundle(tmp_path / "ub.pt").segments


def test_unpaired_bundles_still_segment(bundle_path, tmp_path):
    assert load_bundle(bundle_path).segments and load_bundle(_no_adaptation_bundle(tmp_path)).segments


def test_translate_refuses_labels_for_a_bundle_that_does_not_segment(tmp_path, ct_volume, capsys, monkeypatch):
    import sasan.inference

    def never(*a, **k):
        raise AssertionError("inference ran")

    monkeypatch.setattr(sasan.inference, "infer_volume", never)
    path, _ = ct_volume
    for old_style in (False, True):
        bundle = _paired_bundle(tmp_path, with_untrained_unet=old_style, name=f"p{old_style}.pt")
        for outputs in (["--labels", str(tmp_path / "o" / "l.nii.gz")],
                        [str(tmp_path / "o" / "t.nii.gz"), "--labels", str(tmp_path / "o" / "l.nii.gz")]):
            assert main(["translate", str(path), *outputs, "--bundle", str(bundle), "--device", "cpu"]) == 2
            line = _one_line_error(capsys, bundle, "does not segment")
            assert "OUT" in line
            assert not (tmp_path / "o").exists()


def test_translate_writes_the_translation_of_a_paired_bundle(tmp_path, ct_volume, capsys):
    path, img = ct_volume
    bundle = _paired_bundle(tmp_path)
    out = tmp_path / "o" / "fake_mr.nii.gz"
    assert main(["translate", str(path), str(out), "--bundle", str(bundle), "--device", "cpu"]) == 0
    assert _files(tmp_path / "o") == ["fake_mr.nii.gz"]
    written = nib.load(out)
    assert written.shape == img.shape and np.allclose(written.affine, img.affine)
    loaded = load_bundle(bundle)
    res = infer_volume(loaded, path, loaded.cfg.preprocess, "ct", resolve_runtime("cpu"))
    assert res.labels is None
    assert np.array_equal(written.get_fdata(), res.translated.get_fdata())
    assert "translated:" in capsys.readouterr().out


@pytest.mark.parametrize("bottleneck", [True, False])
def test_a_bundle_rebuilds_the_attention_module_it_was_trained_with(tmp_path, bottleneck):
    """model.attention_bottleneck travels in the bundle's configuration: A_t is rebuilt with or
    without the extra block and gives the saved module's maps. A bundle written before the key
    existed (its configuration lacks it) had the block and still loads."""
    torch.manual_seed(0)
    cfg = config_from_dict({**TINY, "model": {**TINY["model"], "attention_bottleneck": bottleneck}})
    nets = build_networks(cfg.model)
    path = tmp_path / "model.pt"
    save_bundle(path, ModelBundle(cfg, "sasan", build_segmenter(cfg.model).eval(), nets.att_t.eval(), nets.syn_s))
    loaded = load_bundle(path)
    assert isinstance(loaded.att_t.bottleneck, torch.nn.Identity) is not bottleneck
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.att_t(x)[0], nets.att_t(x)[0])
    if bottleneck:
        state = torch.load(path, weights_only=True)
        assert "attention_bottleneck: true" in state["config_yaml"]
        state["config_yaml"] = state["config_yaml"].replace("  attention_bottleneck: true\n", "")
        torch.save(state, tmp_path / "old.pt")
        assert isinstance(load_bundle(tmp_path / "old.pt").att_t.bottleneck, ConvBlock)


def test_a_bundle_loads_back_the_networks_it_saved_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    cfg = config_from_dict(TINY)
    nets, unet = build_networks(cfg.model), build_segmenter(cfg.model)
    for p in [*unet.parameters(), *nets.att_t.parameters(), *nets.syn_s.parameters()]:
        torch.nn.init.normal_(p)                 # nothing a freshly built network would match
    save_bundle(tmp_path / "m.pt", ModelBundle(cfg, "sasan", unet, nets.att_t, nets.syn_s))
    loaded = load_bundle(tmp_path / "m.pt")
    for saved, back in [(unet, loaded.segmenter), (nets.att_t, loaded.att_t), (nets.syn_s, loaded.syn_s)]:
        a, b = saved.state_dict(), back.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert not any(m.training for m in back.modules())
    assert loaded.variant == "sasan" and loaded.cfg.to_dict() == cfg.to_dict()


def test_files_that_are_not_bundles_are_refused_naming_the_problem(tmp_path, ct_volume, capsys):
    from sasan.errors import CheckpointError

    path, _ = ct_volume
    torch.save({"step": 10, "model": {}}, tmp_path / "ckpt.pt")      # a training checkpoint
    with pytest.raises(CheckpointError, match="format tag missing"):
        load_bundle(tmp_path / "ckpt.pt")
    assert main(["translate", str(path), str(tmp_path / "o.nii.gz"), "--bundle", str(tmp_path / "ckpt.pt")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ckpt.pt" in err[0] and "not a SASAN model bundle" in err[0]
    state = torch.load(_no_adaptation_bundle(tmp_path), weights_only=True)
    state["segmenter"] = None                                        # nothing left to run
    torch.save(state, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="neither a segmenter nor a translator"):
        load_bundle(tmp_path / "empty.pt")


@pytest.mark.parametrize("where", ["out", "labels", "labels-other-spelling", "out-symlink"])
def test_translate_refuses_to_overwrite_its_input_image(bundle_path, ct_volume, tmp_path, capsys, where):
    path, _ = ct_volume
    before = path.read_bytes()
    other = tmp_path / "other.nii.gz"
    target = {"out": path, "labels": path, "labels-other-spelling": tmp_path / "." / "x" / ".." / path.name,
              "out-symlink": tmp_path / "link.nii.gz"}[where]
    if where == "out-symlink":
        target.symlink_to(path)
    if where.startswith("out"):
        argv = [str(path), str(target), "--labels", str(other)]
    else:
        argv = [str(path), str(other), "--labels", str(target)]
    assert main(["translate", *argv, "--bundle", str(bundle_path), "--device", "cpu"]) == 2
    line = _one_line_error(capsys, target)
    assert "is the input image" in line
    assert path.read_bytes() == before and not other.exists()
