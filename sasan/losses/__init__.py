"""SASAN loss terms (METHOD.md section 3), one named function each."""

from sasan.losses.adversarial import (
    lsgan_discriminator_loss,
    lsgan_fake_loss,
    lsgan_generator_loss,
    lsgan_real_loss,
    one_hot,
    seg_adversarial_discriminator_loss,
    seg_adversarial_generator_loss,
    seg_discriminator_scores,
    seg_scores_loss,
)
from sasan.losses.attention import attention_consistency_loss, orthogonality_loss
from sasan.losses.reconstruction import cycle_loss, identity_loss, l1_ssim_loss, voxel_l1_loss
from sasan.losses.segmentation import class_weights, pseudo_label_loss, seg_loss, soft_dice_loss
from sasan.losses.ssim import gaussian_window, ssim, ssim_map

__all__ = [
    "attention_consistency_loss",
    "class_weights",
    "cycle_loss",
    "gaussian_window",
    "identity_loss",
    "l1_ssim_loss",
    "lsgan_discriminator_loss",
    "lsgan_fake_loss",
    "lsgan_generator_loss",
    "lsgan_real_loss",
    "one_hot",
    "orthogonality_loss",
    "pseudo_label_loss",
    "seg_adversarial_discriminator_loss",
    "seg_adversarial_generator_loss",
    "seg_discriminator_scores",
    "seg_loss",
    "seg_scores_loss",
    "soft_dice_loss",
    "ssim",
    "ssim_map",
    "voxel_l1_loss",
]
