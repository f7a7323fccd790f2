"""Evaluation metrics (METHOD.md section 6): numpy arrays in, Python floats out."""

from sasan.metrics.segmentation import (aggregate_subjects, assd, dice, gap_closed, is_missing, segmentation_scores,
                                       surface)
from sasan.metrics.translation import body_mask, masked_ssim, otsu_threshold, translation_scores

__all__ = [
    "aggregate_subjects",
    "assd",
    "body_mask",
    "dice",
    "gap_closed",
    "is_missing",
    "masked_ssim",
    "otsu_threshold",
    "segmentation_scores",
    "surface",
    "translation_scores",
]
