"""Segmentation losses (METHOD.md section 3: "auxiliary segmentation" and "pseudo-label
segmentation"; section 4: the detached segmenter's loss).

seg_loss = class-weighted cross-entropy + 0.2 x soft Dice loss over foreground classes,
with class weight w_c = 1 - (pixel fraction of class c in the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[:1] + logits.shape[2:] != labels.shape:
        raise ValueError(
            f"expected logits (B, C, H, W) and labels (B, H, W), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def class_weights(labels: Tensor, num_classes: int) -> Tensor:
    """w_c = 1 - n_c / N for integer labels (B, H, W): n_c pixels of class c among all N
    pixels of the batch. Returns float (C,) on labels' device.

    A class absent from the batch gets weight 1 (it has no pixels, so it weighs nothing in
    the cross-entropy's sum). When one class fills the whole batch its weight would be 0
    and the weighted mean 0/0, so all weights become 1 (plain cross-entropy) instead."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes)[:num_classes]
    frac = counts.float() / counts.sum().clamp_min(1)
    # torch.where rather than a Python `if` keeps this free of a host-device sync.
    return torch.where(frac.max() >= 1.0, torch.ones_like(frac), 1.0 - frac)


def _soft_dice_from_probs(probs: Tensor, labels: Tensor, eps: float) -> Tensor:
    """1 - mean over present foreground classes of (2 sum p g + eps) / (sum p + sum g + eps)."""
    num_classes = probs.shape[1]
    target = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)  # per class over the whole batch
    inter = (probs * target).sum(dims)[1:]
    p_sum = probs.sum(dims)[1:]
    g_sum = target.sum(dims)[1:]
    dice = (2 * inter + eps) / (p_sum + g_sum + eps)
    present = (g_sum > 0).to(probs.dtype)
    return ((1.0 - dice) * present).sum() / present.sum().clamp_min(1.0)


def soft_dice_loss(logits: Tensor, labels: Tensor, eps: float = 1e-5) -> Tensor:
    """Soft Dice loss on softmax probabilities p = softmax(logits) (B, C, H, W) against
    integer labels (B, H, W) with one-hot g:
        L = 1 - mean_{c in F} (2 sum p_c g_c + eps) / (sum p_c + sum g_c + eps),
    sums over batch and pixels; F = foreground classes (c >= 1) present in the labels.
    A class absent from the batch has no defined Dice and is left out (its false positives
    are paid for by the cross-entropy); with no foreground at all the loss is 0."""
    _check(logits, labels)
    return _soft_dice_from_probs(torch.softmax(logits, dim=1), labels, eps)


def seg_loss(logits: Tensor, labels: Tensor, dice_weight: float = 0.2) -> Tensor:
    """Segmentation loss: sum_i w_{y_i} (-log p_i[y_i]) / sum_i w_{y_i}
    + dice_weight x soft_dice_loss, with w = class_weights(labels, C).
    logits (B, C, H, W) raw, labels (B, H, W) int64 in [0, C). Scalar."""
    _check(logits, labels)
    num_classes = logits.shape[1]
    labels = labels.long()
    log_probs = F.log_softmax(logits, dim=1)  # shared by both terms
    pixel_w = class_weights(labels, num_classes).to(logits.dtype)[labels]
    nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    ce = (pixel_w * nll).sum() / pixel_w.sum()
    if dice_weight == 0:
        return ce
    return ce + dice_weight * _soft_dice_from_probs(log_probs.exp(), labels, 1e-5)


def pseudo_label_loss(logits_target: Tensor, logits_fake_source: Tensor, dice_weight: float = 0.2) -> Tensor:
    """Pseudo-label segmentation term:
        seg_loss(logits_target, argmax_c logits_fake_source) + mean|logits_target - sg(logits_fake_source)|,
    sg = stop-gradient. logits_target = A_t(t), logits_fake_source = A_s(fake_s), both
    (B, C, H, W).

    Gradient flow (the authors' recipe): the frozen A_s's view of the translated target
    image is the teacher; both parts train only A_t (the argmax has no gradient, and the
    L1's fake-source side is detached), so G_s is not pulled toward images A_s finds easy."""
    if logits_target.shape != logits_fake_source.shape:
        raise ValueError(f"logit shapes differ: {tuple(logits_target.shape)} vs {tuple(logits_fake_source.shape)}")
    teacher = logits_fake_source.detach()
    return seg_loss(logits_target, teacher.argmax(dim=1), dice_weight) + F.l1_loss(logits_target, teacher)
