"""Least-squares GAN terms (METHOD.md section 3: "image adversarial" and "segmentation
adversarial"; LSGAN targets: real -> 1, fake -> 0). Discriminator outputs are raw scores
(no sigmoid) of any shape, e.g. PatchGAN maps (B, 1, h, w)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _as_list(pred: Tensor | Sequence[Tensor]) -> list[Tensor]:
    preds = [pred] if isinstance(pred, Tensor) else list(pred)
    if not preds:
        raise ValueError("expected at least one discriminator output")
    return preds


def _mean_sq_to(preds: list[Tensor], target: float) -> Tensor:
    """mean over the list of mean((p - target)^2)."""
    return torch.stack([((p - target) ** 2).mean() for p in preds]).mean()


def lsgan_generator_loss(pred_fake: Tensor | Sequence[Tensor]) -> Tensor:
    """Image adversarial term, generator side: mean((D(fake) - 1)^2).

    pred_fake: D's scores on generated images, any shape; a list (one entry per
    discriminator or scale) is averaged. Returns a scalar."""
    return _mean_sq_to(_as_list(pred_fake), 1.0)


def lsgan_discriminator_loss(
    pred_real: Tensor | Sequence[Tensor], pred_fake: Tensor | Sequence[Tensor]
) -> Tensor:
    """Image adversarial term, discriminator side: mean((D(real) - 1)^2) + mean(D(fake)^2).

    The caller detaches the fakes and scales by 0.5 x weight (METHOD.md). Lists are
    averaged per side. Returns a scalar. = lsgan_real_loss + lsgan_fake_loss."""
    return lsgan_real_loss(pred_real) + lsgan_fake_loss(pred_fake)


def lsgan_real_loss(pred_real: Tensor | Sequence[Tensor]) -> Tensor:
    """The real half of ``lsgan_discriminator_loss``: mean((D(real) - 1)^2)."""
    return _mean_sq_to(_as_list(pred_real), 1.0)


def lsgan_fake_loss(pred_fake: Tensor | Sequence[Tensor]) -> Tensor:
    """The fake half of ``lsgan_discriminator_loss``: mean(D(fake)^2)."""
    return _mean_sq_to(_as_list(pred_fake), 0.0)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Integer labels (B, H, W) in [0, num_classes) -> float one-hot maps (B, C, H, W)."""
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got {tuple(labels.shape)}")
    return F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()


def _check_seg_discs(seg_discs: Sequence[nn.Module], probs: Tensor) -> int:
    if probs.dim() != 4:
        raise ValueError(f"probs must be (B, C, H, W), got {tuple(probs.shape)}")
    num_classes = probs.shape[1]
    if len(seg_discs) != num_classes - 1:
        raise ValueError(
            f"need one segmentation discriminator per foreground class: {num_classes - 1}, got {len(seg_discs)}"
        )
    return num_classes


def seg_discriminator_scores(seg_discs: Sequence[nn.Module], groups: list[Tensor]) -> list[list[Tensor]]:
    """scores[c - 1][g] = D_c(groups[g][:, c:c+1]) for probability maps groups[g]
    (B_g, C, H, W). Each discriminator runs once on all groups stacked along the batch (the
    same as one call per group: the discriminators normalise per sample)."""
    shapes = {tuple(g.shape[1:]) for g in groups}
    if len(shapes) != 1:
        raise ValueError(f"probability maps differ in shape: {sorted(shapes)}")
    num_classes = _check_seg_discs(seg_discs, groups[0])
    stacked = torch.cat(groups) if len(groups) > 1 else groups[0]
    sizes = [g.shape[0] for g in groups]
    return [list(disc(stacked[:, c : c + 1]).split(sizes)) for c, disc in zip(range(1, num_classes), seg_discs)]


def seg_scores_loss(scores: Sequence[Sequence[Tensor]], target: float, num_classes: int,
                    weight: float = 1.0) -> Tensor:
    """(weight / C) sum over classes c and groups g of mean((scores[c-1][g] - target)^2):
    the generator side (target 1), or one half of the discriminator side."""
    terms = [((s - target) ** 2).mean() for per_class in scores for s in per_class]
    return weight * torch.stack(terms).sum() / num_classes


def seg_adversarial_generator_loss(seg_discs: Sequence[nn.Module], probs: Tensor | Sequence[Tensor]) -> Tensor:
    """Segmentation adversarial term, generator side:
    (1 / C) sum_{c=1}^{C-1} mean((D_c(p_c) - 1)^2),
    p_c = probs[:, c:c+1] (B, 1, H, W), the softmax channel of foreground class c judged by
    seg_discs[c - 1]. probs: (B, C, H, W) with C including background, or a list of such
    maps: the sum of their terms, computed in one pass per discriminator. Scalar."""
    groups = _as_list(probs)
    return seg_scores_loss(seg_discriminator_scores(seg_discs, groups), 1.0, groups[0].shape[1])


def seg_adversarial_discriminator_loss(
    seg_discs: Sequence[nn.Module], probs_real: Tensor, probs_fake: Tensor | Sequence[Tensor]
) -> Tensor:
    """Segmentation adversarial term, discriminator side:
    (1 / C) sum_{c=1}^{C-1} [mean((D_c(r_c) - 1)^2) + sum_f mean(D_c(f_c)^2)],
    r_c, f_c = channel c of probs_real (softmax(A_s(x)), the frozen source module on real
    source images) and of each fake map (softmax(A_s(fake_s)), softmax(A_t(t)), detached
    by the caller), all (B, C, H, W). Each real and each fake term is counted once. Scalar."""
    fakes = _as_list(probs_fake)
    scores = seg_discriminator_scores(seg_discs, [probs_real] + fakes)
    c = probs_real.shape[1]
    return (seg_scores_loss([[real] for real, *_ in scores], 1.0, c)
            + seg_scores_loss([fake for _, *fake in scores], 0.0, c))
