"""Adaptation benchmark: N seeds of a profile, every method of the paper's table, on enough
target test subjects that evaluation noise is small next to the differences claimed.

    python bench/adaptation.py --data phantom --seeds 0 1 2          # the demo profile
    python bench/adaptation.py --data brain --params profiles/brain-t2t1.yaml

Per data set: generate the embedded data once (fixed data seed), ingest with a subject
split that leaves >= 6 test subjects per domain, preprocess. Per seed: ``sasan train`` of
every method, ``sasan evaluate`` on the target test volumes. Resumable: a finished seed is
read back from its metrics file, which each method joins as soon as it is evaluated (kept beside
the table as ``<out>_seed<N>.json``, so a fresh checkout skips what is recorded there too); an
interrupted method resumes from its checkpoints. ``--jobs 2``
trains two seeds side by side with one thread each: on 2 cores that gets about 1.25x the
work done of one two-thread run at the brain's 96 px (a CycleGAN joint step: 1.2 s each side by
side, 0.75 s alone), at the cost of one-thread float rounding (recorded per seed). The GAN of
``no_fake_source`` is SASAN's own (same seed, same joint phase): only its segmenter differs.

Writes ``bench/results/adaptation.json`` (phantom; ``adaptation_<data>.json`` otherwise) with the keys
``{"profile", "seeds", "methods": {M: {"mean_dice", "sd_dice", "per_seed", ...}},
"sasan_minus_cyclegan": {"mean", "sd", "per_seed"}, "gap_closed"}`` and a Markdown table
(``docs/results.md`` embeds it). Nothing here selects with target labels: every number is a
final-checkpoint score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

from sasan.metrics import gap_closed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
METHODS = ("no_adaptation", "cyclegan", "sasan", "no_fake_source", "upper_bound")
_RUNNING: set[subprocess.Popen] = set()   # sasan subprocesses now running (--jobs)
_STOP = threading.Event()                 # set when a seed failed: start no more
DATA = {   # data set -> (generator command, subjects per domain, default profile)
    "phantom": (["data", "phantom", "--seed", "0"], 32, "params.yaml"),               # 26 train / 6 test
    "brain": (["data", "brain", "--seed", "0"], 20, "profiles/brain-t2t1.yaml"),     # 14 train / 6 test
}
TEST_SUBJECTS = 6   # per domain, whatever the number of subjects


def sasan(*args: str, log: Path, threads: Optional[int] = None) -> None:
    cmd = [sys.executable, "-m", "sasan", *args]
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        # evaluation logs to a store of the benchmark's own, not the project's mlflow.db
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{log.parent / 'mlflow.db'}")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        if _STOP.is_set():
            sys.exit("stopped: another seed failed")
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _RUNNING.add(proc)
        returncode = proc.wait()
        _RUNNING.discard(proc)
    if returncode:
        sys.exit(f"failed ({returncode}): {' '.join(args)}; see {log}")


def set_flags(overrides: list[str]) -> list[str]:
    """``["k=v", ...]`` -> ``["--set", "k=v", ...]`` for the ``sasan`` commands."""
    return [x for kv in overrides for x in ("--set", kv)]


def prepare(data: str, work: Path, params: Path, sets: list[str], log: Path,
            cases: Optional[int] = None) -> tuple[Path, Path]:
    """Generate, split (``TEST_SUBJECTS`` test subjects per domain), validate and preprocess
    ``cases`` subjects per domain (default: the data set's) into ``work``, once."""
    gen, default_cases, _ = DATA[data]
    cases = cases or default_cases
    raw, shards, done = work / "raw", work / "shards", work / "shards" / "done"
    if done.is_file():   # folders prepared before the size was recorded hold "ok": taken as they are
        prepared = done.read_text().split()
        if len(prepared) == 2 and prepared[0] == "cases" and int(prepared[1]) != cases:
            sys.exit(f"{work}: prepared with {prepared[1]} subjects per domain, not {cases}; use another --work")
        return raw, shards
    if cases <= TEST_SUBJECTS + 1:
        sys.exit(f"--cases {cases}: need more than {TEST_SUBJECTS + 1} subjects per domain ({TEST_SUBJECTS} are test)")
    sasan(*gen[:2], str(work / "source"), "--cases", str(cases), *gen[2:], log=log)
    sasan("ingest", str(work / "source"), str(raw), "--test-fraction", str(TEST_SUBJECTS / cases), "--seed", "0", log=log)
    sasan("validate", str(raw), "--report", str(work / "validation"), "--params", str(params), *sets, log=log)
    sasan("preprocess", str(raw), str(shards), "--params", str(params), *sets, log=log)
    done.write_text(f"cases {cases}\n")
    return raw, shards


def results_path(stem: str, data: str) -> Path:
    """bench/results/<stem>.json for the phantom, <stem>_<data>.json for another data set."""
    return HERE / "results" / (f"{stem}.json" if data == "phantom" else f"{stem}_{data}.json")


def machine() -> dict:
    """Where a run trained: CPU results differ between instruction sets and runs (docs/results.md)."""
    import platform

    import torch

    cpu = platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        avx512 = " avx512f" in info
    except OSError:
        avx512 = None
    found = {"cpu": cpu, "avx512": avx512, "cores": os.cpu_count(), "torch": torch.__version__,
             "threads": os.environ.get("OMP_NUM_THREADS")}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
    return found


def seed_record(out: Path, seed: int) -> Path:
    """Where a finished seed's metrics are kept next to the table (``<out>_seed<N>.json``): a
    fresh checkout, whose ``bench/work`` is empty, reads finished seeds back from there."""
    return out.with_name(f"{out.stem}_seed{seed}.json")


def read_back(done: Path, seed: int, config: dict) -> dict:
    """The methods of a seed recorded so far, if they ran with this profile and overrides
    (files written before the check have no ``_config`` and are taken as they are)."""
    result = json.loads(done.read_text())
    if result.get("_config", config) != config:
        sys.exit(f"{done}: seed {seed} was run with {result['_config']}, not {config}; "
                 "use another --out/--work or remove the file")
    if not isinstance(result.get("_seconds", {}), dict):     # recorded as one block of methods
        present = [m for m in METHODS if m in result]
        result["_seconds"] = {"+".join(present): result["_seconds"]}
        result["_machine"] = {m: result["_machine"] for m in present}
    return result


def run_seed(seed: int, raw: Path, shards: Path, work: Path, params: Path, sets: list[str],
             methods: list[str], log: Path, threads: Optional[int] = None, record: Optional[Path] = None) -> dict:
    """Train and evaluate each method of one seed. A method's scores are recorded (in the work
    folder and in ``record``) as soon as it is evaluated, so a rerun, in this checkout or a
    fresh one, trains only the methods not yet recorded."""
    out = work / f"seed{seed}"
    metrics = out / "metrics.json"
    config = {"profile": params.name, "overrides": sets[1::2]}
    result: dict = {}
    for done in (metrics, record):
        if done is not None and done.is_file():
            result = read_back(done, seed, config)
            break
    common = ["--params", str(params), *sets, "--set", f"experiment.seed={seed}", "--no-progress"]
    for method in methods:
        if method in result:
            continue
        tic = time.time()
        if method == "no_fake_source" and (out / "sasan" / "checkpoints").is_dir():
            ckpt = out / "no_fake_source" / "checkpoints"       # reuse SASAN's pre-training + GAN
            ckpt.mkdir(parents=True, exist_ok=True)
            for phase in ("pretrain_attention.pt", "joint.pt"):
                if not (ckpt / phase).exists():
                    shutil.copy2(out / "sasan" / "checkpoints" / phase, ckpt / phase)
        sasan("train", str(shards), str(out), "--variants", method, "--no-tracking", *common, log=log,
              threads=threads)
        sasan("evaluate", str(raw), str(out), "--metrics", str(out / "metrics.tmp.json"), "--report",
              str(out / "report" / method), "--no-predictions", *common,
              "--set", f"evaluate.methods=[{method}]", log=log, threads=threads)
        result[method] = json.loads((out / "metrics.tmp.json").read_text())[method]
        result.setdefault("_seconds", {})[method] = time.time() - tic
        result.setdefault("_machine", {})[method] = machine()
        if threads:
            result["_machine"][method]["threads"] = f"{threads} (seeds side by side)"
        summary = out / method / "summary.json"
        if summary.is_file():
            result.setdefault("_diagnostics", {})[method] = json.loads(summary.read_text()).get("diagnostics", {})
        result["_config"] = config
        for path in (metrics, record):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(result, indent=1))
    return result


