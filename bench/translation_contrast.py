"""Does the source -> target translation carry the target's tissue contrast? A check that needs
no target label: translate the *source* test slices with the trained G_t (G_t(x, A_s(x)); the
CycleGAN ablation without maps) and average the translated intensity inside each *source*
label. On the brain (T2 -> T1), real T1 has WM brighter than GM brighter than CSF, while T2 has
CSF brightest; a translation that keeps T2's ordering teaches the target segmenter the wrong
tissue, whatever its losses say.

For scale it also prints the same averages of the real target test slices under their labels:
that row is a reference, named diagnosis-only, and plays no part in any choice.

    python bench/translation_contrast.py RUN_DIR [RUN_DIR ...] --shards bench/work/brain/shards \
        --out bench/results/translation_contrast_brain.json

RUN_DIR is a trained variant's folder (``<work>/seed0/sasan``): its ``config.yaml`` and
``checkpoints/joint.pt`` are read. Writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml


def class_means(images: np.ndarray, labels: np.ndarray, classes: dict[str, int]) -> dict[str, float]:
    """Mean intensity of ``images`` (N, H, W) inside each labelled class of ``labels`` (N, H, W)."""
    return {name: float(images[labels == c].mean()) if (labels == c).any() else float("nan")
            for name, c in classes.items()}


def translated_source(run_dir: Path, shards: Path, batch_size: int = 32) -> tuple[np.ndarray, dict]:
    """Centre channel of G_t(x, A_s(x)) for every source test slice, (N, H, W), and the run's config."""
    from sasan.config import config_from_dict
    from sasan.data.dataset import SliceDataset
    from sasan.models import build_networks
    from sasan.train.checkpoint import load_checkpoint

    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), f"{run_dir}/config.yaml")
    nets = build_networks(cfg.model)
    state = load_checkpoint(run_dir / "checkpoints" / "joint.pt")["state"]["nets"]
    keep = {k: v for k, v in state.items() if k.split(".")[0] in ("syn_t", "att_s")}
    missing = [k for k in nets.state_dict() if k.split(".")[0] in ("syn_t", "att_s") and k not in keep]
    if missing:
        raise SystemExit(f"{run_dir}/checkpoints/joint.pt: missing weights, e.g. {missing[0]}")
    nets.load_state_dict(keep, strict=False)
    nets.eval()
    data = SliceDataset(shards / cfg.experiment.source / "test", with_labels=False)
    centre = cfg.preprocess.slices // 2
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = torch.stack([data[i]["image"] for i in range(start, min(start + batch_size, len(data)))])
            att = nets.att_s(x)[0] if nets.attention else None
            out.append(nets.syn_t(x, att)[:, centre].numpy())
    return np.concatenate(out), cfg.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="trained variant folders (config.yaml + checkpoints/joint.pt)")
    ap.add_argument("--shards", type=Path, required=True, help="preprocessed shards of the runs' data set")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from sasan.data.brain import BRAIN_LABELS
    from sasan.data.shards import open_shard

    classes = {name: c for name, c in BRAIN_LABELS.items() if c}

    rows = []
    src = tgt = None
    for run in args.runs:
        fake, cfg = translated_source(run, args.shards)
        if src is None:
            centre = cfg["preprocess"]["slices"] // 2
            source = open_shard(args.shards / cfg["experiment"]["source"] / "test")
            target = open_shard(args.shards / cfg["experiment"]["target"] / "test")
            src_labels = np.asarray(source.labels)
            src = class_means(np.asarray(source.images[:, centre], np.float32), src_labels, classes)
            tgt = class_means(np.asarray(target.images[:, centre], np.float32), np.asarray(target.labels), classes)
        means = class_means(fake, src_labels, classes)
        rows.append({"run": str(run), "variant": run.name,
                     "seed": cfg["experiment"]["seed"], "joint_max_steps": cfg["train"]["joint"]["max_steps"],
                     "translated_source_test": means,
                     "order": " > ".join(sorted(means, key=means.get, reverse=True))})
        print(f"{run}: " + ", ".join(f"{k} {v:+.2f}" for k, v in means.items()) + f"  ({rows[-1]['order']})")

    result = {"classes": classes, "real_source_test": src, "diagnosis_only_real_target_test": tgt, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    names = list(classes)
    lines = ["Mean intensity (centre channel, [-1, 1]) inside each source label of the source test slices "
             "translated by G_t; no target label used. Reference rows: real source, and real target under "
             "its own labels (diagnosis only).", "",
             "| run | joint steps | " + " | ".join(names) + " | order |", "|---|---|" + "---|" * len(names) + "---|"]
    for r in rows:
        m = r["translated_source_test"]
        lines.append(f"| {Path(r['run']).parent.name}/{Path(r['run']).name} | {r['joint_max_steps']} | "
                     + " | ".join(f"{m[n]:+.2f}" for n in names) + f" | {r['order']} |")
    for label, m in (("real source (reference)", src), ("real target, diagnosis only", tgt)):
        lines.append(f"| {label} | | " + " | ".join(f"{m[n]:+.2f}" for n in names)
                     + f" | {' > '.join(sorted(m, key=m.get, reverse=True))} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
