"""Fake-source augmentation (METHOD.md 4.3): target slices -> G_s(t, A_t(t)) with A_t's
pseudo-labels."""

import numpy as np
import pytest
import torch

from sasan.config import AugmentConfig
from sasan.models import build_networks
from sasan.train.data import ArraySliceDataset
from sasan.train.device import resolve_runtime
from sasan.train.fake_source import translate_to_source
from sasan.train.recipe import Trainer

from .conftest import blob_slices, tiny_config


def _setup():
    cfg = tiny_config()
    torch.manual_seed(0)
    nets = build_networks(cfg.model, seg_adversary=True)
    images, _ = blob_slices(5, seed=3, bright_ring=False)
    return cfg, nets, ArraySliceDataset(images)


def test_translation_and_pseudo_labels_of_every_target_slice():
    _, nets, target = _setup()
    images, labels = translate_to_source(nets, target, resolve_runtime("cpu"), batch_size=2, progress=False)
    n, s, h, w = target.images.shape
    assert images.shape == (n, s, h, w) and images.dtype == np.float16
    assert np.abs(images.astype(np.float32)).max() <= 1.0          # tanh output
    assert labels.shape == (n, h, w) and labels.dtype == np.uint8
    assert nets.training                                           # back in training mode
    nets.eval()                                                    # as translate_to_source runs them
    with torch.no_grad():
        t = torch.from_numpy(target.images)
        att_t, seg_t = nets.att_t(t)
        expected_images = nets.syn_s(t, att_t).numpy()           # G_s(t, A_t(t)), METHOD.md 4.3
        expected = seg_t.argmax(1).numpy()
    nets.train()
    assert np.array_equal(labels, expected)
    # float16 in [-1, 1]: rounding moves a value by at most 2^-12
    np.testing.assert_allclose(images.astype(np.float32), expected_images, rtol=0, atol=2 ** -11)


def test_cyclegan_ablation_has_no_pseudo_labels():
    nets = build_networks(tiny_config(model={"attention": False}).model, seg_adversary=False)
    images, _ = blob_slices(3, seed=3, bright_ring=False)
    fake, labels = translate_to_source(nets, ArraySliceDataset(images), resolve_runtime("cpu"), progress=False)
    assert fake.shape == images.shape and labels is None
    with torch.no_grad():
        expected = nets.eval().syn_s(torch.from_numpy(images), None).numpy()   # G_s(t), no attention
    nets.train()
    np.testing.assert_allclose(fake.astype(np.float32), expected, rtol=0, atol=2 ** -11)


def test_array_slices_augment_image_and_label_together_seeded_per_item_and_epoch():
    images, labels = blob_slices(4, seed=3)
    plain = ArraySliceDataset(images, labels)
    assert torch.equal(plain[2]["image"], torch.from_numpy(images[2]))           # no augment: as stored
    flips = ArraySliceDataset(images, labels, augment=AugmentConfig(rotate_deg=0.0, scale=(1.0, 1.0)), seed=7)
    n_flipped = 0
    for epoch in range(4):
        flips.set_epoch(epoch)
        for i in range(4):
            item, ref = flips[i], plain[i]
            if torch.equal(item["image"], ref["image"]):
                assert torch.equal(item["label"], ref["label"])
            else:                                                                 # one mirror for both
                n_flipped += 1
                assert torch.equal(item["image"], ref["image"].flip(-1))
                assert torch.equal(item["label"], ref["label"].flip(-1))
    assert 0 < n_flipped < 16
    a = ArraySliceDataset(images, labels, augment=AugmentConfig(), seed=1)
    b = ArraySliceDataset(images, labels, augment=AugmentConfig(), seed=1)
    assert torch.equal(a[1]["image"], b[1]["image"]) and torch.equal(a[1]["label"], b[1]["label"])
    first = a[1]["image"]
    assert not torch.equal(first, plain[1]["image"])
    a.set_epoch(1)
    assert not torch.equal(a[1]["image"], first)                                   # a new draw each epoch
    a.set_epoch(0)
    assert torch.equal(a[1]["image"], first)


@pytest.mark.parametrize("augment", [False, True])
def test_segmenter_sees_fake_source_augmented_only_when_asked(tmp_path, tiny_data, monkeypatch, augment):
    seen = {}
    monkeypatch.setattr(Trainer, "segmenter", lambda self, train_set, *a, **k: seen.setdefault("parts", train_set.parts))
    monkeypatch.setattr(Trainer, "_finish", lambda self, bundle: self.summary)
    cfg = tiny_config(train={"segmenter": {"augment_fake_source": augment}})
    Trainer(cfg, tmp_path, "sasan", progress=False).run(tiny_data)
    real, fake = seen["parts"]
    assert real is tiny_data.source
    assert len(fake) == len(tiny_data.target_plain) and fake.labels is not None
    assert fake.augment == (cfg.train.augment if augment else None)
