import numpy as np
import pytest

from sasan.config import config_from_dict
from sasan.train.data import ArraySliceDataset

TINY = {
    "model": {"k": 4, "num_classes": 3, "attention_width": 8, "synth_width": 8, "norm_hidden": 8,
              "disc_width": 8, "seg_disc_width": 8, "unet_width": 4},
    "train": {"device": "cpu", "checkpoint_every": 2, "log_every": 1,
              "pretrain": {"epochs": 1.0, "batch_size": 4},
              "joint": {"epochs": 1, "max_steps": 3, "batch_size": 2},
              "segmenter": {"epochs": 1.0, "max_steps": 3, "batch_size": 4}},
}


def tiny_config(**sections):
    data = {k: dict(v) for k, v in TINY.items()}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def blob_slices(n: int, size: int = 32, seed: int = 0, bright_ring: bool = True):
    """Synthetic 3-slice stacks with a disc (class 2) inside a ring (class 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, 3, size, size), np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
        r = rng.uniform(size * 0.12, size * 0.2)
        d = np.hypot(yy - cy, xx - cx)
        lab = np.where(d < r, 2, np.where(d < r * 1.6, 1, 0)).astype(np.uint8)
        ring, disc = (0.8, -0.2) if bright_ring else (-0.2, 0.8)
        img = np.where(lab == 2, disc, np.where(lab == 1, ring, -0.8)) + rng.normal(0, 0.05, lab.shape)
        images[i] = np.clip(img, -1, 1)[None]
        labels[i] = lab
    return images, labels


@pytest.fixture
def tiny_data():
    from sasan.train.recipe import TrainData

    xs, ys = blob_slices(8, seed=1, bright_ring=True)
    ts, yt = blob_slices(8, seed=2, bright_ring=False)   # the "other modality": inverted contrast
    return TrainData(source=ArraySliceDataset(xs, ys), target=ArraySliceDataset(ts),
                     target_plain=ArraySliceDataset(ts), target_labelled=ArraySliceDataset(ts, yt))
