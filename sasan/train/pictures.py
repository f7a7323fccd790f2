"""Pictures people look at: translation grids and attention maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sasan.figures import pyplot, save_png


def _centre(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> centre slice (H, W) in [0, 1]."""
    return ((img[img.shape[0] // 2].numpy() + 1.0) / 2.0).clip(0, 1)


def translation_grid(sample: dict[str, torch.Tensor], png: Path, source: str, target: str,
                     max_rows: int = 4) -> None:
    """Rows = samples; columns: source, fake target, reconstructed source, target, fake source,
    reconstructed target (centre slice of each 3-slice stack)."""
    plt = pyplot()

    cols = [("x", f"{source} (real)"), ("fake_t", f"{source}->{target}"), ("rec_x", f"{source} rec."),
            ("t", f"{target} (real)"), ("fake_s", f"{target}->{source}"), ("rec_t", f"{target} rec.")]
    n = min(max_rows, sample["x"].shape[0])
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n), squeeze=False)
    for r in range(n):
        for c, (key, title) in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(_centre(sample[key][r]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, png, dpi=80)


def attention_grid(image: torch.Tensor, maps: torch.Tensor, seg_logits: torch.Tensor, png: Path,
                   title: str) -> None:
    """One image (C, H, W), its K attention maps (K, H, W) and the argmax segmentation."""
    plt = pyplot()

    k = maps.shape[0]
    fig, axes = plt.subplots(1, k + 2, figsize=(1.9 * (k + 2), 2.2))
    axes[0].imshow(_centre(image), cmap="gray")
    axes[0].set_title("image", fontsize=8)
    for i in range(k):
        axes[i + 1].imshow(maps[i].numpy(), cmap="magma")
        axes[i + 1].set_title(f"map {i}", fontsize=8)
    axes[-1].imshow(seg_logits.argmax(0).numpy(), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    axes[-1].set_title("read-out", fontsize=8)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, png, dpi=80)
