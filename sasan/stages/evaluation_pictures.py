"""Pictures of the evaluation: per-structure Dice bars and a segmentation montage; for a
paired evaluation, a translation montage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

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


def label_colours(values: list[int]) -> list[tuple[float, float, float, float]]:
    """One RGBA colour per label value 0..max(values), distinct up to 20 values (tab10, then
    tab20), so that a value has the same colour in every panel and in the legend."""
    plt = pyplot()
    top = max([*values, 0])
    if top < 10:
        return [plt.get_cmap("tab10")(v) for v in range(top + 1)]
    if top < 20:
        return [plt.get_cmap("tab20")(v) for v in range(top + 1)]
    return [plt.get_cmap("turbo")(v / top) for v in range(top + 1)]


def segmentation_montage(image: np.ndarray, gt: np.ndarray, preds: dict[str, np.ndarray], png: Path,
                         title: str, labels: Optional[Mapping[str, int]] = None) -> None:
    """Middle slice (along the axis with most foreground) of image, truth, and each method,
    the labels drawn over the image; a legend below gives each structure's colour.
    ``labels``: structure name -> label value (the data set's, as the metrics name them;
    value 0, the background, is not drawn); a value drawn without a name is "label <value>"."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    fg = gt > 0
    axis = int(np.argmin(fg.shape)) if not fg.any() else 2
    counts = fg.sum(axis=tuple(a for a in range(3) if a != axis))
    j = int(np.argmax(counts)) if counts.any() else image.shape[axis] // 2

    def cut(v: np.ndarray) -> np.ndarray:
        return np.rot90(np.take(v, j, axis=axis))

    named = {int(v): str(n) for n, v in (labels or {}).items() if int(v) != 0}
    present = sorted({int(v) for a in (gt, *preds.values()) for v in np.unique(a) if int(v) != 0})
    shown = named | {v: f"label {v}" for v in present if v not in named}     # every colour drawn is named
    colours = label_colours([*shown, *present])
    cmap = ListedColormap(colours)
    panels = [("image", cut(image), False), ("truth", cut(gt), True)]
    panels += [(m, cut(p), True) for m, p in preds.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 3.2))
    lo, hi = np.percentile(image, [1, 99])
    for ax, (name, data, overlay) in zip(np.atleast_1d(axes), panels):
        ax.imshow(cut(image), cmap="gray", vmin=lo, vmax=hi)
        if overlay:     # value v in colours[v]
            ax.imshow(np.ma.masked_equal(data, 0), cmap=cmap, vmin=-0.5, vmax=len(colours) - 0.5, alpha=0.6,
                      interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    handles = [Patch(facecolor=colours[v], edgecolor="none", label=name) for v, name in sorted(shown.items())]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False,
                   handlelength=1.2, columnspacing=1.2)
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
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
