"""Measure the brain data set's domain gap and draw it (the numbers and picture in docs/brain.md).

    python -m sasan.data.brain_report DATA [--shards SHARDS] [--png docs/img/brain_slices.png]

DATA is a canonical data set (``sasan data brain`` or ``sasan ingest`` output); SHARDS an
optional ``sasan preprocess`` output, whose training slices give the normalised intensities the
networks see. Prints a JSON object: per domain and class, the mean +- SD over subjects of the
class's median intensity relative to the subject's median brain intensity, and the median
normalised value in [-1, 1].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from sasan.data import layout
from sasan.data.brain import BRAIN_LABELS
from sasan.figures import pyplot, save_png

CLASSES = [name for name in BRAIN_LABELS if name != "background"]


def relative_class_intensities(root: str | Path, domain: str) -> dict[str, tuple[float, float]]:
    """class -> (mean, SD) over the domain's subjects of median(class) / median(brain)."""
    per_class: dict[str, list[float]] = {name: [] for name in CLASSES}
    for case in layout.iter_cases(root, domain):
        img = np.asarray(nib.load(case.image).dataobj, np.float32)
        lbl = np.asarray(nib.load(case.label).dataobj)
        brain = float(np.median(img[lbl > 0]))
        for name in CLASSES:
            per_class[name].append(float(np.median(img[lbl == BRAIN_LABELS[name]])) / brain)
    return {name: (float(np.mean(v)), float(np.std(v))) for name, v in per_class.items()}


def normalised_class_medians(shards: str | Path, domain: str) -> dict[str, float]:
    """class -> median normalised intensity ([-1, 1]) of the centre channel of the training slices."""
    images = np.load(Path(shards) / domain / "train" / "images.npy", mmap_mode="r")
    labels = np.load(Path(shards) / domain / "train" / "labels.npy", mmap_mode="r")
    centre = np.asarray(images[:, images.shape[1] // 2], np.float32)
    labels = np.asarray(labels)
    return {name: float(np.median(centre[labels == value])) for name, value in BRAIN_LABELS.items()}


def slices_figure(root: str | Path, domains: list[str], png: str | Path, subjects: int = 3) -> None:
    """Axial centre slices of the first ``subjects`` cases per domain, image above labels."""
    plt = pyplot()
    fig, axes = plt.subplots(2 * len(domains), subjects, squeeze=False,
                             figsize=(2.2 * subjects, 2.6 * 2 * len(domains)))
    for row, domain in enumerate(domains):
        for col, case in enumerate(list(layout.iter_cases(root, domain))[:subjects]):
            img = np.asarray(nib.load(case.image).dataobj, np.float32)
            lbl = np.asarray(nib.load(case.label).dataobj)
            z = int(np.argmax((lbl > 0).sum(axis=(0, 1))))  # the axial slice with the most brain
            top, bottom = axes[2 * row, col], axes[2 * row + 1, col]
            top.imshow(img[:, :, z].T, cmap="gray", origin="lower", vmin=0, vmax=np.percentile(img[lbl > 0], 99.5))
            bottom.imshow(lbl[:, :, z].T, cmap="viridis", origin="lower", vmin=0, vmax=3, interpolation="nearest")
            top.set_title(f"{domain.upper()} {case.case_id}", fontsize=8)
            for ax in (top, bottom):
                ax.set_axis_off()
    fig.suptitle("ICBM152 brain data set: T2 (source) and T1 (target); labels 0 bg, 1 CSF, 2 GM, 3 WM",
                 fontsize=8)
    fig.tight_layout()
    save_png(fig, png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--shards", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args(argv)
    domains = layout.domains(args.data)
    report: dict = {"relative_to_brain_median": {d: relative_class_intensities(args.data, d) for d in domains}}
    if args.shards is not None:
        report["normalised_median"] = {d: normalised_class_medians(args.shards, d) for d in domains}
    if args.png is not None:
        slices_figure(args.data, sorted(domains, reverse=True), args.png)
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
