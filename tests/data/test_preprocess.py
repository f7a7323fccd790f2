"""Preprocessing: normalisation by hand, shard contract, determinism, atomicity, no label
leakage, and prepare/restore round trips back to the original grid."""

import json
import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from sasan.data import shards as shards_mod
from sasan.data.config import PreprocessConfig
from sasan.data.preprocess import bounds_for, normalise, prepare_volume, run_preprocess, stack_slices
from sasan.data.shards import open_shard
from sasan.errors import ConfigError, DataError
SMALL = dict(image_size=32)


def test_normalise_by_hand():
    planes = np.array([[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 100.0]]], np.float32)
    out, stats = normalise(planes, (0.0, 600 / 7), (-2.0, 2.0))
    # linear percentile of 8 sorted values at 600/7 % is index 7 * 6/7 = 6 -> value 6;
    # clipped values 0..6,6 -> mean 3.375
    assert stats["p_low"] == 0.0 and stats["p_high"] == pytest.approx(6.0)
    clipped = np.array([0, 1, 2, 3, 4, 5, 6, 6], np.float64)
    z = (clipped - clipped.mean()) / clipped.std()
    expected = np.clip(2 * (z + 2.0) / 4.0 - 1, -1, 1)
    assert np.allclose(out.ravel(), expected, atol=1e-6)
    assert stats["mean"] == pytest.approx(3.375)


def test_normalise_clips_to_unit_range_and_rejects_constant():
    out, _ = normalise(np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10), (0, 100), (-0.5, 0.5))
    assert out.min() == -1.0 and out.max() == 1.0
    with pytest.raises(DataError, match="constant intensity"):
        normalise(np.ones((2, 3, 3), np.float32), (2, 98), (-1, 1))


def test_stack_slices_replicates_edges():
    slices = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    stacks = stack_slices(slices, np.array([0, 2, 3]), 3)
    assert stacks.shape == (3, 3, 2, 2)
    assert stacks[:, :, 0, 0].tolist() == [[0, 0, 1], [1, 2, 3], [2, 3, 3]]
    assert stack_slices(slices, np.array([1]), 1)[:, :, 0, 0].tolist() == [[1]]


def test_bounds_lookup():
    cfg = PreprocessConfig()
    assert bounds_for(cfg, "CT") == (-2.8, 3.2)
    assert bounds_for(cfg, "MRI", "mr") == (-1.8, 4.4)
    with pytest.raises(ConfigError, match="no entry for modality 'PET'"):
        bounds_for(cfg, "PET", "pet")


