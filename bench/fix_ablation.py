"""Per-fix ablation of issue 13's loss fixes (docs/results.md, "Before/after the loss fixes").

The SASAN row of the adaptation protocol (bench/adaptation.py: same phantom, same subject
split, same seeds, 6 CT test subjects) with ONE fix reverted at a time, paired by seed with
the current code's SASAN from bench/results/adaptation.json:

    python bench/fix_ablation.py          # every revert and a rerun, seeds 0 1 2 (about 90 min on 2 cores)

The reverted forms live here, not in the library: the library holds the authors' recipe
only. Each is applied by patching ``sasan.losses`` / ``sasan.train.joint`` in the child
process that runs ``sasan train`` (``--child``); the code they replace is quoted from the
release before the fixes (c9ba60f^). Reverts 1, 2 and 4 do not touch A_s's pre-training and
start from the same pre-trained A_s checkpoint as the reference run of that seed; 3 (the
orthogonality scale also applies in pre-training) and 5 pre-train again.

The revert ``none`` reruns the current code the same way. On one machine a rerun from the
same pre-trained A_s is bit-identical to the first run (checked: same losses at every logged
step, same Dice); across machines it is not (oneDNN picks kernels by CPU, the rounding
differs from the first step, and 400 GAN steps amplify it). So compare a revert with the
reference only when both ran on one machine, or read the gain against ``none`` run where the
reverts ran. Each run records its machine (``_machine``).

The recorded table was paired with bench/results/adaptation.json as of commit 3321e9a (its
values are kept in the output, ``reference_sasan_per_seed``); the U-Nets have trained in
channels_last on CPU since, so re-summarising (``--no-run``) against today's adaptation.json
would pair runs of two code versions: rerun the reverts instead.

Writes ``bench/results/fix_ablation.json`` and ``.md``. Resumable: a finished (revert,
seed) is read back from ``bench/work/phantom/fix_ablation/<revert>/seed<N>/metrics.json``, and
reverts recorded in the output by an earlier run and not asked for now are kept.
Nothing here selects with target labels: every number is a final-checkpoint score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from adaptation import machine, mean_sd, set_flags  # noqa: E402

REVERTS = {
    "none": "nothing: the current code rerun (on one machine identical to the reference; across machines, their spread)",
    "seg_real_labels": "1. segmentation discriminators' real samples = one-hot source labels "
                       "(now softmax(A_s(x)))",
    "pseudo_l1_trains_generator": "2. pseudo-label L1 = |A_s(fake_s) - sg(A_t(t))|: trains S_s through A_s "
                                  "(now |A_t(t) - sg(A_s(fake_s))|: trains A_t)",
    "orthogonality_mean": "3. orthogonality = mean over batch and map pairs (1/(2B) of now), on A_t(t) "
                          "and A_t(fake_t), in pre-training too (now 2/(K(K-1)) x sum over the batch, A_t(t))",
    "seg_real_twice": "4. segmentation discriminators' real half weighted by the number of fakes (2)",
    "short_pretrain": "5. A_s pre-trains 2 epochs at constant lr (now 8 epochs, linear decay)",
}
REUSES_PRETRAIN = {"none", "seg_real_labels", "pseudo_l1_trains_generator", "seg_real_twice"}
OVERRIDES = {"short_pretrain": ["train.pretrain.epochs=2", "train.pretrain.lr_schedule=constant"]}


# ---------------------------------------------------------------------------- the reverted forms
def apply_revert(name: str) -> None:
    """Patch the library in this process so that ``sasan train`` runs the pre-fix form."""
    import torch
    import torch.nn.functional as F

    from sasan import losses as L
    from sasan.train import joint

    if name == "seg_real_labels":
        labels: dict = {}
        step = joint.JointTrainer.step

        def step_keeping_labels(self, batch):
            labels["y_x"] = batch["y_x"].to(self.rt.device)
            return step(self, batch)

        def discriminator_terms(nets, fakes, x, t, w):
            terms = {"D_image": 0.5 * w.adversarial * (
                L.lsgan_discriminator_loss(nets.disc_s(x), nets.disc_s(fakes["fake_s"]))
                + L.lsgan_discriminator_loss(nets.disc_t(t), nets.disc_t(fakes["fake_t"])))}
            if nets.seg_discs is not None and "seg_s_fake" in fakes:
                real = L.one_hot(labels["y_x"], fakes["seg_s_x"].shape[1])
                terms["D_seg"] = 0.5 * w.seg_adversarial * L.seg_adversarial_discriminator_loss(
                    nets.seg_discs, real, [fakes["seg_s_fake"].softmax(1), fakes["seg_t_t"].softmax(1)])
            return terms

        joint.JointTrainer.step = step_keeping_labels
        joint.discriminator_terms = discriminator_terms
    elif name == "pseudo_l1_trains_generator":
        def pseudo_label_loss(logits_target, logits_fake_source, dice_weight=0.2):
            pseudo = logits_fake_source.detach().argmax(dim=1)
            return (L.seg_loss(logits_target, pseudo, dice_weight)
                    + F.l1_loss(logits_fake_source, logits_target.detach()))

        L.pseudo_label_loss = pseudo_label_loss
    elif name == "orthogonality_mean":
        def orthogonality_loss(maps, eps=1e-8):
            b, k = maps.shape[:2]
            m = F.normalize(maps.flatten(2), p=2.0, dim=2, eps=eps)
            gram = m @ m.transpose(1, 2)
            return (gram.pow(2).sum() - gram.diagonal(dim1=1, dim2=2).pow(2).sum()) / (b * k * (k - 1))

        attention_terms = joint.attention_terms

        def attention_terms_both_maps(nets, out, y_x, w):
            terms = attention_terms(nets, out, y_x, w)
            if "orthogonality" in terms:
                terms["orthogonality"] = terms["orthogonality"] + L.orthogonality_loss(out["att_t_fake"])
            return terms

        L.orthogonality_loss = orthogonality_loss
        joint.attention_terms = attention_terms_both_maps
    elif name == "seg_real_twice":
        def seg_adversarial_discriminator_loss(seg_discs, probs_real, probs_fake):
            fakes = list(probs_fake) if not isinstance(probs_fake, torch.Tensor) else [probs_fake]
            scores = L.seg_discriminator_scores(seg_discs, [probs_real] + fakes)
            c = probs_real.shape[1]
            return (L.seg_scores_loss([[real] for real, *_ in scores], 1.0, c, weight=len(fakes))
                    + L.seg_scores_loss([fake for _, *fake in scores], 0.0, c))

        L.seg_adversarial_discriminator_loss = seg_adversarial_discriminator_loss
    elif name not in ("none", "short_pretrain"):
        raise SystemExit(f"unknown revert {name!r}; choose from {', '.join(REVERTS)}")


# ---------------------------------------------------------------------------- the protocol
def run(args: list[str], log: Path, revert: str | None = None) -> None:
    cmd = ([sys.executable, str(Path(__file__).resolve()), "--child", revert, "--"] if revert
           else [sys.executable, "-m", "sasan"]) + args
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{log.parent / 'mlflow.db'}")
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if res.returncode:
        sys.exit(f"failed ({res.returncode}): {' '.join(args)}; see {log}")


def run_one(revert: str, seed: int, ref_work: Path, params: Path, log: Path) -> dict:
    out = ref_work / "fix_ablation" / revert / f"seed{seed}"
    metrics = out / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    ref_ckpt = ref_work / f"seed{seed}" / "sasan" / "checkpoints" / "pretrain_attention.pt"
    if revert in REUSES_PRETRAIN:
        if not ref_ckpt.is_file():
            sys.exit(f"{ref_ckpt}: missing; run bench/adaptation.py --data phantom first (its pre-trained A_s)")
        (out / "sasan" / "checkpoints").mkdir(parents=True, exist_ok=True)
        target = out / "sasan" / "checkpoints" / "pretrain_attention.pt"
        if not target.exists():
            shutil.copy2(ref_ckpt, target)
    sets = set_flags(OVERRIDES.get(revert, []))
    common = ["--params", str(params), *sets, "--set", f"experiment.seed={seed}", "--no-progress"]
    tic = time.time()
    run(["train", str(ref_work / "shards"), str(out), "--variants", "sasan", "--no-tracking", *common],
        log, revert=revert)
    run(["evaluate", str(ref_work / "raw"), str(out), "--metrics", str(out / "metrics.tmp.json"),
         "--report", str(out / "report"), "--no-predictions", *common, "--set", "evaluate.methods=[sasan]"], log)
    result = json.loads((out / "metrics.tmp.json").read_text())["sasan"]
    result["_seconds"] = time.time() - tic
    result["_machine"] = machine()
    result["_diagnostics"] = json.loads((out / "sasan" / "summary.json").read_text()).get("diagnostics", {})
    metrics.write_text(json.dumps(result, indent=1))
    return result


def diag(result: dict, *path: str) -> float | None:
    node = result.get("_diagnostics", {})
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, (int, float)) else None


def summarise(reference: dict, per: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    ref = dict(zip(reference["seeds"], reference["methods"]["sasan"]["per_seed"]))
    ref_cyc = dict(zip(reference["seeds"], reference["methods"]["cyclegan"]["per_seed"]))
    out: dict = {"reference": "bench/results/adaptation.json (sasan, current code)", "seeds": seeds,
                 "reference_sasan_per_seed": [ref[s] for s in seeds],
                 "reference_cyclegan_per_seed": [ref_cyc[s] for s in seeds], "reverts": {}}
    for revert, rows in per.items():
        done = [s for s in seeds if s in rows]
        dice = [rows[s]["mean"]["dice"] for s in done]
        delta = [ref[s] - rows[s]["mean"]["dice"] for s in done]   # what the fix adds
        out["reverts"][revert] = {
            "what": REVERTS[revert], "seeds": done, "per_seed": dice,
            "mean_dice": mean_sd(dice)[0], "sd_dice": mean_sd(dice)[1],
            "fix_gain_per_seed": delta, "fix_gain_mean": mean_sd(delta)[0], "fix_gain_sd": mean_sd(delta)[1],
            "per_structure": {k: mean_sd([rows[s]["per_structure"][k]["dice"] for s in done])[0]
                              for k in rows[done[0]]["per_structure"]},
            "A_s_source_test_dice": mean_sd([v for s in done if (v := diag(rows[s], "A_s_source_test", "dice", "mean")) is not None] or [float("nan")])[0],
            "diagnosis_only_A_t_target_dice": mean_sd([v for s in done if (v := diag(rows[s], "diagnosis_only_A_t_target_test", "dice", "mean")) is not None] or [float("nan")])[0],
            "seconds": [rows[s]["_seconds"] for s in done],
            "machine": [rows[s].get("_machine") for s in done],
        }
    return out


def merge_recorded(res: dict, out: Path) -> dict:
    """Keep the reverts recorded in ``out`` by an earlier run that this run does not redo
    (their work folders may be gone: a fresh clone keeps only bench/results)."""
    if out.is_file():
        old = json.loads(out.read_text())
        if old.get("seeds") == res["seeds"] and old.get("reference_sasan_per_seed") == res["reference_sasan_per_seed"]:
            merged = {**old.get("reverts", {}), **res["reverts"]}
            res["reverts"] = {k: merged[k] for k in REVERTS if k in merged}
    return res


def markdown(res: dict) -> str:
    ref = res["reference_sasan_per_seed"]
    lines = [f"SASAN on the phantom (params.yaml, 6 CT test subjects), one fix reverted at a time; seeds {res['seeds']}. "
             "Fix gain = current SASAN - reverted, paired by seed (positive: the fix helps).", "",
             f"Reference, current code: SASAN {mean_sd(ref)[0]:.3f} +- {mean_sd(ref)[1]:.3f} "
             f"({', '.join(f'{v:.3f}' for v in ref)}); CycleGAN "
             f"{', '.join(f'{v:.3f}' for v in res['reference_cyclegan_per_seed'])}.", "",
             "| reverted | SASAN mean Dice | per seed | fix gain | per seed | A_s source-test Dice | A_t target Dice (diagnosis only) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["reverts"].items():
        lines.append(f"| {r['what']} | {r['mean_dice']:.3f} +- {r['sd_dice']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in r['per_seed'])} | {r['fix_gain_mean']:+.3f} +- {r['fix_gain_sd']:.3f} | "
                     f"{', '.join(f'{v:+.3f}' for v in r['fix_gain_per_seed'])} | "
                     f"{r['A_s_source_test_dice']:.3f} | {r['diagnosis_only_A_t_target_dice']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":   # the patched `sasan` process
        revert, args = sys.argv[2], sys.argv[4:]
        apply_revert(revert)
        from sasan.cli import main as sasan_main
        sys.exit(sasan_main(args))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reverts", nargs="+", default=list(REVERTS), choices=list(REVERTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "phantom",
                    help="the phantom work folder of bench/adaptation.py (data, pre-trained A_s)")
    ap.add_argument("--reference", type=Path, default=HERE / "results" / "adaptation.json")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fix_ablation.json")
    ap.add_argument("--no-run", action="store_true", help="only summarise the runs already finished")
    args = ap.parse_args()
    reference = json.loads(args.reference.read_text())
    params = (ROOT / reference["profile"]).resolve()
    work = args.work.resolve()
    if not (work / "shards" / "done").is_file():
        sys.exit(f"{work}: no prepared phantom; run bench/adaptation.py --data phantom first")
    (work / "fix_ablation").mkdir(exist_ok=True)
    log = work / "fix_ablation" / "log.txt"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    per: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:                    # seed-major: a cut-off leaves whole seeds
        for revert in args.reverts:
            if args.no_run and not (work / "fix_ablation" / revert / f"seed{seed}" / "metrics.json").is_file():
                continue
            per.setdefault(revert, {})[seed] = run_one(revert, seed, work, params, log)
            print(f"seed {seed} {revert}: SASAN {per[revert][seed]['mean']['dice']:.3f}", flush=True)
            res = merge_recorded(summarise(reference, per, args.seeds), args.out)
            args.out.write_text(json.dumps(res, indent=2) + "\n")
            args.out.with_suffix(".md").write_text(markdown(res))
    if not per:
        sys.exit("no finished run to summarise")
    print(markdown(merge_recorded(summarise(reference, per, args.seeds), args.out)))


if __name__ == "__main__":
    main()
