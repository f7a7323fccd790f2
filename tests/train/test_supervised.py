"""The segmenter and the attention pre-training really fit."""

import torch

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
    losses, model, x, y = _fit(AttentionModule(3, k=4, num_classes=3, width=8), attention_pretrain_loss, 60)
    assert losses[-1] < 0.35 * losses[0]
    maps, seg = model(x)
    assert (seg.argmax(1) == y).float().mean() > 0.85
