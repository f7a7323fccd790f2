"""Show the phantom's domain gap: a U-Net trained on the MR-like domain, scored on held-out
MR-like volumes and on CT-like volumes (3-D Dice per structure, whole test volumes).

Uses the project's own stages end to end (phantom -> ingest -> preprocess -> the
`no_adaptation` segmenter -> evaluate) with the profile in params.yaml (or --params).
Writes bench/results/phantom_gap.json with {"mr_on_mr_dice", "mr_on_ct_dice", ...}.

    python bench/phantom_gap.py [--params params.yaml] [--cases 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=HERE.parent / "params.yaml")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1200, help="segmenter steps (default 1200)")
    ap.add_argument("--unet-width", type=int, default=None, help="override model.unet_width")
    ap.add_argument("--image-size", type=int, default=None, help="override preprocess.image_size")
    ap.add_argument("--mr-contrast", default=None, choices=["bssfp", "black_blood"],
                    help="phantom MR appearance (default: phantom.mr_contrast of --params)")
    ap.add_argument("--work", type=Path, default=None, help="keep intermediate files here")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "phantom_gap.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from sasan.config import load_config, set_dotted, config_from_dict
    from sasan.data.ingest import run_ingest
    from sasan.data.phantom import generate_phantom
    from sasan.data.preprocess import run_preprocess
    from sasan.stages.evaluate import run_evaluate
    from sasan.train.recipe import Trainer, open_shards

    overrides = {"train.segmenter.max_steps": args.steps, "train.segmenter.epochs": 1000.0}
    if args.unet_width:
        overrides["model.unet_width"] = args.unet_width
    if args.image_size:
        overrides["preprocess.image_size"] = args.image_size
    cfg = load_config(args.params, overrides)
    mr_contrast = args.mr_contrast or cfg.phantom.mr_contrast
    work = args.work or Path(tempfile.mkdtemp(prefix="phantom-gap-"))
    tic = time.perf_counter()
    if not (work / "shards" / "stats.json").is_file():
        generate_phantom(work / "phantom", cases=args.cases, seed=args.seed, mr_contrast=mr_contrast)
        run_ingest(work / "phantom", work / "raw", layout="nnunet", test_fraction=cfg.ingest.test_fraction,
                   seed=cfg.ingest.seed)
        run_preprocess(work / "raw", work / "shards", cfg.preprocess)
    import shutil

    shutil.rmtree(work / "train", ignore_errors=True)
    trainer = Trainer(cfg, work / "train" / "no_adaptation", "no_adaptation", progress=False)
    trainer.run(open_shards(work / "shards", trainer.cfg, "no_adaptation"))
    bundle = {"no_adaptation": work / "train" / "no_adaptation" / "model.pt"}
    scores = {}
    for target in ("mr", "ct"):
        data = cfg.to_dict()
        set_dotted(data, "experiment.target", target)
        res = run_evaluate(bundle, work / "raw", work / f"eval_{target}.json", work / f"report_{target}",
                           config_from_dict(data), save_predictions=False, progress=False)
        scores[target] = res["no_adaptation"]
    report = {
        "mr_on_mr_dice": scores["mr"]["mean"]["dice"],
        "mr_on_ct_dice": scores["ct"]["mean"]["dice"],
        "mr_on_mr_per_structure": {k: v["dice"] for k, v in scores["mr"]["per_structure"].items()},
        "mr_on_ct_per_structure": {k: v["dice"] for k, v in scores["ct"]["per_structure"].items()},
        "mr_on_mr_assd_vox": scores["mr"]["mean"]["assd_vox"],
        "mr_on_ct_assd_vox": scores["ct"]["mean"]["assd_vox"],
        "test_subjects": {"mr": scores["mr"]["n_subjects"], "ct": scores["ct"]["n_subjects"]},
        "cases_per_domain": args.cases,
        "mr_contrast": mr_contrast,
        "image_size": cfg.preprocess.image_size,
        "segmenter_steps": trainer.summary["segmenter"]["steps"],
        "seconds": round(time.perf_counter() - tic, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
