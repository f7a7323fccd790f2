import pytest
import torch

from sasan.losses import (
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    one_hot,
    seg_adversarial_discriminator_loss,
    seg_adversarial_generator_loss,
)

from ..stand_ins import Scale


def test_lsgan_generator_hand_computed():
    pred = torch.tensor([[0.0, 1.0], [2.0, 0.5]])
    # (1 + 0 + 1 + 0.25) / 4
    assert lsgan_generator_loss(pred).item() == pytest.approx(0.5625)
    # a list is the mean of the per-entry losses: (0.5625 + 1) / 2
    assert lsgan_generator_loss([pred, torch.zeros(3)]).item() == pytest.approx(0.78125)


def test_lsgan_discriminator_hand_computed():
    real = torch.tensor([1.0, 0.0, 3.0])  # (0 + 1 + 4) / 3
    fake = torch.tensor([0.5, -0.5])  # (0.25 + 0.25) / 2
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(5 / 3 + 0.25)
    assert lsgan_discriminator_loss(torch.ones(4), torch.zeros(4)).item() == 0.0
    assert lsgan_discriminator_loss([real, real], [fake]).item() == pytest.approx(5 / 3 + 0.25)


def test_one_hot():
    labels = torch.tensor([[[0, 2], [1, 2]]])
    oh = one_hot(labels, 3)
    assert oh.shape == (1, 3, 2, 2) and oh.dtype == torch.float32
    assert torch.equal(oh.argmax(1), labels)
    assert torch.equal(oh.sum(1), torch.ones(1, 2, 2))


def test_one_hot_needs_b_h_w_labels():
    with pytest.raises(ValueError, match=r"labels must be \(B, H, W\), got \(1, 1, 2, 2\)"):
        one_hot(torch.zeros(1, 1, 2, 2, dtype=torch.long), 3)     # a channel axis too many
    with pytest.raises(ValueError, match=r"labels must be \(B, H, W\), got \(2, 2\)"):
        one_hot(torch.zeros(2, 2, dtype=torch.long), 3)


def test_lsgan_losses_need_at_least_one_output():
    with pytest.raises(ValueError, match="expected at least one discriminator output"):
        lsgan_generator_loss([])


def test_seg_adversarial_hand_computed():
    # C = 3 classes: foreground channels 1 and 2 judged by D_1(p) = 2p and D_2(p) = -p
    discs = [Scale(2.0), Scale(-1.0)]
    probs = torch.zeros(1, 3, 2, 2)
    probs[:, 0] = 0.5
    probs[:, 1] = 0.25
    probs[:, 2] = 0.25
    # generator: [(2*0.25 - 1)^2 + (-0.25 - 1)^2] / 3 = (0.25 + 1.5625) / 3
    assert seg_adversarial_generator_loss(discs, probs).item() == pytest.approx(1.8125 / 3)
    real = one_hot(torch.tensor([[[1, 2], [0, 1]]]), 3)
    # class 1: real channel [1, 0, 0, 1] -> D = [2, 0, 0, 2]: mean (D-1)^2 = 1; fake D = 0.5: 0.25
    # class 2: real channel [0, 1, 0, 0] -> D = [0, -1, 0, 0]: mean (D-1)^2 = (1+4+1+1)/4 = 1.75; fake D = -0.25: 0.0625
    expected = (1 + 0.25 + 1.75 + 0.0625) / 3
    assert seg_adversarial_discriminator_loss(discs, real, probs).item() == pytest.approx(expected)


def test_seg_adversarial_needs_one_disc_per_foreground_class():
    with pytest.raises(ValueError):
        seg_adversarial_generator_loss([Scale(1.0)], torch.rand(1, 3, 4, 4))


def test_seg_adversarial_gradients_reach_probs_and_discs():
    discs = [Scale(1.5), Scale(0.5)]
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = seg_adversarial_generator_loss(discs, logits.softmax(1))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0
    assert all(d.a.grad is not None for d in discs)


def test_seg_adversarial_lists_equal_the_sum_of_single_calls():
    """A list of probability maps runs each discriminator once on the stacked batch; the loss
    and its gradients equal those of one call per map; the real maps are judged once, so a
    list of two fakes adds one real term, not two."""
    from sasan.models.discriminators import seg_discriminators

    torch.manual_seed(0)
    discs = seg_discriminators(3, width=8)
    a = torch.randn(2, 3, 32, 32).softmax(1).requires_grad_()
    b = torch.randn(2, 3, 32, 32).softmax(1).requires_grad_()
    real = one_hot(torch.randint(0, 3, (2, 32, 32)), 3)
    params = [a, b, *discs.parameters()]
    for batched, single in [
        (lambda: seg_adversarial_generator_loss(discs, [a, b]),
         lambda: seg_adversarial_generator_loss(discs, a) + seg_adversarial_generator_loss(discs, b)),
        (lambda: seg_adversarial_discriminator_loss(discs, real, [a, b]),
         lambda: (seg_adversarial_discriminator_loss(discs, real, a) + seg_adversarial_discriminator_loss(discs, real, b)
                      - seg_adversarial_generator_loss(discs, real))),
    ]:
        lb, ls = batched(), single()
        assert lb.item() == pytest.approx(ls.item(), rel=1e-6)
        for gb, gs in zip(torch.autograd.grad(lb, params), torch.autograd.grad(ls, params)):
            assert torch.allclose(gb, gs, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="differ"):
        seg_adversarial_generator_loss(discs, [a, torch.rand(2, 3, 16, 16)])