def test_slices_in_display_order():
    from sasan.data.slice_geometry import display_plane, slices_to_volume, volume_to_slices

    ras = np.zeros((4, 5, 6), np.float32)  # X (to the right), Y (anterior), Z (superior)
    ras[:, :, -1] = 1.0  # top of the head
    ras[-1, :, :] += 2.0  # patient's right
    coronal = volume_to_slices(ras, 1)
    assert coronal.shape == (5, *display_plane(ras.shape, 1)) == (5, 6, 4)
    assert coronal[0, 0, 0] == 1.0 and coronal[0, -1, 0] == 0.0  # superior row on top
    assert coronal[0, 3, -1] == 2.0  # patient's right on the right
    axial = volume_to_slices(ras, 2)
    assert axial.shape == (6, 5, 4)
    for axis in range(3):
        assert np.array_equal(slices_to_volume(volume_to_slices(ras, axis), axis), ras)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shard_contract(raw_tree, tmp_path):
    cfg = PreprocessConfig(**SMALL)
    stats = run_preprocess(raw_tree, tmp_path / "out", cfg)
    assert sorted(_files(tmp_path / "out")) == sorted(
        f"{d}/{s}/{n}" for d in ("ct", "mr") for s in ("train", "test") for n in ("images.npy", "labels.npy",
                                                                                  "index.json")) + ["stats.json"]
    shard = open_shard(tmp_path / "out" / "mr" / "train")
    n = shard.images.shape[0]
    assert isinstance(shard.images, np.memmap) and shard.images.dtype == np.float16
    assert shard.images.shape == (n, 3, 32, 32) and shard.labels.shape == (n, 32, 32)
    assert shard.labels.dtype == np.uint8 and set(np.unique(shard.labels)) <= {0, 1, 2, 3}
    assert -1.0 <= float(shard.images.min()) and float(shard.images.max()) <= 1.0
    idx = shard.index
    assert idx["cases"] == ["mr_train_000", "mr_train_001"] and idx["shape"] == [n, 3, 32, 32]
    assert idx["dtype"] == "float16" and len(idx["case_of_slice"]) == len(idx["slice_of_case"]) == n
    for d in ("ct", "mr"):  # unpaired index.json: exactly these keys (paired mode's extra keys never appear)
        for s in ("train", "test"):
            keys = json.loads((tmp_path / "out" / d / s / "index.json").read_text())
            assert sorted(keys) == sorted(["cases", "case_of_slice", "slice_of_case", "shape", "dtype"])
    assert stats["counts"]["mr"]["train"] == n
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["config"]["image_size"] == 32 and saved["domains"]["ct"]["bounds"] == [-2.8, 3.2]
    assert saved["domains"]["mr"]["volumes"]["mr_train_000"]["std"] > 0

    # each shard row is the stack around slice_of_case of prepare_volume's slices, centre label included
    case = 1
    rows = [i for i, c in enumerate(idx["case_of_slice"]) if c == case]
    prepared = prepare_volume(raw_tree / "mr/imagesTr/mr_train_001_0000.nii.gz", cfg, "MR")
    label = np.asarray(nib.load(raw_tree / "mr/labelsTr/mr_train_001.nii.gz").dataobj)
    slices = np.array(idx["slice_of_case"])[rows]
    assert np.array_equal(shard.images[rows], prepared.stacks[slices].astype(np.float16))
    assert np.array_equal(shard.labels[rows], prepared.forward_label(label)[slices])


def test_deterministic_byte_identical(raw_tree, tmp_path):
    cfg = PreprocessConfig(**SMALL)
    run_preprocess(raw_tree, tmp_path / "a", cfg)
    run_preprocess(raw_tree, tmp_path / "b", cfg)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_target_labels_never_select_slices(raw_tree, tmp_path):
    cfg = PreprocessConfig(**SMALL)
    run_preprocess(raw_tree, tmp_path / "a", cfg)
    for path in (raw_tree / "ct" / "labelsTr").glob("*.nii.gz"):
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), path)
    run_preprocess(raw_tree, tmp_path / "b", cfg)
    for name in ("images.npy", "index.json"):
        assert (tmp_path / "a/ct/train" / name).read_bytes() == (tmp_path / "b/ct/train" / name).read_bytes()


def test_failure_leaves_no_partial_shard_and_rerun_completes(raw_tree, tmp_path, monkeypatch):
    cfg = PreprocessConfig(**SMALL)
    out = tmp_path / "out"
    real = shards_mod.prepare_case
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards_mod, "prepare_case", failing)
    with pytest.raises(RuntimeError):
        run_preprocess(raw_tree, out, cfg)
    assert not out.exists()  # nothing of the failed run, not even an empty folder
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # nor its staging folder
    monkeypatch.setattr(shards_mod, "prepare_case", real)
    run_preprocess(raw_tree, out, cfg)
    run_preprocess(raw_tree, tmp_path / "clean", cfg)
    assert _files(out) == _files(tmp_path / "clean")


