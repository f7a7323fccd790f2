import pytest
import torch

from sasan.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from sasan.train.sampling import StreamSampler
from sasan.train.schedule import constant_then_linear
from sasan.errors import CheckpointError


def test_stream_is_a_sequence_of_permutations_and_stateless():
    s = StreamSampler(n=5, seed=3, batch_size=2)
    stream = [i for step in range(5) for _, i in s.draw(step)]
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    assert stream[:5] != stream[5:10]                          # a new order every pass
    assert StreamSampler(5, 3, 2).draw(3) == s.draw(3)         # any step, no history needed
    assert [e for e, _ in s.draw(2)] == [0, 1]                 # pass number travels with each item


def test_ranks_split_the_global_batch():
    r0, r1 = StreamSampler(8, 0, 2, rank=0, world_size=2), StreamSampler(8, 0, 2, rank=1, world_size=2)
    single = StreamSampler(8, 0, 4)
    for step in range(4):
        assert r0.draw(step) + r1.draw(step) == single.draw(step)


def test_constant_then_linear():
    f = constant_then_linear(10)
    assert [f(s) for s in (0, 4)] == [1.0, 1.0]
    assert f(5) == 1.0 and f(6) == pytest.approx(0.8) and f(10) == 0.0


def test_checkpoint_round_trip_weights_only_and_rng(tmp_path):
    torch.manual_seed(1)
    state = {"step": 3, "w": torch.randn(3), "rng": rng_state()}
    a = torch.rand(2)
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")        # uses torch.load(weights_only=True)
    assert set(loaded) == {"step", "w", "rng"} and loaded["step"] == 3
    assert torch.equal(loaded["w"], state["w"]) and loaded["w"].dtype == torch.float32
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(2), a)
    plain = torch.load(tmp_path / "c.pt", weights_only=True)   # a plain weights-only file
    assert torch.equal(plain["w"], state["w"]) and plain["step"] == 3


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_prefetch_with_workers_gives_the_same_batches_and_restarts_at_any_step():
    from sasan.train.data import ArraySliceDataset
    from sasan.train.prefetch import Prefetcher
    from sasan.train.sampling import collate

    from .conftest import blob_slices

    xs, ys = blob_slices(6, size=16)
    ds = ArraySliceDataset(xs, ys)
    sampler = StreamSampler(len(ds), seed=0, batch_size=2)

    def batch_at(step):
        return collate(ds, sampler.draw(step))

    direct = Prefetcher(batch_at, 6, num_workers=0)
    workers = Prefetcher(batch_at, 6, num_workers=2)
    rng = torch.random.get_rng_state()
    for step in [0, 1, 2, 4, 5]:          # skipping step 3 restarts the worker stream
        a, b = direct.get(step), workers.get(step)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    # a (re)started worker stream leaves the global RNG alone: a resumed run seeds what
    # follows (the U-Net's initial weights) as an uninterrupted one does
    assert torch.equal(torch.random.get_rng_state(), rng)
