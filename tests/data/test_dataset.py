"""SliceDataset: memory-mapped items, labels, seeded augmentation, worker safety."""

import pickle

import numpy as np
import pytest
import torch

from sasan.config import AugmentConfig
from sasan.data.config import PreprocessConfig
from sasan.data.dataset import SliceDataset
from sasan.train.sampling import StreamSampler, collate
from sasan.data.preprocess import run_preprocess
from sasan.errors import DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_raw):
    root = tmp_path_factory.mktemp("ds")
    raw = make_raw(root / "raw", test_labels=False)
    run_preprocess(raw, root / "out", PreprocessConfig(image_size=32))
    return root / "out"


def test_items_match_shard(shards):
    ds = SliceDataset(shards / "mr" / "train")
    images = np.load(shards / "mr" / "train" / "images.npy")
    labels = np.load(shards / "mr" / "train" / "labels.npy")
    assert len(ds) == images.shape[0] > 0
    item = ds[3]
    assert item["index"] == 3 and item["image"].dtype == torch.float32 and item["label"].dtype == torch.int64
    assert item["image"].shape == (3, 32, 32) and item["label"].shape == (32, 32)
    assert np.array_equal(item["image"].numpy(), images[3].astype(np.float32))
    assert np.array_equal(item["label"].numpy(), labels[3])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_without_labels(shards):
    assert "label" not in SliceDataset(shards / "mr" / "train", with_labels=False)[0]
    test_split = SliceDataset(shards / "ct" / "test")  # no labels written for it
    assert not test_split.has_labels and "label" not in test_split[0]


def test_augmentation_is_seeded_per_item_and_epoch(shards):
    cfg = AugmentConfig(flip=True, rotate_deg=10.0, scale=(0.75, 1.0))
    a = SliceDataset(shards / "mr" / "train", augment=cfg, seed=1)
    b = SliceDataset(shards / "mr" / "train", augment=cfg, seed=1)
    for i in (0, 5, 7):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["label"], b[i]["label"])
    plain = SliceDataset(shards / "mr" / "train")[5]["image"]
    assert not torch.equal(a[5]["image"], plain)
    first = a[5]["image"]
    a.set_epoch(1)
    assert not torch.equal(a[5]["image"], first)
    a.set_epoch(0)
    assert torch.equal(a[5]["image"], first)
    other_seed = SliceDataset(shards / "mr" / "train", augment=cfg, seed=2)
    assert not torch.equal(other_seed[5]["image"], first)
    item = a[5]
    assert item["image"].min() >= -1.0 - 1e-6 and item["image"].max() <= 1.0 + 1e-6
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3}


def test_loader_is_deterministic_and_pickles_without_arrays(shards):
    cfg = AugmentConfig()
    ds = SliceDataset(shards / "ct" / "train", augment=cfg, seed=3)
    state = pickle.dumps(ds)
    assert len(state) < 20_000  # memory maps are reopened in workers, never copied
    assert torch.equal(pickle.loads(state)[2]["image"], ds[2]["image"])
    # training draws batches with StreamSampler + collate: a pure function of the step
    steps = range(len(ds))                     # a few epochs of batch 2
    runs = [torch.cat([collate(ds, StreamSampler(len(ds), 11, 2).draw(s))["image"] for s in steps])
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    batch = collate(ds, StreamSampler(len(ds), 11, 2).draw(0))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["label"].shape == (2, 32, 32)


def test_missing_shard(tmp_path):
    with pytest.raises(DataError, match="index.json missing"):
        SliceDataset(tmp_path)
