"""Losses on attention maps (METHOD.md section 3: "orthogonality" and "attention
consistency")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def orthogonality_loss(maps: Tensor, eps: float = 1e-8) -> Tensor:
    """Orthogonality of K attention maps, maps (B, K, H, W), K >= 2:
    M = maps as (B, K, HW) with each row divided by max(||row||_2, eps); G = M M^T (B, K, K);
    L = 2 / (K (K - 1)) x sum over b and i != j of G_bij^2.
    The authors' normalisation: a sum over the batch, so it grows with B (B = 2 in joint
    training, 16 in pre-training). 0 for spatially disjoint maps, 2 B for K identical
    (non-zero) maps. Scalar."""
    if maps.dim() != 4 or maps.shape[1] < 2:
        raise ValueError(f"maps must be (B, K, H, W) with K >= 2, got {tuple(maps.shape)}")
    b, k = maps.shape[:2]
    m = F.normalize(maps.flatten(2), p=2.0, dim=2, eps=eps)
    gram = m @ m.transpose(1, 2)
    diag_sq = gram.diagonal(dim1=1, dim2=2).pow(2).sum()
    return 2.0 * (gram.pow(2).sum() - diag_sq) / (k * (k - 1))


def attention_consistency_loss(att_a: Tensor, att_b: Tensor) -> Tensor:
    """Attention consistency: mean |att_a - att_b| over all elements, e.g.
    att_a = A_t(t), att_b = A_s(fake_s), both (B, K, H, W). Scalar."""
    if att_a.shape != att_b.shape:
        raise ValueError(f"attention shapes differ: {tuple(att_a.shape)} vs {tuple(att_b.shape)}")
    return F.l1_loss(att_a, att_b)
