"""Training diagnostics: each run records how well its networks segment held-out data, with
source labels (A_s, the U-Net) and, named diagnosis-only, with target labels."""

import dataclasses

import numpy as np
import pytest
import torch

from sasan.models import build_networks
from sasan.train.checkpoint import load_checkpoint
from sasan.train.data import ArraySliceDataset
from sasan.train.diagnostics import foreground_fraction, pooled_dice
from sasan.train.recipe import Trainer

from .conftest import blob_slices, tiny_config


def test_pooled_dice_and_foreground_fraction_against_hand_counts():
    truth = np.array([[[0, 1, 1, 2]], [[0, 0, 2, 2]]], np.uint8)
    pred = np.array([[[1, 1, 0, 2]], [[0, 0, 2, 0]]], np.uint8)
    d = pooled_dice(pred, truth, 4)
    assert d["1"] == pytest.approx(2 * 1 / (2 + 2))          # one overlap, two predicted, two true
    assert d["2"] == pytest.approx(2 * 2 / (2 + 3))
    assert np.isnan(d["3"]) and d["mean"] == pytest.approx((0.5 + 0.8) / 2)   # absent class left out
    assert foreground_fraction(truth, 3) == {"1": 0.25, "2": 0.375, "all": 0.625}


@pytest.mark.parametrize("variant", ["no_adaptation", "sasan"])
def test_run_summary_holds_source_and_diagnosis_only_target_diagnostics(tmp_path, variant, tiny_data):
    xs, ys = blob_slices(6, seed=5)
    ts, yt = blob_slices(6, seed=6, bright_ring=False)
    train_t, train_yt = blob_slices(8, seed=2, bright_ring=False)      # tiny_data's target slices
    data = dataclasses.replace(tiny_data, source_test=ArraySliceDataset(xs, ys), target_test=ArraySliceDataset(ts, yt),
                               target_plain_truth=ArraySliceDataset(train_t, train_yt))
    cfg = tiny_config(train={"segmenter": {"epochs": 100.0, "max_steps": 60, "batch_size": 4, "lr": 3e-3}})
    summary = Trainer(cfg, tmp_path, variant, progress=False).run(data)
    diag = summary["diagnostics"]
    unet = diag["U-Net_source_test"]["dice"]
    assert 0.5 < unet["mean"] <= 1.0                         # 60 steps on blobs: it segments held-out blobs
    if variant == "sasan":
        # A_s as pre-training left it (its last checkpoint), scored here: the same pooled Dice
        state = load_checkpoint(tmp_path / "checkpoints" / "pretrain_attention.pt")["state"]["model"]
        att_s = build_networks(cfg.model, seg_adversary=False).att_s
        att_s.load_state_dict(state)
        with torch.no_grad():
            pred = att_s.eval()(torch.from_numpy(xs))[1].argmax(1).numpy()
        held_out = diag["A_s_source_test"]
        assert held_out["dice"] == pytest.approx(pooled_dice(pred, ys, 3))
        assert held_out["foreground_fraction"] == pytest.approx(foreground_fraction(pred, 3))
        assert held_out["true_foreground_fraction"] == pytest.approx(foreground_fraction(ys, 3))
        assert set(diag) >= {"diagnosis_only_A_t_target_test", "pseudo_labels"}
        assert "diagnosis_only_dice" in diag["pseudo_labels"]   # target labels: named as diagnosis only
        assert not any(k.startswith("A_t") for k in diag)
