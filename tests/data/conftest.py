"""Shared fixtures of the data tests."""


# ---------------------------------------------------------------------------------------
# validate / preprocess / dataset fixtures: a small canonical raw tree built on the fly
# ---------------------------------------------------------------------------------------
import hashlib as _hashlib
import json as _json
from pathlib import Path as _Path

import nibabel as _nib
import numpy as _np
import pytest as _pytest

RAW_LABELS = {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "AA": 4}


def _blob_case(rng, shape, modality):
    """An int16 'body' ellipsoid with a labelled sphere inside; CT in HU-like, MR in [0, ~800]."""
    grid = _np.stack(_np.meshgrid(*[_np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    body = ((grid[0] / 0.8) ** 2 + (grid[1] / 0.6) ** 2 + (grid[2] / 0.9) ** 2) < 1
    centre = rng.uniform(-0.15, 0.15, size=3)
    r = _np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    label = _np.zeros(shape, _np.uint8)
    label[(r < 0.35) & body] = 1
    label[(r < 0.25) & body] = 3
    label[(grid[0] > centre[0] + 0.1) & (r < 0.2)] = 2
    if modality == "CT":
        image = _np.where(body, 40.0, -1000.0) + 200.0 * (label == 3) + 100.0 * (label == 1)
        image = image + rng.normal(0, 20, shape)
    else:
        image = _np.where(body, 300.0, 0.0) + 400.0 * (label == 3) - 150.0 * (label == 1)
        image = _np.abs(image + rng.normal(0, 15, shape))
    return image.astype(_np.int16), label


def write_nifti(path, array, affine):
    path = _Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _nib.Nifti1Image(_np.asarray(array), _np.asarray(affine, float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    _nib.save(img, path)
    return path


def make_raw_tree(root, domains=(("mr", "MR"), ("ct", "CT")), n_train=2, n_test=1, shape=(24, 20, 16),
                  spacing=(1.5, 1.2, 2.0), seed=0, manifest=True, test_labels=True):
    """Canonical layout + manifest.json under ``root``; returns ``root``."""
    root = _Path(root)
    rng = _np.random.default_rng(seed)
    affine = _np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    cases = []
    for domain, modality in domains:
        ddir = root / domain
        ddir.mkdir(parents=True, exist_ok=True)
        meta = {"name": f"test-{domain}", "modality": modality, "channel_names": {"0": modality},
                "labels": RAW_LABELS, "numTraining": n_train, "file_ending": ".nii.gz"}
        (ddir / "dataset.json").write_text(_json.dumps(meta))
        for split, n in (("train", n_train), ("test", n_test)):
            img_dir, lab_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
            for i in range(n):
                case = f"{domain}_{split}_{i:03d}"
                image, label = _blob_case(rng, shape, modality)
                ip = write_nifti(ddir / img_dir / f"{case}_0000.nii.gz", image, affine)
                lp = None
                if split == "train" or test_labels:
                    lp = write_nifti(ddir / lab_dir / f"{case}.nii.gz", label, affine)
                cases.append({
                    "case_id": case, "domain": domain, "split": split,
                    "image": str(ip.relative_to(root)), "label": None if lp is None else str(lp.relative_to(root)),
                    "sha256": {"image": _hashlib.sha256(ip.read_bytes()).hexdigest(),
                               "label": None if lp is None else _hashlib.sha256(lp.read_bytes()).hexdigest()},
                    "shape": list(shape), "spacing": list(spacing), "orientation": "RAS",
                })
    if manifest:
        doc = {"version": 1, "dataset": "test", "seed": seed, "test_fraction": 0.3,
               "domains": {d: {"modality": m, "labels": RAW_LABELS} for d, m in domains}, "cases": cases}
        (root / "manifest.json").write_text(_json.dumps(doc))
    return root


@_pytest.fixture
def raw_tree(tmp_path):
    """A fresh small canonical raw tree (2 train + 1 test per domain, mr and ct)."""
    return make_raw_tree(tmp_path / "raw")


@_pytest.fixture(scope="session")
def make_raw():
    """The :func:`make_raw_tree` factory, for tests that need other sizes or domains."""
    return make_raw_tree


@_pytest.fixture
def nifti_writer():
    """:func:`write_nifti` (path, array, affine) -> path, for hand-made bad inputs."""
    return write_nifti
