import math

import pytest
import torch
from monai.losses import DiceLoss

from sasan.losses import class_weights, pseudo_label_loss, seg_loss, soft_dice_loss


def test_class_weights_hand_computed():
    labels = torch.tensor([[[0, 0, 0, 1], [0, 0, 2, 2]]])  # 8 pixels: 5 bg, 1 class 1, 2 class 2
    w = class_weights(labels, 4)
    assert torch.allclose(w, torch.tensor([1 - 5 / 8, 1 - 1 / 8, 1 - 2 / 8, 1.0]))


def test_class_weights_single_class_batch_falls_back_to_ones():
    assert torch.equal(class_weights(torch.zeros(2, 3, 3, dtype=torch.long), 3), torch.ones(3))


def test_seg_loss_cross_entropy_hand_computed():
    # 1 x 2 image, 2 classes: pixel 0 label 0 with logits (0, 0); pixel 1 label 1 with logits (0, ln 3)
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])
    labels = torch.tensor([[[0, 1]]])
    # weights 1 - 1/2 = 0.5 for both classes; nll = ln 2 and -ln(3/4)
    ce = (0.5 * math.log(2) + 0.5 * -math.log(0.75)) / (0.5 + 0.5)
    assert seg_loss(logits, labels, dice_weight=0.0).item() == pytest.approx(ce, rel=1e-6)


def test_seg_loss_weights_rare_classes_more():
    # 3 bg pixels (weight 1/4) and 1 fg pixel (weight 3/4), each with its own nll
    logits = torch.tensor([[[[2.0, 0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0, 0.5]]]])
    labels = torch.tensor([[[0, 0, 0, 1]]])
    nll = -torch.log_softmax(logits, 1)[0, labels[0, 0], 0, torch.arange(4)]
    w = torch.tensor([0.25, 0.25, 0.25, 0.75])
    ce = (w * nll).sum() / w.sum()
    probs = logits.softmax(1)[0, 1, 0]
    dice = 1 - (2 * probs[3] + 1e-5) / (probs.sum() + 1 + 1e-5)
    assert seg_loss(logits, labels).item() == pytest.approx((ce + 0.2 * dice).item(), rel=1e-5)


def test_dice_perfect_and_totally_wrong():
    labels = torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    perfect = 100.0 * torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    wrong = 100.0 * torch.nn.functional.one_hot((labels + 1) % 4, 4).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(wrong, labels).item() == pytest.approx(1.0, abs=1e-6)


def test_dice_matches_monai_when_all_classes_present():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 10, 10, generator=g)
    labels = torch.randint(0, 4, (2, 10, 10), generator=g)
    ref = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    assert soft_dice_loss(logits, labels).item() == pytest.approx(ref(logits, labels[:, None]).item(), abs=1e-6)


def test_dice_leaves_absent_classes_out():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 6, 6, generator=g)
    labels = torch.randint(0, 2, (1, 6, 6), generator=g)  # class 2 absent
    p = logits.softmax(1)[0, 1]
    gt = (labels[0] == 1).float()
    expected = 1 - (2 * (p * gt).sum() + 1e-5) / (p.sum() + gt.sum() + 1e-5)
    assert soft_dice_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # background only: no foreground Dice is defined, the loss is 0
    assert soft_dice_loss(logits, torch.zeros_like(labels)).item() == 0.0


def test_seg_loss_finite_and_differentiable_on_background_only_batch():
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    loss = seg_loss(logits, torch.zeros(2, 8, 8, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_pseudo_label_loss_value_and_gradient_flow():
    g = torch.Generator().manual_seed(3)
    logits_target = torch.randn(2, 3, 6, 6, generator=g, requires_grad=True)
    logits_fake_source = torch.randn(2, 3, 6, 6, generator=g, requires_grad=True)
    pseudo = logits_fake_source.detach().argmax(1)
    seg_term = seg_loss(logits_target, pseudo)
    l1_term = (logits_fake_source - logits_target).abs().mean()
    loss = pseudo_label_loss(logits_target, logits_fake_source)
    assert loss.item() == pytest.approx((seg_term + l1_term).item(), rel=1e-6)

    # the authors' direction: A_s(fake_s) is the teacher (no gradient); A_t learns from both
    # parts: seg_loss's gradient plus the L1's sign(t - fs) / N
    grad_t, = torch.autograd.grad(loss, [logits_target])
    (grad_seg_t,) = torch.autograd.grad(seg_term, [logits_target])
    expected_t = grad_seg_t + torch.sign(logits_target - logits_fake_source).detach() / logits_target.numel()
    assert torch.allclose(grad_t, expected_t, atol=1e-7)
    loss = pseudo_label_loss(logits_target, logits_fake_source)
    loss.backward()
    assert logits_fake_source.grad is None


def test_pseudo_label_loss_refuses_mismatched_logits():
    with pytest.raises(ValueError, match=r"logit shapes differ: \(2, 3, 6, 6\) vs \(2, 4, 6, 6\)"):
        pseudo_label_loss(torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6))     # another class count
    with pytest.raises(ValueError, match=r"logit shapes differ: \(2, 3, 6, 6\) vs \(2, 3, 8, 8\)"):
        pseudo_label_loss(torch.randn(2, 3, 6, 6), torch.randn(2, 3, 8, 8))     # another image size
