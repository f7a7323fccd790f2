"""Time one joint training iteration (G step + D step) of SASAN and of its CycleGAN ablation,
at two scales:

* ``demo``: the CPU demo of params.yaml (64x64, its narrow widths, batch 2);
* ``paper``: 256x256 with the paper's widths, batch 2, K = 8, 5 classes, every loss term.

fp32 on CPU; on CUDA (when a GPU is present) bf16 autocast + channels_last. ``--compile``
adds the same runs with the networks wrapped in ``torch.compile``; compile time is the
extra time of the first iterations, recorded separately. Each configuration runs in its own
process, so peak memory is its own. ``--split`` profiles a few more iterations after the timed
ones (``torch.profiler``) and records where an iteration's time goes: convolutions (forward and
backward) and everything else, with the number of operator calls. ``--paired`` adds, per scale,
a process that builds both trainers and alternates their steps (S C, C S, ...): the median of
the per-pair ratios is what the machine's drift (other processes, clock changes) cannot bias,
as it can bias two mins measured minutes apart. Writes bench/results/train_step.json.

    python bench/train_step.py [--iters 5] [--scales demo paper] [--device cpu|cuda|all] [--compile] [--split] [--paired [--pairs 30]]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# scale -> (image size, model overrides); "paper" keeps ModelConfig's defaults (METHOD.md)
SCALES = {"demo": (None, "params.yaml"), "paper": (256, None)}


def build(variant: str, device: str, scale: str):
    import torch

    from sasan.config import Config, load_config
    from sasan.models import build_networks, count_parameters
    from sasan.train.device import resolve_runtime
    from sasan.train.joint import JointTrainer, make_optimizers
    from sasan.train.variants import variant_config

    size, params = SCALES[scale]
    base = load_config(ROOT / params) if params else Config()
    size = size or base.preprocess.image_size
    cfg = variant_config(base, variant)
    rt = resolve_runtime(device, bf16=True, channels_last=True)
    nets = rt.prepare_module(build_networks(cfg.model))
    j = cfg.train.joint
    opt_g, opt_d = make_optimizers(nets, j.lr, j.betas, j.weight_decay, False)
    trainer = JointTrainer(nets, cfg.train.losses, rt, opt_g, opt_d)
    gen_params = sum(count_parameters(m) for m in nets.generator_modules())
    return torch, cfg, rt, nets, trainer, size, gen_params


CONV_OPS = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
            "aten::_slow_conv2d_backward", "aten::cudnn_convolution"}


def time_split(torch, trainer, batch_data: dict, iters: int) -> dict:
    """Profiler self time (CPU) per iteration: convolutions against everything else. The
    profiler adds overhead per call, so the totals run above the timed s_per_it; the split is
    what it is for."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            trainer.step(batch_data)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / iters / 1000
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS) / iters / 1000
    return {"iters": iters, "conv_ms": conv, "other_ms": total - conv,
            "op_calls": sum(e.count for e in events) // iters,
            "conv_calls": sum(e.count for e in events if e.key in CONV_OPS) // iters}


def random_batch(torch, cfg, size: int, batch: int) -> dict:
    c = cfg.model.num_classes
    return {"x": torch.rand(batch, 3, size, size) * 2 - 1, "t": torch.rand(batch, 3, size, size) * 2 - 1,
            "y_x": torch.randint(0, c, (batch, size, size))}


def median_ci95(values: list[float], resamples: int = 2000) -> list[float]:
    """Percentile-bootstrap 95 % interval of the median (fixed seed: the record reproduces)."""
    import random

    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def paired(device: str, scale: str, batch: int, iters: int) -> dict:
    """Both trainers in one process, steps alternated (the order flipped every pair so neither
    always runs second); per-pair SASAN / CycleGAN ratios."""
    import torch

    trainers, sync = {}, (lambda: None)
    for variant in ("sasan", "cyclegan"):
        _, cfg, rt, _, trainer, size, _ = build(variant, device, scale)
        torch.manual_seed(0)
        trainers[variant] = (trainer, random_batch(torch, cfg, size, batch))
        if rt.device.type == "cuda":
            sync = torch.cuda.synchronize
    for trainer, data in trainers.values():          # warm-up
        trainer.step(data)
        trainer.step(data)
    sync()
    times: dict[str, list[float]] = {"sasan": [], "cyclegan": []}
    for i in range(iters):
        for variant in (("sasan", "cyclegan") if i % 2 == 0 else ("cyclegan", "sasan")):
            trainer, data = trainers[variant]
            tic = time.perf_counter()
            trainer.step(data)
            sync()
            times[variant].append(time.perf_counter() - tic)
    ratios = [s / c for s, c in zip(times["sasan"], times["cyclegan"])]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"device": device, "scale": scale, "batch_size": batch, "pairs": iters, "times": times,
            "ratios": ratios, "ratio_median": statistics.median(ratios), "ratio_quartiles": [q[0], q[2]],
            "ratio_median_ci95": median_ci95(ratios),
            "ratio_of_medians": statistics.median(times["sasan"]) / statistics.median(times["cyclegan"]),
            "threads": torch.get_num_threads()}


