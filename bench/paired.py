"""Paired-translation benchmark: N seeds of a paired profile, SASAN against its CycleGAN
ablation (the same paired trainer, voxel L1 included, without attention), scored by image
metrics on the target test subjects (METHOD.md section 6).

    python bench/paired.py --seeds 0 1 2 --jobs 2        # profiles/phantom-paired.yaml

Generates the paired phantom once (``sasan data phantom --paired``, data seed 0: one anatomy
per subject imaged as CT and MR on one grid), ingests it with ``--layout paired`` leaving
``TEST_SUBJECTS`` test subjects, validates and preprocesses (paired: one crop and one set of
slices per subject); per seed, ``sasan train`` and ``sasan evaluate`` of each method, with the
resumable seed records of :mod:`adaptation` (``<out>_seed<N>.json``). Writes
``bench/results/paired.json`` ``{"profile", "seeds", "methods": {M: {score: {"mean", "sd",
"per_seed"}}}, "sasan_minus_cyclegan": {score: {"mean", "sd", "per_seed"}}}`` and a Markdown
table. Every number is a final-checkpoint score; nothing is selected with test data.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation import (ROOT, mean_sd, run_seed, sasan, seed_record, set_flags, side_by_side,  # noqa: E402
                        write_results)
from adaptation import headline  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("cyclegan", "sasan")
SCORES = ("mae", "rmse", "psnr", "ssim", "pearson")
TEST_SUBJECTS = 6
DEFAULT_CASES = 20           # 14 train / 6 test subjects


def marker(params: Path, sets: list[str], cases: int) -> str:
    """The done-marker's text: what the shards were prepared from (subjects, profile with the
    sha256 of its contents, so an edited profile at the same path is not reused, overrides)."""
    digest = hashlib.sha256(params.read_bytes()).hexdigest()[:16]
    return f"cases {cases}\nprofile {params} sha256:{digest}\noverrides {' '.join(sets[1::2]) or '-'}\n"


def prepare(work: Path, params: Path, sets: list[str], log: Path, cases: int) -> tuple[Path, Path]:
    """Generate, split, validate and preprocess the paired phantom into ``work``, once; a
    rerun reuses it only when prepared from the same subjects, profile and overrides."""
    raw, shards, done = work / "raw", work / "shards", work / "shards" / "done"
    if done.is_file():
        want, have = marker(params, sets, cases), done.read_text()
        if have != want:
            sys.exit(f"{work}: prepared with other settings ({'; '.join(have.strip().splitlines())}), not "
                     f"({'; '.join(want.strip().splitlines())}); use another --work")
        return raw, shards
    if cases <= TEST_SUBJECTS + 1:
        sys.exit(f"--cases {cases}: need more than {TEST_SUBJECTS + 1} subjects ({TEST_SUBJECTS} are test)")
    sasan("data", "phantom", str(work / "source"), "--paired", "--cases", str(cases), "--seed", "0", log=log)
    sasan("ingest", str(work / "source"), str(raw), "--layout", "paired", "--test-fraction",
          str(TEST_SUBJECTS / cases), "--seed", "0", log=log)
    sasan("validate", str(raw), "--report", str(work / "validation"), "--params", str(params), *sets, log=log)
    sasan("preprocess", str(raw), str(shards), "--params", str(params), *sets, log=log)
    done.write_text(marker(params, sets, cases))
    return raw, shards


def summarise(params: Path, seeds: list[int], per_seed: dict[int, dict], methods: list[str]) -> dict:
    """Per method and score: mean +- sd over seeds of the per-seed means over subjects; the
    SASAN - CycleGAN differences paired by seed."""
    out: dict = {"profile": str(params), "data": "phantom-paired", "seeds": seeds, "methods": {}}
    for m in methods:
        rows = [per_seed[s][m] for s in seeds]
        out["methods"][m] = {k: dict(zip(("mean", "sd"), mean_sd([r["mean"][k] for r in rows])),
                                     per_seed=[r["mean"][k] for r in rows]) for k in SCORES}
        out["methods"][m]["n_subjects"] = rows[0]["n_subjects"]
        out["methods"][m]["mask"] = rows[0].get("mask", "body")
    if {"sasan", "cyclegan"} <= set(methods):
        out["sasan_minus_cyclegan"] = {}
        for k in SCORES:
            diff = [a - b for a, b in zip(out["methods"]["sasan"][k]["per_seed"],
                                          out["methods"]["cyclegan"][k]["per_seed"])]
            out["sasan_minus_cyclegan"][k] = dict(zip(("mean", "sd"), mean_sd(diff)), per_seed=diff)
    out["seconds_per_seed"] = [sum(per_seed[s].get("_seconds", {}).values()) for s in seeds]
    out["machine_per_seed"] = [per_seed[s].get("_machine") for s in seeds]
    return out


def markdown(res: dict) -> str:
    first = next(iter(res["methods"].values()))
    lines = [f"Data: {res['data']} ({res['profile']}), seeds {res['seeds']}, {first['n_subjects']} test subjects, "
             f"{first['mask']} mask; per seed the mean over subjects, then mean +- sd over seeds "
             "(intensities in [-1, 1]).", "",
             "| method | MAE | PSNR (dB) | SSIM | Pearson |", "|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{r[k]['mean']:.3f} +- {r[k]['sd']:.3f}"
                                              for k in ("mae", "psnr", "ssim", "pearson")) + " |")
    if "sasan_minus_cyclegan" in res:
        lines.append("")
        for k in ("mae", "psnr", "ssim"):
            d = res["sasan_minus_cyclegan"][k]
            lines.append(f"SASAN - CycleGAN {k.upper()}, paired by seed: {d['mean']:+.3f} +- {d['sd']:.3f} "
                         f"(per seed: {', '.join(f'{v:+.3f}' for v in d['per_seed'])}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "profiles" / "phantom-paired.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override")
    ap.add_argument("--cases", type=int, default=DEFAULT_CASES, help="paired subjects to generate")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "phantom-paired")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "paired.json")
    ap.add_argument("--jobs", type=int, default=1, help="seeds side by side, cores/jobs threads each")
    args = ap.parse_args()
    params, work, out = args.params.resolve(), args.work.resolve(), args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sets = set_flags(args.set)
    log = work / "log.txt"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raw, shards = prepare(work, params, sets, log, args.cases)
    if args.jobs > 1:
        per_seed = side_by_side(args.seeds, args.jobs, raw, shards, work, params, sets, args.methods, log, out)
    else:
        per_seed = {}
        for s in args.seeds:
            per_seed[s] = run_seed(s, raw, shards, work, params, sets, args.methods, log, record=seed_record(out, s))
            print(f"seed {s}: " + ", ".join(f"{m} {headline(per_seed[s][m])}" for m in args.methods), flush=True)
    res = summarise(params.relative_to(ROOT) if params.is_relative_to(ROOT) else params, args.seeds, per_seed,
                    args.methods)
    res["overrides"] = args.set
    write_results(out, res, markdown(res))


if __name__ == "__main__":
    main()