def test_failure_keeps_the_previous_output_whole(raw_tree, tmp_path, monkeypatch):
    """A run that fails part-way (after ct/train and ct/test are cut) leaves the previous
    output as it was: no new shard next to old ones, the old stats.json."""
    out = tmp_path / "out"
    run_preprocess(raw_tree, out, PreprocessConfig(**SMALL))
    before = _files(out)
    real = shards_mod.prepare_case
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # ct done, mr/train half-way
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards_mod, "prepare_case", failing)
    with pytest.raises(RuntimeError):
        run_preprocess(raw_tree, out, PreprocessConfig(image_size=48))
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun(raw_tree, tmp_path):
    """A real kill (no cleanup code runs): no partial shard, and the rerun completes."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal
        from sasan.data import shards
        from sasan.data.config import PreprocessConfig
        real = shards.prepare_case
        calls = []
        def killer(*a, **k):
            calls.append(1)
            if len(calls) == 4:  # ct/train and ct/test done, mr/train half-way
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        shards.prepare_case = killer
        shards.write_dataset_shards(__import__("pathlib").Path({str(raw_tree)!r}),
                                    __import__("pathlib").Path({str(out)!r}), PreprocessConfig(image_size=32))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9
    assert not out.exists()  # never part of an output: the finished ct shards are not there either
    staging = list(tmp_path.glob(".out.tmp-*"))
    assert len(staging) == 1 and (staging[0] / "ct" / "test" / "images.npy").exists()  # the killed run's ...
    run_preprocess(raw_tree, out, PreprocessConfig(**SMALL))
    assert not list(tmp_path.glob(".out.*"))  # ... removed by the rerun
    run_preprocess(raw_tree, tmp_path / "clean", PreprocessConfig(**SMALL))
    assert _files(out) == _files(tmp_path / "clean")


def test_interrupted_swap_restores_the_previous_output(raw_tree, tmp_path):
    """Killed between moving the old output aside and renaming the new one into place:
    the next run starts from the old output (a --domains run keeps its other domains)."""
    cfg = PreprocessConfig(**SMALL)
    out = tmp_path / "out"
    run_preprocess(raw_tree, out, cfg)
    before = _files(out)
    out.rename(tmp_path / ".out.old")
    (tmp_path / ".out.tmp-x" / "mr").mkdir(parents=True)
    run_preprocess(raw_tree, out, cfg, domains=["ct"])
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_label_image_mismatch_is_rejected(raw_tree, tmp_path, nifti_writer):
    path = raw_tree / "mr/labelsTr/mr_train_001.nii.gz"
    nifti_writer(path, np.zeros((24, 20, 15), np.uint8), nib.load(path).affine)
    with pytest.raises(DataError, match=r"label shape \(24, 20, 15\) differs") as info:
        run_preprocess(raw_tree, tmp_path / "out", PreprocessConfig(**SMALL))
    assert str(info.value).startswith(str(path))
    assert not (tmp_path / "out" / "mr" / "train").exists()


def test_domains_subset_and_unknown(raw_tree, tmp_path):
    cfg = PreprocessConfig(**SMALL)
    stats = run_preprocess(raw_tree, tmp_path / "out", cfg, domains=["ct"])
    assert list(stats["counts"]) == ["ct"] and not (tmp_path / "out" / "mr").exists()
    (tmp_path / "out" / "data_identity.json").write_text("{}")  # another stage's file
    ct_files = {k: v for k, v in _files(tmp_path / "out").items() if k.startswith("ct/")}
    stats = run_preprocess(raw_tree, tmp_path / "out", cfg, domains=["mr"])
    assert list(stats["counts"]) == ["ct", "mr"]  # the earlier ct entry is kept ...
    after = _files(tmp_path / "out")
    assert {k: v for k, v in after.items() if k.startswith("ct/")} == ct_files  # ... and its shards
    assert after["data_identity.json"] == b"{}"
    run_preprocess(raw_tree, tmp_path / "all", cfg)
    assert after.keys() - {"data_identity.json"} == _files(tmp_path / "all").keys()
    with pytest.raises(DataError, match="unknown domain"):
        run_preprocess(raw_tree, tmp_path / "out", cfg, domains=["pet"])


def test_stage_cuts_only_the_experiment_domains(make_raw, tmp_path):
    """A BraTS-like set with a sequence that has no bounds: the stage cuts source and target
    only; asking for that sequence explicitly names the missing bounds."""
    from sasan.config import config_from_dict
    from sasan.errors import ConfigError
    from sasan.stages import preprocess
    from sasan.tracking.runs import Tracker

    raw = make_raw(tmp_path / "raw", domains=(("t2", "T2"), ("t1", "T1"), ("flair", "FLAIR")))
    cfg = config_from_dict({"experiment": {"source": "t2", "target": "t1"},
                            "preprocess": {**SMALL, "bounds": {"t1": [-1.8, 4.4], "t2": [-1.8, 4.4]}}})
    stats = preprocess.run(preprocess.PreprocessInputs(raw), preprocess.PreprocessOutputs(tmp_path / "out"), cfg,
                           Tracker.disabled())
    assert sorted(stats["counts"]) == ["t1", "t2"] and not (tmp_path / "out" / "flair").exists()
    with pytest.raises(ConfigError, match="no entry for modality 'FLAIR'"):
        preprocess.run(preprocess.PreprocessInputs(raw, ("flair",)), preprocess.PreprocessOutputs(tmp_path / "o2"),
                       cfg, Tracker.disabled())


def test_cli_preprocess(raw_tree, tmp_path, capsys, monkeypatch):
    import sasan.cli

    if "sasan.cli.prep_cmds" not in sasan.cli.COMMAND_MODULES:
        monkeypatch.setattr(sasan.cli, "COMMAND_MODULES", (*sasan.cli.COMMAND_MODULES, "sasan.cli.prep_cmds"))
    params = tmp_path / "params.yaml"
    params.write_text("preprocess:\n  image_size: 32\n  slices: 1\n")
    assert sasan.cli.main(["preprocess", str(raw_tree), str(tmp_path / "out"), "--params", str(params)]) == 0
    assert json.loads(capsys.readouterr().out)["ct"]["train"] > 0
    assert open_shard(tmp_path / "out" / "ct" / "test").images.shape[1:] == (1, 32, 32)
    (raw_tree / "ct/imagesTs/ct_test_000_0000.nii.gz").write_bytes(b"garbage")
    assert sasan.cli.main(["preprocess", str(raw_tree), str(tmp_path / "out2"), "--params", str(params)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"sasan preprocess: error: {raw_tree / 'ct/imagesTs/ct_test_000_0000.nii.gz'}: ")


# ----------------------------------------------------------------------------- round trips
def _labelled_volume(tmp_path, nifti_writer, shape=(32, 24, 20), codes="LPS", spacing=(1.0, 1.5, 2.0)):
    """A label volume with an off-centre blob, stored in a non-RAS orientation."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    centre = np.array(shape) * [0.4, 0.55, 0.5]
    r = np.sqrt((((grid - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] / 4)) ** 2).sum(0))
    label = np.zeros(shape, np.uint8)
    label[r < 1.0] = 1
    label[r < 0.6] = 3
    label[(r < 0.8) & (grid[0] > centre[0])] = 2
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, code in enumerate(codes):  # array axis -> world axis (x: L-R, y: P-A, z: I-S) and sign
        world, sign = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}[code]
        affine[world, axis] = sign * spacing[axis]
    affine[:3, 3] = [5.0, -7.0, 11.0]
    path = nifti_writer(tmp_path / "label.nii.gz", label, affine)
    assert "".join(nib.aff2axcodes(affine)) == codes
    return path, label, affine


