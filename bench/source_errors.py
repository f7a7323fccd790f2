"""Where A_s errs on the phantom's held-out MR (source) volumes, by tissue: which structure
each labelled pixel is called, and which tissue lies under each false-positive pixel.

The phantom keeps no tissue map on disk, but every case is a pure function of (seed, domain,
index): this script draws each MR test subject's anatomy again
(``sasan.data.phantom.phantom_anatomy``), checks that its labels equal the stored ones, and carries its tissue map through the volume's own preprocessing geometry
(``PreparedVolume.forward_label``). A_s is read from ``bench/pretrain_schedule.py``'s
checkpoints. Only source (MR) images and labels are read.

    python bench/source_errors.py [--setting 8_lr0.0008] [--seeds 0 1 2]

Writes ``bench/results/source_errors.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "phantom")
    ap.add_argument("--setting", default="8_lr0.0008", help="folder of bench/pretrain_schedule.py's runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "source_errors.json")
    args = ap.parse_args()

    import nibabel as nib
    import torch

    from sasan.config import load_config
    from sasan.data.phantom import phantom_anatomy
    from sasan.data.phantom_shapes import CARDIAC_LABELS, TISSUES
    from sasan.data.preprocess import prepare_volume
    from sasan.models import build_attention
    from sasan.train.checkpoint import load_checkpoint

    cfg = load_config(ROOT / "params.yaml")
    m = cfg.model
    names = list(CARDIAC_LABELS)                                  # background, MYO, LA, LV, AA
    raw = args.work / "raw"
    cases = [c for c in json.loads((raw / "manifest.json").read_text())["cases"]
             if c["domain"] == "mr" and c["split"] == "test"]
    volumes, medians = [], {}
    for case in cases:
        index = int(case["case_id"].split("_")[-1]) - 1       # mr_NNN: the generator's case index + 1
        tissue, label = phantom_anatomy("mr", index)[:2]      # bench/adaptation.py's data: seed 0, size 128
        stored = np.asarray(nib.load(raw / case["label"]).dataobj)
        if not np.array_equal(label, stored):
            raise SystemExit(f"{case['case_id']}: regenerated labels differ from {raw / case['label']}")
        prepared = prepare_volume(raw / case["image"], cfg.preprocess, "mr")
        volumes.append((prepared.stacks, prepared.forward_label(label), prepared.forward_label(tissue)))
        # what the network sees: median intensity in [-1, 1] of each structure and of the fat
        lab, tis = volumes[-1][1], volumes[-1][2]
        masks = {**{n: lab == c for n, c in CARDIAC_LABELS.items() if c}, "fat": tis == TISSUES.index("fat"),
                 "right-heart blood": tis == TISSUES.index("blood_right")}
        medians[case["case_id"]] = {n: float(np.median(prepared.slices[mk])) for n, mk in masks.items() if mk.any()}

    k = len(names)
    confusion = np.zeros((k, k), np.int64)                       # truth x prediction, pixels
    fp_tissue = np.zeros((k, len(TISSUES)), np.int64)              # predicted c, truth background: tissue
    torch.set_grad_enabled(False)
    for seed in args.seeds:
        ckpt = args.work / "pretrain_schedule" / args.setting / f"seed{seed}" / "checkpoints" / "pretrain_attention.pt"
        net = build_attention(m)
        net.load_state_dict(load_checkpoint(ckpt)["state"]["model"])
        net.eval()
        for stacks, label, tissue in volumes:
            pred = np.concatenate([net(torch.from_numpy(stacks[i:i + 32]))[1].argmax(1).numpy()
                                   for i in range(0, len(stacks), 32)])
            confusion += np.bincount(label.astype(np.int64).ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k)
            bg = label == 0
            for c in range(1, k):
                sel = bg & (pred == c)
                fp_tissue[c] += np.bincount(tissue[sel].ravel(), minlength=len(TISSUES))

    dice = {names[c]: 2 * confusion[c, c] / (confusion[c].sum() + confusion[:, c].sum()) for c in range(1, k)}
    res = {"setting": args.setting, "seeds": args.seeds, "subjects": [c["case_id"] for c in cases],
           "classes": names, "tissues": list(TISSUES), "confusion_truth_x_pred": confusion.tolist(),
           "dice_pooled_over_seeds": dice,
           "truth_called": {names[c]: {names[p]: confusion[c, p] / confusion[c].sum() for p in range(k)}
                            for c in range(1, k)},
           "false_positive_tissue": {names[c]: {TISSUES[t]: fp_tissue[c, t] / max(fp_tissue[c].sum(), 1)
                                                for t in range(len(TISSUES)) if fp_tissue[c, t]}
                                     for c in range(1, k)},
           "false_positives_per_true_pixel": {names[c]: fp_tissue[c].sum() / confusion[c].sum() for c in range(1, k)},
           "median_intensity": medians}
    res = json.loads(json.dumps(res, default=float))
    args.out.write_text(json.dumps(res, indent=1) + "\n")

    lines = [f"A_s ({args.setting}, seeds {args.seeds}) on the slices of the {len(cases)} MR test subjects, "
             "pooled over seeds; source images and labels only.", "",
             "| truth | Dice | called " + " | called ".join(names) + " | false positives per true pixel | "
             "tissue under the false positives |", "|---" * (k + 4) + "|"]
    for c in range(1, k):
        called = " | ".join(f"{res['truth_called'][names[c]][n]:.2f}" for n in names)
        fp = sorted(res["false_positive_tissue"][names[c]].items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"| {names[c]} | {dice[names[c]]:.3f} | {called} | "
                     f"{res['false_positives_per_true_pixel'][names[c]]:.2f} | "
                     + ", ".join(f"{t} {v:.0%}" for t, v in fp) + " |")
    cols = list(next(iter(medians.values())))
    lines += ["", "Median intensity in [-1, 1] (what the networks see) per test subject:", "",
              "| subject | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {cid} | " + " | ".join(f"{v.get(n, float('nan')):+.2f}" for n in cols) + " |"
              for cid, v in medians.items()]
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
