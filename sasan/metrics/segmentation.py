"""3-D segmentation metrics (METHOD.md section 6): Dice and average symmetric surface
distance (ASSD) per structure, in voxels and in mm, and their mean +- std over subjects.

Surfaces: a mask's surface is the set of its voxels with at least one 6-connected
(face) neighbour outside the mask, i.e. mask XOR binary_erosion(mask), with voxels
beyond the array border counted as outside. This is MONAI's ``get_mask_edges`` without
sub-voxel spacing.

ASSD = (sum_{p in S_pred} d(p, S_gt) + sum_{g in S_gt} d(g, S_pred)) / (|S_pred| + |S_gt|):
the mean, over the union (concatenation) of both surface point sets, of each point's
Euclidean distance to the nearest point of the other surface. This equals MONAI's
``compute_average_surface_distance(symmetric=True)`` and the definition of Heimann et al.
(IEEE TMI 2009). SIFA's evaluation, whose numbers the SASAN paper compares with, used medpy's
``assd``: the mean of the two directed averages, 0.5 (mean_{p} d(p, S_gt) + mean_{g} d(g,
S_pred)), which weighs the smaller surface more; the two agree when the surfaces have as many
points. And it scored 256 x 256 crops, not the original grid: compare ASSD trends with the
paper, not values (docs/METHOD.md section 6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from sasan.errors import DataError


def _binary_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).astype(bool, copy=False)
    gt = np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2 |P & G| / (|P| + |G|) for binary masks (any shape, non-zero = inside).
    Both empty: 1.0 (the structure is correctly absent)."""
    pred, gt = _binary_pair(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def is_missing(pred_mask: np.ndarray, gt_mask: np.ndarray) -> bool:
    """True when the structure is empty in the prediction or in the truth (or both): its
    ASSD is then a convention (the cap, or 0 when both are empty), not a measurement."""
    pred, gt = _binary_pair(pred_mask, gt_mask)
    return not (pred.any() and gt.any())


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask: mask XOR erosion(mask, face connectivity), with the
    outside of the array counting as background. Same shape, bool."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _union_box(pred: np.ndarray, gt: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of pred | gt. Every surface voxel lies inside it and, outside it, both
    masks are empty, so cropping changes neither the surfaces nor their distances."""
    coords = np.argwhere(pred | gt)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _assd(surf_pred: np.ndarray, surf_gt: np.ndarray, spacing: Sequence[float]) -> float:
    # distance_transform_edt gives each voxel's distance to the nearest zero, so feed it
    # the complement of the surface whose distances we want.
    to_gt = ndimage.distance_transform_edt(~surf_gt, sampling=spacing)[surf_pred]
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)[surf_gt]
    return float((to_gt.sum() + to_pred.sum()) / (to_gt.size + to_pred.size))


def assd(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    cap_vox: float = 50.0,
) -> tuple[float, float]:
    """Average symmetric surface distance of two binary masks (module docstring).

    Returns (ASSD in voxels, i.e. unit spacing; ASSD in mm, with ``spacing`` in mm per
    voxel along each array axis). Present structures are not clipped. Empty in exactly one
    of the two masks: (cap_vox, cap_vox x mean(spacing)); empty in both: (0.0, 0.0).
    """
    pred, gt = _binary_pair(pred_mask, gt_mask)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise DataError(f"spacing {spacing} has {len(spacing)} entries for a {pred.ndim}-D mask")
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 0.0, 0.0
    if not (has_pred and has_gt):
        return float(cap_vox), float(cap_vox * np.mean(spacing))
    box = _union_box(pred, gt)  # the EDTs are the cost; the box is usually much smaller
    surf_pred, surf_gt = surface(pred[box]), surface(gt[box])
    return _assd(surf_pred, surf_gt, (1.0,) * pred.ndim), _assd(surf_pred, surf_gt, spacing)


def _structures(labels: Mapping[str, int]) -> dict[str, int]:
    return {name: int(value) for name, value in labels.items() if int(value) != 0}


def segmentation_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    labels: Mapping[str, int],
    spacing: Sequence[float],
    cap_vox: float = 50.0,
) -> dict:
    """Per-structure Dice / ASSD for integer label volumes pred, gt (same shape).

    labels maps structure name -> label value; value 0 (background) is skipped.
    Returns {"per_structure": {name: {"dice", "assd_vox", "assd_mm", "missing"}},
    "mean": {"dice", "assd_vox", "assd_mm"}} with the mean over the foreground structures
    (missing ones included, at their capped ASSD). Floats are Python floats."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    structures = _structures(labels)
    if not structures:
        raise ValueError("labels name no foreground structure")
    per_structure: dict[str, dict] = {}
    for name, value in structures.items():
        p, g = pred == value, gt == value
        vox, mm = assd(p, g, spacing, cap_vox)
        per_structure[name] = {"dice": dice(p, g), "assd_vox": vox, "assd_mm": mm, "missing": is_missing(p, g)}
    mean = {key: float(np.mean([s[key] for s in per_structure.values()])) for key in ("dice", "assd_vox", "assd_mm")}
    return {"per_structure": per_structure, "mean": mean}


def aggregate_subjects(scores: Sequence[Mapping]) -> dict:
    """Mean and standard deviation over subjects of ``segmentation_scores`` outputs.

    Returns {"per_structure": {name: {"dice", "dice_std", "assd_vox", "assd_vox_std",
    "assd_mm", "assd_mm_std", "n_missing"}}, "mean": {same keys but n_missing},
    "n_subjects": n}. "mean" aggregates each subject's mean over structures. std is the
    population standard deviation (ddof = 0) across subjects."""
    if not scores:
        raise ValueError("no subject scores to aggregate")
    names = list(scores[0]["per_structure"])
    for s in scores:
        if list(s["per_structure"]) != names:
            raise ValueError(f"subjects score different structures: {names} vs {list(s['per_structure'])}")

    def stats(rows: list[Mapping]) -> dict:
        out: dict = {}
        for key in ("dice", "assd_vox", "assd_mm"):
            values = np.array([r[key] for r in rows], dtype=np.float64)
            out[key] = float(values.mean())
            out[f"{key}_std"] = float(values.std())
        return out

    per_structure = {}
    for name in names:
        rows = [s["per_structure"][name] for s in scores]
        per_structure[name] = stats(rows) | {"n_missing": int(sum(bool(r.get("missing", False)) for r in rows))}
    return {"per_structure": per_structure, "mean": stats([s["mean"] for s in scores]), "n_subjects": len(scores)}


def gap_closed(mean_dice: Mapping[str, float]) -> dict[str, float]:
    """Share of the gap between the reference rows that each adapted method closes:
    (method - no_adaptation) / (upper_bound - no_adaptation), from ``{method: mean Dice}``.
    Empty without both reference rows or when the upper bound is not above no adaptation."""
    if "no_adaptation" not in mean_dice or "upper_bound" not in mean_dice:
        return {}
    lo, hi = mean_dice["no_adaptation"], mean_dice["upper_bound"]
    if hi <= lo:
        return {}
    return {m: (v - lo) / (hi - lo) for m, v in mean_dice.items() if m not in ("no_adaptation", "upper_bound")}
