"""Target Dice against joint-training steps, from the saved checkpoints of ONE long run.

Diagnosis only (issue 13: what schedule does the method need?): nothing here selects a
checkpoint, a schedule or a knob; target labels are read only to draw the curve.

Per method (sasan, cyclegan) and seed, on the adaptation benchmark's data and split
(bench/adaptation.py: 6 target test subjects):

1. one ``train`` of ``--steps`` joint steps, keeping a copy of the joint checkpoint every
   ``--every`` steps (``train.joint.epochs`` is raised so that ``--steps`` is the binding cap);
2. for each kept checkpoint k: the rest of the recipe from that state (fake-source
   translation, the U-Net, ``sasan evaluate``), i.e. a run whose joint phase stops at k. Its
   learning rate followed the LONG run's schedule (constant to steps/2, then linear to 0), so
   points before the end were not annealed: the curve shows where training goes, not what a
   k-step schedule would reach (the demo's own 400-step row is bench/results/adaptation.json).

Also per point: A_t's pooled 2-D Dice on the target test slices (diagnosis only). Resumable:
kept checkpoints, finished points and their metrics are read back. Writes
bench/results/joint_curve.json, .md and .png (``joint_curve_<data>.*`` for another data set);
``--plot-only`` redraws the picture of a recorded JSON.

    python bench/joint_curve.py --steps 2000 --every 400 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from adaptation import DATA, machine, prepare, results_path, sasan, set_flags  # noqa: E402

METHODS = ("sasan", "cyclegan")


def long_run(shards: Path, out: Path, params: Path, sets: list[str], method: str, keep: Path) -> None:
    """Train ``method`` into ``out`` in this process, copying each joint checkpoint into ``keep``."""
    from sasan.cli.params import parse_overrides
    from sasan.config import load_config
    from sasan.stages import train as stage
    from sasan.tracking.runs import Tracker
    from sasan.train.checkpoint import load_checkpoint

    cfg = load_config(params, parse_overrides(sets[1::2]))
    keep.mkdir(parents=True, exist_ok=True)

    def on_checkpoint(path: Path) -> None:
        if Path(path).name == "joint.pt":
            step = int(load_checkpoint(path)["step"])
            shutil.copy2(path, keep / f"joint_{step:05d}.pt")

    stage.run(stage.TrainInputs(shards), stage.TrainOutputs(out), cfg, Tracker.disabled(), variants=[method],
              progress=False, on_checkpoint=on_checkpoint)


def point(shards: Path, raw: Path, run: Path, at: Path, k: int, method: str, common: list[str],
          log: Path) -> dict:
    """The recipe after joint step ``k`` of ``run`` (a finished long run), scored on target test."""
    metrics = at / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    ckpt = at / method / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "keep" / f"joint_{k:05d}.pt", ckpt / "joint.pt")
    pre = run / method / "checkpoints" / "pretrain_attention.pt"
    if pre.is_file():
        shutil.copy2(pre, ckpt / "pretrain_attention.pt")
    sasan("train", str(shards), str(at), "--variants", method, "--no-tracking", *common,
          "--set", f"train.joint.max_steps={k}", log=log)
    return evaluate(raw, at, method, common, log)


def evaluate(raw: Path, out: Path, method: str, common: list[str], log: Path) -> dict:
    sasan("evaluate", str(raw), str(out), "--metrics", str(out / "metrics.tmp.json"), "--report",
          str(out / "report"), "--no-predictions", *common, "--set", f"evaluate.methods=[{method}]", log=log)
    res = json.loads((out / "metrics.tmp.json").read_text())[method]
    summary = json.loads((out / method / "summary.json").read_text())
    row = {"mean_dice": res["mean"]["dice"], "sd_over_subjects": res["mean"]["dice_std"],
           "mean_assd_vox": res["mean"]["assd_vox"], "n_subjects": res.get("n_subjects"),
           "per_structure": {k: v["dice"] for k, v in res.get("per_structure", {}).items()},
           "diagnostics": summary.get("diagnostics", {})}
    (out / "metrics.json").write_text(json.dumps(row, indent=1))
    return row


def markdown(res: dict) -> str:
    steps = sorted({int(k) for m in res["curves"].values() for s in m.values() for k in s})
    lines = [f"Data: {res['data']} ({res['profile']}), one long run per method and seed of {res['steps']} joint "
             f"steps (lr constant to {res['steps'] // 2}, then linear to 0), overrides {res['overrides']}; each "
             "point = the recipe finished from that step's checkpoint (fake-source translation, 600-step U-Net), "
             f"scored on {res['n_subjects']} target test subjects. Diagnosis only: nothing was selected with it.",
             "", "Mean 3-D Dice on target test volumes (A_t pooled 2-D target Dice, diagnosis only, in brackets):",
             "", "| method | seed | " + " | ".join(str(s) for s in steps) + " |", "|---" * (len(steps) + 2) + "|"]
    for m, seeds in res["curves"].items():
        for seed, pts in seeds.items():
            cells = []
            for s in steps:
                p = pts.get(str(s))
                if p is None:
                    cells.append("-")
                    continue
                at = p["diagnostics"].get("diagnosis_only_A_t_target_test", {}).get("dice", {}).get("mean")
                cells.append(f"{p['mean_dice']:.3f}" + (f" ({at:.2f})" if at is not None else ""))
            lines.append(f"| {m} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict, png: Path) -> None:
    """Target Dice (solid) and A_t's target Dice (dashed, diagnosis only) against joint steps."""
    from sasan.figures import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m, seeds in res["curves"].items():
        for seed, pts in seeds.items():
            steps = sorted(int(k) for k in pts)
            line, = ax.plot(steps, [pts[str(s)]["mean_dice"] for s in steps], "o-",
                            label=f"{m}, seed {seed}: U-Net (3-D Dice)")
            at = [pts[str(s)]["diagnostics"].get("diagnosis_only_A_t_target_test", {}).get("dice", {}).get("mean")
                  for s in steps]
            if all(a is not None for a in at):
                ax.plot(steps, at, "s--", color=line.get_color(), alpha=0.6,
                        label=f"{m}, seed {seed}: A_t (pooled 2-D Dice)")
    table = results_path("adaptation", res["data"])     # reference rows: no joint phase, any schedule
    title = f"{res['data']}: target Dice against joint steps (diagnosis only)"
    if table.is_file():
        title += f"\nreference rows: {table.name}, mean over its seeds"
        ref = json.loads(table.read_text())["methods"]
        if {"no_adaptation", "upper_bound"} <= set(ref):
            lo, hi = ref["no_adaptation"]["mean_dice"], ref["upper_bound"]["mean_dice"]
            for y, name in ((lo, "no adaptation"), ((lo + hi) / 2, "half the gap"), (hi, "upper bound")):
                ax.axhline(y, color="0.5", ls=":", lw=0.8)
                ax.text(res["steps"], y, f"{name} ", color="0.4", fontsize=7, ha="right", va="bottom")
    ax.axvline(res["steps"] // 2, color="0.7", lw=0.8)
    ax.text(res["steps"] // 2, ax.get_ylim()[0], " lr decay starts", color="0.5", fontsize=7, va="bottom")
    ax.set_xlabel("joint steps (checkpoints of one long run)")
    ax.set_ylabel("Dice on target test subjects")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_png(fig, png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=sorted(DATA), default="phantom")
    ap.add_argument("--params", type=Path, default=None, help="profile (default: the data set's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=2000, help="joint steps of the long run")
    ap.add_argument("--every", type=int, default=400, help="keep a joint checkpoint every N steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override")
    ap.add_argument("--work", type=Path, default=None, help="default bench/work/curve-<data>")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/joint_curve.json (phantom), joint_curve_<data>.json otherwise")
    ap.add_argument("--plot-only", action="store_true", help="only redraw the picture of the recorded --out JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = args.params or ROOT / DATA[args.data][2]
    args.out = args.out or results_path("joint_curve", args.data)
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    work = args.work or HERE / "work" / f"curve-{args.data}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    sets = set_flags(args.set)
    sets += ["--set", "train.joint.epochs=100", "--set", f"train.joint.max_steps={args.steps}",
             "--set", f"train.checkpoint_every={args.every}"]
    raw, shards = prepare(args.data, work, params, sets, log)
    res = {"profile": str(params.relative_to(ROOT) if params.is_relative_to(ROOT) else params), "data": args.data,
           "steps": args.steps, "every": args.every, "overrides": args.set, "seeds": args.seeds,
           "_machine": machine(), "curves": {}, "seconds": {}}
    if args.out.is_file():     # curves and times of methods / seeds recorded by an earlier run are kept
        old = json.loads(args.out.read_text())
        res["curves"], res["seconds"] = old.get("curves", {}), old.get("seconds", {})
    for seed in args.seeds:
        common = ["--params", str(params), *sets, "--set", f"experiment.seed={seed}", "--no-progress"]
        seed_sets = sets + ["--set", f"experiment.seed={seed}"]
        for method in args.methods:
            tic = time.time()
            run = work / f"seed{seed}" / method
            if not (run / method / "model.pt").is_file():
                print(f"seed {seed} {method}: long run of {args.steps} steps", file=sys.stderr)
                long_run(shards, run, params, seed_sets, method, run / "keep")
            pts = res["curves"].setdefault(method, {}).setdefault(str(seed), {})
            if not (run / "metrics.json").is_file():
                evaluate(raw, run, method, common, log)
            pts[str(args.steps)] = json.loads((run / "metrics.json").read_text())
            for k in range(args.every, args.steps, args.every):
                print(f"seed {seed} {method}: point at step {k}", file=sys.stderr)
                pts[str(k)] = point(shards, raw, run, work / f"seed{seed}" / f"{method}_at{k}", k, method, common, log)
            res["seconds"][f"{method}/{seed}"] = time.time() - tic
            res["n_subjects"] = pts[str(args.steps)]["n_subjects"]
            args.out.write_text(json.dumps(res, indent=1) + "\n")
            args.out.with_suffix(".md").write_text(markdown(res))
            plot(res, args.out.with_suffix(".png"))
    print(markdown(res))


if __name__ == "__main__":
    main()
