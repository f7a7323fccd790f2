"""Fake-source augmentation (METHOD.md 4.3): target slices -> G_s(t, A_t(t)) with A_t's
pseudo-labels."""

import numpy as np
import torch

from sasan.models import build_networks
from sasan.train.data import ArraySliceDataset
from sasan.train.device import resolve_runtime
from sasan.train.fake_source import translate_to_source

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
