"""Training diagnostics: how well the attention modules segment, and what the pseudo-labels
look like. They are reported, never used to select a model, a checkpoint or a knob.

Dice here is pooled over every slice of a shard (sum of overlaps / sum of sizes, per
class), which for whole-volume shards is the volume Dice of the concatenated test set.
Values computed with target labels are named ``diagnosis_only_*``: they explain a result,
they never choose one.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from sasan.train.device import Runtime


@torch.no_grad()
def predict_labels(segment: Callable[[torch.Tensor], torch.Tensor], dataset: Any, runtime: Runtime,
                   batch_size: int = 32) -> np.ndarray:
    """argmax of ``segment(images)`` logits for every slice of ``dataset``: (N, H, W) uint8."""
    out = []
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
        with runtime.autocast():
            logits = segment(runtime.batch(images))
        out.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 0), np.uint8)


def labels_of(dataset: Any) -> np.ndarray:
    return np.stack([dataset[i]["label"].numpy() for i in range(len(dataset))]).astype(np.uint8)


def pooled_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, float]:
    """Per foreground class c: 2 |P_c & T_c| / (|P_c| + |T_c|) over all slices (NaN when the
    class is in neither), and their mean over the classes present in the truth."""
    out: dict[str, float] = {}
    present = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        denom = int(p.sum()) + int(t.sum())
        out[str(c)] = 2.0 * int((p & t).sum()) / denom if denom else float("nan")
        if t.any():
            present.append(out[str(c)])
    out["mean"] = float(np.mean(present)) if present else float("nan")
    return out


def foreground_fraction(labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Fraction of pixels of each foreground class (and of all foreground, "all")."""
    n = max(labels.size, 1)
    out = {str(c): float((labels == c).sum()) / n for c in range(1, num_classes)}
    out["all"] = float((labels > 0).sum()) / n
    return out


def attention_dice(module: torch.nn.Module, dataset: Optional[Any], runtime: Runtime,
                   num_classes: int) -> Optional[dict[str, Any]]:
    """Pooled Dice of an attention module's segmentation head on a labelled slice set, and the
    foreground fractions it predicts next to the true ones."""
    if dataset is None or len(dataset) == 0:
        return None
    was_training = module.training
    module.eval()
    pred = predict_labels(lambda x: module(x)[1], dataset, runtime)
    module.train(was_training)
    truth = labels_of(dataset)
    return {"dice": pooled_dice(pred, truth, num_classes),
            "foreground_fraction": foreground_fraction(pred, num_classes),
            "true_foreground_fraction": foreground_fraction(truth, num_classes)}
