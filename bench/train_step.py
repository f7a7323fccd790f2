"""Time one joint training iteration (G step + D step) of SASAN and of its CycleGAN ablation.

Batch 2, 256x256, 3-slice input, K = 8, 5 classes, every loss term on; fp32 on CPU, and on
CUDA (bf16 autocast + channels_last) when a GPU is present. Each configuration runs in its
own process so peak memory is its own. Writes bench/results/train_step.json.

    python bench/train_step.py [--iters 3] [--size 256] [--device cpu|cuda|all] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(variant: str, device: str, size: int, batch: int, iters: int, profile: bool, winograd: bool) -> dict:
    import torch

    from sasan.config import config_from_dict
    from sasan.models import build_networks, count_parameters
    from sasan.train.device import fast_cpu_convs, keep_freed_memory, resolve_runtime
    from sasan.train.joint import JointOptions, JointTrainer, make_optimizers
    from sasan.train.variants import variant_config

    torch.manual_seed(0)
    cfg = variant_config(config_from_dict({"train": {"device": device}}), variant)
    rt = resolve_runtime(device, bf16=True, channels_last=True)
    if rt.device.type == "cpu":
        keep_freed_memory()
    nets = rt.prepare_module(build_networks(cfg.model))
    swapped = fast_cpu_convs(nets, rt, winograd)
    j = cfg.train.joint
    g, d, og, od = make_optimizers(nets, j.lr, j.betas, j.weight_decay, False, False)
    trainer = JointTrainer(nets, JointOptions(cfg.train.losses), rt, g, d, og, od)
    c = cfg.model.num_classes
    batch_data = {"x": torch.rand(batch, 3, size, size) * 2 - 1, "t": torch.rand(batch, 3, size, size) * 2 - 1,
                  "y_x": torch.randint(0, c, (batch, size, size))}
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    logs = trainer.step(batch_data)          # warm-up (allocations, kernel selection)
    sync()
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        tic = time.perf_counter()
        trainer.step(batch_data)
        sync()
        times.append(time.perf_counter() - tic)
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if rt.device.type == "cuda" else [])
        with prof(activities=acts) as p:
            trainer.step(batch_data)
            sync()
        key = "self_cuda_time_total" if rt.device.type == "cuda" else "self_cpu_time_total"
        print(p.key_averages().table(sort_by=key, row_limit=15), file=sys.stderr)
    if rt.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "device": str(rt.device), "s_per_it": min(times), "s_per_it_median": statistics.median(times),
            "times": times, "peak_mem_mb": peak_mb, "loss_terms": sorted(k for k in logs if k.startswith("G/")),
            "generator_params": sum(count_parameters(m) for m in nets.generator_modules()),
            "fast_cpu_convs": swapped, "bf16": rt.bf16, "channels_last": rt.channels_last, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-winograd", action="store_true", help="default CPU kernels for every conv")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_step.json")
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child[0], args.child[1], args.size, args.batch, args.iters, args.profile,
                             not args.no_winograd)))
        return

    import torch

    from sasan.hugepages import tunables_env

    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    report: dict = {"image_size": args.size, "batch_size": args.batch, "k": 8, "iters": args.iters,
                    "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "torch": torch.__version__}, "runs": {}}
    for device in devices:
        for variant in ("sasan", "cyclegan"):
            cmd = [sys.executable, __file__, "--child", variant, device, "--size", str(args.size),
                   "--batch", str(args.batch), "--iters", str(args.iters)] + (["--profile"] if args.profile else []) + (
                ["--no-winograd"] if args.no_winograd else [])
            # the trainer's own environment: `sasan train` re-executes itself with it
            env = tunables_env(os.environ) or dict(os.environ)
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
            if res.returncode:
                sys.exit(f"benchmark child failed:\n{res.stderr[-3000:]}")
            if args.profile:
                print(res.stderr, file=sys.stderr)
            run = json.loads(res.stdout.strip().splitlines()[-1])
            run["glibc_tunables"] = env.get("GLIBC_TUNABLES")
            report["runs"][f"{device}/{variant}"] = run
            print(f"{device:5s} {variant:9s} {run['s_per_it']:.2f} s/it (median {run['s_per_it_median']:.2f}), "
                  f"peak {run['peak_mem_mb']:.0f} MB", flush=True)
    main_dev = devices[-1]
    sasan, cyc = report["runs"][f"{main_dev}/sasan"], report["runs"][f"{main_dev}/cyclegan"]
    report.update({"device": main_dev, "sasan_s_per_it": sasan["s_per_it"], "cyclegan_s_per_it": cyc["s_per_it"],
                   "ratio": sasan["s_per_it"] / cyc["s_per_it"], "peak_mem_mb": sasan["peak_mem_mb"],
                   "sasan_it_per_s": 1 / sasan["s_per_it"], "cyclegan_it_per_s": 1 / cyc["s_per_it"]})
    if "cpu/sasan" in report["runs"]:
        report["cpu_sasan_s_per_it"] = report["runs"]["cpu/sasan"]["s_per_it"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"ratio sasan/cyclegan = {report['ratio']:.2f}; written {args.out}")


if __name__ == "__main__":
    main()