def one(variant: str, device: str, scale: str, batch: int, iters: int, compiled: bool,
        split: bool = False) -> dict:
    torch, cfg, rt, nets, trainer, size, gen_params = build(variant, device, scale)
    torch.manual_seed(0)
    if compiled:
        for name, module in list(nets.named_children()):
            if module is not None and name != "seg_discs":
                setattr(nets, name, torch.compile(module))
    batch_data = random_batch(torch, cfg, size, batch)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    tic = time.perf_counter()
    logs = trainer.step(batch_data)          # warm-up: allocations, kernel selection, compilation
    trainer.step(batch_data)
    sync()
    warmup = time.perf_counter() - tic
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        tic = time.perf_counter()
        trainer.step(batch_data)
        sync()
        times.append(time.perf_counter() - tic)
    if rt.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = {"split": time_split(torch, trainer, batch_data, max(3, iters // 2))} if split else {}
    return {**extra, "variant": variant, "device": str(rt.device), "scale": scale, "image_size": size, "batch_size": batch,
            "compiled": compiled, "s_per_it": min(times), "s_per_it_median": statistics.median(times),
            "times": times, "warmup_s_two_iters": warmup, "peak_mem_mb": peak_mb,
            "loss_terms": sorted(k for k in logs if k.startswith("G/")), "generator_params": gen_params,
            "bf16": rt.bf16, "channels_last": rt.channels_last, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--scales", nargs="+", default=["demo", "paper"], choices=sorted(SCALES))
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    ap.add_argument("--split", action="store_true", help="also record convolution vs other time (profiler)")
    ap.add_argument("--paired", action="store_true",
                    help="also time both variants alternately in one process (per-pair ratios)")
    ap.add_argument("--pairs", type=int, default=30, help="alternated pairs of steps for --paired")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_step.json")
    ap.add_argument("--child", nargs=4, metavar=("VARIANT", "DEVICE", "SCALE", "COMPILED"), help=argparse.SUPPRESS)
    ap.add_argument("--pair-child", nargs=2, metavar=("DEVICE", "SCALE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pair_child:
        print(json.dumps(paired(*args.pair_child, args.batch, args.pairs)))
        return
    if args.child:
        variant, device, scale, compiled = args.child
        print(json.dumps(one(variant, device, scale, args.batch, args.iters, compiled == "1", args.split)))
        return

    import torch

    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    sys.path.insert(0, str(HERE))
    from adaptation import machine

    def child(flags: list[str]) -> dict:
        cmd = [sys.executable, __file__, *flags, "--batch", str(args.batch), "--iters", str(args.iters)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            sys.exit(f"benchmark child failed:\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    report: dict = {"batch_size": args.batch, "k": 8, "iters": args.iters, "machine": machine(), "runs": {}}
    for device in devices:
        for scale in args.scales:
            for compiled in ([False, True] if args.compile else [False]):
                for variant in ("sasan", "cyclegan"):
                    run = child(["--child", variant, device, scale, str(int(compiled))]
                                + (["--split"] if args.split else []))
                    key = f"{device}/{scale}/{variant}" + ("/compiled" if compiled else "")
                    report["runs"][key] = run
                    print(f"{key:32s} {run['s_per_it']:.3f} s/it (median {run['s_per_it_median']:.3f}), "
                          f"warm-up {run['warmup_s_two_iters']:.1f} s, peak {run['peak_mem_mb']:.0f} MB", flush=True)
            if args.paired:
                pair = report["runs"][f"{device}/{scale}/paired"] = child(
                    ["--pair-child", device, scale, "--pairs", str(args.pairs)])
                lo, hi = pair["ratio_quartiles"]
                c_lo, c_hi = pair["ratio_median_ci95"]
                print(f"{device}/{scale}/paired: sasan/cyclegan per pair, median {pair['ratio_median']:.2f} "
                      f"(95% interval {c_lo:.2f}-{c_hi:.2f}; quartiles {lo:.2f}-{hi:.2f}, {pair['pairs']} pairs)",
                      flush=True)
    main_dev = devices[-1]
    report["device"] = main_dev
    report["scales"] = {}
    for scale in args.scales:
        sasan, cyc = report["runs"][f"{main_dev}/{scale}/sasan"], report["runs"][f"{main_dev}/{scale}/cyclegan"]
        entry = {"scale": scale, "image_size": sasan["image_size"], "sasan_s_per_it": sasan["s_per_it"],
                 "cyclegan_s_per_it": cyc["s_per_it"], "ratio": sasan["s_per_it"] / cyc["s_per_it"],
                 "peak_mem_mb": sasan["peak_mem_mb"]}
        if args.compile:
            comp = report["runs"][f"{main_dev}/{scale}/sasan/compiled"]
            entry["sasan_compiled_s_per_it"] = comp["s_per_it"]
            entry["compile_overhead_s"] = comp["warmup_s_two_iters"] - sasan["warmup_s_two_iters"]
        if args.paired:
            pair = report["runs"][f"{main_dev}/{scale}/paired"]
            entry["paired_ratio_median"] = pair["ratio_median"]
            entry["paired_ratio_quartiles"] = pair["ratio_quartiles"]
            entry["paired_ratio_median_ci95"] = pair["ratio_median_ci95"]
        if args.split:
            ss, cs = sasan["split"], cyc["split"]
            entry["split_ratio"] = {"conv": ss["conv_ms"] / cs["conv_ms"], "other": ss["other_ms"] / cs["other_ms"],
                                    "op_calls": ss["op_calls"] / cs["op_calls"]}
        report["scales"][scale] = entry
    # the keys earlier results used, for the paper scale
    paper = report["scales"].get("paper") or next(iter(report["scales"].values()))
    report.update({"scale": paper["scale"], "image_size": paper["image_size"],
                   "sasan_s_per_it": paper["sasan_s_per_it"], "cyclegan_s_per_it": paper["cyclegan_s_per_it"],
                   "ratio": paper["ratio"], "peak_mem_mb": paper["peak_mem_mb"]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for s in report["scales"].values():
        split = s.get("split_ratio")
        print(f"{s['scale']}: sasan/cyclegan = {s['ratio']:.2f}" + (
            f" (convolutions {split['conv']:.2f}, the rest {split['other']:.2f}, "
            f"operator calls {split['op_calls']:.2f})" if split else "") + (
            f"; alternated in one process, median per pair {s['paired_ratio_median']:.2f}"
            if "paired_ratio_median" in s else ""))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