def _dice(a, b):
    fg_a, fg_b = a > 0, b > 0
    return 2 * np.logical_and(fg_a, fg_b).sum() / (fg_a.sum() + fg_b.sum())


def test_restore_inverts_exactly_without_resampling(tmp_path, nifti_writer):
    # 1 mm in-plane (R-L, S-I), 1.5 mm between coronal slices
    path, label, affine = _labelled_volume(tmp_path, nifti_writer, spacing=(1.0, 1.5, 1.0))
    cfg = PreprocessConfig(image_size=32, crop="none", clip_percentiles=(0.0, 100.0), bounds={"mr": (-20.0, 20.0)})
    prepared = prepare_volume(path, cfg, "MR")  # the label volume itself as the image
    # coronal slices are 20 (S-I) x 32 (R-L) in a 32 x 32 canvas: identity resize, so
    # intensities map back to labels
    values = np.unique(prepared.slices[:, 6:26, :])
    assert len(values) == 4
    as_labels = np.searchsorted(values, prepared.slices).clip(0, 3)
    as_labels = np.array([0, 1, 2, 3], np.uint8)[as_labels]
    restored = prepared.restore(as_labels)
    assert np.array_equal(np.asarray(restored.dataobj), label)
    assert np.allclose(restored.affine, affine) and restored.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(prepared.restore(prepared.forward_label(label)).dataobj), label)
    image = np.asarray(prepared.restore_intensity(prepared.slices).dataobj)
    expected, _ = normalise(label.astype(np.float32), (0.0, 100.0), (-20.0, 20.0))
    assert np.allclose(image, expected, atol=1e-6)