def side_by_side(seeds: list[int], jobs: int, raw: Path, shards: Path, work: Path, params: Path, sets: list[str],
                 methods: list[str], log: Path, out: Path) -> dict[int, dict]:
    """``--jobs``: seeds in ``jobs`` threads, each waiting on its own ``sasan`` subprocesses,
    which get cores // jobs threads. A failing seed stops the others (SIGTERM: they checkpoint)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    per_seed: dict[int, dict] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_seed, s, raw, shards, work, params, sets, methods, log, threads,
                               seed_record(out, s)): s for s in seeds}
        try:
            for future in as_completed(futures):
                seed = futures[future]
                per_seed[seed] = future.result()
                print(f"seed {seed}: " + ", ".join(f"{m} {headline(per_seed[seed][m])}" for m in methods), flush=True)
        except BaseException:
            _STOP.set()
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(_RUNNING):
                proc.terminate()
            raise
    return per_seed


def headline(scores: dict) -> str:
    """A method's mean Dice, or for a paired (translation) evaluation its mean SSIM."""
    mean = scores["mean"]
    return f"{mean['dice']:.3f}" if "dice" in mean else f"SSIM {mean['ssim']:.3f}"


def write_results(out: Path, res: dict, table: str) -> None:
    """The summary ``out`` (JSON) and its Markdown ``table`` beside it (``.md``); the table printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(data: str, params: Path, seeds: list[int], per_seed: dict[int, dict], methods: list[str]) -> dict:
    out: dict = {"profile": str(params), "data": data, "seeds": seeds, "methods": {}}
    for m in methods:
        rows = [per_seed[s][m] for s in seeds]
        dice = [r["mean"]["dice"] for r in rows]
        assd = [r["mean"]["assd_vox"] for r in rows]
        md, sd = mean_sd(dice)
        out["methods"][m] = {
            "mean_dice": md, "sd_dice": sd, "per_seed": dice,
            "mean_assd_vox": mean_sd(assd)[0], "sd_assd_vox": mean_sd(assd)[1], "per_seed_assd_vox": assd,
            "per_seed_sd_over_subjects": [r["mean"]["dice_std"] for r in rows],
            "per_structure": {k: mean_sd([r["per_structure"][k]["dice"] for r in rows])[0]
                              for k in rows[0].get("per_structure", {})},
            "n_subjects": rows[0].get("n_subjects"),
        }
    if {"sasan", "cyclegan"} <= set(methods):
        diff = [a - b for a, b in zip(out["methods"]["sasan"]["per_seed"], out["methods"]["cyclegan"]["per_seed"])]
        out["sasan_minus_cyclegan"] = {"mean": mean_sd(diff)[0], "sd": mean_sd(diff)[1], "per_seed": diff}
    if {"sasan", "no_adaptation", "upper_bound"} <= set(methods):
        out["gap_closed"] = gap_closed({m: v["mean_dice"] for m, v in out["methods"].items()}).get("sasan")
    out["seconds_per_seed"] = [sum(per_seed[s].get("_seconds", {}).values()) for s in seeds]
    out["machine_per_seed"] = [per_seed[s].get("_machine") for s in seeds]
    # training diagnostics (A_s on source test; A_t and pseudo-labels on target: diagnosis only),
    # mean over seeds of every number each variant's summary.json recorded
    diag: dict = {}
    for m in methods:
        flat: dict[str, list[float]] = {}
        for s in seeds:
            stack = [("", per_seed[s].get("_diagnostics", {}).get(m, {}))]
            while stack:
                prefix, node = stack.pop()
                for k, v in node.items():
                    if isinstance(v, dict):
                        stack.append((f"{prefix}{k}/", v))
                    elif isinstance(v, (int, float)):
                        flat.setdefault(prefix + k, []).append(float(v))
        if flat:
            diag[m] = {k: mean_sd(v)[0] for k, v in sorted(flat.items())}
    if diag:
        out["diagnostics"] = diag
    return out


def markdown(res: dict) -> str:
    lines = [f"Data: {res['data']} ({res['profile']}), seeds {res['seeds']}, "
             f"{next(iter(res['methods'].values()))['n_subjects']} target test subjects; mean 3-D Dice "
             "over structures and subjects, then mean +- sd over seeds.", "",
             "| method | mean Dice | per seed | ASSD (vox) |", "|---|---|---|---|"]
    for m, r in res["methods"].items():
        seeds = ", ".join(f"{v:.3f}" for v in r["per_seed"])
        lines.append(f"| {m} | {r['mean_dice']:.3f} +- {r['sd_dice']:.3f} | {seeds} | "
                     f"{r['mean_assd_vox']:.1f} +- {r['sd_assd_vox']:.1f} |")
    if "sasan_minus_cyclegan" in res:
        d = res["sasan_minus_cyclegan"]
        lines += ["", f"SASAN - CycleGAN, paired by seed: {d['mean']:+.3f} +- {d['sd']:.3f} "
                      f"(per seed: {', '.join(f'{v:+.3f}' for v in d['per_seed'])})."]
    if res.get("gap_closed") is not None:
        lines.append(f"Gap closed by SASAN: {100 * res['gap_closed']:.0f}% of upper bound - no adaptation.")
    structures = list(next(iter(res["methods"].values()))["per_structure"])
    if structures:
        lines += ["", "Per structure (mean Dice over seeds):", "",
                  "| method | " + " | ".join(structures) + " |", "|---" * (len(structures) + 1) + "|"]
        for m, r in res["methods"].items():
            lines.append(f"| {m} | " + " | ".join(f"{r['per_structure'][k]:.3f}" for k in structures) + " |")
    diag = res.get("diagnostics", {})
    keys = [k for k in ("A_s_source_test/dice/mean", "diagnosis_only_A_t_target_test/dice/mean",
                        "pseudo_labels/diagnosis_only_dice/mean") if any(k in d for d in diag.values())]
    if keys:
        lines += ["", "Training diagnostics (mean over seeds; target-side ones are diagnosis only, never used "
                      "to select): pooled 2-D Dice of", "",
                  "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for m, d in diag.items():
            if any(k in d for k in keys):
                lines.append(f"| {m} | " + " | ".join(f"{d[k]:.3f}" if k in d else "-" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=sorted(DATA), default="phantom")
    ap.add_argument("--params", type=Path, default=None, help="profile (default: the data set's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default bench/work/<data>)")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/adaptation.json (phantom), adaptation_<data>.json otherwise")
    ap.add_argument("--cases", type=int, default=None,
                    help=f"subjects per domain to generate ({TEST_SUBJECTS} of them test; default: phantom "
                         f"{DATA['phantom'][1]}, brain {DATA['brain'][1]})")
    ap.add_argument("--jobs", type=int, default=1,
                    help="seeds trained side by side, cores/jobs threads each (default 1: one seed at a time)")
    args = ap.parse_args()
    params = (args.params or Path(DATA[args.data][2])).resolve()
    work = (args.work or HERE / "work" / args.data).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sets = set_flags(args.set)
    log = work / "log.txt"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    out = (args.out or results_path("adaptation", args.data)).resolve()
    raw, shards = prepare(args.data, work, params, sets, log, args.cases)
    per_seed = {}
    if args.jobs > 1:
        per_seed = side_by_side(args.seeds, args.jobs, raw, shards, work, params, sets, args.methods, log, out)
    else:
        for seed in args.seeds:
            per_seed[seed] = run_seed(seed, raw, shards, work, params, sets, args.methods, log,
                                      record=seed_record(out, seed))
            print(f"seed {seed}: " + ", ".join(f"{m} {headline(per_seed[seed][m])}" for m in args.methods), flush=True)
    res = summarise(args.data, params.relative_to(ROOT) if params.is_relative_to(ROOT) else params,
                    args.seeds, per_seed, args.methods)
    res["overrides"] = args.set
    write_results(out, res, markdown(res))


if __name__ == "__main__":
    main()
