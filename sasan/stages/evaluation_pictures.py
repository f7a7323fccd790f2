"""Pictures of the evaluation: per-structure Dice bars and a segmentation montage; for a
paired evaluation, a translation montage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sasan.figures import pyplot, save_png


def dice_bars(results: dict[str, Any], png: Path) -> None:
    plt = pyplot()
    methods = list(results)
    names = list(next(iter(results.values()))["per_structure"])
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 3.4))
    x = np.arange(len(names))
    for i, m in enumerate(methods):
        ps = results[m]["per_structure"]
        ax.bar(x + i * width, [ps[n]["dice"] for n in names], width,
               yerr=[ps[n].get("dice_std", 0.0) for n in names], label=m, capsize=2)
    ax.set_xticks(x + width * (len(methods) - 1) / 2, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("3-D Dice")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, png, dpi=90)


def segmentation_montage(image: np.ndarray, gt: np.ndarray, preds: dict[str, np.ndarray], png: Path,
                         title: str) -> None:
    """Middle slice (along the axis with most foreground) of image, truth, and each method."""
    plt = pyplot()
    fg = gt > 0
    axis = int(np.argmin(fg.shape)) if not fg.any() else 2
    counts = fg.sum(axis=tuple(a for a in range(3) if a != axis))
    j = int(np.argmax(counts)) if counts.any() else image.shape[axis] // 2

    def cut(v: np.ndarray) -> np.ndarray:
        return np.rot90(np.take(v, j, axis=axis))

    panels = [("image", cut(image), "gray"), ("truth", cut(gt), "tab10")]
    panels += [(m, cut(p), "tab10") for m, p in preds.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8))
    lo, hi = np.percentile(image, [1, 99])
    for ax, (name, data, cmap) in zip(np.atleast_1d(axes), panels):
        if cmap == "gray":
            ax.imshow(data, cmap="gray", vmin=lo, vmax=hi)
        else:
            ax.imshow(cut(image), cmap="gray", vmin=lo, vmax=hi)
            ax.imshow(np.ma.masked_equal(data, 0), cmap=cmap, vmin=0, vmax=9, alpha=0.6, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, png, dpi=90)


def translation_montage(image: np.ndarray, translations: dict[str, tuple[np.ndarray, dict[str, float]]],
                        real: np.ndarray, png: Path, title: str) -> None:
    """One slice in the model's plane (H, W; [-1, 1], superior/anterior up, as preprocessing
    cuts it): the target input, each method's translation (its MAE and SSIM on the whole
    subject in the title) and the real source image, all drawn on the fixed [-1, 1] scale."""
    plt = pyplot()
    panels = [("target input", image)]
    panels += [(f"{m}\nMAE {s['mae']:.3f}  SSIM {s['ssim']:.3f}", fake) for m, (fake, s) in translations.items()]
    panels.append(("real source", real))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 3.0))
    for ax, (name, data) in zip(np.atleast_1d(axes), panels):
        ax.imshow(data, cmap="gray", vmin=-1.0, vmax=1.0)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, png, dpi=90)
