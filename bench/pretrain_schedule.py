"""How long A_s must pre-train, read on held-out SOURCE volumes only (issue 13: A_s is the
teacher of every SASAN term; target >= 0.85 Dice on the phantom's MR test subjects).

    python bench/pretrain_schedule.py                       # epochs 8 16 32, seeds 0 1 2
    python bench/pretrain_schedule.py --epochs 16 --seeds 0 --set model.attention_width=32
    python bench/pretrain_schedule.py --cases 16 --work bench/work/phantom_cases16 --epochs 8 --seeds 0

Runs only SASAN's first phase (METHOD.md 4.1: seg loss + orthogonality on labelled MR
slices, ``Trainer.pretrain_attention``) on the prepared phantom of ``bench/adaptation.py``
(32 subjects per domain, 26 train / 6 test; ``--cases N`` with its own ``--work`` prepares
N subjects, 6 of them test) and reports A_s's pooled Dice on the 6 MR test
subjects (per class 1-4 = MYO, LA, LV, AA, and mean) and its predicted foreground fraction
next to the true one; the json also keeps each run's wall time (which includes whatever else
the machine ran) and the number of MR training subjects. No target image or label is read:
what this selects, it selects on the source side.

Writes ``bench/results/pretrain_schedule.json`` and ``.md``; resumable per (setting, seed)
from ``bench/work/phantom/pretrain_schedule/<setting>/seed<N>/result.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from adaptation import mean_sd, prepare, set_flags  # noqa: E402


def run_one(epochs: float, seed: int, sets: dict, shards: Path, out: Path) -> dict:
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    from sasan.config import load_config
    from sasan.models import build_networks
    from sasan.train.recipe import Trainer, open_shards, seed_everything

    cfg = load_config(ROOT / "params.yaml", {**sets, "train.pretrain.epochs": float(epochs),
                                             "experiment.seed": seed})
    trainer = Trainer(cfg, out, "sasan", progress=False)
    data = open_shards(shards, trainer.cfg, "sasan")
    seed_everything(seed)
    nets = trainer.rt.prepare_module(build_networks(trainer.cfg.model))
    tic = time.time()
    trainer.pretrain_attention(nets, data)
    res = {"epochs": epochs, "seed": seed, "seconds": time.time() - tic,
           "steps": trainer.summary["pretrain_attention"]["steps"],
           "final_loss": trainer.summary["pretrain_attention"].get("loss"),
           **trainer.summary["diagnostics"]["A_s_source_test"]}
    out.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(res, indent=1))
    return res


def use_plain_cross_entropy() -> None:
    """Diagnosis (``--plain-ce``): every class weight 1 in ``seg_loss``'s cross-entropy, for the
    rest of this process (METHOD.md weighs class c by 1 - its pixel fraction). Not a training
    option: it answers whether the weighting is why A_s over-segments."""
    import torch

    import sasan.losses.segmentation as seg

    seg.class_weights = lambda labels, num_classes: torch.ones(num_classes, device=labels.device)


def markdown(res: dict, name: str) -> str:
    lines = [f"# A_s pre-training schedule on the phantom (bench/results/{name})", "",
             f"A_s alone (METHOD.md 4.1), `params.yaml` with {res['overrides'] or 'no overrides'}, "
             f"{res.get('train_subjects', 10)} MR training subjects; pooled Dice "
             "on the slices of the 6 held-out MR (source) test subjects; no target data read.", "",
             "| epochs (steps) | mean Dice, mean +- sd | per seed | per class (mean over seeds) | "
             "foreground predicted / true |", "|---|---|---|---|---|"]
    for epochs, r in res["settings"].items():
        spread = f"+- {r['sd_dice']:.3f}" if len(r["per_seed"]) > 1 else "(one seed)"
        lines.append(f"| {epochs} ({r['steps']}) | {r['mean_dice']:.3f} {spread} | "
                     f"{', '.join(f'{v:.3f}' for v in r['per_seed'])} | "
                     f"{', '.join(f'{k}: {v:.2f}' for k, v in r['per_class'].items())} | "
                     f"{r['foreground_predicted']:.3f} / {r['foreground_true']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, nargs="+", default=[8, 16, 32])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params.yaml override")
    ap.add_argument("--plain-ce", action="store_true",
                    help="diagnosis: every class weight 1 in seg_loss's cross-entropy (METHOD.md weighs "
                         "class c by 1 - its pixel fraction); patched in this process only")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "phantom",
                    help="the phantom work folder of bench/adaptation.py (its shards)")
    ap.add_argument("--cases", type=int, default=None,
                    help="subjects per domain when --work is not prepared yet (default: bench/adaptation.py's)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/pretrain_schedule[_<overrides>].json")
    args = ap.parse_args()
    from sasan.cli.params import parse_overrides

    sets = parse_overrides(args.set)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # the overrides reach validate/preprocess too (data.image_size shapes the shards)
    raw, shards = prepare("phantom", work, ROOT / "params.yaml", set_flags(args.set),
                          work / "log.txt", args.cases)
    manifest = json.loads((raw / "manifest.json").read_text())
    train_subjects = sum(c["domain"] == "mr" and c["split"] == "train" for c in manifest["cases"])
    tag = "".join(f"_{k.split('.')[-1]}{v}" for k, v in sorted(sets.items()))
    if args.plain_ce:
        use_plain_cross_entropy()
        tag += "_plainCE"
    args.out = args.out or HERE / "results" / f"pretrain_schedule{tag}.json"
    res = json.loads(args.out.read_text()) if args.out.is_file() else {}
    overrides = args.set + (["plain cross-entropy (--plain-ce)"] if args.plain_ce else [])
    if res.get("overrides") != overrides or res.get("train_subjects", 10) != train_subjects:
        res = {"overrides": overrides, "seeds": args.seeds, "settings": {}}
    res["train_subjects"] = train_subjects
    for epochs in args.epochs:
        name = f"{epochs:g}{tag}"
        rows = [run_one(epochs, s, sets, shards, work / "pretrain_schedule" / name / f"seed{s}")
                for s in args.seeds]
        dice = [r["dice"]["mean"] for r in rows]
        classes = [k for k in rows[0]["dice"] if k != "mean"]
        res["settings"][f"{epochs:g}"] = {
            "seeds": args.seeds, "steps": rows[0]["steps"], "per_seed": dice,
            "mean_dice": mean_sd(dice)[0], "sd_dice": mean_sd(dice)[1],
            "per_class": {k: mean_sd([r["dice"][k] for r in rows])[0] for k in classes},
            "foreground_predicted": mean_sd([r["foreground_fraction"]["all"] for r in rows])[0],
            "foreground_true": rows[0]["true_foreground_fraction"]["all"],
            "seconds": mean_sd([r["seconds"] for r in rows])[0]}
        print(f"epochs {epochs:g}: A_s source-test Dice {mean_sd(dice)[0]:.3f} ({', '.join(f'{v:.3f}' for v in dice)})",
              flush=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(res, args.out.name))
    print(markdown(res, args.out.name))


if __name__ == "__main__":
    main()
