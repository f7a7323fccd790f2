"""bench/pretrain_schedule.py --plain-ce: the diagnosis really turns seg_loss's class-weighted
cross-entropy into the plain one (and only that term)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

import sasan.losses.segmentation as seg

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_pretrain_schedule", ROOT / "bench" / "pretrain_schedule.py")
pretrain_schedule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain_schedule)


def test_plain_ce_patch_gives_unweighted_cross_entropy(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:4, 2:4] = 1          # rare foreground: the METHOD.md weights differ a lot from 1
    labels[:, 5, 5] = 3
    weighted = seg.seg_loss(logits, labels, dice_weight=0.0)
    assert not torch.allclose(weighted, F.cross_entropy(logits, labels))

    monkeypatch.setattr(seg, "class_weights", seg.class_weights)   # restored after the test
    pretrain_schedule.use_plain_cross_entropy()
    assert torch.allclose(seg.seg_loss(logits, labels, dice_weight=0.0), F.cross_entropy(logits, labels))
    # the soft Dice term is untouched
    dice = seg.soft_dice_loss(logits, labels)
    assert torch.allclose(seg.seg_loss(logits, labels, dice_weight=0.2), F.cross_entropy(logits, labels) + 0.2 * dice)
