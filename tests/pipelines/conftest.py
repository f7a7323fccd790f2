"""Tiny profile and data shared by the pipeline and checkpoint-storage tests."""

import copy

import pytest

# 32x32 slices, widths 8, a few steps: the same scale as tests/test_pipeline_e2e.py
TINY_PARAMS = {
    "phantom": {"cases": 3},
    "ingest": {"test_fraction": 0.34},
    "preprocess": {"image_size": 32},
    "model": {"k": 4, "attention_width": 8, "synth_width": 8, "norm_hidden": 8, "disc_width": 8,
              "seg_disc_width": 8, "unet_width": 4},
    "train": {"device": "cpu", "checkpoint_every": 2, "log_every": 1,
              "pretrain": {"epochs": 0.1, "batch_size": 4},
              "joint": {"epochs": 1, "max_steps": 2, "batch_size": 2},
              "segmenter": {"epochs": 1.0, "max_steps": 2, "batch_size": 4}},
    "evaluate": {"methods": ["sasan", "no_adaptation"]},
    "register": {"min_dice": 0.0},
}
PHANTOM_SIZE = 48


def tiny_params(**changes) -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    for section, values in changes.items():
        params.setdefault(section, {}).update(values)
    return params


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """(raw_dir, shards_dir) of a tiny phantom, preprocessed with the tiny profile."""
    from sasan.config import config_from_dict
    from sasan.data.ingest import run_ingest
    from sasan.data.phantom import generate_phantom
    from sasan.data.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("tiny")
    cfg = config_from_dict(tiny_params())
    generate_phantom(root / "phantom", cases=3, seed=0, size=PHANTOM_SIZE)
    run_ingest(root / "phantom", root / "raw", layout="nnunet", test_fraction=0.34, seed=0)
    run_preprocess(root / "raw", root / "shards", cfg.preprocess)
    return root / "raw", root / "shards"
