"""The segmenter and the attention pre-training really fit."""

import pytest
import torch

from sasan.losses import orthogonality_loss
from sasan.models import AttentionModule, UNet
from sasan.train.supervised import attention_pretrain_loss, segmenter_loss

from .conftest import blob_slices


def _fit(model, loss_fn, steps, lr=3e-3):
    xs, ys = blob_slices(4, seed=3)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys).long()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = loss_fn(model, x, y, 0.2, 1.0)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, model, x, y


def test_unet_segmenter_overfits_a_fixed_batch():
    torch.manual_seed(0)
    losses, model, x, y = _fit(UNet(3, 3, width=8), segmenter_loss, 60)
    assert losses[-1] < 0.4 * losses[0]
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean()
    assert acc > 0.9


def test_attention_pretraining_lowers_segmentation_and_orthogonality():
    torch.manual_seed(0)
    model = AttentionModule(3, k=4, num_classes=3, width=8)
    xs, _ = blob_slices(4, seed=3)
    with torch.no_grad():
        before = float(orthogonality_loss(model(torch.from_numpy(xs))[0]))
    losses, model, x, y = _fit(model, attention_pretrain_loss, 60)
    assert losses[-1] < 0.35 * losses[0]
    with torch.no_grad():
        maps, seg = model(x)
    assert (seg.argmax(1) == y).float().mean() > 0.85
    # the maps start overlapping (0.55 here) and end near-disjoint (0.001); trained without the
    # orthogonality term they overlap more than at the start (3.0)
    after = float(orthogonality_loss(maps))
    assert before > 0.3 and after < 0.1 * before


def _phase(tmp_path, schedule, steps=8):
    from sasan.train.data import ArraySliceDataset
    from sasan.train.device import resolve_runtime
    from sasan.train.supervised import supervised_phase

    xs, ys = blob_slices(4, seed=3)
    torch.manual_seed(0)
    return supervised_phase("seg", UNet(3, 3, width=4), segmenter_loss, ArraySliceDataset(xs, ys), steps=steps,
                            batch_size=2, lr=1e-3, seed=0, runtime=resolve_runtime("cpu"),
                            checkpoint=tmp_path / "c.pt", checkpoint_every=100, log_every=1, dice_weight=0.2,
                            lr_schedule=schedule)


def _lr(phase):
    return phase.get_state()["optimizer"]["param_groups"][0]["lr"]


def test_linear_schedule_holds_then_decays_to_zero_and_resumes(tmp_path):
    constant, linear = _phase(tmp_path, "constant"), _phase(tmp_path, "linear")
    lrs = []
    for step in range(8):
        constant.step_fn(step)
        linear.step_fn(step)
        lrs.append(_lr(linear))
    assert _lr(constant) == 1e-3
    assert lrs[:3] == [1e-3] * 3 and lrs[4] == pytest.approx(0.75e-3) and lrs[-1] == 0.0
    resumed = _phase(tmp_path, "linear")                 # the schedule's position travels in the state
    half = _phase(tmp_path, "linear")
    for step in range(5):
        half.step_fn(step)
    resumed.set_state(half.get_state())
    assert _lr(resumed) == _lr(half) == pytest.approx(0.75e-3)