def test_restore_after_resample_crop_and_resize(tmp_path, nifti_writer):
    path, label, affine = _labelled_volume(tmp_path, nifti_writer, shape=(48, 40, 30), codes="ASL")
    cfg = PreprocessConfig(image_size=32, target_spacing=(1.2, 1.2, 1.2), crop="body", crop_margin=2)
    prepared = prepare_volume(path, cfg, "MR")
    assert prepared.stacks.shape == (len(prepared.slices), 3, 32, 32) and prepared.stacks.dtype == np.float32
    assert prepared.geometry.box != ((0, 40), (0, 48), (0, 30))  # the body box really cropped
    restored = prepared.restore(prepared.forward_label(label))
    assert restored.shape == label.shape and np.allclose(restored.affine, affine)
    back = np.asarray(restored.dataobj)
    assert _dice(back, label) > 0.95
    for c in (1, 2, 3):
        assert _dice(back == c, label == c) > 0.8
    image = prepared.restore_intensity(prepared.slices)
    assert image.shape == label.shape and image.get_data_dtype() == np.float32
    assert np.corrcoef(np.asarray(image.dataobj).ravel(), label.ravel())[0, 1] > 0.8


def test_restore_rejects_wrong_shape(tmp_path, nifti_writer):
    path, _, _ = _labelled_volume(tmp_path, nifti_writer)
    prepared = prepare_volume(path, PreprocessConfig(image_size=32), "MR")
    with pytest.raises(DataError, match="restore expects slices of shape"):
        prepared.restore(np.zeros((3, 32, 32), np.uint8))


@pytest.mark.parametrize("size", [40, 80])  # lattice step 1 and 2
def test_body_box_by_hand(size):
    from sasan.data.slice_geometry import body_box

    volume = np.zeros((size, size, size), np.float32)
    volume[11:30, 5:21, 17:36] = 100.0
    volume[0, 0, 0] = 100.0  # one noisy voxel does not make a body plane
    truth = ((11, 30), (5, 21), (17, 36))
    if size == 40:  # full lattice: exact
        assert body_box(volume, 50.0, 0.01, 0) == truth
    for (lo, hi), (true_lo, true_hi) in zip(body_box(volume, 50.0, 0.01, 2), truth):
        # never cuts the body; the step-2 lattice may add at most one voxel per side
        assert true_lo - 3 <= lo <= true_lo - 2 and true_hi + 2 <= hi <= true_hi + 3
    assert body_box(np.zeros((8, 8, 8), np.float32), 1.0, 0.01, 0) == ((0, 8), (0, 8), (0, 8))


# ----------------------------------------------------------------------------- physical scale
def _sphere_volume(tmp_path, nifti_writer, name, n, spacing, radius_mm=10.0):
    """An intensity sphere (and its label) of ``radius_mm`` centred in an n^3 grid."""
    axis = (np.arange(n) - (n - 1) / 2) * spacing
    r = np.sqrt(sum(g ** 2 for g in np.meshgrid(axis, axis, axis, indexing="ij")))
    label = (r < radius_mm).astype(np.uint8)
    image = np.where(label > 0, 100.0, 10.0).astype(np.float32)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return nifti_writer(tmp_path / f"{name}.nii.gz", image, affine), label


def _object_width(prepared, label):
    slices = prepared.forward_label(label)
    middle = slices[len(slices) // 2]
    return int(np.count_nonzero(middle.any(axis=0)))


def test_field_of_view_keeps_the_physical_scale(tmp_path, nifti_writer):
    """Two fields of view (64 mm at 1 mm, 80 mm at 2 mm) of the same 20 mm sphere: fitting each
    plane into the canvas draws it at different sizes; a fixed 48 mm canvas draws it at the
    same size (20 mm at 1.5 mm per pixel = 13-14 pixels) in both."""
    fine, fine_label = _sphere_volume(tmp_path, nifti_writer, "fine", 64, 1.0)
    coarse, coarse_label = _sphere_volume(tmp_path, nifti_writer, "coarse", 40, 2.0)
    fit = PreprocessConfig(image_size=32, crop="none", bounds={"mr": (-2.0, 2.0)})
    widths_fit = [_object_width(prepare_volume(p, fit, "MR"), lab)
                  for p, lab in ((fine, fine_label), (coarse, coarse_label))]
    assert widths_fit[0] - widths_fit[1] >= 2  # 10 px vs 8 px
    fixed = fit.model_copy(update={"field_of_view_mm": 48.0})
    prepared = [prepare_volume(p, fixed, "MR") for p in (fine, coarse)]
    widths = [_object_width(v, lab) for v, lab in zip(prepared, (fine_label, coarse_label))]
    assert all(13 <= w <= 14 for w in widths), widths
    # both volumes are larger than 48 mm: cropped around the centre to fill the canvas
    assert prepared[0].geometry.content == (32, 32) and prepared[1].geometry.content == (32, 32)
    assert prepared[0].geometry.box[0] == (8, 56) and prepared[1].geometry.box[0] == (8, 32)
    # the crop is undone on restore: the sphere comes back, the cut-off border is background
    for v, lab in zip(prepared, (fine_label, coarse_label)):
        back = np.asarray(v.restore(v.forward_label(lab)).dataobj)
        assert back.shape == lab.shape and _dice(back, lab) > 0.9


def test_field_of_view_pads_a_small_volume(tmp_path, nifti_writer):
    """A 40 mm volume on a 80 mm canvas fills half of it (padded with -1), not all of it."""
    small, label = _sphere_volume(tmp_path, nifti_writer, "small", 20, 2.0, radius_mm=8.0)
    cfg = PreprocessConfig(image_size=32, crop="none", bounds={"mr": (-2.0, 2.0)}, field_of_view_mm=80.0)
    prepared = prepare_volume(small, cfg, "MR")
    assert prepared.geometry.content == (16, 16)
    assert np.all(prepared.slices[:, :8] == -1.0) and np.all(prepared.slices[:, :, 24:] == -1.0)
    back = np.asarray(prepared.restore(prepared.forward_label(label)).dataobj)
    assert _dice(back, label) > 0.9


def test_field_of_view_must_be_positive():
    with pytest.raises(Exception, match="greater than 0"):
        PreprocessConfig(field_of_view_mm=0.0)


def test_a_raw_folder_without_manifest_is_refused_before_any_shard_is_written(make_raw, tmp_path, capsys):
    """A canonical folder never ingested (no manifest.json): one line, and no shards or stats."""
    import sasan.cli

    raw = make_raw(tmp_path / "raw", manifest=False)
    params = tmp_path / "params.yaml"
    params.write_text("preprocess:\n  image_size: 32\n  slices: 1\n")
    assert sasan.cli.main(["preprocess", str(raw), str(tmp_path / "out"), "--params", str(params)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sasan preprocess: error: {raw / 'manifest.json'}: manifest.json not found: run `sasan ingest` first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw"]
